"""The Great Expectations (GX) adapter: run suites on views of the data, write their Data Docs, report.

GX is imported lazily (`import_gx`), because the import takes seconds; this module and `views`
are the only places that import it. Each `run_suite` call builds an ephemeral GX context whose
only Data Docs site is `docs_dir`, with the suites and results it renders kept as JSON in
`docs_dir/_gx_store` (the latest one per stage, data set and view); nothing is written elsewhere.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.services.validation.messages import DataValidationError, ValidationReport, failures_of

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

    from tasks.services.validation.views import IndexPageView, PageView

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


@dataclass(frozen=True)
class View:
    """A frame and the expectations GX checks it against; each view is a page of the Data Docs.

    `located_by` names the columns of a reshaped frame that say where each of its values comes from
    (e.g. ("feature", "row")): GX then returns every unexpected value with them, not only the first
    20, so that a failure can be told per column of the original table with its full count.
    """

    name: str  # e.g. "table"; the view's suite is "<stage>-<dataset>.<name>"
    frame: pd.DataFrame
    expectations: list
    located_by: tuple[str, ...] = ()


def run_suite(
    name: str,
    views: Sequence[View],
    warnings: tuple[str, ...],
    docs_dir: Path,
    column_order: Sequence[str] = (),
) -> ValidationReport:
    """Validate each view against its expectations, update the Data Docs, then report (or raise).

    `name` is "<stage>:<dataset>"; the report keeps `warnings` as they are. Failures are listed in
    the order of the views and their expectations, but those of the columns in `column_order` come
    after all others (the table-level ones), grouped column by column in that order.

    Raises:
        DataValidationError: after the Data Docs are written, if any expectation failed.
    """
    docs_dir = Path(docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    context = _context(docs_dir)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name.replace(":", "-"))  # "raw-digits"
    _forget_earlier_runs(context, slug)

    source = context.data_sources.add_pandas(slug)
    runs = [_run_view(context, source, slug, view) for view in views]
    _build_docs(context, [suite_result for suite_result, _ in runs], docs_dir)
    _release(context, slug)

    # an expectation of severity "warning" shows in the Data Docs but fails nothing: the caller
    # words its warning in `warnings`
    failed = [(result, view) for (_, results), view in zip(runs, views, strict=True)
              for result in results
              if not result.success and result.expectation_config.severity == "critical"]
    rank = {column: i for i, column in enumerate(column_order)}
    # a stable sort: each column's failures keep the order of the views and their expectations
    failures = sorted(
        (failure for result, view in failed for failure in failures_of(result, view.frame)),
        key=lambda failure: rank.get(failure.column, -1),
    )
    index = docs_dir / "index.html"
    report = ValidationReport(
        name=name,
        success=not failed,
        evaluated=sum(len(results) for _, results in runs),
        failed=len(failed),
        failures=tuple(failures),
        warnings=warnings,
        docs_index=str(index) if index.is_file() else None,
    )
    if failed:
        raise DataValidationError(report)
    return report


def _run_view(context: Any, source: Any, slug: str, view: View) -> tuple[Any, list]:
    """Validate one view: the suite result, and its expectations' results in suite order."""
    gx = import_gx()
    batch = source.add_dataframe_asset(view.name).add_batch_definition_whole_dataframe("whole")
    # the slug has no dot, so "<slug>." starts the names of this stage's and data set's suites only
    suite = context.suites.add(
        gx.ExpectationSuite(name=f"{slug}.{view.name}", expectations=view.expectations)
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite.name, data=batch, suite=suite)
    )
    # ValidationDefinition.run stores the result; a Checkpoint would only add its own bookkeeping
    suite_result = definition.run(
        batch_parameters={"dataframe": view.frame}, result_format=_result_format(view)
    )
    order = {expectation.id: i for i, expectation in enumerate(suite.expectations)}
    results = sorted(
        suite_result.results, key=lambda r: order.get(r.expectation_config.id, len(order))
    )
    return suite_result, results


def _release(context: Any, slug: str) -> None:
    """Drop the views' data from the context: GX keeps the last context it made alive, and with
    it every frame its data source was given (a big table's views are hundreds of megabytes).
    Its validation objects hold each other in cycles, which only a full collection frees."""
    for definition in context.validation_definitions.all():
        context.validation_definitions.delete(definition.name)
    context.data_sources.delete(slug)
    gc.collect()


def _result_format(view: View) -> dict:
    if not view.located_by:
        return {"result_format": "SUMMARY", "partial_unexpected_count": 20}
    # COMPLETE: every unexpected value with its locators (the index query would only repeat them)
    return {
        "result_format": "COMPLETE",
        "unexpected_index_column_names": list(view.located_by),
        "return_unexpected_index_query": False,
    }


def _forget_earlier_runs(context: Any, slug: str) -> None:
    """Keep one suite and one (the latest) result per stage, data set and view: drop those of earlier
    runs from the stores, so that the next index build removes their pages.

    A stage's and data set's suites are named "<slug>.<view>"; docs folders written before there
    were views hold one suite named "<slug>", which is dropped too.
    """

    def ours(suite_name: str) -> bool:
        return suite_name == slug or suite_name.startswith(f"{slug}.")

    suites = context.expectations_store
    for key in suites.list_keys():
        if ours(key.name):
            suites.remove_key(key)
    results_store = context.validation_results_store
    for key in results_store.list_keys():
        if ours(key.expectation_suite_identifier.name):
            results_store.remove_key(key)


def _build_docs(context: Any, suite_results: list, docs_dir: Path) -> None:
    """Render only these results and their suites; the index is rebuilt from everything in the
    stores."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    identifiers: list = []
    for suite_result in suite_results:
        suite_id = ExpectationSuiteIdentifier(name=suite_result.suite_name)
        identifiers += [
            ValidationResultIdentifier(
                expectation_suite_identifier=suite_id,
                run_id=suite_result.meta["run_id"],
                batch_identifier=suite_result.batch_id,
            ),
            suite_id,
        ]
    context.build_data_docs(resource_identifiers=identifiers)
    for folder in (docs_dir / "validations", docs_dir / STORE_DIR / "validations"):
        _remove_empty_dirs(folder)  # GX removes the files of replaced results, not their folders


def _remove_empty_dirs(root: Path) -> None:
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        if folder != str(root) and not os.listdir(folder):
            os.rmdir(folder)
