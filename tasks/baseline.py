"""Stage `baseline`: train the reference model (the teacher) and export it to ONNX.

Reads data/processed/ (from `prepare`), params.yaml `baseline` (model, train, augment) and the
search's choice (models/search/choice.json: the searched values replace params.yaml's). Writes
models/baseline/{model.pt (state_dict), architecture.json, model.onnx}, metrics/baseline.json
(validation and test accuracy, size, parameters, FLOPs; its speed is measured by `compare`, side by
side with every candidate), metrics/baseline_history.csv and reports/baseline/*.png; logs all of it
to an MLflow run, the ONNX file as an MLflow model with signature and input example.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from shrinkflow import data, measure, models, plots, train
from shrinkflow.config import BaselineConfig, Params
from shrinkflow.search import space
from tasks import io, tracking
from tasks.candidates import Candidate, save_torch, write_manifest
from tasks.catalog import Catalog
from tasks.io import load_processed

log = logging.getLogger("shrinkflow.baseline")


def _write_history(history: list[train.EpochLog], path: Path) -> None:
    header = ",".join(asdict(history[0]))
    rows = [",".join(f"{value:.6g}" for value in asdict(log).values()) for log in history]
    io.write_text(path, "\n".join([header, *rows]) + "\n")


def _plots(history: list[train.EpochLog], model: torch.nn.Module, splits: data.Splits,
           spec: data.DatasetSpec, catalog: Catalog) -> None:
    predictions = measure.predict_batched(measure.torch_predictor(model), splits.test.x).argmax(1)
    matrix = measure.confusion(splits.test.y, predictions, len(spec.classes))
    with io.atomic_dir(catalog.baseline_plots_dir) as staging:
        plots.training_curves(history, staging / "training_curves.png", f"baseline on {spec.name}")
        plots.confusion_matrix(matrix, spec.classes, staging / "confusion_matrix.png",
                               f"baseline on {spec.name}: test confusion matrix")


def searched_config(params: Params, catalog: Catalog) -> tuple[BaselineConfig, str]:
    """params.yaml's baseline with the search's chosen values applied, and the search's reason."""
    choice = io.read_json(catalog.search_choice_file, produced_by="search")
    return space.apply(params.baseline, choice["values"]), choice["reason"]


def run_baseline(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Train, save, export and evaluate the baseline; returns a JSON summary."""
    catalog = Catalog.at(root)
    io.require(catalog.dataset_file(), produced_by="prepare")  # the earliest missing stage first
    cfg, searched = searched_config(params, catalog)
    with tracking.stage_run("baseline", params, catalog.root, parent_run_id, cfg) as run:
        log.info("baseline config: %s", searched)
        log.info("loading processed data from %s", catalog.processed_dir)
        splits, spec, meta = load_processed(catalog)
        tracking.log_dataset(splits.train.x, splits.train.y, f"{spec.name}-train",
                             catalog.path(meta["raw_file"]), meta["raw_md5"], "training")
        tracking.log_dataset(splits.val.x, splits.val.y, f"{spec.name}-val",
                             catalog.path(meta["raw_file"]), meta["raw_md5"], "validation")
        tracking.log_dataset(splits.test.x, splits.test.y, f"{spec.name}-test",
                             catalog.path(meta["raw_file"]), meta["raw_md5"], "evaluation")

        arch = models.architecture_for(cfg.model, spec.kind, spec.input_shape, len(spec.classes))
        train.seed_everything(cfg.train.seed)  # weight init is part of "same config, same model"
        model = models.build_model(arch)
        log.info("training %s %s on %d samples", arch.family, arch.widths, len(splits.train))
        result = train.fit(
            model, splits.train, splits.val, cfg.train,
            augment=data.Augmenter(cfg.augment, spec.kind),
            on_epoch_end=tracking.log_epoch,
            description=f"baseline {spec.name}",
        )

        log.info("saving and exporting to ONNX")
        with io.atomic_dir(catalog.baseline_dir) as staging:
            save_torch(model, arch, staging)
            folder = str(catalog.baseline_dir.relative_to(catalog.root))
            write_manifest(staging, [Candidate("baseline-fp32", f"{folder}/model.onnx",
                                               "baseline", "fp32", torch=folder)])
            onnx_bytes = measure.file_size(staging / "model.onnx")
            tracking.tag_model_file(staging / "model.onnx")
            sizes = measure.torch_size(model, staging / "model.pt", arch.input_shape)
        metrics = {
            **measure.scores(measure.torch_predictor(model), splits.val.x, splits.val.y,
                             splits.test.x, splits.test.y),
            **sizes,
            "onnx_size_bytes": float(onnx_bytes),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "train_seconds": sum(epoch.seconds for epoch in result.history),
        }
        io.write_json(catalog.metrics_file("baseline"), metrics)
        _write_history(result.history, catalog.history_file("baseline"))
        _plots(result.history, model, splits, spec, catalog)

        tracking.log_metrics(metrics)
        tracking.set_tags({"dataset": spec.name, "dvc.raw_md5": meta["raw_md5"], "search": searched,
                           "device": result.device, "precision": result.precision})
        example = splits.test.x[:2]
        tracking.log_onnx_model(catalog.baseline_dir / "model.onnx", example,
                                measure.torch_predictor(model)(example))
        tracking.log_artifact(catalog.baseline_dir / "model.pt", "weights")
        tracking.log_artifact(catalog.baseline_dir / "architecture.json", "weights")
        tracking.log_artifact(catalog.baseline_plots_dir, "plots")
        tracking.log_artifact(catalog.history_file("baseline"), "plots")
        log.info("baseline %s: validation accuracy %.4f (test %.4f), %d params", spec.name,
                 metrics["val_accuracy"], metrics["accuracy"], metrics["params_count"])
        return {"stage": "baseline", "run_id": run.info.run_id, "dataset": spec.name,
                "architecture": arch.to_dict(), "metrics": metrics}
