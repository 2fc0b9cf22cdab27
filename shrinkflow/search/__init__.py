"""Search: Optuna studies over the teacher's architecture and training.

  space     the searched baseline keys (choices and ranges), grids, applying a trial's values
  study     sampler, pruner, resumable budgeted runs on an Optuna storage (`tasks.services.studies` opens it)
  teacher   the objective: train a trial's config, report each epoch to the pruner
  choose    the one-standard-error rule: the trial the study proposes over params.yaml's config
            (and, in `baseline`, the config kept after both trained for the full budget)
  plots     optimisation history, learning curves, importances, Pareto front (PNG)

Torch, numpy and Optuna only: no tracking, no orchestration (the stage in `tasks.stages.search` logs,
runs workers and writes files). Import the modules directly: `from shrinkflow.search import study`.
"""
