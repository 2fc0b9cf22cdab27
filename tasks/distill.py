"""Stage `distill`: a smaller student trained from the teacher, and the same student trained alone.

Reads models/baseline/ (the teacher, until a search stage exists), data/processed/ and params.yaml
`distill`, `baseline.train` / `baseline.augment` (the training loop and augmentation the student
shares with the teacher) and `measure`. Writes models/distilled/{student-kd,student-scratch}/
(model.pt, architecture.json, model.onnx) with their candidates.json, and metrics/distill.json,
whose `kd_gain_pp` is what distillation adds over training the same student without a teacher.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shrinkflow import data, train
from shrinkflow.config import Params
from shrinkflow.distill import build_student, distill, student_train_config
from tasks import io, tracking
from tasks.baseline import load_processed
from tasks.candidates import Candidate, load_torch, measure_onnx, save_torch, write_manifest
from tasks.catalog import Catalog

log = logging.getLogger("shrinkflow.distill")
STAGE_DIR = "distilled"


def run_distill(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Train the configured student with and without the teacher; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.distill
    train_cfg = student_train_config(cfg, params.baseline.train)
    with tracking.stage_run("distill", params, catalog.root, parent_run_id, cfg) as run:
        splits, spec, _ = load_processed(catalog)
        _, teacher = load_torch(catalog.baseline_dir, produced_by="baseline")
        variants = [("student-kd", True)] if cfg.enabled else []
        if cfg.enabled and cfg.train_without_teacher:
            variants.append(("student-scratch", False))

        candidates, metrics = [], {}
        with io.atomic_dir(catalog.stage_models(STAGE_DIR)) as staging:
            for name, with_teacher in variants:
                train.seed_everything(train_cfg.seed)  # both students start from the same weights
                arch, student = build_student(cfg, spec.kind, spec.input_shape, len(spec.classes))
                augment = data.Augmenter(params.baseline.augment, spec.kind)
                log.info("training %s %s %s", name, arch.family, arch.widths)
                with tracking.candidate_run(name, {"method": "kd" if with_teacher else "scratch"}):
                    if with_teacher:
                        distill(teacher, student, splits.train, splits.val, cfg,
                                params.baseline.train, augment, on_epoch_end=tracking.log_epoch,
                                progress=True)
                    else:
                        train.fit(student, splits.train, splits.val, train_cfg, augment,
                                  on_epoch_end=tracking.log_epoch, description=name)
                    save_torch(student, arch, staging / name)
                    measured = measure_onnx(staging / name / "model.onnx", splits, params.measure)
                    tracking.log_metrics(measured.metrics())
                metrics[f"{name}.accuracy"] = measured.accuracy
                metrics[f"{name}.params_count"] = measured.params_count
                candidates.append(Candidate(name, f"models/{STAGE_DIR}/{name}/model.onnx",
                                            "baseline", "kd" if with_teacher else "scratch",
                                            torch=f"models/{STAGE_DIR}/{name}"))
            write_manifest(staging, candidates)

        if {"student-kd.accuracy", "student-scratch.accuracy"} <= metrics.keys():
            metrics["kd_gain_pp"] = 100 * (metrics["student-kd.accuracy"]
                                           - metrics["student-scratch.accuracy"])
            log.info("distillation adds %.2f pp over the same student alone", metrics["kd_gain_pp"])
        io.write_json(catalog.metrics_file("distill"), metrics)
        tracking.log_metrics(metrics)
        return {"stage": "distill", "run_id": run.info.run_id, "dataset": spec.name,
                "metrics": metrics}
