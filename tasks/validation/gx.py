"""The Great Expectations (GX) adapter: run a suite on a table, write its Data Docs, report.

GX is imported lazily (`import_gx`), because the import takes seconds; this module and `views`
are the only places that import it. Each `run_suite` call builds an ephemeral GX context whose
only Data Docs site is `docs_dir`, with the suites and results it renders kept as JSON in
`docs_dir/_gx_store` (the latest one per stage and data set); nothing is written elsewhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.validation.messages import DataValidationError, ValidationReport, failure_of

STORE_DIR = "_gx_store"  # inside docs_dir: the suites and results the Data Docs pages render
_SECTIONS = ("expectations", "validations", "profiling")  # GX's Data Docs site sections


def import_gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations.row_conditions  # noqa: F401  (used as an attribute)

    return gx


def _context(docs_dir: Path):
    """A GX context whose only Data Docs site is `docs_dir`.

    Suites and validation results are kept as JSON in `docs_dir/_gx_store`, not in memory: GX's
    index builder deletes every page whose suite or result is not in the context's stores, so
    with in-memory stores each call would wipe the report of the previous one (validate_processed
    would delete the raw report). Everything else (data sources, validation definitions) stays in
    memory, and nothing is written outside `docs_dir`.
    """
    gx = import_gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    from tasks.validation.views import IndexPageView, PageView

    root = docs_dir.resolve()
    defaults = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    stores = dict(defaults.stores)
    for store_name, folder in (
        (defaults.expectations_store_name, "expectations"),
        (defaults.validation_results_store_name, "validations"),
    ):
        stores[store_name] = {
            **stores[store_name],
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(root / STORE_DIR / folder),
            },
        }
    # the pages are rendered by views that compile their templates once per process (`views`)
    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "site_index_builder": {
            "class_name": "DefaultSiteIndexBuilder",
            "view": _by_name(IndexPageView),
        },
        "site_section_builders": {section: {"view": _by_name(PageView)} for section in _SECTIONS},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(root)},
    }
    config = DataContextConfig(
        # init_temp_docs_sites=False: the default ephemeral context also has a docs site in a
        # temporary directory, which would be a write outside docs_dir
        store_backend_defaults=defaults,
        stores=stores,
        data_docs_sites={"local_site": site},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),  # no tqdm bars in pipeline logs
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _by_name(cls: type) -> dict[str, str]:
    """How a GX config names a class, which GX then imports itself."""
    return {"module_name": cls.__module__, "class_name": cls.__name__}


def run_suite(
    name: str,
    frame: pd.DataFrame,
    expectations: list,
    warnings: tuple[str, ...],
    docs_dir: Path,
) -> ValidationReport:
    """Validate `frame` against `expectations`, update the Data Docs, then report (or raise).

    `name` is "<stage>:<dataset>"; the report keeps `warnings` as they are.

    Raises:
        DataValidationError: after the Data Docs are written, if any expectation failed.
    """
    gx = import_gx()
    docs_dir = Path(docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    context = _context(docs_dir)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name.replace(":", "-"))  # "raw-digits"
    _forget_earlier_runs(context, slug)

    asset = context.data_sources.add_pandas(slug).add_dataframe_asset(slug)
    batch = asset.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(name=slug, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=slug, data=batch, suite=suite)
    )
    # ValidationDefinition.run stores the result; a Checkpoint would only add its own bookkeeping
    suite_result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
    )
    _build_docs(context, suite.name, suite_result, docs_dir)

    order = {expectation.id: i for i, expectation in enumerate(suite.expectations)}
    results = sorted(
        suite_result.results, key=lambda r: order.get(r.expectation_config.id, len(order))
    )
    failures = tuple(failure_of(r, frame) for r in results if not r.success)
    index = docs_dir / "index.html"
    report = ValidationReport(
        name=name,
        success=not failures,
        evaluated=len(results),
        failures=failures,
        warnings=warnings,
        docs_index=str(index) if index.is_file() else None,
    )
    if failures:
        raise DataValidationError(report)
    return report


def _forget_earlier_runs(context: Any, slug: str) -> None:
    """Keep one suite and one (the latest) result per stage and data set: drop those of earlier
    runs from the stores, so that the next index build removes their pages."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
    )

    suites = context.expectations_store
    old_suite = suites.get_key(name=slug, id=None)
    if suites.has_key(old_suite):
        suites.remove_key(old_suite)
    results_store = context.validation_results_store
    for key in results_store.list_keys():
        if getattr(key, "expectation_suite_identifier", None) == ExpectationSuiteIdentifier(slug):
            results_store.remove_key(key)


def _build_docs(context: Any, suite_name: str, suite_result: Any, docs_dir: Path) -> None:
    """Render only this suite and result; the index is rebuilt from everything in the stores."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    suite_id = ExpectationSuiteIdentifier(name=suite_name)
    result_id = ValidationResultIdentifier(
        expectation_suite_identifier=suite_id,
        run_id=suite_result.meta["run_id"],
        batch_identifier=suite_result.batch_id,
    )
    context.build_data_docs(resource_identifiers=[result_id, suite_id])
    for folder in (docs_dir / "validations", docs_dir / STORE_DIR / "validations"):
        _remove_empty_dirs(folder)  # GX removes the files of replaced results, not their folders


def _remove_empty_dirs(root: Path) -> None:
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        if folder != str(root) and not os.listdir(folder):
            os.rmdir(folder)
