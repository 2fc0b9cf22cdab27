"""Stage `ensemble`: candidates combined into one ONNX graph each, measured like any other.

Reads the candidates.json manifests of the stages declared before it in `tasks.services.dag` that make
candidates (models/{baseline,pruned,distilled,quantized}/), data/processed/ and params.yaml
`ensemble`.

Members: the names in `ensemble.members` when it is not empty; else, by `ensemble.selection`,
greedy forward selection with replacement on validation log-loss (`greedy`, the default:
`shrinkflow.ensemble.select_greedy`, at most `greedy_rounds` additions) or the `top_k` candidates
by validation accuracy (`top_k`: `shrinkflow.ensemble.pick_members`); both take at most one per
lineage (a model and its quantized variants make the same mistakes), all together within
`max_size_fraction` of the baseline's ONNX file. Each method in `ensemble.methods` gives one
candidate, `ensemble-<method>`: the members' graphs and the combining head in one ONNX file
(`shrinkflow.ensemble.compose`). `average` and `vote` treat the distinct members alike. The
weights of `weighted` come from the validation split: greedy's are the times each member was
added over the additions (the ensemble greedy scored); for `top_k` or named members they are
fitted by log-loss (as many free numbers as members less one). The validation split also judges
the ensembles: the test split is only reported.

Writes models/ensemble/ensemble-<method>.onnx with candidates.json (empty when no ensemble can be
made), reports/ensemble/candidates.json (`selection`: members | greedy | top_k, `members`,
`weights`, each ensemble's accuracies and size, and the `reason`: how they were chosen or why
there is none), metrics/ensemble.json (how many ensembles, the best one's accuracies on
validation and test) and reports/ensemble/metrics.json (how many ensembles, of how many members).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from shrinkflow import ensemble, measure
from shrinkflow.config import EnsembleConfig, Params
from shrinkflow.export import onnx_predictor
from tasks.services import dag, io, tracking
from tasks.services.candidates import (
    Candidate,
    headline,
    read_manifest,
    read_manifests,
    report_candidate,
    write_manifest,
)
from tasks.services.catalog import Catalog
from tasks.services.io import load_processed

log = logging.getLogger("shrinkflow.ensemble")
VARIANT_STAGES = ("quantize",)  # their candidates are variants of their parent: same lineage


def _member_rows(catalog: Catalog, val_x: np.ndarray, val_y: np.ndarray
                 ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, Candidate]]:
    """Every candidate's validation accuracy, size and lineage, and its validation
    probabilities (what the weights are fitted on)."""
    rows, probabilities, by_name = [], {}, {}
    for stage in dag.candidate_stages("ensemble"):
        for candidate in read_manifests(catalog, (stage,)):
            path = catalog.path(candidate.onnx)
            logits = measure.predict_batched(onnx_predictor(path), val_x)
            probabilities[candidate.name] = ensemble.softmax(logits)
            by_name[candidate.name] = candidate
            rows.append({"candidate": candidate.name,
                         "lineage": candidate.parent if stage in VARIANT_STAGES else candidate.name,
                         "val_accuracy": measure.classification_metrics(
                             val_y, logits.argmax(1))["accuracy"],
                         "size_bytes": measure.file_size(path)})
    return rows, probabilities, by_name


def _budget(catalog: Catalog, rows: list[dict[str, Any]], fraction: float) -> int:
    baseline = read_manifest(catalog.baseline_dir, produced_by="baseline")[0]
    return int(fraction * next(row["size_bytes"] for row in rows if row["candidate"] == baseline.name))


def _choose(cfg: EnsembleConfig, rows: list[dict[str, Any]], probabilities: dict[str, np.ndarray],
            val_y: np.ndarray, max_total_bytes: int) -> tuple[ensemble.Pick, np.ndarray]:
    """The members (`ensemble.members`, else as `ensemble.selection` says) and the weights of
    `weighted`: greedy's counts, or fitted on validation for named or top_k members."""
    if cfg.selection == "greedy" and not cfg.members:
        chosen = ensemble.select_greedy(rows, probabilities, val_y, max_total_bytes,
                                        cfg.greedy_rounds)
        return chosen, np.asarray(chosen.weights)
    pick = ensemble.pick_members(rows, cfg.top_k, max_total_bytes, cfg.members)
    if not pick.names:
        return pick, np.zeros(0)
    return pick, ensemble.fit_weights([probabilities[name] for name in pick.names], val_y)


def run_ensemble(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Build one ensemble candidate per configured method; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.ensemble
    with tracking.stage_run("ensemble", params, catalog.root, parent_run_id, cfg) as run:
        splits, spec, _ = load_processed(catalog)
        report: dict[str, Any] = {"selection": "members" if cfg.members else cfg.selection,
                                  "members": [], "weights": {}, "candidates": {}}
        with io.atomic_dir(catalog.models_dir("ensemble")) as staging:
            candidates: list[Candidate] = []
            if not cfg.enabled:
                report["reason"] = "ensemble.enabled is false"
            else:
                rows, probabilities, by_name = _member_rows(catalog, splits.val.x, splits.val.y)
                pick, weights = _choose(cfg, rows, probabilities, splits.val.y,
                                        _budget(catalog, rows, cfg.max_size_fraction))
                report |= {"members": pick.names, "reason": pick.reason}
                log.info("ensemble members: %s (%s)", ", ".join(pick.names) or "none", pick.reason)
                if pick.names:
                    members = [onnx.load(str(catalog.path(by_name[name].onnx))) for name in pick.names]
                    report["weights"] = dict(zip(pick.names, weights.tolist(), strict=True))
                    for method in cfg.methods:
                        candidates.append(_build(method, members, weights, pick.names, staging,
                                                 catalog, splits, report))
            write_manifest(staging, candidates)
        io.write_json(catalog.candidates_report("ensemble"), report)
        io.write_metrics(catalog, "ensemble", headline(report["candidates"]),
                         {"candidates": len(report["candidates"]),
                          "member_count": len(report["members"])})
        flat = {f"{name}.{key}": value for name, row in report["candidates"].items()
                for key, value in row.items()}
        tracking.log_metrics(flat)
        tracking.set_tags({"members": ", ".join(report["members"]) or "none",
                           "reason": report["reason"], "selection": report["selection"]})
        return {"stage": "ensemble", "run_id": run.info.run_id, "dataset": spec.name,
                "metrics": flat, "members": report["members"],
                "weights": report["weights"]}


def _build(method: str, members: list[onnx.ModelProto], weights: np.ndarray, names: list[str],
           staging: Path, catalog: Catalog, splits: Any, report: dict[str, Any]) -> Candidate:
    """Compose, save and report one ensemble candidate."""
    name = f"ensemble-{method}"
    path = staging / f"{name}.onnx"
    log.info("composing %s of %s", name, ", ".join(names))
    onnx.save(ensemble.compose(members, method, weights if method == "weighted" else None), str(path))
    with tracking.candidate_run(name, {"method": method, "parent": "+".join(names)},
                                {"method": method, "members": "+".join(names),
                                 "member_count": len(names)}):
        tracking.set_tags({f"weight.{n}": f"{w:.4f}" for n, w in zip(names, weights, strict=True)}
                          if method == "weighted" else {})
        measured = report_candidate(path, splits)
    report["candidates"][name] = {key: measured[key] for key in
                                  ("val_accuracy", "accuracy", "size_bytes", "make_seconds")}
    return Candidate(name, catalog.relative(catalog.models_dir("ensemble") / path.name),
                     "+".join(names), method)
