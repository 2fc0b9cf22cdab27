"""Stage `prepare`: real files, a real SQLite MLflow store, Great Expectations on broken data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shrinkflow.config import PrepareConfig, load_params
from shrinkflow.data import DataError, builtin_table
from tasks.catalog import Catalog, tree_digest
from tasks.prepare import run_prepare
from tasks.validation import DataValidationError
from tests.conftest import TINY, unlabeled_csv_params


@pytest.fixture(scope="module")
def digits_frame() -> pd.DataFrame:
    return builtin_table(PrepareConfig())[0]


def csv_params(project: Path, frame: pd.DataFrame | None, text: str | None = None):
    """Params pointing prepare at data/external/user.csv holding `frame` (or raw `text`)."""
    path = project / "data" / "external" / "user.csv"
    if frame is not None:
        frame.to_csv(path, index=False)
    else:
        path.write_text(text or "")
    return load_params(project / "params.yaml", overrides=[
        *TINY, "prepare.source=csv", "prepare.csv.path=data/external/user.csv",
        "prepare.csv.target=label"])


def _mlflow_run(run_id: str):
    from mlflow import MlflowClient

    return MlflowClient().get_run(run_id)


def test_run_prepare__writes_validated_splits_and_tracks_them(project, tiny_params):
    # when
    summary = run_prepare(tiny_params, project)

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
    # and: the MLflow run holds params, metrics, the DVC digest and the validation report
    run = _mlflow_run(summary["run_id"])
    assert run.data.params["prepare.source"] == "digits"
    assert run.data.metrics["rows_test"] == 360
    assert run.data.tags["dvc.raw_md5"] == summary["raw_md5"]
    from mlflow import MlflowClient

    artifacts = {item.path for item in MlflowClient().list_artifacts(summary["run_id"])}
    assert {"validation.json", "data_docs", "dataset.json"} <= artifacts


def test_run_prepare__is_deterministic(project, tiny_params):
    # given / when: the same params twice
    first = run_prepare(tiny_params, project)
    digest = tree_digest(Catalog.at(project).processed_dir)
    second = run_prepare(tiny_params, project)
    # then
    assert first["raw_md5"] == second["raw_md5"]
    assert tree_digest(Catalog.at(project).processed_dir) == digest, "same params, same splits"


BROKEN = {
    "nan": (lambda f: f.assign(px_0_3=f["px_0_3"].where(f.index != 5, np.nan)),
            ["px_0_3", "null"]),
    "inf": (lambda f: f.assign(px_2_2=f["px_2_2"].where(f.index != 7, np.inf)),
            ["px_2_2"]),
    "missing_column": (lambda f: f.drop(columns=["label"]), ["label", "not found"]),
    "wrong_dtype": (lambda f: f.assign(px_1_1=f["px_1_1"].astype(object).where(f.index != 3, "abc")),
                    ["px_1_1", "dtype"]),
    "too_few_rows": (lambda f: f.head(20), ["row count", "20"]),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_run_prepare__broken_csv_is_rejected_and_previous_outputs_kept(
        project, tiny_params, digits_frame, kind):
    # given: a good run's outputs
    run_prepare(tiny_params, project)
    catalog = Catalog.at(project)
    before = {path: tree_digest(path) for path in catalog.stage_outputs("prepare")}
    breaker, words = BROKEN[kind]

    # when: the source becomes a broken CSV
    params = csv_params(project, breaker(digits_frame.copy()))
    with pytest.raises((DataValidationError, DataError)) as raised:
        run_prepare(params, project)

    # then: the error names what is wrong, nothing downstream changed, the report is kept
    message = str(raised.value)
    for word in words:
        assert word in message, f"the error should mention {word!r}: {message}"
    after = {path: tree_digest(path) for path in catalog.stage_outputs("prepare")}
    assert after == before, "a rejected input must not touch the previous outputs"
    assert (catalog.data_docs_dir / "index.html").is_file() or kind == "missing_column"


def test_run_prepare__label_out_of_range_in_builtin_table_is_rejected(project, tiny_params,
                                                                        monkeypatch, digits_frame):
    # given: the built-in digits table with one label 10 (classes are 0..9)
    broken = digits_frame.copy()
    broken.loc[4, "label"] = 10
    spec = builtin_table(PrepareConfig())[1]
    monkeypatch.setattr("shrinkflow.data.builtin_table", lambda cfg: (broken, spec))
    # when / then
    with pytest.raises(DataValidationError) as raised:
        run_prepare(tiny_params, project)
    assert "label" in str(raised.value) and "10" in str(raised.value)
    assert not Catalog.at(project).processed_dir.exists(), "nothing should be written"


@pytest.mark.parametrize("text, words", [
    ("", ["empty"]),
    ("a,b,label\n", ["no rows"]),
])
def test_run_prepare__empty_csv_is_rejected_naming_the_file(project, text, words):
    params = csv_params(project, None, text)
    with pytest.raises(DataError) as raised:
        run_prepare(params, project)
    assert "user.csv" in str(raised.value)
    for word in words:
        assert word in str(raised.value)
    assert not Catalog.at(project).processed_dir.exists()


def test_run_prepare__missing_csv_names_the_key_and_path(project):
    params = load_params(project / "params.yaml", overrides=[
        "prepare.source=csv", "prepare.csv.path=data/external/nope.csv"])
    with pytest.raises(DataError, match=r"prepare\.csv\.path.*nope\.csv"):
        run_prepare(params, project)


def test_run_prepare__user_csv_with_string_labels_is_prepared(project, tmp_path):
    # given: a small two-class table with text labels
    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 3))
    labels = np.where(features[:, 0] > 0, "yes", "no")
    frame = pd.DataFrame(features, columns=["a", "b", "c"]).assign(label=labels)
    # when
    summary = run_prepare(csv_params(project, frame), project)
    # then
    meta = json.loads(Catalog.at(project).dataset_file().read_text())
    assert meta["spec"]["classes"] == ["no", "yes"]
    assert meta["spec"]["kind"] == "tabular" and meta["spec"]["input_shape"] == [3]
    assert summary["dataset"] == "user"


# ---------------------------------------------------------------------------------------------
# unlabeled pool
# ---------------------------------------------------------------------------------------------
def test_run_prepare__unlabeled_csv_is_validated_normalized_and_stored(project, digits_frame):
    # given a pool of 300 digits images, with the label column still in it (it is dropped)
    pool = digits_frame.sample(300, random_state=0)
    # when
    summary = run_prepare(unlabeled_csv_params(project, pool), project)
    # then the inputs are stored with the training split's normalization, without labels
    catalog = Catalog.at(project)
    meta = json.loads(catalog.dataset_file().read_text())
    with np.load(catalog.unlabeled_file(), allow_pickle=False) as arrays:
        assert set(arrays.files) == {"x"}, "an unlabeled pool holds inputs only"
        stored = arrays["x"]
    mean, std = (np.asarray(meta["normalizer"][key], np.float32) for key in ("mean", "std"))
    raw = pool.drop(columns="label").to_numpy(np.float32).reshape(300, 1, 8, 8)
    np.testing.assert_allclose(stored, (raw - mean) / std, rtol=1e-6)
    assert meta["rows_unlabeled"] == 300 and summary["metrics"]["rows_unlabeled"] == 300
    report = json.loads(catalog.validation_report.read_text())
    assert [entry["name"] for entry in report] == ["raw:digits", "unlabeled:digits",
                                                   "processed:digits"]


@pytest.mark.parametrize("breaker, words", [
    (lambda f: f.assign(px_0_3=f["px_0_3"].where(f.index != f.index[4], np.nan)),
     ["unlabeled data", "px_0_3", "null"]),
    (lambda f: f.drop(columns=["px_2_2"]), ["unlabeled data", "px_2_2", "column missing"]),
    (lambda f: f.assign(extra=1.0), ["prepare.unlabeled_csv", "unlabeled.csv", "extra"]),
])
def test_run_prepare__broken_unlabeled_csv_is_rejected_and_previous_outputs_kept(
        project, tiny_params, digits_frame, breaker, words):
    run_prepare(tiny_params, project)
    catalog = Catalog.at(project)
    before = {path: tree_digest(path) for path in catalog.stage_outputs("prepare")}
    params = unlabeled_csv_params(project, breaker(digits_frame.head(100).drop(columns="label")))
    with pytest.raises((DataValidationError, DataError)) as raised:
        run_prepare(params, project)
    for word in words:
        assert word in str(raised.value), f"the error should mention {word!r}: {raised.value}"
    assert {path: tree_digest(path) for path in catalog.stage_outputs("prepare")} == before
    assert not catalog.unlabeled_file().exists()


def test_prepare_config__unlabeled_samples_need_mnist1d_and_exclude_a_csv_pool():
    with pytest.raises(ValueError, match=r"unlabeled_samples.*'digits'.*unlabeled_csv"):
        PrepareConfig(unlabeled_samples=100)
    with pytest.raises(ValueError, match="one of prepare.unlabeled_samples"):
        PrepareConfig(source="mnist1d", unlabeled_samples=100, unlabeled_csv="pool.csv")


def test_run_prepare__mnist1d_unlabeled_samples_are_generated(project):
    params = load_params(project / "params.yaml", overrides=[
        *TINY, "prepare.source=mnist1d", "prepare.mnist1d_samples=500",
        "prepare.unlabeled_samples=200"])
    run_prepare(params, project)
    with np.load(Catalog.at(project).unlabeled_file(), allow_pickle=False) as arrays:
        assert arrays["x"].shape == (200, 1, 40)
