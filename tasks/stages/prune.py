"""Stage `prune`: structured and unstructured pruning of the teacher, iterative with fine-tuning.

Reads models/baseline/ (the teacher), data/processed/ and params.yaml `prune`, `baseline.train` /
`baseline.augment` (fine-tuning reuses the training loop with `prune.finetune_lr` and
`prune.finetune_epochs`; with `prune.finetune_with_teacher` it also learns from the unpruned
model's soft labels at `distill.temperature` / `distill.alpha`). Writes one folder per candidate
under models/pruned/ with candidates.json: `structured-<pct>` (channels removed: a smaller dense
network) and `unstructured-<pct>` (zeroed weights stored sparse). With `prune.max_accuracy_drop_pp` set, the
highest structured ratio within that drop on the validation split is kept as `structured-auto`.
reports/prune/candidates.json holds each candidate's figures and every ratio the search tried;
metrics/prune.json the headline: how many candidates, the best one's accuracies (on validation);
reports/prune/metrics.json how many candidates and the ratio the search kept.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from shrinkflow import data, progress, prune
from shrinkflow.config import Params, PruneConfig
from shrinkflow.distill import distillation_loss
from tasks.services import io, tracking
from tasks.services.candidates import (
    ONNX_TEACHER,
    Candidate,
    headline,
    load_torch,
    report_candidate,
    save_torch,
    torch_teacher,
    write_manifest,
)
from tasks.services.catalog import Catalog
from tasks.services.io import load_processed

log = logging.getLogger("shrinkflow.prune")


def _percent(value: float) -> str:
    return f"{round(100 * value)}"


def _made_by(cfg: PruneConfig, method: str, ratio: Any) -> dict[str, Any]:
    """What made a pruned candidate, as its run's params."""
    structured = method == "structured"
    scope = cfg.structured.scope if structured else cfg.unstructured.scope
    return {"method": method, "ratio": ratio, "precision": "fp32", "scope": scope,
            "importance": cfg.structured.importance if structured else "magnitude",
            "steps": cfg.steps, "finetune_epochs": cfg.finetune_epochs, "penalty": cfg.penalty}


def _skipped(catalog: Catalog, run: Any, dataset: str) -> dict[str, Any]:
    """No candidates, and why: the teacher has no torch graph to prune."""
    log.info("prune: skipped: %s", ONNX_TEACHER)
    with io.atomic_dir(catalog.models_dir("prune")) as staging:
        write_manifest(staging, [])
    io.write_json(catalog.candidates_report("prune"), {"candidates": {}, "search": {},
                                                        "skipped": ONNX_TEACHER})
    io.write_metrics(catalog, "prune", {}, {"candidates": 0})
    tracking.set_tags({"skipped": ONNX_TEACHER})
    return {"stage": "prune", "run_id": run.info.run_id, "dataset": dataset, "metrics": {},
            "skipped": ONNX_TEACHER}


def run_prune(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Make every configured pruning candidate; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.prune
    with tracking.stage_run("prune", params, catalog.root, parent_run_id, cfg) as run:
        splits, spec, _ = load_processed(catalog)
        if not torch_teacher(catalog):
            return _skipped(catalog, run, spec.name)
        arch, teacher = load_torch(catalog.baseline_dir, produced_by="baseline")
        example = torch.zeros(1, *arch.input_shape)
        finetune_cfg = params.baseline.train.model_copy(update={"lr": cfg.finetune_lr})
        # a copy teaches: the loss moves its teacher to the training device, and the original
        # must stay on the CPU for pruning and evaluation
        teacher_loss = (distillation_loss(copy.deepcopy(teacher), params.distill.temperature,
                                          params.distill.alpha, finetune_cfg.label_smoothing)
                        if cfg.finetune_with_teacher else None)
        finetune = prune.make_finetune(splits.train, splits.val, finetune_cfg, cfg,
                                       data.Augmenter(params.baseline.augment, spec.kind),
                                       loss=teacher_loss)

        def structured_at(ratio: float) -> torch.nn.Module:
            return prune.iterative(teacher, cfg, "structured", ratio, example_input=example,
                                   finetune=finetune)[0]

        jobs: list[tuple[str, str, Any, Any]] = []  # (name, method, ratio, make-model)
        if cfg.structured.enabled:
            jobs += [(f"structured-{_percent(r)}", "structured", r, lambda r=r: structured_at(r))
                     for r in cfg.structured.ratios]
        if cfg.unstructured.enabled:
            ratios = cfg.unstructured.ratios if cfg.unstructured.method == "ratio" else (None,)
            for ratio in ratios:
                label = _percent(ratio) if ratio is not None else cfg.unstructured.method
                jobs.append((f"unstructured-{label}", "unstructured", ratio if ratio is not None
                             else cfg.unstructured.method,
                             lambda r=ratio: prune.iterative(teacher, cfg, "unstructured", r,
                                                             finetune=finetune)[0]))

        search: dict[str, Any] = {}
        if cfg.max_accuracy_drop_pp is not None and cfg.structured.enabled:
            log.info("searching the highest structured ratio within %.2f pp on validation",
                     cfg.max_accuracy_drop_pp)
            found = prune.search_ratio(teacher, structured_at, splits.val,
                                       cfg.max_accuracy_drop_pp, cfg.search_ratios)
            search = {"ratio": found.ratio, "tries": found.records()}
            if found.model is not None:
                jobs.append(("structured-auto", "structured", found.ratio, lambda: found.model))

        candidates, metrics = [], {}
        folder = catalog.models_dir("prune")
        with io.atomic_dir(folder) as staging:
            for number, (name, method, ratio, make) in enumerate(jobs, 1):
                log.info("making %s (%d of %d)", name, number, len(jobs))
                with progress.ticking(log, f"making {name}"), tracking.candidate_run(
                        name, {"method": method}, _made_by(cfg, method, ratio)):
                    model = make()
                    sparse = method == "unstructured"
                    pruned_arch = arch if sparse else prune.architecture_of(model, arch)
                    save_torch(model, pruned_arch, staging / name, sparse=sparse)
                    measured = report_candidate(staging / name / "model.onnx", splits,
                                                sparsity=prune.weight_sparsity(model))
                metrics[name] = {**measured, "widths": list(pruned_arch.widths)}
                candidates.append(Candidate(name, catalog.relative(folder / name / "model.onnx"),
                                            "baseline", method, torch=catalog.relative(folder / name)))
            write_manifest(staging, candidates)

        io.write_json(catalog.candidates_report("prune"), {"candidates": metrics, "search": search})
        io.write_metrics(catalog, "prune",
                         headline(metrics),
                         {"candidates": len(candidates),
                          **({"structured_auto_ratio": search["ratio"]} if search else {})})
        flat = {f"{name}.{key}": value for name, row in metrics.items()
                for key, value in row.items()
                if key in ("val_accuracy", "accuracy", "size_bytes", "sparsity")}
        tracking.log_metrics(flat)
        return {"stage": "prune", "run_id": run.info.run_id, "dataset": spec.name,
                "metrics": flat}
