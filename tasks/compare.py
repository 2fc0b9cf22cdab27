"""Stage `compare`: every candidate measured side by side, the Pareto front, the deployable pick.

Reads the candidates.json manifests of models/{baseline,pruned,distilled,quantized}/ (those that
exist), data/processed/ and params.yaml `compare` and `measure`. All timings are taken in this one
process with the same settings, so the ratios compare like with like. Writes metrics/compare.json
(one row per candidate with the fields of the benchmark report), reports/compare/candidates.md and
reports/compare/pareto.png, and logs them to MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shrinkflow import gate, plots
from shrinkflow.config import Params
from shrinkflow.measure import measure_all, relative
from tasks import io, tracking
from tasks.baseline import load_processed
from tasks.candidates import MANIFEST, Candidate, candidate_row, load_torch, onnx_subject, \
    read_manifests, torch_subject
from tasks.catalog import Catalog

log = logging.getLogger("shrinkflow.compare")
CANDIDATE_STAGES = ("baseline", "pruned", "distilled", "quantized")
TABLE_COLUMNS = ("candidate", "accuracy", "accuracy_drop_pp", "params_count", "size_bytes",
                 "size_ratio", "latency_ms_p50_b1", "speedup_b1_vs_torch",
                 "speedup_b1_vs_ort_fp32", "throughput_sps_b256",
                 "throughput_ratio_b256_vs_ort_fp32")


def _candidates(catalog: Catalog) -> list[Candidate]:
    found = read_manifests(catalog, CANDIDATE_STAGES)
    if not found:
        raise FileNotFoundError(f"no {MANIFEST} under {catalog.root / 'models'}: "
                                "run the 'baseline' stage first")
    return found


def markdown_table(rows: list[dict[str, Any]], chosen: str | None, max_drop_pp: float) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float) and abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        name = f"**{row['candidate']}** (deployed)" if row["candidate"] == chosen else row["candidate"]
        lines.append("| " + " | ".join([name, *(cell(row[key]) for key in TABLE_COLUMNS[1:])])
                     + " |")
    verdict = (f"Deployed: `{chosen}`, the smallest candidate on the Pareto front within "
               f"{max_drop_pp} pp of the teacher." if chosen else
               f"No candidate is within {max_drop_pp} pp of the teacher: nothing is deployable.")
    return "\n".join(lines) + "\n\n" + verdict + "\n"


def run_compare(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Measure every candidate, pick the deployable one; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.compare
    with tracking.stage_run("compare", params, catalog.root, parent_run_id, cfg) as run:
        splits, spec, _ = load_processed(catalog)
        log.info("measuring the eager-torch baseline and every candidate (threads=%d)",
                 params.measure.threads)
        _, baseline_model = load_torch(catalog.baseline_dir, produced_by="baseline")
        torch_candidate = Candidate("baseline-fp32-torch", "models/baseline/model.pt", "baseline",
                                    "fp32-eager", torch="models/baseline")
        candidates = _candidates(catalog)
        subjects = {torch_candidate.name: torch_subject(baseline_model,
                                                        catalog.baseline_dir / "model.pt"),
                    **{c.name: onnx_subject(catalog.path(c.onnx), params.measure)
                       for c in candidates}}
        measured = measure_all(subjects, splits.test.x, splits.test.y, params.measure)
        torch_baseline = measured[torch_candidate.name]
        onnx_baseline = measured[candidates[0].name]  # the baseline's manifest comes first
        teacher_accuracy = torch_baseline.accuracy  # the teacher is the baseline until search
        rows = [candidate_row(c, measured[c.name],
                              relative(measured[c.name], torch_baseline, onnx_baseline,
                                       teacher_accuracy))
                for c in (torch_candidate, *candidates)]
        # only ONNX files are served; the eager-torch row is there as the reference
        chosen = gate.choose([row for row in rows if row["file"].endswith(".onnx")],
                             cfg.max_accuracy_drop_pp)
        chosen_name = chosen["candidate"] if chosen else None
        front = [row["candidate"] for row in gate.pareto_front(rows)]
        for row in rows:
            row["deployed"] = row["candidate"] == chosen_name
            row["pareto"] = row["candidate"] in front

        io.write_json(catalog.metrics_file("compare"),
                      # keyed by name so `dvc metrics show/diff` lists candidates.<name>.<metric>
                      {"task": spec.name, "deployed": chosen_name,
                       "candidates": {row["candidate"]: row for row in rows}})
        with io.atomic_dir(catalog.compare_dir) as staging:
            table = markdown_table(rows, chosen_name, cfg.max_accuracy_drop_pp)
            io.write_text(staging / "candidates.md", f"# Candidates on {spec.name}\n\n{table}")
            plots.pareto(rows, front, chosen_name, staging / "pareto.png",
                         f"{spec.name}: accuracy, size and latency of every candidate")

        tracking.log_artifact(catalog.compare_dir, "compare")
        tracking.log_artifact(catalog.metrics_file("compare"))
        if chosen:
            tracking.log_metrics({key: chosen[key] for key in (
                "accuracy", "size_bytes", "size_ratio", "latency_ms_p50_b1",
                "speedup_b1_vs_torch", "speedup_b1_vs_ort_fp32", "accuracy_drop_pp")})
        tracking.set_tags({"deployed_candidate": chosen_name or "none", "dataset": spec.name})
        log.info("deployable: %s", chosen_name or "none within tolerance")
        summary_metrics = {key: float(chosen[key]) for key in ("accuracy", "size_ratio",
                           "speedup_b1_vs_torch", "speedup_b1_vs_ort_fp32")} if chosen else {}
        return {"stage": "compare", "run_id": run.info.run_id, "dataset": spec.name,
                "deployed": chosen_name, "metrics": summary_metrics, "table": table}
