"""Stage `baseline`: train the reference model (the teacher) and export it to ONNX.

Reads data/processed/ (from `prepare`), params.yaml `baseline` (model, train, augment) and the
search's choice (models/search/choice.json). A searched config is trained beside params.yaml's
for the full budget and replaces it only if it still wins there on validation, by the search's
own rule (`search.within_se`): its trials were short, and a full training can overturn them. Writes
models/baseline/{model.pt (state_dict), architecture.json, model.onnx}, metrics/baseline.json
(validation and test accuracy, parameters, size), reports/baseline/metrics.json (also FLOPs, the
epochs, the search's confirmation; its speed is measured by `compare`, side by side with every
candidate), metrics/baseline_history.csv and reports/baseline/*.png; logs all of it
to an MLflow run, the ONNX file as an MLflow model with signature and input example.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from shrinkflow import data, export, measure, models, plots, train, user_models
from shrinkflow.config import BaselineConfig, Params
from shrinkflow.search import choose, space
from tasks.services import io, tracking
from tasks.services.candidates import Candidate, save_torch, write_manifest
from tasks.services.catalog import Catalog
from tasks.services.io import load_processed

log = logging.getLogger("shrinkflow.baseline")
HEADLINE = ("val_accuracy", "accuracy", "params_count", "size_bytes")  # in metrics/baseline.json


def _write_history(history: list[train.EpochLog], path: Path) -> None:
    header = ",".join(asdict(history[0]))
    rows = [",".join(f"{value:.6g}" for value in asdict(log).values()) for log in history]
    io.write_text(path, "\n".join([header, *rows]) + "\n")


def _report(history: list[train.EpochLog], model: torch.nn.Module, splits: data.Splits,
            spec: data.DatasetSpec, catalog: Catalog, metrics: dict[str, Any]) -> None:
    """reports/baseline/ (the plots and all the metrics), swapped in whole, and the headline in
    metrics/baseline.json."""
    predictions = measure.predict_batched(measure.torch_predictor(model), splits.test.x).argmax(1)
    matrix = measure.confusion(splits.test.y, predictions, len(spec.classes))
    with io.atomic_dir(catalog.baseline_plots_dir) as staging:
        plots.training_curves(history, staging / "training_curves.png", f"baseline on {spec.name}")
        plots.confusion_matrix(matrix, spec.classes, staging / "confusion_matrix.png",
                               f"baseline on {spec.name}: test confusion matrix")
        io.write_metrics(catalog, "baseline", {key: metrics[key] for key in HEADLINE}, metrics,
                         staging)


@dataclass(frozen=True)
class Trained:
    """One teacher config trained for the full budget."""

    label: str  # params.yaml | search trial N | baseline.onnx
    config: BaselineConfig
    arch: models.Architecture | None  # None: a user's ONNX file, answering through ORT
    model: torch.nn.Module
    result: train.FitResult


def _train(cfg: BaselineConfig, label: str, splits: data.Splits, spec: data.DatasetSpec,
           root: Path, on_epoch_end: Any = None) -> Trained:
    train.seed_everything(cfg.train.seed)  # weight init is part of "same config, same model"
    arch, model = models.teacher_for_data(cfg, spec.kind, spec.input_shape, len(spec.classes),
                                          root)
    if cfg.train.epochs == 0:
        log.info("%s: %s with the weights of %s as they are (train.epochs 0)", label,
                 arch.describe(), cfg.weights)
    else:
        log.info("training %s: %s %s on %d samples", label, arch.describe(),
                 f"from {cfg.weights}" if cfg.weights else "from scratch", len(splits.train))
    result = train.fit(model, splits.train, splits.val, cfg.train,
                       augment=data.Augmenter(cfg.augment, spec.kind), on_epoch_end=on_epoch_end,
                       description=f"{label} on {spec.name}")
    return Trained(label, cfg, arch, model, result)


def _onnx_teacher(cfg: BaselineConfig, splits: data.Splits, spec: data.DatasetSpec,
                  root: Path) -> Trained:
    """`baseline.onnx` as the teacher, checked on a batch of the data and scored as it is."""
    teacher = user_models.OnnxTeacher(root / str(cfg.onnx))
    user_models.check_outputs(teacher, spec.input_shape, len(spec.classes), "baseline.onnx")
    log.info("baseline.onnx: %s, as it is (ONNX Runtime)", cfg.onnx)
    result = train.fit(teacher, splits.train, splits.val, cfg.train.model_copy(update={"epochs": 0}))
    return Trained("baseline.onnx", cfg, None, teacher, result)


def _figures(trained: Trained, splits: data.Splits) -> dict[str, float]:
    return {"val_accuracy": trained.result.best_val_accuracy, "val_rows": float(len(splits.val)),
            "params": float(measure.count_params(trained.model)[0])}


def train_teacher(params: Params, catalog: Catalog, splits: data.Splits, spec: data.DatasetSpec
                  ) -> tuple[Trained, str, dict[str, float]]:
    """The teacher for the full budget: params.yaml's config, or the search's proposal if it
    still holds there. A proposal comes from trials of a few epochs, whose ranking a full
    training can overturn; so both are trained and the search's rule (`choose`) picks again on
    validation. Returns the teacher, why it is the one, and the comparison's figures."""
    choice = io.read_json(catalog.search_choice_file, produced_by="search")
    if not choice["values"]:
        return _train(params.baseline, "params.yaml", splits, spec, catalog.root,
                      tracking.log_epoch), \
            choice["reason"], {}
    finalists = [_train(params.baseline, "params.yaml", splits, spec, catalog.root),
                 _train(space.apply(params.baseline, choice["values"]),
                        f"search trial {choice['trial']}", splits, spec, catalog.root)]
    found = [_figures(trained, splits) for trained in finalists]
    winner = choose.smallest_near_best(found, params.search.within_se, incumbent=0)
    verdict = "holds at the full budget" if winner else \
        "does not hold at the full budget (params.yaml's config is kept)"
    reason = f"the search's trial {choice['trial']} {verdict}: {choose.comparison(found[1], found[0])}"
    figures = {**{f"full_params_yaml_{k}": v for k, v in found[0].items() if k != "val_rows"},
               **{f"full_searched_{k}": v for k, v in found[1].items() if k != "val_rows"},
               "search_confirmed": float(winner == 1),
               "search_confirm_seconds": sum(epoch.seconds for epoch in
                                             finalists[1 - winner].result.history)}
    for epoch in finalists[winner].result.history:  # the teacher's curves on the stage run
        tracking.log_epoch(epoch)
    return finalists[winner], reason, figures


def run_baseline(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Train, save, export and evaluate the baseline; returns a JSON summary."""
    catalog = Catalog.at(root)
    io.require(catalog.dataset_file(), produced_by="prepare")  # the earliest missing stage first
    io.require(catalog.search_choice_file, produced_by="search")
    with tracking.stage_run("baseline", params, catalog.root, parent_run_id) as run:
        log.info("loading processed data from %s", catalog.processed_dir)
        splits, spec, meta = load_processed(catalog)
        tracking.log_dataset(splits.train.x, splits.train.y, f"{spec.name}-train",
                             catalog.path(meta["raw_file"]), meta["raw_md5"], "training")
        tracking.log_dataset(splits.val.x, splits.val.y, f"{spec.name}-val",
                             catalog.path(meta["raw_file"]), meta["raw_md5"], "validation")
        tracking.log_dataset(splits.test.x, splits.test.y, f"{spec.name}-test",
                             catalog.path(meta["raw_file"]), meta["raw_md5"], "evaluation")
        if params.baseline.onnx is not None:
            teacher, searched, confirmation = _onnx_teacher(
                params.baseline, splits, spec, catalog.root), "baseline.onnx is the teacher", {}
        else:
            teacher, searched, confirmation = train_teacher(params, catalog, splits, spec)
        log.info("baseline config: %s", searched)
        tracking.log_section("baseline", teacher.config)  # the config trained, searched or not
        model, arch, result = teacher.model, teacher.arch, teacher.result

        log.info("saving and exporting to ONNX")
        with io.atomic_dir(catalog.baseline_dir) as staging:
            folder = catalog.relative(catalog.baseline_dir)
            if arch is None:  # the user's file is the teacher: there is no torch model to save
                export.adopt_onnx(catalog.path(str(params.baseline.onnx)), staging / "model.onnx")
                sizes = measure.onnx_size(staging / "model.onnx")
            else:
                save_torch(model, arch, staging)
                sizes = measure.torch_size(model, staging / "model.pt", arch.input_shape)
            write_manifest(staging, [Candidate("baseline-fp32", f"{folder}/model.onnx", "baseline",
                                               "fp32", torch=None if arch is None else folder)])
            onnx_bytes = measure.file_size(staging / "model.onnx")
            tracking.tag_model_file(staging / "model.onnx")
        metrics = {
            **measure.scores(measure.torch_predictor(model), splits.val.x, splits.val.y,
                             splits.test.x, splits.test.y),
            **sizes,
            "onnx_size_bytes": float(onnx_bytes),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "train_seconds": sum(epoch.seconds for epoch in result.history),
            **confirmation,
        }
        _write_history(result.history, catalog.history_file("baseline"))
        _report(result.history, model, splits, spec, catalog, metrics)

        tracking.log_metrics(metrics)
        tracking.log_budget(result)
        tracking.set_tags({"dataset": spec.name, "dvc.raw_md5": meta["raw_md5"], "search": searched,
                           "device": result.device, "precision": result.precision})
        example = splits.test.x[:2]
        tracking.log_onnx_model(catalog.baseline_dir / "model.onnx", example,
                                measure.torch_predictor(model)(example))
        if arch is not None:
            tracking.log_artifact(catalog.baseline_dir / "model.pt", "weights")
            tracking.log_artifact(catalog.baseline_dir / "architecture.json", "weights")
        tracking.log_artifact(catalog.baseline_plots_dir, "plots")
        tracking.log_artifact(catalog.history_file("baseline"), "plots")
        log.info("baseline %s: validation accuracy %.4f (test %.4f), %d params", spec.name,
                 metrics["val_accuracy"], metrics["accuracy"], metrics["params_count"])
        return {"stage": "baseline", "run_id": run.info.run_id, "dataset": spec.name,
                "architecture": arch.to_dict() if arch else None, "metrics": metrics,
                "teacher": searched}
