"""Stage `deploy`: register the candidate `compare` chose and promote it through the gate.

Reads reports/compare/candidates.json (the choice, made on validation, and its measurements), the
chosen candidate's ONNX file, data/processed/ and params.yaml `deploy`.

1. The deployable graph (`shrinkflow.deployable`): the candidate behind normalization of raw
   feature rows and in front of the label lookup, written to models/deploy/model.onnx.
2. Registered in the MLflow Model Registry as a new version of one model per data set, with its
   lineage as version tags (candidate, validation and test accuracy, size and latency as compare
   measured them, git commit, DVC md5 of the data, pipeline run, params hash); alias `challenger`.
3. With `deploy.auto_promote`, the gate (`tasks.services.registry.checks`) decides whether it becomes
   `champion`. A refused challenger stays registered as `challenger`; the champion is untouched.

When compare found nothing deployable, nothing is registered and models/deploy/deploy.json says
why. Writes models/deploy/ (model.onnx; deploy.json: what happened, each check of the gate, the
champion's version) and metrics/deploy.json (its headline as numbers: version, promoted 1 or 0).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import onnx

from shrinkflow import gate
from shrinkflow.config import Params
from shrinkflow.deployable import deployable
from shrinkflow.encode import TableEncoder
from tasks.services import io, registry, tracking
from tasks.services.catalog import Catalog, file_md5

log = logging.getLogger("shrinkflow.deploy")
MODEL_FILE = "model.onnx"
REPORT_FILE = "deploy.json"  # in models/deploy/: what happened, the gate's checks


def _deployable_file(catalog: Catalog, meta: dict[str, Any], candidate_file: str,
                     folder: Path) -> Path:
    """The candidate behind raw-row encoding or image resizing, and normalization (`meta`:
    prepare's dataset.json)."""
    spec, normalizer = meta["spec"], meta["normalizer"]
    encoder = TableEncoder.from_dict(meta["encoder"]) if meta.get("encoder") else None
    model = deployable(onnx.load(str(catalog.path(candidate_file))), spec["input_shape"],
                       normalizer["mean"], normalizer["std"], spec["feature_columns"],
                       spec["labels"], encoder, images=spec.get("raw") == "images")
    onnx.save(model, str(folder / MODEL_FILE))
    return folder / MODEL_FILE


def _lineage(params: Params, catalog: Catalog, row: dict[str, Any], parent_run_id: str | None,
             meta: dict[str, Any], model_md5: str) -> dict[str, Any]:
    params_hash = hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:16]
    return {"candidate": row["candidate"], "val_accuracy": row["val_accuracy"],
            "test_accuracy": row["accuracy"], "size_bytes": row["size_bytes"],
            "latency_ms_p50_b1": row["latency_ms_p50_b1"],
            "git_commit": tracking.git_commit(catalog.root) or "none",
            "data_md5": meta["raw_md5"], "pipeline_run_id": parent_run_id or "none",
            "params_hash": params_hash, "dataset": meta["spec"]["name"], "model_md5": model_md5}


def run_deploy(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Register compare's choice and gate its promotion; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.deploy
    with tracking.stage_run("deploy", params, catalog.root, parent_run_id, cfg) as run:
        compared = io.read_candidates(catalog, "compare")
        chosen, name = compared["deployed"], registry.model_name(params, catalog.root)
        report: dict[str, Any] = {"registered_model": name, "candidate": chosen}
        with io.atomic_dir(catalog.models_dir("deploy")) as staging:
            if chosen is None:
                report |= {"registered": False, "reason": "compare found no candidate within "
                           f"{params.compare.max_accuracy_drop_pp} pp of the teacher on validation"}
                log.warning("nothing registered: %s", report["reason"])
            else:
                row = compared["candidates"][chosen]
                meta = io.read_json(catalog.dataset_file(), produced_by="prepare")
                model_file = _deployable_file(catalog, meta, row["file"], staging)
                md5 = file_md5(model_file)
                version = registry.version_with_file(catalog.root, name, md5)
                if version is None:
                    version = registry.register(
                        catalog.root, name, model_file, registry.Rows.of_split(root, "val").x[:2],
                        _lineage(params, catalog, row, parent_run_id, meta, md5),
                        threads=params.serve.threads)
                else:  # the same bytes as a registered version: no duplicate
                    log.info("%s is already registered as %s version %s", chosen, name, version)
                    registry.mark_challenger(catalog.root, name, version)
                report |= {"registered": True, "version": version,
                           **_gate(params, catalog.root, name, version)}
            io.write_json(staging / REPORT_FILE, report)
        io.write_json(catalog.metrics_file("deploy"), _metrics(report))
        tracking.log_artifact(catalog.models_dir("deploy") / REPORT_FILE)
        tracking.set_tags({"registered_model": name, "registered_version": report.get("version", "none"),
                           "champion": report.get("champion") or "none"})
        return {"stage": "deploy", "run_id": run.info.run_id, "dataset": compared["task"],
                "metrics": {"promoted": float(bool(report.get("promoted")))}, **report,
                "headline": _headline(report)}


def _gate(params: Params, root: Path, name: str, version: str) -> dict[str, Any]:
    """Check the new version and promote it when allowed; what happened, for the report."""
    champion = registry.version_of(root, name, registry.CHAMPION)
    if champion == version:
        return {"promoted": False, "reason": f"version {version} is already the champion",
                "champion": champion}
    if not params.deploy.auto_promote:
        return {"promoted": False, "reason": "deploy.auto_promote is false: promote by hand with "
                f"`shrinkflow models promote {version}`", "champion": champion}
    done = registry.gated_promote(root, params.project.experiment, name, version, params.deploy,
                                  how="auto")
    for check in gate.failed(done.checks):
        log.warning("version %s not promoted: %s check failed: %s", version, check.name,
                    check.detail)
    return {"promoted": done.promoted, "checks": [check.to_dict() for check in done.checks],
            "champion": done.champion}


def _metrics(report: dict[str, Any]) -> dict[str, int]:
    """metrics/deploy.json: numbers only (`dvc metrics show` makes a column of any string too);
    the rest of the report is in models/deploy/deploy.json."""
    return {"promoted": int(bool(report.get("promoted"))),
            **({"version": int(report["version"])} if report["registered"] else {})}


def _headline(report: dict[str, Any]) -> str:
    if not report["registered"]:
        return f"nothing registered: {report['reason']}"
    name, version = report["registered_model"], report["version"]
    if report["champion"] == version:
        moved = "promoted to champion" if report["promoted"] else "is the champion"
    else:
        why = report.get("reason") or "failed: " + ", ".join(
            check["name"] for check in report["checks"] if not check["passed"])
        moved = f"left as challenger ({why}); champion: version {report['champion'] or 'none'}"
    serve = f"; serve the champion with `shrinkflow serve --name {name}`" if report["champion"] else ""
    return f"{name} version {version} ({report['candidate']}) {moved}{serve}"
