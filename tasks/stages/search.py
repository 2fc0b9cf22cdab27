"""Stage `search`: an Optuna study finds the teacher's architecture and training settings.

Reads data/processed/ (train and validation only) and params.yaml `search` and `baseline`.

The study starts with the baseline config as it is (the reference trial), then tries the
sampler's proposals, each trained for at most `search.epochs` while the pruner stops bad ones
(`shrinkflow.search`). Trials run in this process, or on Dask workers through prefect-dask when
`search.workers` > 1 or DASK_SCHEDULER_ADDRESS names a running scheduler; the study database
(SHRINKFLOW_SEARCH_STORAGE, else `search.storage`, else optuna.db here) is what they share, so a
killed search resumes where it stopped and several machines can work on one study.

Writes models/search/choice.json (the values `baseline` confirms, or none: params.yaml's config
stays, and why), metrics/search.json (completed trials, the chosen config's validation accuracy
and parameters), reports/search/ (metrics.json: all the figures; summary.md, the study's plots).
MLflow: the stage run is the study's parent run (study name and storage as tags, the choice's
figures, the plots, the chosen trial's weights) with one nested run per trial (its values,
per-epoch validation accuracy, state).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from shrinkflow import data
from shrinkflow.config import BaselineConfig, Params, SearchConfig
from shrinkflow.search import choose, study
from tasks.services import io, studies, tracking
from tasks.services.catalog import Catalog

log = logging.getLogger("shrinkflow.search")
# metrics/search.json: shared name <- the stage's own (all of them: reports/search/metrics.json)
HEADLINE = {"trials": "trials_complete", "val_accuracy": "chosen_val_accuracy",
            "params_count": "chosen_params"}


def study_name(cfg: SearchConfig, baseline: BaselineConfig, dataset: str, data_md5: str) -> str:
    """`search.study`, or the data set and a digest of everything a trial's result depends on:
    the same search resumes its study, a changed space or data starts another. The budget
    (trials, timeout, workers) is not part of it: raising `trials` continues the same study."""
    if cfg.study:
        return cfg.study
    meaning = {"search": cfg.model_dump(mode="json", exclude={"trials", "timeout_s", "workers",
                                                               "threads_per_worker", "storage",
                                                               "study", "heartbeat_s",
                                                               "compression", "within_se"}),
               "baseline": baseline.model_dump(mode="json"), "data": data_md5}
    digest = hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()[:12]
    return f"{dataset}-teacher-{digest}"


def run_trials(root: Path, params: Params, url: str, name: str,
               threads: int | None = None) -> None:
    """One worker's share of the study: open it and run trials until the budget is reached.

    The same function runs in this process or on a Dask worker (which loads the data itself,
    and trains with `threads` torch threads; None: as they are)."""
    from shrinkflow.measure import torch_threads
    from shrinkflow.search import space, teacher

    catalog, cfg = Catalog.at(root), params.search
    splits, spec, _ = io.load_processed(catalog)
    trial_data = teacher.TrialData(data.sample_rows(splits.train, cfg.max_rows, cfg.seed),
                                   splits.val, spec.kind, spec.input_shape, len(spec.classes))
    objective = teacher.objective(cfg, params.baseline, space.dimensions(cfg, params.baseline),
                                  trial_data, catalog.search_trials_dir(name))
    with torch_threads(threads):
        study.optimize(open_search(params, url, name), objective, cfg.trials, cfg.timeout_s)


def open_search(params: Params, url: str, name: str) -> Any:
    """The study, created here (tables, study, reference trial) before any worker starts:
    workers creating the tables of a new database at once collide."""
    from shrinkflow.search import space

    dims = space.dimensions(params.search, params.baseline)
    return study.open_study(params.search, dims, space.current(dims, params.baseline),
                            studies.storage(url, params.search.heartbeat_s), name)


def _summary(opened: Any, choice: Any, seconds: float) -> dict[str, Any]:
    from optuna.trial import TrialState

    trials = opened.get_trials(deepcopy=False)
    count = {state: sum(trial.state == state for trial in trials)
             for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    return {"trials_complete": count[TrialState.COMPLETE], "trials_pruned": count[TrialState.PRUNED],
            "trials_failed": count[TrialState.FAIL],
            "epochs_spent": sum(int(trial.user_attrs.get("epochs", 0)) for trial in trials),
            "seconds": seconds, "searched": float(choice.trial is not None), **choice.figures}


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics/search.json: a few of the metrics under the names the stages share (those found:
    none without a search, no chosen figures when the reference trial did not finish)."""
    return {shared: metrics[own] for shared, own in HEADLINE.items() if own in metrics}


def _log_trials(opened: Any, cfg: SearchConfig) -> None:
    """One nested MLflow run per trial of the study, under the active stage run."""
    for trial in opened.get_trials(deepcopy=False):
        with tracking.candidate_run(f"trial-{trial.number}", {"shrinkflow.kind": "trial"}):
            studies.log_trial(trial, cfg.objectives)


def why_skipped(params: Params) -> str | None:
    """Why no study runs (None: it does). It explores the built-in families' sizes and the
    training from scratch: a team's own network, or given weights, keep params.yaml's config."""
    if not params.search.enabled:
        return "search.enabled is false"
    if params.baseline.onnx is not None:
        return "baseline.onnx is the teacher, as it is"
    if not params.baseline.model.is_builtin:
        return (f"baseline.model.family is {params.baseline.model.family}: the search explores "
                "the sizes of the built-in mlp and cnn, so params.yaml's config is the teacher")
    if params.baseline.weights is not None:
        return "baseline.weights are given: the teacher starts from them, as params.yaml says"
    return None


def run_search(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Run (or resume) the study, choose the baseline's config; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.search
    with tracking.stage_run("search", params, catalog.root, parent_run_id, cfg) as run:
        meta = io.read_json(catalog.dataset_file(), produced_by="prepare")
        dataset = meta["spec"]["name"]
        opened, metrics = None, {}
        skipped = why_skipped(params)
        choice: dict[str, Any] = {"values": {}, "reason": skipped or "", "trial": None}
        if skipped is None:
            url = studies.storage_url(cfg, catalog)
            name = study_name(cfg, params.baseline, dataset, meta["raw_md5"])
            log.info("search study %s in %s: %d trials, sampler %s, pruner %s", name,
                     studies.shown_url(url), cfg.trials, cfg.sampler, cfg.pruner)
            tracking.set_tags({"study": name, "storage": studies.shown_url(url)})
            started = time.perf_counter()
            opened = open_search(params, url, name)
            if studies.parallel(cfg):
                studies.run_on_dask(run_trials, catalog.root, params, url, name)
            else:
                run_trials(catalog.root, params, url, name)
            chosen = choose.choose(opened, cfg)
            metrics = _summary(opened, chosen, time.perf_counter() - started)
            choice = {"values": chosen.values, "reason": chosen.reason, "trial": chosen.trial,
                      "study": name, "storage": studies.shown_url(url)}
            _track(opened, chosen, cfg, catalog, name)
        with io.atomic_dir(catalog.models_dir("search")) as staging:
            io.write_json(staging / catalog.search_choice_file.name, choice)
        studies.write_report(catalog.report_dir("search"), report_markdown(opened, choice, cfg),
                             opened, cfg.objectives, {catalog.metrics_report("search").name: metrics})
        log.info("search: %s", choice["reason"])
        io.write_json(catalog.metrics_file("search"), _headline(metrics))
        tracking.log_metrics(metrics)
        tracking.set_tags({"choice": choice["reason"]})
        return {"stage": "search", "run_id": run.info.run_id, "dataset": dataset,
                "metrics": metrics, "choice": choice}


def _track(opened: Any, chosen: Any, cfg: SearchConfig, catalog: Catalog, name: str) -> None:
    """Per-trial runs, the chosen values and the chosen trial's weights, on the stage run."""
    import mlflow

    _log_trials(opened, cfg)
    mlflow.log_params({f"chosen.{key}": str(value) for key, value in chosen.values.items()})
    if chosen.trial is not None:
        for suffix in ("pt", "json"):
            tracking.log_artifact(catalog.search_trials_dir(name) / f"trial-{chosen.trial}.{suffix}",
                                  "best_trial")


def report_markdown(opened: Any, choice: dict[str, Any], cfg: SearchConfig) -> str:
    """reports/search/summary.md: the choice, then every trial (values, state, figures)."""
    lines = ["# Teacher search", "", f"Choice: {choice['reason']}.", ""]
    if opened is None:
        return "\n".join(lines)
    lines += [f"Study `{choice['study']}` in `{choice['storage']}`: sampler {cfg.sampler}, "
              f"pruner {cfg.pruner}, at most {cfg.epochs} epochs per trial.", "",
              *studies.trials_table(opened, (*cfg.objectives, "epochs"),
                                    lambda trial: " (params.yaml)" if trial.user_attrs.get(
                                        "reference") else "")]
    return "\n".join(lines) + "\n"
