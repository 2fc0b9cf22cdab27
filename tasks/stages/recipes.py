"""Stage `recipes`: a multi-objective study over compression recipes; its front goes to compare.

Reads models/baseline/ (the teacher), data/processed/ (train, validation, unlabeled inputs) and
params.yaml `search.compression` (with `search`'s storage, workers and heartbeat).

Each trial is one recipe (`shrinkflow.search.recipe`): structured or unstructured pruning, or a
distilled student, stored at a precision, scored on validation accuracy, file size and batch-1
latency. The study lives in the same database as the teacher search and resumes the same way. Each
trial's file is written under the project's .shrinkflow/search/<study>/, so workers of a remote
Dask scheduler must share the project folder.
The Pareto front's recipes, the most accurate first (at most `max_candidates`), become candidates
`recipe-<trial>`, which `compare` measures side by side with the hand-set recipe's.

Writes models/searched/recipe-<trial>.onnx with candidates.json (empty when the search is off),
reports/recipes/ (candidates.json: every trial's recipe and objectives, the front and its files'
accuracies and size; metrics.json: how many trials, how many candidates, seconds; summary.md and
the study's plots) and metrics/recipes.json (how many candidates, the best one's accuracies on
validation and test).
MLflow: the stage run is the study's parent; every trial is a nested candidate run (its recipe as
params, objectives as metrics); the front's runs also hold the file's validation and test accuracy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from shrinkflow.config import Params
from tasks.services import io, studies, tracking
from tasks.services.candidates import (
    ONNX_TEACHER,
    Candidate,
    headline,
    load_torch,
    report_candidate,
    torch_teacher,
    write_manifest,
)
from tasks.services.catalog import Catalog, file_md5
from tasks.services.runner import user_code_importable

log = logging.getLogger("shrinkflow.recipes")


def study_name(params: Params, dataset: str, teacher_md5: str, data_md5: str) -> str:
    """The data set and a digest of what a recipe's result depends on (the recipe space and
    training, the teacher's file, the data); the budget is not part of it."""
    meaning = {"compression": params.search.compression.model_dump(
                   mode="json", exclude={"trials", "max_candidates"}),
               "baseline": params.baseline.model_dump(mode="json"), "seed": params.search.seed,
               "teacher": teacher_md5, "data": data_md5}
    digest = hashlib.sha256(json.dumps(meaning, sort_keys=True).encode()).hexdigest()[:12]
    return f"{dataset}-recipe-{digest}"


def _open(params: Params, url: str, name: str) -> Any:
    from shrinkflow.search import recipe, study

    cfg = params.search
    return study.create(studies.storage(url, cfg.heartbeat_s), name, recipe.DIRECTIONS,
                        recipe.sampler(cfg.compression, cfg.seed))


def run_recipe_trials(root: Path, params: Params, url: str, name: str,
                      threads: int | None = None) -> None:
    """One worker's share of the recipe study (in this process or on a Dask worker, with
    `threads` torch threads; None: as they are)."""
    from shrinkflow.measure import torch_threads
    from shrinkflow.search import recipe, study

    catalog, cfg = Catalog.at(root), params.search
    user_code_importable(params, root)  # a Dask worker's own process
    splits, spec, _ = io.load_processed(catalog)
    arch, teacher = load_torch(catalog.baseline_dir, produced_by="baseline")
    recipe_data = recipe.RecipeData(splits.train, splits.val, io.load_unlabeled(catalog),
                                    spec.kind, spec.input_shape, len(spec.classes))
    objective = recipe.objective(cfg.compression, params.baseline, teacher, arch, recipe_data,
                                 splits.train.x, catalog.search_trials_dir(name))
    with torch_threads(threads):
        study.optimize(_open(params, url, name), objective, cfg.compression.trials, None)


def _front(opened: Any, limit: int) -> list[Any]:
    """The Pareto front's trials, the most accurate first (then the smaller file), at most
    `limit`."""
    return sorted(opened.best_trials, key=lambda trial: (-trial.values[0], trial.values[1],
                                                        trial.number))[:limit]


def _trial_row(trial: Any) -> dict[str, Any]:
    from shrinkflow.search import recipe

    return {"trial": trial.number, "state": trial.state.name.lower(), "recipe": trial.params,
            **dict(zip(recipe.OBJECTIVES, trial.values or (), strict=False))}


def _report_markdown(opened: Any, report: dict[str, Any]) -> str:
    """reports/recipes/summary.md: the front sent to compare, then every recipe."""
    from shrinkflow.search import recipe

    if opened is None:
        return "# Compression recipes\n\nsearch.compression.enabled is false.\n"
    lines = ["# Compression recipes", "",
             f"Study `{report['study']}`. Sent to compare (the Pareto front, most accurate "
             f"first): {', '.join(report['front']) or 'none'}.", "",
             *studies.trials_table(opened, recipe.OBJECTIVES, lambda trial: (
                 " (front)" if f"recipe-{trial.number}" in report["front"] else ""))]
    return "\n".join(lines) + "\n"


def run_recipes(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Run (or resume) the recipe study and hand its front to compare; returns a JSON summary."""
    from shrinkflow.search import recipe

    catalog, cfg = Catalog.at(root), params.search.compression
    with tracking.stage_run("recipes", params, catalog.root, parent_run_id, cfg) as run:
        splits, spec, meta = io.load_processed(catalog)
        report: dict[str, Any] = {"trials": [], "front": [], "candidates": {}}
        opened = None
        folder = catalog.models_dir("recipes")
        with io.atomic_dir(folder) as staging:
            candidates: list[Candidate] = []
            if cfg.enabled and not torch_teacher(catalog):  # its recipes prune and fine-tune
                log.info("recipes: skipped: %s", ONNX_TEACHER)
                report["skipped"] = ONNX_TEACHER
            elif cfg.enabled:
                url = studies.storage_url(params.search, catalog)
                name = study_name(params, spec.name, file_md5(catalog.baseline_dir / "model.onnx"),
                                  meta["raw_md5"])
                log.info("recipe study %s: %d trials, sampler %s", name, cfg.trials, cfg.sampler)
                tracking.set_tags({"study": name, "storage": studies.shown_url(url)})
                started = time.perf_counter()
                opened = _open(params, url, name)
                if studies.parallel(params.search):
                    studies.run_on_dask(run_recipe_trials, catalog.root, params, url, name)
                else:
                    run_recipe_trials(catalog.root, params, url, name)
                report["seconds"] = time.perf_counter() - started
                front = {trial.number for trial in _front(opened, cfg.max_candidates)}
                for trial in opened.get_trials(deepcopy=False):
                    label = f"recipe-{trial.number}"
                    with tracking.candidate_run(label, {"method": "recipe",
                                                        "on_front": str(trial.number in front)}):
                        studies.log_trial(trial, recipe.OBJECTIVES)
                        if trial.number in front:
                            path = staging / f"{label}.onnx"
                            shutil.copyfile(catalog.search_trials_dir(name) /
                                            f"trial-{trial.number}.onnx", path)
                            report["candidates"][label] = report_candidate(
                                path, splits, make_seconds=trial.duration.total_seconds())
                            candidates.append(Candidate(
                                label, catalog.relative(folder / path.name), "baseline", "recipe"))
                    report["trials"].append(_trial_row(trial))
                report["front"] = [candidate.name for candidate in candidates]
                report["study"] = name
            write_manifest(staging, candidates)
        metrics = {"candidates": len(report["front"]), "trials": len(report["trials"]),
                   **({"seconds": report["seconds"]} if "seconds" in report else {})}
        studies.write_report(catalog.report_dir("recipes"), _report_markdown(opened, report),
                             opened, recipe.OBJECTIVES,
                             {catalog.candidates_report("recipes").name: report,
                              catalog.metrics_report("recipes").name: metrics})
        io.write_json(catalog.metrics_file("recipes"), headline(report["candidates"]))
        log.info("recipe front: %s", ", ".join(report["front"]) or "none (search off)")
        tracking.log_metrics(metrics)
        return {"stage": "recipes", "run_id": run.info.run_id, "dataset": spec.name,
                "metrics": metrics, "front": report["front"]}
