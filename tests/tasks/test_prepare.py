"""Stage `prepare`: real files, a real SQLite MLflow store, Great Expectations on broken data.

A prepare run (validation, splits, MLflow) takes seconds, so digits is prepared once per module;
the inputs that must be refused go to one project prepared once from a small user table (three
features), whose outputs each refused run must leave as they were.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shrinkflow.config import PrepareConfig, load_params
from shrinkflow.data import DataError, builtin_table, csv_spec, stratified_split, table_to_arrays
from tasks.services import dag, io
from tasks.services.catalog import Catalog, tree_digest
from tasks.services.validation import DataValidationError
from tasks.stages.prepare import run_prepare
from tests.conftest import TINY, copy_project, unlabeled_csv_params

CSV_SOURCE = ("prepare.source=csv", "prepare.csv.path=data/external/user.csv",
              "prepare.csv.target=label")
FEATURES = ["length", "width", "depth"]


def user_table(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """A user table: three numeric features and the text label 'yes' or 'no' (length > 0)."""
    features = np.random.default_rng(seed).normal(size=(rows, len(FEATURES)))
    labels = np.where(features[:, 0] > 0, "yes", "no")
    return pd.DataFrame(features, columns=FEATURES).assign(label=labels)


def write_user_csv(project: Path, frame: pd.DataFrame | None, text: str | None = None) -> None:
    """data/external/user.csv holding `frame` (or the raw `text`)."""
    path = project / "data" / "external" / "user.csv"
    if frame is not None:
        frame.to_csv(path, index=False)
    else:
        path.write_text(text or "")


def csv_params(project: Path, frame: pd.DataFrame | None, text: str | None = None):
    """Params pointing prepare at data/external/user.csv holding `frame` (or raw `text`)."""
    write_user_csv(project, frame, text)
    return load_params(project / "params.yaml", overrides=[*TINY, *CSV_SOURCE])


def pool_params(project: Path, pool: pd.DataFrame):
    """Params preparing the user table with `pool` as its unlabeled CSV."""
    write_user_csv(project, user_table())
    return unlabeled_csv_params(project, pool, *CSV_SOURCE)


def _outputs(project: Path) -> dict[str, str]:
    catalog = Catalog.at(project)
    return {path: tree_digest(catalog.path(path)) for path in dag.stage("prepare").outputs}


def refused(project: Path, params) -> DataValidationError | DataError:
    """The error of a prepare run that must be refused, having checked that it left the previous
    outputs as they were."""
    before = _outputs(project)
    with pytest.raises((DataValidationError, DataError)) as raised:
        run_prepare(params, project)
    assert _outputs(project) == before, "a refused input must not touch the previous outputs"
    return raised.value


def _mlflow_run(run_id: str):
    from mlflow import MlflowClient

    return MlflowClient().get_run(run_id)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A project prepared from digits with the TINY params: (project, params, summary)."""
    project = copy_project(tmp_path_factory.mktemp("digits") / "project")
    params = load_params(project / "params.yaml", overrides=TINY)
    return project, params, run_prepare(params, project)


@pytest.fixture(scope="module")
def prepared_csv(tmp_path_factory):
    """A project prepared from `user_table()` as a user CSV: (project, summary)."""
    project = copy_project(tmp_path_factory.mktemp("user") / "project")
    return project, run_prepare(csv_params(project, user_table()), project)


# ---------------------------------------------------------------------------------------------
# valid sources
# ---------------------------------------------------------------------------------------------
def test_run_prepare__writes_validated_splits_and_tracks_them(digits_run):
    # given the digits source prepared with the TINY params
    project, _, summary = digits_run

    # then: splits, metadata and metrics are on disk
    catalog = Catalog.at(project)
    meta = json.loads(catalog.dataset_file().read_text())
    sizes = {}
    for split in ("train", "val", "test"):
        with np.load(catalog.split_file(split), allow_pickle=False) as arrays:
            assert arrays["x"].shape[1:] == (1, 8, 8), "digits should be stored as 1x8x8 images"
            sizes[split] = len(arrays["y"])
    assert sizes == {"train": 1167, "val": 270, "test": 360}, "split sizes should follow params"
    assert meta["raw_md5"] == summary["raw_md5"]
    assert catalog.raw_table("digits").is_file(), "the raw table should be kept for DVC"
    assert (catalog.data_docs_dir / "index.html").is_file(), "Data Docs should be built"
    metrics = io.read_metrics(catalog, "prepare")
    assert metrics == summary["metrics"] and metrics["unlabeled_rows_dropped"] == 0
    assert json.loads(catalog.metrics_file("prepare").read_text()) == {
        "rows_train": 1167, "rows_val": 270, "rows_test": 360}, "metrics/: the split sizes only"
    # and: the MLflow run holds params, metrics, the DVC digest and the validation report
    run = _mlflow_run(summary["run_id"])
    assert run.data.params["prepare.source"] == "digits"
    assert run.data.metrics["rows_test"] == 360
    assert run.data.tags["dvc.raw_md5"] == summary["raw_md5"]
    from mlflow import MlflowClient

    artifacts = {item.path for item in MlflowClient().list_artifacts(summary["run_id"])}
    assert {"validation.json", "data_docs", "dataset.json"} <= artifacts


def test_run_prepare__is_deterministic(digits_run):
    # given a prepared project
    project, params, first = digits_run
    digest = tree_digest(Catalog.at(project).processed_dir)
    # when it is prepared again with the same params
    second = run_prepare(params, project)
    # then the raw table and the splits are the same
    assert first["raw_md5"] == second["raw_md5"]
    assert tree_digest(Catalog.at(project).processed_dir) == digest, "same params, same splits"


def test_run_prepare__user_csv_with_string_labels_is_prepared(prepared_csv):
    # given a two-class user table with text labels, prepared
    project, summary = prepared_csv
    # then its classes are the sorted labels and its features a flat vector
    meta = json.loads(Catalog.at(project).dataset_file().read_text())
    assert meta["spec"]["classes"] == ["no", "yes"]
    assert meta["spec"]["kind"] == "tabular" and meta["spec"]["input_shape"] == [3]
    assert summary["dataset"] == "user"


# ---------------------------------------------------------------------------------------------
# refused sources
# ---------------------------------------------------------------------------------------------
BROKEN = {
    "inf": (lambda f: f.assign(width=f["width"].where(f.index != 7, np.inf)),
            ["width", "outside"]),
    "missing_column": (lambda f: f.drop(columns=["label"]), ["label", "no column"]),
    "wrong_dtype": (lambda f: f.assign(depth=f["depth"].astype(object).where(f.index != 3, "abc")),
                    ["depth", "numbers and text (e.g. 'abc' at row 3)", "prepare.csv.drop"]),
    "too_few_rows": (lambda f: f.head(20), ["row count", "20"]),
    # pandas would read the second 'width' as 'width.1'
    "repeated_column": (lambda f: f.rename(columns={"depth": "width"}),
                        ["prepare.csv.path", "user.csv", "['width']"]),
    "single_class": (lambda f: f.assign(label="yes"),
                     ["prepare.csv.path", "user.csv", "'label'", "single class", "'yes'"]),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_run_prepare__broken_csv_is_rejected_and_previous_outputs_kept(prepared_csv, kind):
    # given: a good run's outputs
    project, _ = prepared_csv
    breaker, words = BROKEN[kind]

    # when: the source becomes a broken CSV, then: it is refused, nothing downstream changed
    error = refused(project, csv_params(project, breaker(user_table())))

    # and: the error names what is wrong, and a failed validation keeps its report
    for word in words:
        assert word in str(error), f"the error should mention {word!r}: {error}"
    if isinstance(error, DataValidationError):
        reports = json.loads(Catalog.at(project).validation_report.read_text())
        assert reports[-1] == error.report.to_dict()
        assert Path(error.report.docs_index).is_file()


def test_run_prepare__a_missing_value_is_refused_when_the_user_says_so(prepared_csv):
    project, _ = prepared_csv
    table = user_table().assign(width=lambda f: f["width"].where(f.index != 5, np.nan))
    write_user_csv(project, table)
    params = load_params(project / "params.yaml",
                         overrides=[*TINY, *CSV_SOURCE, "prepare.csv.missing=refuse"])
    error = refused(project, params)
    assert "column 'width'" in str(error) and "1 of 120 values are null" in str(error)


def test_run_prepare__label_out_of_range_in_builtin_table_is_rejected(prepared_csv, monkeypatch):
    # given: the built-in digits table with one label 10 (classes are 0..9), cut to four pixels to
    # keep the suite small (the label check is the built-in one all the same)
    project, _ = prepared_csv
    frame, spec = builtin_table(PrepareConfig())
    pixels = spec.feature_columns[:4]
    broken = frame[[*pixels, "label"]].copy()
    broken.loc[4, "label"] = 10
    small = replace(spec, kind="tabular", input_shape=(4,), feature_columns=pixels)
    monkeypatch.setattr("shrinkflow.data.builtin_table", lambda cfg: (broken, small))
    # when / then: it is refused naming the column and the value, the outputs untouched
    error = refused(project, load_params(project / "params.yaml", overrides=TINY))
    assert isinstance(error, DataValidationError)
    assert "column 'label'" in str(error) and "10 at row 4" in str(error)


# ---------------------------------------------------------------------------------------------
# columns chosen, row identifiers refused, lone predictors warned about
# ---------------------------------------------------------------------------------------------
def _sorted_by_class(rows: int = 120) -> pd.DataFrame:
    """`user_table()` with its rows sorted by label, as many public tables are."""
    return user_table(rows).sort_values("label", kind="stable").reset_index(drop=True)


def _r_export(frame: pd.DataFrame) -> str:
    """`frame` as R's write.csv writes it: an empty first header cell, row names 1..N."""
    return frame.set_axis(range(1, len(frame) + 1)).to_csv(index_label="")


EXPORTS = {  # a user table as exported with a row identifier, and the column pandas reads it as
    "r_write_csv": (lambda f: _r_export(f), "Unnamed: 0"),
    "pandas_to_csv": (lambda f: f.to_csv(), "Unnamed: 0"),
    "id_column": (lambda f: f.assign(id=np.random.default_rng(0).permutation(len(f)) + 1000)
                  .to_csv(index=False), "id"),
}


@pytest.mark.parametrize("kind", sorted(EXPORTS))
def test_run_prepare__a_row_identifier_is_refused_naming_it_and_the_way_out(prepared_csv, kind):
    # given a table sorted by class, exported with a column that numbers its rows
    project, _ = prepared_csv
    export, column = EXPORTS[kind]
    write_user_csv(project, None, export(_sorted_by_class()))
    params = load_params(project / "params.yaml", overrides=[*TINY, *CSV_SOURCE])
    # when / then it is refused before anything is written, naming the column and both ways out
    error = refused(project, params)
    assert isinstance(error, DataValidationError)
    assert f"column '{column}': expect_features_to_not_be_row_identifiers" in str(error)
    assert f"prepare.csv.drop: ['{column}']" in str(error)
    assert f"prepare.csv.allow_identifier: ['{column}']" in str(error)


def test_run_prepare__a_table_with_identifiers_dropped_runs_and_says_what_it_left_out(project):
    # given a pandas export sorted by class, with an id column, a legitimate integer feature with
    # repeats, a note column, two rows without a label, and `length` deciding the label alone
    table = _sorted_by_class().assign(
        id=lambda f: np.arange(len(f)) + 1, rooms=lambda f: np.arange(len(f)) % 7,
        note="measured")
    table.loc[[3, 50], "label"] = None
    write_user_csv(project, None, table.to_csv())
    params = load_params(project / "params.yaml", overrides=[
        *TINY, *CSV_SOURCE, "prepare.csv.drop=['Unnamed: 0', id, note]"])
    # when
    summary = run_prepare(params, project)
    # then the features are the columns not dropped, the raw table keeps them and the labeled rows
    catalog = Catalog.at(project)
    meta = json.loads(catalog.dataset_file().read_text())
    assert meta["spec"]["feature_columns"] == [*FEATURES, "rooms"]
    raw = pd.read_csv(catalog.raw_table("user"))
    assert list(raw.columns) == [*FEATURES, "rooms", "label"] and len(raw) == 118
    # and the rows without a label are counted
    assert summary["metrics"]["rows_without_label"] == 2
    assert _mlflow_run(summary["run_id"]).data.metrics["rows_without_label"] == 2
    # and `length`, which decides the label alone, is a warning: in the report, the run's tags
    # and the Data Docs, beside the identifier expectation that passed
    (raw_report, *_) = json.loads(catalog.validation_report.read_text())
    assert any("column 'length' alone predicts the label" in warning
               for warning in raw_report["warnings"]), raw_report["warnings"]
    assert _mlflow_run(summary["run_id"]).data.tags["data.lone_predictors"] == "length"
    docs = "".join(page.read_text() for page in (catalog.data_docs_dir / "validations").rglob(
        "raw-user-columns.html"))
    assert "No feature column alone predicts the label" in docs
    assert "No feature column is a row identifier" in docs


def test_run_prepare__an_identifier_the_user_allows_is_a_feature(project):
    # given a column of distinct consecutive integers the user says is a real feature
    table = user_table().assign(rank=lambda f: np.arange(len(f)))
    write_user_csv(project, table)
    params = load_params(project / "params.yaml", overrides=[
        *TINY, *CSV_SOURCE, "prepare.csv.allow_identifier=[rank]"])
    # when / then it is prepared, with the column among the features
    run_prepare(params, project)
    meta = json.loads(Catalog.at(project).dataset_file().read_text())
    assert meta["spec"]["feature_columns"] == [*FEATURES, "rank"]


def test_run_prepare__a_label_column_without_values_is_refused(prepared_csv):
    project, _ = prepared_csv
    error = refused(project, csv_params(project, user_table().assign(label=None)))
    assert "the label column 'label'" in str(error) and "has no values" in str(error)


@pytest.mark.parametrize("text, words", [
    ("", ["empty"]),
    ("a,b,label\n", ["no rows"]),
])
def test_run_prepare__empty_csv_is_rejected_naming_the_file(project, text, words):
    # given a user CSV without rows (or without anything)
    params = csv_params(project, None, text)
    # when / then it is refused naming the file, before anything is written
    with pytest.raises(DataError) as raised:
        run_prepare(params, project)
    assert "user.csv" in str(raised.value)
    for word in words:
        assert word in str(raised.value)
    assert not Catalog.at(project).processed_dir.exists()


def test_run_prepare__missing_csv_names_the_key_and_path(project):
    # given a user CSV that does not exist, when / then the error names the key and the path
    params = load_params(project / "params.yaml", overrides=[
        "prepare.source=csv", "prepare.csv.path=data/external/nope.csv"])
    with pytest.raises(DataError, match=r"prepare\.csv\.path.*nope\.csv"):
        run_prepare(params, project)


# ---------------------------------------------------------------------------------------------
# unlabeled pool
# ---------------------------------------------------------------------------------------------
def _stored_pool(project: Path) -> tuple[np.ndarray, dict]:
    """The stored unlabeled inputs, and dataset.json."""
    catalog = Catalog.at(project)
    with np.load(catalog.unlabeled_file(), allow_pickle=False) as arrays:
        assert set(arrays.files) == {"x"}, "an unlabeled pool holds inputs only"
        return arrays["x"], json.loads(catalog.dataset_file().read_text())


def _normalized(frame: pd.DataFrame, meta: dict) -> np.ndarray:
    """The features of `frame` normalized with the training split's statistics in `meta`."""
    mean, std = (np.asarray(meta["normalizer"][key], np.float32) for key in ("mean", "std"))
    return (frame[FEATURES].to_numpy(np.float32) - mean) / std


def test_run_prepare__unlabeled_csv_is_validated_normalized_and_stored(project):
    # given a pool of 300 fresh rows, with the label column still in it (it is dropped)
    pool = user_table(rows=300, seed=1)
    # when
    summary = run_prepare(pool_params(project, pool), project)
    # then the inputs are stored with the training split's normalization, without labels
    stored, meta = _stored_pool(project)
    np.testing.assert_allclose(stored, _normalized(pool, meta), rtol=1e-6)
    assert meta["rows_unlabeled"] == 300 and summary["metrics"]["rows_unlabeled"] == 300
    assert summary["metrics"]["unlabeled_rows_dropped"] == 0
    report = json.loads(Catalog.at(project).validation_report.read_text())
    assert [entry["name"] for entry in report] == ["raw:user", "unlabeled:user", "processed:user"]


def test_run_prepare__unlabeled_rows_identical_to_validation_or_test_rows_are_dropped(
        project, caplog):
    # given a pool of 3 training rows, copies of 5 validation rows, 40 fresh rows and copies of
    # 7 test rows; the split depends on the labels and the seed only, so splitting the row
    # numbers says which rows go where
    table = user_table()
    cfg = load_params(project / "params.yaml", overrides=list(CSV_SOURCE)).prepare
    _, y = table_to_arrays(table, csv_spec(table, "label", "user"))
    rows = stratified_split(np.arange(len(table))[:, None], y, cfg.val_fraction,
                            cfg.test_fraction, cfg.seed)
    train, val, test = (table.iloc[split.x[:, 0]] for split in (rows.train, rows.val, rows.test))
    fresh = user_table(rows=40, seed=1)
    pool = pd.concat([train.head(3), val.head(5), fresh, test.head(7)])
    # when
    summary = run_prepare(pool_params(project, pool), project)
    # then the copies are left out of the stored pool, which keeps the other rows in order
    stored, meta = _stored_pool(project)
    kept = pd.concat([train.head(3), fresh])
    np.testing.assert_allclose(stored, _normalized(kept, meta), rtol=1e-6)
    # and the count is logged, in reports/prepare/metrics.json and MLflow
    assert "prepare.unlabeled_csv: dropped 12 rows identical to validation or test rows" in (
        caplog.text)
    metrics = io.read_metrics(Catalog.at(project), "prepare")
    assert (metrics["unlabeled_rows_dropped"], metrics["rows_unlabeled"]) == (12, 43)
    assert _mlflow_run(summary["run_id"]).data.metrics["unlabeled_rows_dropped"] == 12


@pytest.mark.parametrize("breaker, words", [
    (lambda f: f.drop(columns=["depth"]), ["unlabeled data", "depth", "column missing"]),
    (lambda f: f.assign(extra=1.0), ["prepare.unlabeled_csv", "unlabeled.csv", "extra"]),
    (lambda f: f.rename(columns={"depth": "width"}),
     ["prepare.unlabeled_csv", "unlabeled.csv", "['width']"]),
], ids=["missing_column", "extra_column", "repeated_column"])
def test_run_prepare__broken_unlabeled_csv_is_rejected_and_previous_outputs_kept(
        prepared_csv, breaker, words):
    # given: a good run's outputs (without a pool), when: a broken pool is added
    project, _ = prepared_csv
    pool = breaker(user_table(rows=100, seed=2).drop(columns="label"))
    # then: it is refused naming what is wrong, nothing downstream changed, no pool stored
    error = refused(project, pool_params(project, pool))
    for word in words:
        assert word in str(error), f"the error should mention {word!r}: {error}"
    assert not Catalog.at(project).unlabeled_file().exists()


def test_prepare_config__unlabeled_samples_need_mnist1d_and_exclude_a_csv_pool():
    # generated signals for another source, or besides a CSV pool, are refused up front
    with pytest.raises(ValueError, match=r"unlabeled_samples.*'digits'.*unlabeled_csv"):
        PrepareConfig(unlabeled_samples=100)
    with pytest.raises(ValueError, match="one of prepare.unlabeled_samples"):
        PrepareConfig(source="mnist1d", unlabeled_samples=100, unlabeled_csv="pool.csv")


@pytest.mark.parametrize(("csv", "says"), [
    ({"target": "y", "drop": ["y"]}, "prepare.csv.drop names the target column 'y'"),
    ({"target": "y", "features": ["a", "y"]}, "prepare.csv.features names the target column 'y'"),
    ({"features": ["a", "b"], "drop": ["b", "c"]}, "features and prepare.csv.drop both name ['b']"),
])
def test_csv_source__columns_chosen_twice_or_the_target_as_a_feature_are_refused(csv, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        PrepareConfig(source="csv", csv={"path": "t.csv", **csv})


def test_run_prepare__an_unlabeled_csv_may_keep_the_dropped_columns(project):
    # given a table with an id column the user drops, and a pool that has it too
    table = user_table().assign(id=lambda f: np.arange(len(f)))
    write_user_csv(project, table)
    pool = user_table(rows=50, seed=3).drop(columns="label").assign(id=lambda f: np.arange(len(f)))
    params = unlabeled_csv_params(project, pool, *CSV_SOURCE, "prepare.csv.drop=[id]")
    # when / then the pool is stored without it
    run_prepare(params, project)
    stored, _ = _stored_pool(project)
    assert stored.shape == (50, 3)


def test_run_prepare__mnist1d_unlabeled_samples_are_generated(project):
    # given mnist1d with 200 unlabeled signals generated from a seed of their own
    params = load_params(project / "params.yaml", overrides=[
        *TINY, "prepare.source=mnist1d", "prepare.mnist1d_samples=500",
        "prepare.unlabeled_samples=200"])
    # when
    summary = run_prepare(params, project)
    # then they are stored, none of them a validation or test signal
    with np.load(Catalog.at(project).unlabeled_file(), allow_pickle=False) as arrays:
        assert arrays["x"].shape == (200, 1, 40)
    assert summary["metrics"]["unlabeled_rows_dropped"] == 0
