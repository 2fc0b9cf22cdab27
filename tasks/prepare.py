"""Stage `prepare`: raw table -> validated, split, normalized arrays.

Reads params.yaml `prepare` (source, csv, mnist1d_samples, unlabeled_samples / unlabeled_csv,
val/test fractions, seed, validation).
Writes data/raw/<name>.csv (the raw table, versioned by DVC), data/processed/{train,val,test}.npz
(plus unlabeled.npz, inputs only, when an unlabeled pool is configured) and
dataset.json (spec, normalization fitted on train, class counts, raw md5), metrics/prepare.json,
reports/validation.json and the Great Expectations Data Docs under reports/data_docs/.

Both the raw table and the processed splits are validated before anything is written: a failed
expectation stops the stage with every failure listed, and the previous outputs stay as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shrinkflow import data
from shrinkflow.config import Params, PrepareConfig
from tasks import io, tracking
from tasks.catalog import Catalog, file_md5

log = logging.getLogger("shrinkflow.prepare")


def read_user_csv(path: Path, key: str = "prepare.csv.path") -> pd.DataFrame:
    """Read a user table; a missing, empty or malformed file is named in the error, with `key`."""
    if not path.is_file():
        raise data.DataError(f"{key}: file not found: {path}")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise data.DataError(f"{key}: {path} is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise data.DataError(f"{key}: {path} is not a readable CSV: {exc}") from None
    if frame.empty:
        raise data.DataError(f"{key}: {path} has a header but no rows")
    return frame


def _external_path(relative: str, catalog: Catalog) -> Path:
    """A user file's path; a warning when it is outside data/external/, which DVC watches."""
    path = catalog.path(relative)
    if catalog.path("data/external") not in path.resolve().parents:
        log.warning("%s is outside data/external/: DVC will not notice when it changes", path)
    return path


def load_raw(cfg: PrepareConfig, catalog: Catalog) -> tuple[pd.DataFrame, data.DatasetSpec]:
    """The raw table and its spec: generated for built-in sources, read for a user CSV."""
    if cfg.source != "csv":
        return data.builtin_table(cfg)
    path = _external_path(cfg.csv.path, catalog)
    frame = read_user_csv(path)
    return frame, data.csv_spec(frame, cfg.csv.target, name=path.stem)


def load_unlabeled(cfg: PrepareConfig, spec: data.DatasetSpec,
                   catalog: Catalog) -> pd.DataFrame | None:
    """The unlabeled pool as a table of the feature columns; None when none is configured.

    A user CSV may carry the target column (it is dropped) but no column the data set lacks.
    """
    if cfg.unlabeled_samples:
        return data.mnist1d_unlabeled(cfg.unlabeled_samples, cfg.seed)
    if not cfg.unlabeled_csv:
        return None
    path = _external_path(cfg.unlabeled_csv, catalog)
    frame = read_user_csv(path, key="prepare.unlabeled_csv")
    unknown = sorted(set(frame.columns) - set(spec.feature_columns) - {spec.target})
    if unknown:
        raise data.DataError(f"prepare.unlabeled_csv: {path} has columns that are not features "
                             f"of {spec.name!r}: {unknown}")
    return frame.drop(columns=[spec.target], errors="ignore")


def _split_and_normalize(frame: pd.DataFrame, spec: data.DatasetSpec,
                         cfg: PrepareConfig) -> tuple[data.Splits, data.Normalizer]:
    x, y = data.table_to_arrays(frame, spec)
    try:
        splits = data.stratified_split(x, y, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    except ValueError as exc:  # e.g. a class with fewer members than there are splits
        raise data.DataError(f"cannot split {spec.name!r} by class: {exc}") from None
    return data.normalize_splits(splits, spec.kind)


def _validated_splits(frame: pd.DataFrame, unlabeled: pd.DataFrame | None,
                      spec: data.DatasetSpec, cfg: PrepareConfig, catalog: Catalog,
                      ) -> tuple[data.Splits, data.Normalizer, list[dict]]:
    """Validate the raw tables, split and normalize, validate the splits; keep every report."""
    from tasks.validation import DataValidationError, validate_processed, validate_raw

    reports = []
    try:
        reports.append(validate_raw(frame, spec, cfg.validation, catalog.data_docs_dir))
        if unlabeled is not None:
            reports.append(validate_raw(unlabeled, spec, cfg.validation, catalog.data_docs_dir,
                                        labeled=False))
        splits, normalizer = _split_and_normalize(frame, spec, cfg)
        reports.append(validate_processed(splits, spec, cfg.validation, catalog.data_docs_dir))
    except DataValidationError as error:
        reports.append(error.report)
        raise
    finally:  # the reports and Data Docs are kept and logged whether validation passed or not
        io.write_json(catalog.validation_report, [report.to_dict() for report in reports])
        tracking.log_artifact(catalog.validation_report)
        tracking.log_artifact(catalog.data_docs_dir, "data_docs")
    for report in reports:
        for warning in report.warnings:
            log.warning("%s: %s", report.name, warning)
    return splits, normalizer, [report.to_dict() for report in reports]


def _write_outputs(frame: pd.DataFrame, spec: data.DatasetSpec, splits: data.Splits,
                   normalizer: data.Normalizer, unlabeled_x: np.ndarray | None,
                   catalog: Catalog) -> str:
    """Raw table and processed splits (and unlabeled inputs), each folder swapped in whole;
    returns the raw md5."""
    with io.atomic_dir(catalog.raw_dir) as staging:
        raw_file = staging / catalog.raw_table(spec.name).name
        frame.to_csv(raw_file, index=False)
        raw_md5 = file_md5(raw_file)
    n_classes = len(spec.classes)
    with io.atomic_dir(catalog.processed_dir) as staging:
        for name in ("train", "val", "test"):
            split: data.Split = getattr(splits, name)
            np.savez(catalog.split_file(name, staging), x=split.x, y=split.y)
        if unlabeled_x is not None:
            np.savez(catalog.unlabeled_file(staging), x=unlabeled_x)
        io.write_json(catalog.dataset_file(staging), {
            "spec": spec.to_dict(),
            "normalizer": normalizer.to_dict(),
            "raw_file": str(catalog.raw_table(spec.name).relative_to(catalog.root)),
            "raw_md5": raw_md5,
            "class_counts": {name: data.class_counts(getattr(splits, name).y, n_classes).tolist()
                             for name in ("train", "val", "test")},
            "rows_unlabeled": 0 if unlabeled_x is None else len(unlabeled_x),
        })
    return raw_md5


def run_prepare(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Load, validate, split and normalize the configured source; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.prepare
    with tracking.stage_run("prepare", params, catalog.root, parent_run_id, cfg) as run:
        log.info("loading source %r", cfg.source)
        frame, spec = load_raw(cfg, catalog)
        unlabeled = load_unlabeled(cfg, spec, catalog)

        log.info("validating %d raw rows, splitting (stratified, seed %d), validating splits",
                 len(frame), cfg.seed)
        splits, normalizer, reports = _validated_splits(frame, unlabeled, spec, cfg, catalog)
        unlabeled_x = None if unlabeled is None else normalizer(data.table_to_features(unlabeled,
                                                                                       spec))

        log.info("writing %s and %s", catalog.raw_dir, catalog.processed_dir)
        raw_md5 = _write_outputs(frame, spec, splits, normalizer, unlabeled_x, catalog)
        metrics = {
            "rows_train": len(splits.train), "rows_val": len(splits.val),
            "rows_test": len(splits.test),
            "rows_unlabeled": 0 if unlabeled_x is None else len(unlabeled_x),
            "n_features": int(np.prod(spec.input_shape)),
            "n_classes": len(spec.classes),
            "expectations_evaluated": sum(report["evaluated"] for report in reports),
            "data_warnings": sum(len(report["warnings"]) for report in reports),
        }
        io.write_json(catalog.metrics_file("prepare"), metrics)
        tracking.log_metrics(metrics)
        tracking.set_tags({"dataset": spec.name, "dvc.raw_md5": raw_md5})
        tracking.log_artifact(catalog.dataset_file())
        return {"stage": "prepare", "run_id": run.info.run_id, "dataset": spec.name,
                "raw_md5": raw_md5, "metrics": metrics}
