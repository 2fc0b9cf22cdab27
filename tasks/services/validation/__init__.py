"""Data-quality gates on raw and processed data, enforced with Great Expectations (GX).

Two gates guard the pipeline:

  validate_raw        the raw table (feature columns + target) before it is split: enough rows,
                      every expected column present, features numeric, non-null and within the
                      known value range (else +/- `max_abs_value`, so inf fails), labels non-null
                      and - for built-in sources - in the integer label set. Class imbalance is a
                      warning, not a failure.
  validate_images     an image folder, in place of the raw table: at least two class folders,
                      each with enough images, every file readable as an image, each failure
                      naming its folder or file.
  validate_processed  the train/val/test arrays after normalization: per-sample shape, no NaN/inf,
                      |x| <= `max_abs_value`, labels in [0, n_classes - 1], a non-empty training
                      split that holds every class.

Either one stops the pipeline *before* anything downstream (splitting, training, the registry) is
touched: it raises `DataValidationError`, whose message names every failed expectation, its column
and what was observed. The GX Data Docs site is written to `docs_dir` first, so the HTML report of a
failed run is kept for inspection and can be logged as an artifact.

Layout: `suites` says which expectations guard which data, `gx` runs them with GX and writes the
Data Docs, `messages` turns the results into words. The core package `shrinkflow/` knows nothing of
GX; this package is the only place that imports it, lazily, because the import takes seconds. Both
functions write only under `docs_dir`: the Data Docs HTML plus the suites and results it renders
(`docs_dir/_gx_store`, the latest one per stage, data set and view); the GX context itself is ephemeral
and built per call.
"""

from tasks.services.validation.messages import DataValidationError, Failure, ValidationReport
from tasks.services.validation.suites import (
    Leaks,
    validate_images,
    validate_processed,
    validate_raw,
)

__all__ = ["DataValidationError", "Failure", "Leaks", "ValidationReport", "validate_images",
           "validate_processed", "validate_raw"]
