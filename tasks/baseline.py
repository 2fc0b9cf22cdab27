"""Stage `baseline`: train the reference model and measure it in eager torch and ONNX Runtime.

Reads data/processed/ (from `prepare`) and params.yaml `baseline` (model, train, augment) and
`measure`. Writes models/baseline/{model.pt (state_dict), architecture.json, model.onnx},
metrics/baseline.json, metrics/baseline_history.csv and reports/baseline/*.png; logs all of it to
an MLflow run, the ONNX file as an MLflow model with signature and input example.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shrinkflow import data, measure, models, plots, train
from shrinkflow.config import Params
from tasks import io, tracking
from tasks.candidates import Candidate, onnx_subject, save_torch, torch_subject, write_manifest
from tasks.catalog import Catalog

log = logging.getLogger("shrinkflow.baseline")


def load_processed(catalog: Catalog) -> tuple[data.Splits, data.DatasetSpec, dict[str, Any]]:
    """The splits written by `prepare`, with the data set's spec and metadata."""
    meta = io.read_json(catalog.dataset_file(), produced_by="prepare")
    splits = []
    for name in ("train", "val", "test"):
        path = catalog.split_file(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run the 'prepare' stage first")
        with np.load(path, allow_pickle=False) as arrays:
            splits.append(data.Split(arrays["x"], arrays["y"]))
    return data.Splits(*splits), data.DatasetSpec.from_dict(meta["spec"]), meta


def load_unlabeled(catalog: Catalog) -> np.ndarray | None:
    """The normalized unlabeled inputs written by `prepare`; None when it wrote none."""
    path = catalog.unlabeled_file()
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        return arrays["x"]


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


def run_baseline(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Train, save, export and measure the baseline; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.baseline
    with tracking.stage_run("baseline", params, catalog.root, parent_run_id, cfg) as run:
        log.info("loading processed data from %s", catalog.processed_dir)
        splits, spec, meta = load_processed(catalog)
        tracking.log_dataset(splits.train.x, splits.train.y, f"{spec.name}-train",
                             catalog.path(meta["raw_file"]), meta["raw_md5"], "training")
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

        log.info("saving, exporting to ONNX and measuring (threads=%d)", params.measure.threads)
        with io.atomic_dir(catalog.baseline_dir) as staging:
            save_torch(model, arch, staging)
            folder = str(catalog.baseline_dir.relative_to(catalog.root))
            write_manifest(staging, [Candidate("baseline-fp32", f"{folder}/model.onnx",
                                               "baseline", "fp32", torch=folder)])
            measured = measure.measure_all(
                {"eager": torch_subject(model, staging / "model.pt"),
                 "onnx": onnx_subject(staging / "model.onnx", params.measure)},
                splits.test.x, splits.test.y, params.measure)
            eager, onnx = measured["eager"], measured["onnx"]
        metrics = {
            **eager.metrics(),
            **{f"onnx_{key}": value for key, value in onnx.metrics().items()},
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "train_seconds": sum(epoch.seconds for epoch in result.history),
        }
        io.write_json(catalog.metrics_file("baseline"), metrics)
        _write_history(result.history, catalog.history_file("baseline"))
        _plots(result.history, model, splits, spec, catalog)

        tracking.log_metrics(metrics)
        tracking.set_tags({"dataset": spec.name, "dvc.raw_md5": meta["raw_md5"],
                           "device": result.device, "precision": result.precision})
        example = splits.test.x[:2]
        tracking.log_onnx_model(catalog.baseline_dir / "model.onnx", example,
                                measure.torch_predictor(model)(example))
        tracking.log_artifact(catalog.baseline_dir / "model.pt", "weights")
        tracking.log_artifact(catalog.baseline_dir / "architecture.json", "weights")
        tracking.log_artifact(catalog.baseline_plots_dir, "plots")
        tracking.log_artifact(catalog.history_file("baseline"), "plots")
        log.info("baseline %s: test accuracy %.4f, %d params, ONNX p50 %.3f ms",
                 spec.name, eager.accuracy, eager.params_count, onnx.latency_ms_p50_b1)
        return {"stage": "baseline", "run_id": run.info.run_id, "dataset": spec.name,
                "architecture": arch.to_dict(), "metrics": metrics}
