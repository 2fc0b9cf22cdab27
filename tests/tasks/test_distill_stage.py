"""Stage `distill`: a student with and without the teacher, both saved, the gain recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shrinkflow.config import load_params
from tasks.services import io
from tasks.services.candidates import load_torch, read_manifest
from tasks.services.catalog import Catalog
from tasks.services.io import load_processed
from tasks.services.tracking import run_that_made
from tasks.stages.distill import run_distill
from tests.conftest import REPO, TINY, copy_trained


def test_distill__trains_both_students_and_records_the_gain(trained_project, tiny_params):
    from mlflow import MlflowClient

    project = trained_project
    # when
    summary = run_distill(tiny_params, project)
    # then
    folder = Catalog.at(project).models_dir("distill")
    candidates = read_manifest(folder, "distill")
    assert [c.name for c in candidates] == ["student-kd", "student-scratch"]
    arch, _ = load_torch(folder / "student-kd", "distill")
    assert arch.widths == (4, 8), "the student should have distill.student's widths"
    metrics = io.read_metrics(Catalog.at(project), "distill")
    rows = io.read_candidates(Catalog.at(project), "distill")["candidates"]
    for split in ("", "val_"):
        gain = rows["student-kd"][f"{split}accuracy"] - rows["student-scratch"][f"{split}accuracy"]
        assert abs(metrics[f"student.{split}kd_gain_pp"] - 100 * gain) < 1e-9
    assert metrics["unlabeled_rows"] == 0 and metrics["candidates"] == 2
    assert metrics.items() <= summary["metrics"].items()
    # and: metrics/distill.json shows the count and the best student on validation
    best = max(rows.values(), key=lambda row: row["val_accuracy"])
    assert json.loads(Catalog.at(project).metrics_file("distill").read_text()) == {
        "candidates": 2, "val_accuracy": best["val_accuracy"], "accuracy": best["accuracy"]}
    # and: each candidate's run sits in the project's experiment, under the stage's run
    client = MlflowClient()
    stage = client.get_run(summary["run_id"])
    assert client.get_experiment(stage.info.experiment_id).name == tiny_params.project.experiment
    for candidate in candidates:
        run = client.get_run(run_that_made(project, stage.info.experiment_id,
                                           project / candidate.onnx))
        assert run.info.experiment_id == stage.info.experiment_id, \
            f"{candidate.name} should be in the project's experiment"
        assert run.data.tags["mlflow.parentRunId"] == summary["run_id"]
        assert run.data.metrics["val_accuracy"] == rows[candidate.name]["val_accuracy"]


UNLABELED_ROWS = 400


@pytest.fixture(scope="module")
def pooled(trained_tiny, tmp_path_factory):
    """The trained tiny project with a pool of unlabeled inputs as `prepare` stores them (prepare's
    own handling of the pool is tested with the prepare stage)."""
    project = copy_trained(trained_tiny, tmp_path_factory.mktemp("pooled") / "project")
    catalog = Catalog.at(project)
    train_x = load_processed(catalog)[0].train.x
    rows = train_x[:UNLABELED_ROWS]
    noisy = rows + np.random.default_rng(0).normal(0, 0.1, rows.shape)
    np.savez(catalog.unlabeled_file(), x=noisy.astype(np.float32))
    return project


def test_distill__extra_students_and_the_unlabeled_pool(pooled):
    # given a pool of unlabeled digits, and an MLP student beside the CNN one
    params = load_params(pooled / "params.yaml", overrides=[
        *TINY, "distill.extra_students={mlp: {family: mlp, depth: 1, width: 32}}"])
    # when
    run_distill(params, pooled)
    # then every student is trained with and without the teacher, and with the teacher on the
    # labeled rows alone; each gain recorded, split into the soft labels' and the pool's share
    folder = Catalog.at(pooled).models_dir("distill")
    assert [c.name for c in read_manifest(folder, "distill")] == [
        "student-kd", "student-kd-labeled", "student-scratch", "mlp-kd", "mlp-kd-labeled",
        "mlp-scratch"]
    arch, _ = load_torch(folder / "mlp-kd", "distill")
    assert arch.family == "mlp" and arch.widths == (32,)
    metrics = io.read_metrics(Catalog.at(pooled), "distill")
    rows = io.read_candidates(Catalog.at(pooled), "distill")["candidates"]
    for student in ("student", "mlp"):
        for split in ("val_", ""):
            soft = metrics[f"{student}.{split}soft_label_gain_pp"]
            assert soft == pytest.approx(100 * (rows[f"{student}-kd-labeled"][f"{split}accuracy"]
                                                - rows[f"{student}-scratch"][f"{split}accuracy"]))
            assert soft + metrics[f"{student}.{split}pool_gain_pp"] == pytest.approx(
                metrics[f"{student}.{split}kd_gain_pp"]), "the two shares add up to the gain"
    assert metrics["unlabeled_rows"] == UNLABELED_ROWS, \
        "the distilled students learn from every unlabeled row prepare kept"


def test_distill__the_pool_can_be_left_out(pooled):
    params = load_params(pooled / "params.yaml", overrides=[
        *TINY, "distill.use_unlabeled=false", "distill.train_without_teacher=false"])
    run_distill(params, pooled)
    assert Catalog.at(pooled).unlabeled_file().is_file(), "prepare wrote the pool"
    metrics = io.read_metrics(Catalog.at(pooled), "distill")
    assert metrics["unlabeled_rows"] == 0, "distill.use_unlabeled=false leaves it out"
    assert "student.kd_gain_pp" not in metrics, "no student alone, no gain"


def test_distill__disabled_writes_an_empty_manifest(trained_project, tiny_params):
    params = tiny_params.model_copy(update={"distill": tiny_params.distill.model_copy(
        update={"enabled": False})})
    run_distill(params, trained_project)
    assert read_manifest(Catalog.at(trained_project).models_dir("distill"), "distill") == []


def test_distill__seeds_train_the_same_student_from_other_starts(pooled):
    catalog = Catalog.at(pooled)
    folder = catalog.models_dir("distill")
    overrides = [*TINY, "distill.use_unlabeled=false", "distill.train_without_teacher=false"]
    run_distill(load_params(pooled / "params.yaml", overrides=overrides), pooled)
    _, single = load_torch(folder / "student-kd", "distill")
    # when
    run_distill(load_params(pooled / "params.yaml", overrides=[*overrides, "distill.seeds=3"]), pooled)
    # then
    assert [c.name for c in read_manifest(folder, "distill")] == [
        "student-kd", "student-kd-seed1", "student-kd-seed2"]
    weights = {name: load_torch(folder / name, "distill")[1].state_dict()
               for name in ("student-kd", "student-kd-seed1", "student-kd-seed2")}
    first = weights["student-kd"]
    assert all(np.array_equal(first[key], single.state_dict()[key]) for key in first), \
        "the first seed is the student a one-seed run trains"
    for other in ("student-kd-seed1", "student-kd-seed2"):
        assert not all(np.array_equal(first[key], weights[other][key]) for key in first), \
            f"{other} should start from other weights"
    rows = io.read_candidates(catalog, "distill")["candidates"]
    assert {"student-kd-seed1", "student-kd-seed2"} <= rows.keys()


def test_a_student_of_its_own_seeds_overrides_distill_seeds():
    from tasks.stages.distill import _variants

    params = load_params(REPO / "params.yaml", overrides=[
        "distill.extra_students={tiny: {width: 4, seeds: 3}}", "distill.seeds=1"])
    names = [variant.candidate for variant in _variants(params.distill)]
    assert names == ["student-kd", "student-scratch", "tiny-kd", "tiny-kd-seed1", "tiny-kd-seed2",
                     "tiny-scratch"]
