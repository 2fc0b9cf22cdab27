"""Stage `distill`: smaller students trained from the teacher, and the same students trained alone.

Reads models/baseline/ (the teacher, until a search stage exists), data/processed/ (with the
unlabeled inputs, when prepare wrote some: only the distilled students see them) and params.yaml
`distill`, `baseline.train` / `baseline.augment` (the training loop and augmentation the students
share with the teacher). For each student (`student`, then `extra_students` by name)
writes models/distilled/{<name>-kd,<name>-scratch}/ (model.pt, architecture.json, model.onnx), with
one candidates.json, reports/distill/candidates.json (each one's accuracy and size),
metrics/distill.json (how many candidates, the best one's accuracies on validation and test) and
reports/distill/metrics.json, whose `<name>.kd_gain_pp` is what distillation adds over training the
same student without a teacher. With `distill.seeds` > 1 the distilled student
is trained again from each further seed, as <name>-kd-seed<k>/: ensemble members. With unlabeled
inputs, <name>-kd-labeled/ is the student distilled on the labeled rows alone, so that gain splits
into `<name>.soft_label_gain_pp` (the teacher's answers on the same rows the student alone had) and
`<name>.pool_gain_pp` (what the unlabeled inputs add on top).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from shrinkflow import data, train
from shrinkflow.config import DistillConfig, ModelConfig, Params
from shrinkflow.distill import DistillError, build_student, distill, student_train_config
from tasks.services import io, tracking
from tasks.services.candidates import (
    ONNX_TEACHER,
    Candidate,
    headline,
    load_teacher,
    report_candidate,
    save_torch,
    torch_teacher,
    write_manifest,
)
from tasks.services.catalog import Catalog
from tasks.services.io import load_processed, load_unlabeled

log = logging.getLogger("shrinkflow.distill")


class Variant(NamedTuple):
    """One model to train: a student, with or without the teacher, from one seed."""

    candidate: str
    student: str
    model: ModelConfig
    method: str  # "kd" | "kd-labeled" (the teacher's answers on the labeled rows only) | "scratch"
    seed_offset: int  # added to baseline.train.seed


def _variants(cfg: DistillConfig, pool: bool = False) -> list[Variant]:
    """Every model to train: per student, its `seeds` (or distill.seeds) distilled ones, then the
    one trained alone. With an unlabeled `pool`, the student is also distilled on the labeled rows
    alone: the same data as the one trained alone, so the two gains can be told apart."""
    if not cfg.enabled:
        return []
    variants = []
    for name, model in cfg.students().items():
        variants += [Variant(f"{name}-kd" + (f"-seed{k}" if k else ""), name, model, "kd", k)
                     for k in range(model.seeds or cfg.seeds)]
        if cfg.train_without_teacher:
            if pool:
                variants.append(Variant(f"{name}-kd-labeled", name, model, "kd-labeled", 0))
            variants.append(Variant(f"{name}-scratch", name, model, "scratch", 0))
    return variants


def _gain(better: dict[str, float], worse: dict[str, float], split: str) -> float:
    return 100 * (better[f"{split}accuracy"] - worse[f"{split}accuracy"])


def _kd_gains(cfg: DistillConfig, measured: dict[str, dict[str, float]]) -> dict[str, float]:
    """'<student>.kd_gain_pp': test accuracy with the teacher minus without, in percentage points
    (reported); '<student>.val_kd_gain_pp' the same on validation. With an unlabeled pool, that
    gain splits in two: '<student>.soft_label_gain_pp', the teacher's answers on the labeled rows
    alone over the student alone, and '<student>.pool_gain_pp', what the pool adds on top (both
    test, with `val_` twins)."""
    gains = {}
    for name in cfg.students():
        kd, scratch = measured.get(f"{name}-kd"), measured.get(f"{name}-scratch")
        if kd is None or scratch is None:
            continue
        labeled = measured.get(f"{name}-kd-labeled")
        for split in ("val_", ""):
            gains[f"{name}.{split}kd_gain_pp"] = _gain(kd, scratch, split)
            if labeled is not None:
                gains[f"{name}.{split}soft_label_gain_pp"] = _gain(labeled, scratch, split)
                gains[f"{name}.{split}pool_gain_pp"] = _gain(kd, labeled, split)
        log.info("distillation adds %.2f pp to %s over the same student alone (test; "
                 "%.2f pp on validation)", gains[f"{name}.kd_gain_pp"], name,
                 gains[f"{name}.val_kd_gain_pp"])
    return gains


def run_distill(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Train every configured student with and without the teacher; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.distill
    train_cfg = student_train_config(cfg, params.baseline.train)
    with tracking.stage_run("distill", params, catalog.root, parent_run_id, cfg) as run:
        splits, spec, _ = load_processed(catalog)
        unlabeled_x = load_unlabeled(catalog) if cfg.use_unlabeled else None
        teacher = load_teacher(catalog)
        if cfg.feature_pairs and not torch_teacher(catalog):
            raise DistillError(f"distill.feature_pairs: {ONNX_TEACHER} (its layers' outputs); "
                               "set distill.feature_pairs: []")

        candidates, measured = [], {}
        folder = catalog.models_dir("distill")
        with io.atomic_dir(folder) as staging:
            for name, student_name, model_cfg, method, offset in _variants(
                    cfg, unlabeled_x is not None):
                # a student starts from the same weights with and without the teacher (offset 0)
                seed = params.baseline.train.seed + offset
                train.seed_everything(seed)
                arch, student = build_student(model_cfg, spec.kind, spec.input_shape,
                                              len(spec.classes))
                augment = data.Augmenter(params.baseline.augment, spec.kind)
                log.info("training %s %s (seed %d)", name, arch.describe(), seed)
                kd = method != "scratch"
                with tracking.candidate_run(name, {"method": method, "student": student_name,
                                                   "seed": seed},
                                            {"method": method, "precision": "fp32",
                                             "student": student_name,
                                             "student_width": model_cfg.width,
                                             "student_depth": model_cfg.depth,
                                             "params_count": sum(p.numel() for p in
                                                                 student.parameters()),
                                             "temperature": cfg.temperature if kd else None,
                                             "alpha": cfg.alpha if kd else None, "seed": seed}):
                    if kd:
                        result = distill(
                            teacher, student, splits.train, splits.val, cfg,
                            params.baseline.train.model_copy(update={"seed": seed}), augment,
                            on_epoch_end=tracking.log_epoch, progress=True,
                            unlabeled_x=unlabeled_x if method == "kd" else None)
                    else:
                        result = train.fit(student, splits.train, splits.val, train_cfg, augment,
                                           on_epoch_end=tracking.log_epoch, description=name)
                    tracking.log_budget(result)
                    save_torch(student, arch, staging / name)
                    measured[name] = report_candidate(staging / name / "model.onnx", splits)
                candidates.append(Candidate(name, catalog.relative(folder / name / "model.onnx"),
                                            "baseline", method, torch=catalog.relative(folder / name)))
            write_manifest(staging, candidates)

        counts = {"candidates": len(candidates), **_kd_gains(cfg, measured),
                  "unlabeled_rows": 0 if unlabeled_x is None else len(unlabeled_x)}
        io.write_json(catalog.candidates_report("distill"), {"candidates": measured})
        io.write_metrics(catalog, "distill",
                         headline(measured), counts)
        # the stage run also lists each candidate's accuracies and parameters (its own run has
        # all its figures)
        metrics = {**counts, **{f"{name}.{key}": row[key] for name, row in measured.items()
                                for key in ("val_accuracy", "accuracy", "params_count")}}
        tracking.log_metrics(metrics)
        return {"stage": "distill", "run_id": run.info.run_id, "dataset": spec.name,
                "metrics": metrics}
