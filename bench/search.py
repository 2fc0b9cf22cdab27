"""The `search` section of `make bench`: how much the sampler and pruner save, and Dask's scaling.

On the digits data the pipeline run prepared, and one fixed small space (SPACE: 27 points that
hold params.yaml's own config):

  samplers  the exhaustive grid (no pruning) against TPE with Hyperband (TPE_TRIALS trials): the
            best validation accuracy each reached and the training epochs each spent.
  workers   one random-sampler study (WORKER_SPACE, WORKER_TRIALS trials, no pruning) on 1 and 2 Dask
            workers: finished trials per minute once the workers are warm, from the first
            trial's end to the last one's (start-up is not a trial's cost).

Each study is new (its own SQLite file) and runs in this process or on its workers, one torch
thread each. Usage: python bench/search.py PROJECT (prints the section as JSON).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPACE = {"model": {"width": [16, 32, 64], "dropout": [0.0, 0.1, 0.3]},
         "train": {"lr": [0.001, 0.003, 0.01]}}
# continuous: no two trials share values (a repeat costs nothing and would inflate the rate)
WORKER_SPACE = {"model": {"dropout": {"low": 0.0, "high": 0.3}},
                "train": {"lr": {"low": 0.001, "high": 0.01, "log": True}}}
EPOCHS = 12  # epochs of an unpruned trial (params.yaml's search.epochs)
TPE_TRIALS = 12
WORKER_TRIALS = 12
WORKER_EPOCHS = 4


def _params(project: Path, space: dict = SPACE, **search):
    from shrinkflow.config import load_params

    params = load_params(project / "params.yaml")
    return params.model_copy(update={"search": params.search.model_copy(update={
        "space": params.search.model_validate({"space": space}).space, "epochs": EPOCHS,
        "min_epochs": 2, "study": None, "storage": None, **search})})


def _study(project: Path, params, storage: str, workers: int = 0):
    """Run the study of `params` to its budget, in this process (`workers` 0) or on that many
    Dask workers; returns it (loaded from `storage`)."""
    import optuna

    from tasks.services import studies
    from tasks.stages import search

    name = f"bench-{params.search.sampler}-{params.search.pruner}-{workers}"
    search.open_search(params, storage, name)  # tables and study before any worker starts
    if workers:
        studies.run_on_dask(search.run_trials, project, params, storage, name)
    else:
        search.run_trials(project, params, storage, name)
    return optuna.load_study(study_name=name, storage=storage)


def _best_and_epochs(study) -> tuple[float, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    best = max(trial.value for trial in trials if trial.state == TrialState.COMPLETE)
    return best, sum(int(trial.user_attrs.get("epochs", 0)) for trial in trials)


def _trials_per_minute(study) -> float:
    """Trials finished per minute once the workers are warm: from the first trial's end to the
    last one's (a fresh worker's first trial also pays its imports and first calls)."""
    from optuna.trial import TrialState

    ends = sorted(trial.datetime_complete for trial in study.get_trials(deepcopy=False)
                  if trial.state == TrialState.COMPLETE)
    return (len(ends) - 1) / ((ends[-1] - ends[0]).total_seconds() / 60)


def search_section(project: Path) -> dict:
    from shrinkflow.search import space

    with tempfile.TemporaryDirectory(prefix="shrinkflow-bench-search-") as scratch:
        storage = f"sqlite:///{Path(scratch) / 'studies.db'}"
        base = _params(project)
        dims = space.dimensions(base.search, base.baseline)
        points = space.grid(dims, base.search.grid_points, space.current(dims, base.baseline))
        grid_size = math.prod(len(values) for values in points.values())
        print(f"search: exhaustive grid of {grid_size} points ...", flush=True)
        grid = _study(project, _params(project, sampler="grid", pruner="none",
                                       trials=grid_size + 1), storage)
        print("search: TPE with Hyperband ...", flush=True)
        tpe = _study(project, _params(project, sampler="tpe", pruner="hyperband",
                                      trials=TPE_TRIALS), storage)
        per_minute = {}
        for workers in (1, 2):
            print(f"search: {WORKER_TRIALS} trials on {workers} worker(s) ...", flush=True)
            study = _study(project, _params(project, WORKER_SPACE, sampler="random",
                                            pruner="none", trials=WORKER_TRIALS,
                                            epochs=WORKER_EPOCHS, workers=workers),
                           storage, workers)
            per_minute[workers] = _trials_per_minute(study)
    (grid_best, grid_epochs), (tpe_best, tpe_epochs) = _best_and_epochs(grid), _best_and_epochs(tpe)
    return {"grid_points": grid_size, "grid_best_accuracy": grid_best, "grid_epochs": grid_epochs,
            "tpe_hyperband_best_accuracy": tpe_best, "tpe_hyperband_epochs": tpe_epochs,
            "tpe_trials": TPE_TRIALS, "trials_per_min_1_worker": round(per_minute[1], 2),
            "trials_per_min_2_workers": round(per_minute[2], 2), "space": SPACE,
            "epochs_per_trial": EPOCHS}


if __name__ == "__main__":
    print(json.dumps(search_section(Path(sys.argv[1]).resolve())))
