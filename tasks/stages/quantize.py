"""Stage `quantize`: fp16, int8 and 4-bit weight-only, int8 dynamic and static (with fallback),
QAT, and ternary or binary weights of every candidate.

Reads the candidates.json manifests of the stages declared before it in `tasks.services.dag` that make
candidates (models/{baseline,pruned,distilled}/), data/processed/ and params.yaml `quantize`,
`baseline.train` / `baseline.augment` (QAT and the ternary and binary fine-tuning, for
`quantize.qat_epochs` and `quantize.low_bit_epochs`, reuse the training loop; they need the
candidate's torch model, and are skipped, with the reason, for one without).
Writes models/quantized/<candidate>-<method>.onnx with candidates.json, reports/quantize/
candidates.json (each file's accuracy and size, every attempt of the fallback chain) and
metrics/quantize.json (how many candidates, the best one's accuracies on validation and test) and
reports/quantize/metrics.json (also how many files stayed beyond the drop).
Unstructured-pruned candidates are quantized from a dense copy, and their zeros are stored sparse
again afterwards, so they keep both savings.

Calibration rows are the last `quantize.calibration_samples` rows of the training split; the
accuracy checks of the fallback chain, and its ranking of the layers to keep (which reads the
inputs only), use the validation split, never the test split. int8 static, 4-bit, ternary and
binary files go through the accuracy-aware fallback (`quantize.max_accuracy_drop_pp`,
`quantize.fallback`): the low-bit ones keep their most sensitive weights one step up in precision
(4-bit weights at 8 bits, ternary and binary layers at 4), one more at a time, while they lose
too much.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from shrinkflow import data, measure, progress, quantize, sparse
from shrinkflow.config import Params, QuantizeConfig
from shrinkflow.export import export_onnx, onnx_predictor
from tasks.services import dag, io, tracking
from tasks.services.candidates import (
    Candidate,
    headline,
    load_torch,
    read_manifests,
    report_candidate,
    write_manifest,
)
from tasks.services.catalog import Catalog
from tasks.services.io import load_processed

log = logging.getLogger("shrinkflow.quantize")
# the numbers a method's file computes with
PRECISION = {"fp16": "fp16", "int8_weights": "int8 weights", "int4_weights": "int4 weights",
             "int8_dynamic": "int8", "int8_static": "int8", "qat": "int8",
             "ternary": "ternary weights", "binary": "binary weights"}
# methods that fine-tune the source's torch model, by what they do
TRAINED = {"qat": "quantization-aware training", "ternary": "ternary training",
           "binary": "binary training"}
# methods that only convert the file: no data, no fallback
CONVERSIONS = {"fp16": quantize.to_fp16, "int8_weights": quantize.to_int8_weights,
               "int8_dynamic": quantize.to_int8_dynamic}


def _accuracy_on(split: data.Split):
    def evaluate(path: Path) -> float:
        return measure.evaluate(onnx_predictor(path), split.x, split.y)["accuracy"]

    return evaluate


def _dense_source(source: Candidate, src: Path, scratch: Path) -> Path:
    """The file the quantizer reads: a dense copy of a sparse-stored (unstructured) candidate,
    since shape inference and the quantizer only see dense initializers."""
    if source.method != "unstructured":
        return src
    return sparse.densify_onnx(src, scratch / f"{source.name}-dense.onnx")


def run_quantize(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Quantize every candidate with every configured method; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.quantize
    with tracking.stage_run("quantize", params, catalog.root, parent_run_id, cfg) as run:
        splits, spec, _ = load_processed(catalog)
        calibration = splits.train.x[-cfg.calibration_samples:]
        evaluate = _accuracy_on(splits.val)
        candidates, report, skipped = [], {}, {}
        folder = catalog.models_dir("quantize")
        with io.atomic_dir(folder) as staging, \
                tempfile.TemporaryDirectory(prefix="shrinkflow-quantize-") as scratch:
            for source in read_manifests(catalog, dag.candidate_stages("quantize")):
                src = _dense_source(source, catalog.path(source.onnx), Path(scratch))
                reference = evaluate(src)
                for method in cfg.methods:
                    name = f"{source.name}-{method}"
                    if method in TRAINED and source.torch is None:  # an ensemble, an ONNX teacher
                        log.info("%s: skipped: %s has no torch model to train", name, source.name)
                        skipped[name] = f"{TRAINED[method]} needs a torch model; " \
                                        f"{source.name} has none"
                        continue
                    dst = staging / f"{name}.onnx"
                    log.info("quantizing %s", name)
                    with progress.ticking(log, f"quantizing {name}"), tracking.candidate_run(
                            name, {"method": method, "parent": source.name},
                            _made_by(cfg, method, source)):
                        record = _quantize_one(method, source, src, dst, calibration, reference,
                                               evaluate, params, splits, spec, catalog,
                                               Path(scratch))
                        if source.method == "unstructured":
                            sparse.sparsify_onnx(dst, dst)
                        measured = report_candidate(dst, splits)
                    report[name] = {**record, "val_accuracy_fp32": reference,
                                    **{key: measured[key] for key in
                                       ("val_accuracy", "accuracy", "size_bytes", "make_seconds")}}
                    candidates.append(Candidate(name, catalog.relative(folder / dst.name),
                                                source.name, method))
            write_manifest(staging, candidates)
        io.write_json(catalog.candidates_report("quantize"), {"candidates": report,
                                                              "skipped": skipped})
        io.write_metrics(catalog, "quantize",
                         headline(report),
                         _counts(report))
        flat = {f"{name}.{key}": value for name, row in report.items()
                for key, value in row.items() if key in ("val_accuracy", "accuracy", "size_bytes")}
        tracking.log_metrics(flat)
        return {"stage": "quantize", "run_id": run.info.run_id, "dataset": spec.name,
                "metrics": flat}


def _counts(report: dict[str, dict[str, Any]]) -> dict[str, int]:
    """reports/quantize/metrics.json: how many candidates, and how many (int8 static, 4-bit,
    ternary or binary) no attempt of the fallback chain brought within
    `quantize.max_accuracy_drop_pp` on validation (the most accurate attempt is kept)."""
    return {"candidates": len(report),
            "beyond_drop": sum(not record["accepted"] for record in report.values()
                               if "accepted" in record)}


def _made_by(cfg: QuantizeConfig, method: str, source: Candidate) -> dict[str, Any]:
    """What made a quantized candidate, as its run's params (calibration: static int8 only)."""
    static = method in ("int8_static", "qat")
    return {"method": method, "precision": PRECISION[method], "parent": source.name,
            "parent_method": source.method, "calibration": cfg.calibration if static else None,
            "calibration_samples": cfg.calibration_samples if static else None,
            "per_channel": cfg.per_channel if method != "fp16" else None,
            "format": cfg.format if method != "fp16" else None}


def _quantize_one(method: str, source: Candidate, src: Path, dst: Path, calibration: np.ndarray,
                  reference: float, evaluate, params: Params, splits: data.Splits,
                  spec: data.DatasetSpec, catalog: Catalog, scratch: Path) -> dict[str, Any]:
    """Write one quantized file; returns what was done (attempts of the fallback chain)."""
    cfg = params.quantize

    def qat_float_onnx() -> Path:
        """QAT of the source's torch model, exported as float ONNX for int8 calibration."""
        arch, model = load_torch(catalog.path(source.torch), produced_by=source.parent)
        trained = quantize.quantization_aware_training(
            model, splits.train, splits.val,
            quantize.qat_train_config(params.baseline.train, cfg),
            data.Augmenter(params.baseline.augment, spec.kind), on_epoch_end=tracking.log_epoch)
        return quantize.export_qat_onnx(trained, arch.input_shape, scratch / f"{source.name}.onnx")

    if method in CONVERSIONS:
        CONVERSIONS[method](src, dst)
        return {"method": method}
    if method == "qat":  # sources without a torch model are skipped by the caller
        quantize.to_int8_static(qat_float_onnx(), dst, calibration, "minmax", cfg.per_channel,
                                quant_format=cfg.format)
        return {"method": method}
    if method == "int4_weights":
        result = quantize.low_bit_with_fallback(
            dst, lambda kept, path: quantize.to_int4_weights(src, path, keep_int8=kept),
            lambda: quantize.int4_sensitivity(src, splits.val.x, scratch),
            evaluate, reference, cfg, method)
    elif method in ("ternary", "binary"):  # the same: hidden weights trained to 2-bit values
        arch, model = load_torch(catalog.path(source.torch), produced_by=source.parent)
        binary = method == "binary"

        def trained(kept: tuple[str, ...], path: Path) -> Path:
            tuned = quantize.low_bit_training(
                model, splits.train, splits.val,
                quantize.fine_tune_config(params.baseline.train, cfg.low_bit_epochs),
                data.Augmenter(params.baseline.augment, spec.kind), binary=binary,
                on_epoch_end=tracking.log_epoch, keep=kept)
            return quantize.to_ternary_weights(
                export_onnx(tuned, arch.input_shape, scratch / f"{source.name}-{method}.onnx"),
                path)

        result = quantize.low_bit_with_fallback(
            dst, trained, lambda: quantize.ternary_sensitivity(model, splits.val.x, binary),
            evaluate, reference, cfg, method)
    else:
        result = quantize.quantize_with_fallback(
            src, dst, calibration, evaluate, reference, cfg,
            qat=qat_float_onnx if source.torch is not None else None, ranking_x=splits.val.x)
    if not result.accepted:
        log.warning("%s-%s: no attempt within %.2f pp; kept the most accurate (%s)",
                    source.name, method, cfg.max_accuracy_drop_pp, result.chosen.step)
    return {"method": method, "accepted": result.accepted, "chosen": result.chosen.step,
            "attempts": [attempt.to_dict() for attempt in result.attempts]}
