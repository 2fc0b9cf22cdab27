"""Compression recipes: the conditional space, and each method built, stored and scored."""

from __future__ import annotations

import numpy as np
import onnx
import optuna
import pytest
from sklearn.datasets import load_digits

from shrinkflow import models, train
from shrinkflow.config import BaselineConfig, CompressionSearchConfig, ModelConfig
from shrinkflow.data import Split
from shrinkflow.export import export_onnx
from shrinkflow.measure import file_size
from shrinkflow.search import recipe


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    """A small CNN teacher trained 3 epochs on 600 digits (8x8), and the data it saw."""
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    data = recipe.RecipeData(Split(x[:600], y[:600]), Split(x[600:900], y[600:900]), None,
                             "image", (1, 8, 8), 10)
    baseline = BaselineConfig.model_validate({
        "model": {"width": 16, "depth": 2},
        "train": {"epochs": 3, "batch_size": 16, "device": "cpu", "amp": False}})
    arch = models.architecture_for(baseline.model, "image", (1, 8, 8), 10)
    train.seed_everything(0)
    teacher = models.build_model(arch)
    train.fit(teacher, data.train, data.val, baseline.train, progress=False)
    teacher_file = export_onnx(teacher, arch.input_shape,
                               tmp_path_factory.mktemp("teacher") / "teacher.onnx")
    return data, baseline, arch, teacher, file_size(teacher_file)


RECIPES = [
    {"method": "structured", "conv_ratio": 0.5, "linear_ratio": 0.0, "importance": "group_norm",
     "quantization": "int8_static", "calibration": "percentile"},
    {"method": "unstructured", "unstructured_ratio": 0.8, "quantization": "fp32"},
    {"method": "distill", "student_width": 8, "student_depth": 2, "temperature": 4.0,
     "alpha": 0.9, "quantization": "int8_weights"},
    {"method": "structured", "conv_ratio": 0.3, "linear_ratio": 0.0, "importance": "l1",
     "quantization": "ternary"},
]


@pytest.mark.parametrize("values", RECIPES,
                         ids=[f"{values['method']}-{values['quantization']}" for values in RECIPES])
def test_each_method_makes_a_smaller_scored_file(values, digits_setup, tmp_path):
    data, baseline, arch, teacher, teacher_bytes = digits_setup
    cfg = CompressionSearchConfig(epochs=5, steps=1)  # enough for a small student to learn
    model, shrunk_arch, sparse = recipe.shrink(values, teacher, arch, cfg, baseline, data)
    assert sparse == (values["method"] == "unstructured")
    if values["method"] != "unstructured":
        assert sum(shrunk_arch.widths) < sum(arch.widths)
    path = recipe.store(model, shrunk_arch, sparse, values, data.train.x, tmp_path / "r.onnx")
    if values["quantization"] == "ternary":  # hidden weights trained to 2 bits, stored in them
        assert any(init.data_type == onnx.TensorProto.INT2
                   for init in onnx.load(str(path)).graph.initializer)
    scored = recipe.score(path, data.val)
    assert scored["size_bytes"] == file_size(path) < teacher_bytes
    assert 0.3 < scored["val_accuracy"] <= 1.0 and scored["latency_ms"] > 0  # chance is 0.1


@pytest.mark.parametrize("method", ["structured", "unstructured", "distill"])
def test_a_recipe_asks_only_for_what_its_method_needs(method):
    space = CompressionSearchConfig().space.model_copy(update={"method": (method,)})
    study = optuna.create_study(directions=recipe.DIRECTIONS,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    values = recipe.suggest(study.ask(), space)
    expected = {"method", *recipe.METHOD_KEYS[method], "quantization"}
    if values["quantization"] == "int8_static":
        expected.add("calibration")
    assert set(values) == expected
    assert method != "unstructured" or values["quantization"] == "fp32"  # sparse files stay fp32


def test_a_recipe_study_scores_every_trial_on_three_objectives(digits_setup, tmp_path):
    data, baseline, arch, teacher, _ = digits_setup
    cfg = CompressionSearchConfig(epochs=1, steps=1, trials=3)
    study = optuna.create_study(directions=recipe.DIRECTIONS, sampler=recipe.sampler(cfg, 0))
    study.optimize(recipe.objective(cfg, baseline, teacher, arch, data, data.train.x,
                                    tmp_path / "files"), n_trials=3)
    assert [len(trial.values) for trial in study.trials] == [3, 3, 3]
    assert sorted(path.name for path in (tmp_path / "files").iterdir()) == [
        "trial-0.onnx", "trial-1.onnx", "trial-2.onnx"]
    assert all(trial.user_attrs["size_bytes"] == trial.values[1] for trial in study.trials)
    assert study.best_trials


def test_students_keep_the_teachers_family_and_kernel(digits_setup):
    data, baseline, arch, teacher, _ = digits_setup
    values = RECIPES[2]
    model, student_arch, _ = recipe.shrink(values, teacher, arch,
                                           CompressionSearchConfig(epochs=1), baseline, data)
    assert (student_arch.family, student_arch.kernel_size) == (arch.family, arch.kernel_size)
    assert student_arch == models.architecture_for(
        ModelConfig(family=arch.family, depth=2, width=8, kernel_size=arch.kernel_size,
                    dropout=0.0), "image", (1, 8, 8), 10)
    assert isinstance(model, type(teacher))
