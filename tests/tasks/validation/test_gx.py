"""tasks.services.validation.gx: running a suite with Great Expectations and keeping its Data Docs.

The Data Docs are written under docs_dir only, before a failure is raised, one page per stage and
data set (a rerun replaces its page, other stages' pages stay), and their templates are compiled
once per process.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tasks.services.validation import validate_processed, validate_raw
from tasks.services.validation.gx import STORE_DIR
from tests.tasks.validation.conftest import RULES, split_table, tiny_table


def _pages(docs: Path, section: str = "validations") -> list[Path]:
    """The pages of a Data Docs section, by name."""
    return sorted((docs / section).rglob("*.html"), key=lambda page: page.name)


def test_validate_raw__writes_data_docs_under_docs_dir_only(valid_digits):
    # given the report of a passing validation into <parent>/docs
    report, docs = valid_digits
    # then the Data Docs site is written there, its index linking the report, and nowhere else
    assert report.docs_index == str(docs / "index.html") and (docs / "index.html").is_file()
    assert [p.name for p in docs.parent.iterdir()] == ["docs"], "nothing may be written outside"
    assert "raw-digits" in (docs / "index.html").read_text(), "the index should link the report"
    # one page per view of the table: the table, one row per column, one row per value
    assert [page.name for page in _pages(docs)] == [
        "raw-digits-cells.html", "raw-digits-columns.html", "raw-digits-table.html"]


def test_validate_raw__data_docs_are_kept_after_a_failure(broken_digits):
    # given a rejected table
    error, docs = broken_digits
    # then the failing report was still written and is linked from the error
    index = docs / "index.html"
    assert index.is_file(), "Data Docs must be kept on failure"
    assert error.report.docs_index == str(index) and not error.report.success
    assert str(error).endswith(f"Data Docs: {index}")
    cells, columns, table = (page.read_text() for page in _pages(docs))
    assert "px_0_3" in cells and "px_2_2" in columns and "px_7_7" in table, (
        "the failures should be rendered, each on its view's page")


def test_validate_raw_and_processed__share_docs_dir_keeping_both_reports(tmp_path):
    # given one Data Docs folder for both stages, validated twice (a rerun)
    frame, spec = tiny_table(["x", "y"] * 30)
    splits = split_table(frame, spec)
    for _ in range(2):
        validate_raw(frame, spec, RULES, tmp_path)
        validate_processed(splits, spec, RULES, tmp_path)
    # then the index links the latest raw and processed reports, one page and one stored result
    # per view
    assert [page.name for page in _pages(tmp_path)] == [
        "processed-tiny-samples.html",
        "raw-tiny-cells.html", "raw-tiny-columns.html", "raw-tiny-table.html"]
    assert len(list((tmp_path / STORE_DIR / "validations").rglob("*.json"))) == 4
    index = (tmp_path / "index.html").read_text()
    assert "raw-tiny" in index and "processed-tiny" in index


def test_validate_raw__drops_the_report_of_a_docs_folder_written_before_views(tmp_path):
    # given a Data Docs folder also holding a raw report as earlier versions stored it: one suite
    # and one result named after the stage and data set, not after a view
    frame, spec = tiny_table(["x", "y"] * 30)
    validate_raw(frame, spec, RULES, tmp_path)
    store = tmp_path / STORE_DIR
    shutil.copy(store / "expectations" / "raw-tiny" / "table.json",
                store / "expectations" / "raw-tiny.json")
    shutil.copytree(store / "validations" / "raw-tiny" / "table",
                    store / "validations" / "raw-tiny", dirs_exist_ok=True)
    # when the table is validated again
    validate_raw(frame, spec, RULES, tmp_path)
    # then the old suite and result are gone, and only the views' pages are left
    assert not (store / "expectations" / "raw-tiny.json").exists()
    assert sorted(path.name for path in (store / "validations" / "raw-tiny").iterdir()) == [
        "cells", "columns", "table"]
    assert [page.name for page in _pages(tmp_path)] == [
        "raw-tiny-cells.html", "raw-tiny-columns.html", "raw-tiny-table.html"]


# what differs from run to run in a Data Docs page: run times (as text, timestamp and epoch
# seconds) and random ids
_RUN_SPECIFIC = re.compile("|".join([
    r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d", r"\d{8}T\d{6}\.\d+Z", r"\d{10}\.\d+",
    r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}",
]))


def _page(docs: Path, section: str) -> str:
    """The pages of a Data Docs section ("index": index.html), without their run-specific parts."""
    paths = [docs / "index.html"] if section == "index" else _pages(docs, section)
    return "".join(_RUN_SPECIFIC.sub("*", path.read_text()) for path in paths)


def test_run_suite__compiles_the_data_docs_templates_once_per_process(tmp_path, monkeypatch):
    # given a validation whose Data Docs compiled their templates from source
    from tasks.services.validation import views

    frame, spec = tiny_table(["x", "y"] * 30)
    monkeypatch.setattr(views._COMPILED, "_compiled", {})
    validate_raw(frame, spec, RULES, tmp_path / "compiled")
    assert views._COMPILED._compiled, "the Data Docs views should keep what they compiled"
    compiled = []
    monkeypatch.setattr(views._COMPILED, "dump_bytecode", compiled.append)
    # when another one renders its pages, into another folder
    validate_raw(frame, spec, RULES, tmp_path / "cached")
    # then no template was compiled again, and the pages are the same
    assert compiled == [], f"templates compiled again: {[bucket.key for bucket in compiled]}"
    for section in ("index", "validations", "expectations"):
        assert _page(tmp_path / "compiled", section) == _page(tmp_path / "cached", section), section
