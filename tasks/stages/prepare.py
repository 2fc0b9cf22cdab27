"""Stage `prepare`: raw table or image folder -> validated, split, encoded, normalized arrays.

Reads params.yaml `prepare` (source, csv, images, mnist1d_samples, unlabeled_samples /
unlabeled_csv, val/test fractions, seed, validation).
Writes data/raw/<name>.csv (the raw table: the feature columns and the label, rows with a label;
versioned by DVC; for an image folder data/raw/<name>.npz: its images decoded and resized, uint8
N x H x W x C, their labels and files), data/processed/{train,val,test}.npz (model inputs x,
labels y, and each sample's row of the raw data; plus unlabeled.npz, inputs only, when an unlabeled pool is
configured) and dataset.json (spec, a user table's encoding and the normalization, both fitted on
train, class counts, raw md5), metrics/prepare.json (the split sizes; every count in
reports/prepare/metrics.json), reports/validation.json and the Great Expectations Data Docs under
reports/data_docs/.

A user table's columns are chosen by `prepare.csv.features` / `drop`; rows without a label are
left out and counted. Its text columns and missing values are encoded as `shrinkflow.encode`
says, and the deploy stage puts the same encoding in front of the served graph. Before anything
is split, a feature column that is a row identifier is refused (`shrinkflow.leaks`), and one that
predicts the label alone nearly as well as all columns is a warning (MLflow tag
`data.lone_predictors`).

Both the raw table and the processed splits are validated before anything is written: a failed
expectation stops the stage with every failure listed, and the previous outputs stay as they were.
So does a user CSV whose header repeats a column name, or whose label column holds a single class.
An image folder is validated through two views of it, one row per class folder and one per file
(`validate_images`): each unreadable file and each class with too few images is named.
Unlabeled rows identical to a validation or test row are left out of the pool (and counted in
reports/prepare/metrics.json as `unlabeled_rows_dropped`): students distilled on them would see the very
inputs they are scored on.
"""
from __future__ import annotations

import csv
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shrinkflow import data, images, leaks, progress
from shrinkflow.config import CsvSource, Params, PrepareConfig
from shrinkflow.encode import TableEncoder
from tasks.services import io, tracking
from tasks.services.catalog import Catalog, file_md5

if TYPE_CHECKING:
    from tasks.services.validation import Leaks

log = logging.getLogger("shrinkflow.prepare")
HEADLINE = ("rows_train", "rows_val", "rows_test")  # of the metrics, in metrics/prepare.json
LONE_PREDICTORS_TAG = "data.lone_predictors"  # MLflow tag: features that predict the label alone


def read_user_csv(path: Path, key: str = "prepare.csv.path") -> pd.DataFrame:
    """Read a user table; a missing, empty or malformed file, or a header that repeats a column
    name, is named in the error, with `key`."""
    if not path.is_file():
        raise data.DataError(f"{key}: file not found: {path}")
    try:
        frame = pd.read_csv(path)
        repeated = _repeated_columns(path)
    except pd.errors.EmptyDataError:
        raise data.DataError(f"{key}: {path} is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, csv.Error) as exc:
        raise data.DataError(f"{key}: {path} is not a readable CSV: {exc}") from None
    if repeated:
        raise data.DataError(f"{key}: {path} repeats the column name(s) {repeated} in its header; "
                             "each column needs a name of its own")
    if frame.empty:
        raise data.DataError(f"{key}: {path} has a header but no rows")
    return frame


def _repeated_columns(path: Path) -> list[str]:
    """Names the header row of `path` holds more than once, read with the csv module: pandas
    silently renames the second 'a' to 'a.1'. utf-8-sig skips a byte order mark, as pandas does."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next((row for row in csv.reader(handle) if row), [])
    return sorted(name for name, count in Counter(header).items() if count > 1)


def _external_path(relative: str, catalog: Catalog) -> Path:
    """A user file's path; a warning when it is outside data/external/, which DVC watches."""
    path = catalog.path(relative)
    if catalog.path("data/external") not in path.resolve().parents:
        log.warning("%s is outside data/external/: DVC will not notice when it changes", path)
    return path


@dataclass(frozen=True)
class Raw:
    """The raw table as the pipeline keeps it: the feature columns and the target, rows with a
    label only."""

    frame: pd.DataFrame
    spec: data.DatasetSpec
    rows_without_label: int  # rows of the user's file left out for having no label


def load_raw(cfg: PrepareConfig, catalog: Catalog) -> Raw:
    """The raw table and its spec: generated for built-in sources, read for a user CSV (its chosen
    columns, the rows that have a label)."""
    if cfg.source != "csv":
        return Raw(*data.builtin_table(cfg), rows_without_label=0)
    path = _external_path(cfg.csv.path, catalog)
    with progress.ticking(log, f"reading {path}"):  # a table of gigabytes takes a while
        frame = read_user_csv(path)
    spec = data.csv_spec(frame, cfg.csv.target, path.stem, cfg.csv.features, cfg.csv.drop)
    unlabeled = frame[spec.target].isna()
    if unlabeled.all():
        raise data.DataError(f"prepare.csv.target: the label column {spec.target!r} of {path} has "
                             "no values; name the column that holds the class labels")
    if unlabeled.any():
        log.warning("%s: %d of %d rows have no label in %r and are left out", path,
                    int(unlabeled.sum()), len(frame), spec.target)
    if len(spec.classes) == 1:
        raise data.DataError(f"prepare.csv.path: {path}: the label column {spec.target!r} holds a "
                             f"single class, {spec.classes[0]!r}; a classifier needs at least two")
    kept = frame.loc[~unlabeled, [*spec.feature_columns, spec.target]].reset_index(drop=True)
    return Raw(kept, spec, int(unlabeled.sum()))


def find_leaks(frame: pd.DataFrame, spec: data.DatasetSpec, cfg: PrepareConfig) -> Leaks | None:
    """Row identifiers among a user table's features, and how well each predicts the label alone
    (fitted on the training split, scored on validation: the split the stage makes next). None for
    built-in sources."""
    if cfg.source != "csv":
        return None
    from tasks.services.validation import Leaks

    log.info("checking %d feature columns for row identifiers and lone predictors of the label",
             len(spec.feature_columns))
    found = leaks.identifiers(frame, spec.feature_columns, cfg.csv.allow_identifier)
    labels = data.table_labels(frame, spec)
    try:
        rows = _row_splits(labels, cfg)
    except ValueError:  # too few rows of a class: the split itself reports it, after validation
        return Leaks(found, None)
    return Leaks(found, leaks.lone_accuracies(frame, labels, spec.feature_columns, rows.train.x,
                                              rows.val.x, cfg.seed))


def _unlabeled_key(cfg: PrepareConfig) -> str:
    """The params key of the configured unlabeled pool, for messages."""
    return "prepare.unlabeled_samples" if cfg.unlabeled_samples else "prepare.unlabeled_csv"


def load_unlabeled(cfg: PrepareConfig, spec: data.DatasetSpec,
                   catalog: Catalog) -> pd.DataFrame | None:
    """The unlabeled pool as a table of the feature columns; None when none is configured.

    A user CSV may carry the target column and the columns of `prepare.csv.drop` (both are
    dropped), and any other column when `prepare.csv.features` names the features; otherwise no
    column the data set lacks.
    """
    if cfg.unlabeled_samples:
        return data.mnist1d_unlabeled(cfg.unlabeled_samples, cfg.seed)
    if not cfg.unlabeled_csv:
        return None
    key = _unlabeled_key(cfg)
    path = _external_path(cfg.unlabeled_csv, catalog)
    frame = read_user_csv(path, key=key)
    ignored = {spec.target, *cfg.csv.drop}
    unknown = sorted(set(frame.columns) - set(spec.feature_columns) - ignored)
    if unknown and cfg.csv.features is None:
        raise data.DataError(f"{key}: {path} has columns that are not features "
                             f"of {spec.name!r}: {unknown}")
    return frame.drop(columns=[*ignored, *unknown], errors="ignore")


@dataclass(frozen=True)
class _Prepared:
    """The normalized splits, the encoding and normalization fitted on train, the rows of the raw
    table each split holds, and the unlabeled inputs, encoded and normalized alike."""

    spec: data.DatasetSpec  # input_shape: the encoded width
    splits: data.Splits
    rows: data.Splits  # x: each sample's row in the raw table, what a user sends the served model
    encoder: TableEncoder | None  # None for built-in sources: their rows are the features
    normalizer: data.Normalizer
    unlabeled_x: np.ndarray | None  # None without a pool; never a validation or test row
    unlabeled_dropped: int  # pool rows left out for being identical to a validation or test row

    @property
    def rows_unlabeled(self) -> int:
        return 0 if self.unlabeled_x is None else len(self.unlabeled_x)


def _row_splits(labels: np.ndarray, cfg: PrepareConfig) -> data.Splits:
    """The stratified split of the rows: x holds row numbers. Raises ValueError when a class has
    too few rows."""
    return data.stratified_split(np.arange(len(labels)), labels, cfg.val_fraction,
                                 cfg.test_fraction, cfg.seed)


def _encoder(train: pd.DataFrame, spec: data.DatasetSpec, cfg: PrepareConfig
             ) -> TableEncoder | None:
    """A user table's encoding, fitted on its training rows; None for built-in sources."""
    if cfg.source != "csv":
        return None
    return TableEncoder.fit(train, spec.feature_columns, cfg.csv.ordinal, cfg.csv.missing_indicator)


def _stratified_rows(labels: np.ndarray, spec: data.DatasetSpec, cfg: PrepareConfig
                     ) -> data.Splits:
    """The stratified split of the rows (x: row numbers); a class too small to split is named."""
    try:
        return _row_splits(labels, cfg)
    except ValueError as exc:  # e.g. a class with fewer members than there are splits
        raise data.DataError(f"cannot split {spec.name!r} by class: {exc}") from None


def _split_and_normalize(frame: pd.DataFrame, unlabeled: pd.DataFrame | None,
                         spec: data.DatasetSpec, cfg: PrepareConfig) -> _Prepared:
    rows = _stratified_rows(data.table_labels(frame, spec), spec, cfg)
    encoder = _encoder(frame.iloc[rows.train.x], spec, cfg)
    if encoder is not None:
        spec = replace(spec, input_shape=(encoder.width,))

    def features(table: pd.DataFrame) -> np.ndarray:
        if encoder is None:
            return data.table_to_features(table, spec)
        return encoder.transform(table)

    # split by split: the whole table encoded at once would be one more copy of it in memory
    encoded = data.Splits(*(data.Split(features(frame.iloc[part.x]), part.y) for part in
                            (rows.train, rows.val, rows.test)))
    splits, normalizer = data.normalize_splits(encoded, spec.kind)
    if unlabeled is None:
        return _Prepared(spec, splits, rows, encoder, normalizer, None, 0)
    # the pool is compared as the model reads it, encoded float32 features: distilling on a row
    # the students are later scored on would inflate their validation and test accuracy
    pool = features(unlabeled)
    held_out = data.rows_found_in(pool, np.concatenate([encoded.val.x, encoded.test.x]))
    dropped = int(held_out.sum())
    if dropped:
        log.warning("%s: dropped %d rows identical to validation or test rows",
                    _unlabeled_key(cfg), dropped)
    return _Prepared(spec, splits, rows, encoder, normalizer, normalizer(pool[~held_out]), dropped)


def _user_csv(cfg: PrepareConfig) -> CsvSource | None:
    """The user table's settings when the source is one: text and (with impute) missing values
    are then valid input."""
    return cfg.csv if cfg.source == "csv" else None


@contextmanager
def _kept_reports(catalog: Catalog) -> Iterator[list]:
    """The validation reports made inside, written and logged whether validation passed or not
    (a failure's too), their warnings logged after."""
    from tasks.services.validation import DataValidationError

    reports: list = []
    try:
        yield reports
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


def _validated_splits(frame: pd.DataFrame, unlabeled: pd.DataFrame | None,
                      spec: data.DatasetSpec, cfg: PrepareConfig, catalog: Catalog,
                      ) -> tuple[_Prepared, list[dict]]:
    """Validate the raw tables, split and normalize, validate the splits; keep every report."""
    from tasks.services.validation import validate_processed, validate_raw

    with progress.ticking(log, "checking for row identifiers and lone predictors"):
        found = find_leaks(frame, spec, cfg)
    if found is not None and found.lone is not None and found.lone.flagged():
        # on the run whether validation passes or not: the user decides, the run says it
        tracking.set_tags({LONE_PREDICTORS_TAG: ", ".join(found.lone.flagged())})
    with _kept_reports(catalog) as reports:
        with progress.ticking(log, f"validating the raw table ({len(frame)} rows)"):
            reports.append(validate_raw(frame, spec, cfg.validation, catalog.data_docs_dir,
                                        leaks=found, csv=_user_csv(cfg)))
            if unlabeled is not None:
                reports.append(validate_raw(unlabeled, spec, cfg.validation,
                                            catalog.data_docs_dir, labeled=False,
                                            csv=_user_csv(cfg)))
        with progress.ticking(log, "encoding, splitting and validating the splits"):
            prepared = _split_and_normalize(frame, unlabeled, spec, cfg)
            reports.append(validate_processed(prepared.splits, prepared.spec, cfg.validation,
                                              catalog.data_docs_dir))
    return prepared, [report.to_dict() for report in reports]


# ---------------------------------------------------------------------------------------------
# An image folder
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawImages:
    """An image folder as the pipeline keeps it: every readable image, resized, with its label
    and file; and the folder's views for validation (see `validate_images`)."""

    images: np.ndarray  # uint8 N x size x size x C
    labels: np.ndarray  # int64 class indices
    files: tuple[str, ...]  # each image's path, relative to the project root when inside it
    spec: data.DatasetSpec
    file_view: pd.DataFrame  # file, label, error ("" when readable): every image file
    class_view: pd.DataFrame  # label, folder, images: every class folder


def read_image_folder(cfg: PrepareConfig, catalog: Catalog) -> RawImages:
    """Decode and resize every image of the configured folder (see `shrinkflow.images`); a file
    that cannot be read is kept in the file view with the reason, for validation to name."""
    settings = cfg.images
    root = _external_path(settings.path, catalog)
    classes = images.class_folders(root)
    spec = data.images_spec(root.name, [item.name for item in classes], settings.size,
                            settings.channels)
    resize = images.Resizer(settings.size, settings.channels)
    total = sum(len(item.files) for item in classes)
    log.info("reading %d images of %d classes from %s", total, len(classes), root)
    pixels, labels, files, rows = [], [], [], []
    beat, started = progress.Heartbeat(), time.monotonic()
    for index, item in enumerate(classes):
        for path in item.files:
            shown = _shown(path, catalog)
            try:
                pixels.append(resize(images.decode(path.read_bytes(), settings.channels)[None]))
            except (images.ImageError, OSError) as error:
                rows.append((shown, item.name, str(error) or type(error).__name__))
                continue
            labels.append(index)
            files.append(shown)
            rows.append((shown, item.name, ""))
            if beat.due():
                log.info("read %d of %d images (%s)", len(rows), total,
                         progress.rate(len(rows), time.monotonic() - started))
    file_view = pd.DataFrame(rows, columns=["file", data.BUILTIN_TARGET, "error"], dtype=object)
    class_view = pd.DataFrame({
        data.BUILTIN_TARGET: [item.name for item in classes],
        "folder": [_shown(item.folder, catalog) for item in classes],
        "images": [len(item.files) for item in classes]}).astype({"images": np.int64})
    stacked = np.concatenate(pixels) if pixels else np.zeros(
        (0, settings.size, settings.size, settings.channels), np.uint8)
    return RawImages(stacked, np.asarray(labels, np.int64), tuple(files), spec, file_view,
                     class_view)


def _shown(path: Path, catalog: Catalog) -> str:
    """`path` as messages and manifests show it: relative to the project root when inside it."""
    try:
        return catalog.relative(path)
    except ValueError:
        return str(path)


def _validated_images(raw: RawImages, cfg: PrepareConfig, catalog: Catalog
                      ) -> tuple[_Prepared, list[dict]]:
    """Validate the folder, split and normalize its images, validate the splits."""
    from tasks.services.validation import validate_images, validate_processed

    with _kept_reports(catalog) as reports:
        with progress.ticking(log, f"validating the image folder ({len(raw.file_view)} files)"):
            reports.append(validate_images(raw.file_view, raw.class_view, raw.spec,
                                           cfg.validation, cfg.images.min_per_class,
                                           catalog.data_docs_dir))
        with progress.ticking(log, "splitting, normalizing and validating the splits"):
            rows = _stratified_rows(raw.labels, raw.spec, cfg)
            features = data.Splits(*(data.Split(data.images_to_features(raw.images[part.x]),
                                                part.y)
                                     for part in (rows.train, rows.val, rows.test)))
            splits, normalizer = data.normalize_splits(features, raw.spec.kind)
            prepared = _Prepared(raw.spec, splits, rows, None, normalizer, None, 0)
            reports.append(validate_processed(splits, raw.spec, cfg.validation,
                                              catalog.data_docs_dir))
    return prepared, [report.to_dict() for report in reports]


@dataclass(frozen=True)
class _Source:
    """A source prepared: its splits and validation reports, the raw data as the pipeline keeps
    it (written by `write_raw` to a path like `raw_file`), and figures of its own."""

    prepared: _Prepared
    reports: list[dict]
    raw_file: Path  # in catalog.raw_dir
    write_raw: Callable[[Path], None]
    figures: dict[str, int]


def _prepare_table(cfg: PrepareConfig, catalog: Catalog) -> _Source:
    raw = load_raw(cfg, catalog)
    frame, spec = raw.frame, raw.spec
    unlabeled = load_unlabeled(cfg, spec, catalog)
    log.info("validating %d raw rows, splitting (stratified, seed %d), validating splits",
             len(frame), cfg.seed)
    prepared, reports = _validated_splits(frame, unlabeled, spec, cfg, catalog)
    return _Source(prepared, reports, catalog.raw_table(spec.name),
                   lambda path: frame.to_csv(path, index=False), {
                       "rows_unlabeled": prepared.rows_unlabeled,
                       "unlabeled_rows_dropped": prepared.unlabeled_dropped,
                       "rows_without_label": raw.rows_without_label,
                       "missing_values": int(frame[list(spec.feature_columns)].isna()
                                             .to_numpy().sum()),
                       "n_columns": len(spec.feature_columns)})


def _prepare_images(cfg: PrepareConfig, catalog: Catalog) -> _Source:
    raw = read_image_folder(cfg, catalog)
    prepared, reports = _validated_images(raw, cfg, catalog)
    return _Source(prepared, reports, catalog.raw_images(raw.spec.name),
                   lambda path: np.savez(path, images=raw.images, labels=raw.labels,
                                         files=np.asarray(raw.files)),
                   {"n_images": len(raw.labels)})


def _write_outputs(source: _Source, catalog: Catalog) -> str:
    """Raw data and processed splits (and unlabeled inputs), each folder swapped in whole;
    returns the raw md5."""
    prepared = source.prepared
    with io.atomic_dir(catalog.raw_dir) as staging:
        raw_file = staging / source.raw_file.name
        source.write_raw(raw_file)
        raw_md5 = file_md5(raw_file)
    splits, n_classes = prepared.splits, len(prepared.spec.classes)
    with io.atomic_dir(catalog.processed_dir) as staging:
        for name in ("train", "val", "test"):
            split: data.Split = getattr(splits, name)
            # rows: each sample's row in the raw data, as a user sends it to the deployed
            # model (which encodes and normalizes it itself): what it is checked on
            rows = getattr(prepared.rows, name).x
            np.savez(catalog.split_file(name, staging), x=split.x, y=split.y, rows=rows)
        if prepared.unlabeled_x is not None:
            np.savez(catalog.unlabeled_file(staging), x=prepared.unlabeled_x)
        io.write_json(catalog.dataset_file(staging), {
            "spec": prepared.spec.to_dict(),
            "encoder": prepared.encoder.to_dict() if prepared.encoder else None,
            "normalizer": prepared.normalizer.to_dict(),
            "raw_file": catalog.relative(source.raw_file),
            "raw_md5": raw_md5,
            "class_counts": {name: data.class_counts(getattr(splits, name).y, n_classes).tolist()
                             for name in ("train", "val", "test")},
            "rows_unlabeled": prepared.rows_unlabeled,
        })
    return raw_md5


def run_prepare(params: Params, root: Path, parent_run_id: str | None = None) -> dict[str, Any]:
    """Load, validate, split and normalize the configured source; returns a JSON summary."""
    catalog, cfg = Catalog.at(root), params.prepare
    with tracking.stage_run("prepare", params, catalog.root, parent_run_id, cfg) as run:
        log.info("loading source %r", cfg.source)
        prepare = _prepare_images if cfg.source == "images" else _prepare_table
        source = prepare(cfg, catalog)
        prepared, reports = source.prepared, source.reports
        splits, spec = prepared.splits, prepared.spec

        log.info("writing %s and %s", catalog.raw_dir, catalog.processed_dir)
        raw_md5 = _write_outputs(source, catalog)
        metrics = {
            "rows_train": len(splits.train), "rows_val": len(splits.val),
            "rows_test": len(splits.test),
            **source.figures,
            "n_features": int(np.prod(spec.input_shape)),
            "n_classes": len(spec.classes),
            "expectations_evaluated": sum(report["evaluated"] for report in reports),
            "data_warnings": sum(len(report["warnings"]) for report in reports),
        }
        io.write_metrics(catalog, "prepare", {key: metrics[key] for key in HEADLINE}, metrics)
        tracking.log_metrics(metrics)
        tracking.set_tags({"dataset": spec.name, "dvc.raw_md5": raw_md5})
        tracking.log_artifact(catalog.dataset_file())
        return {"stage": "prepare", "run_id": run.info.run_id, "dataset": spec.name,
                "raw_md5": raw_md5, "metrics": metrics}
