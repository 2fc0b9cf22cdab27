"""shrinkflow.user_models: a team's own class or a torchvision network as the teacher, fitted to
the data, given trained weights safely, pruned and rebuilt from its class."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shrinkflow.config import BaselineConfig, ModelConfig, StructuredPruneConfig, TrainConfig
from shrinkflow.data import Split
from shrinkflow.export import adopt_onnx, export_onnx
from shrinkflow.models import Architecture, architecture_for, build_for_data, build_model, load_model
from shrinkflow.prune.structured import architecture_of, prune_structured
from shrinkflow.train import fit
from shrinkflow.user_models import (
    ModelError,
    OnnxTeacher,
    build_torchvision,
    check_outputs,
    import_class,
    load_weights,
)

RESIDUAL = "tests.core.nets:ResidualNet"


def _custom(shape: tuple[int, ...] = (3, 16, 16), classes: int = 4) -> Architecture:
    return architecture_for(
        ModelConfig(family="custom", class_path=RESIDUAL,
                    init_args={"in_channels": shape[0], "n_classes": classes, "width": 8}),
        "image", shape, classes)


# ---------------------------------------------------------------------------------------------
# configuration and import
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "said"), [
    ({"family": "custom"}, "family 'custom' needs class_path"),
    ({"family": "torchvision"}, "family 'torchvision' needs arch"),
    ({"family": "cnn", "arch": "resnet18"}, "arch is for family 'torchvision'"),
    ({"family": "custom", "class_path": "nets.ResidualNet"}, "is not 'package.module:ClassName'"),
    ({"family": "mlp", "init_args": {"width": 3}}, "init_args is for family 'custom'"),
])
def test_model_keys_belong_to_their_family(given, said):
    with pytest.raises(ValueError, match=said):
        ModelConfig(**given)


def test_zero_epochs_need_weights():
    with pytest.raises(ValueError, match="set weights"):
        BaselineConfig(train=TrainConfig(epochs=0))
    assert BaselineConfig(train=TrainConfig(epochs=0), weights="teacher.pt").train.epochs == 0


@pytest.mark.parametrize(("path", "said"), [
    ("tests.core.no_such_module:Net", "cannot import 'tests.core.no_such_module'"),
    ("tests.core.nets:Missing", "has no 'Missing'"),
    ("tests.core.nets:NOT_A_MODULE", "is not a torch.nn.Module subclass"),
])
def test_a_class_path_that_does_not_name_a_module_class_is_refused_naming_it(path, said):
    with pytest.raises(ModelError, match=said) as caught:
        import_class(path)
    assert "baseline.model.class_path" in str(caught.value)


def test_a_module_that_fails_as_it_runs_is_named(tmp_path: Path, monkeypatch):
    (tmp_path / "broken_nets.py").write_text("import torch\nraise NameError('width')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match="importing 'broken_nets' fails: NameError: width"):
        import_class("broken_nets:Net")


def test_a_students_error_names_its_key():
    student = ModelConfig(family="custom", class_path=RESIDUAL, init_args={"depth": 2})
    with pytest.raises(ModelError, match=r"^distill.student.init_args"):
        build_for_data(student, "image", (1, 8, 8), 10, "distill.student")


def test_init_args_that_do_not_fit_the_class_are_named():
    arch = replace(_custom(), init_args={"depth": 3})
    with pytest.raises(ModelError, match=r"init_args \{'depth': 3\} do not fit"):
        build_model(arch)


def test_a_network_that_does_not_give_one_logit_per_class_is_refused():
    with pytest.raises(ModelError, match=r"to \(2, 1\); it must give one logit per class: \(2, 4\)"):
        check_outputs(import_class("tests.core.nets:Pooled")(), (3, 16, 16), 4, "baseline.model")
    with pytest.raises(ModelError, match=r"fails on a batch of the data's inputs, shape \(2, 1, 8, 8\)"):
        check_outputs(build_model(_custom()), (1, 8, 8), 4, "baseline.model")


# ---------------------------------------------------------------------------------------------
# torchvision networks, fitted to the data
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_a_torchvision_network_takes_the_datas_channels_and_gives_its_classes(name, shape):
    model = build_torchvision(name, shape, 5).eval()
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == shape[0]
    assert stem.stride == (1, 1), "a small image keeps its resolution in the stem"
    assert model(torch.zeros(2, *shape)).shape == (2, 5)


def test_an_unknown_torchvision_name_suggests_the_close_ones():
    with pytest.raises(ModelError, match="did you mean resnet18"):
        build_torchvision("resnet1", (3, 32, 32), 5)


def test_torchvision_networks_need_images():
    with pytest.raises(ModelError, match=r"take images \(C, H, W\)"):
        build_torchvision("resnet18", (30,), 5)


# ---------------------------------------------------------------------------------------------
# trained weights
# ---------------------------------------------------------------------------------------------
def test_weights_that_fit_load_and_give_the_same_answers(tmp_path: Path):
    trained = build_model(_custom()).eval()
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "lightning.ckpt")  # unwrapped
    fresh = build_model(_custom()).eval()
    load_weights(fresh, tmp_path / "lightning.ckpt")
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(fresh(x), trained(x))


def test_weights_that_do_not_fit_are_refused_naming_the_keys(tmp_path: Path):
    state = build_model(_custom()).state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(7, 8)
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ModelError) as caught:
        load_weights(build_model(_custom()), tmp_path / "other.pt")
    said = str(caught.value)
    assert "missing: head.bias" in said and "unexpected: extra.weight" in said
    assert "other shapes: head.weight (7, 8) (the model's (4, 8))" in said


def test_weights_holding_code_are_never_unpickled(tmp_path: Path):
    torch.save({"model": build_model(_custom())}, tmp_path / "pickled.pt")  # a whole module
    with pytest.raises(ModelError, match="weights_only=True"):
        load_weights(build_model(_custom()), tmp_path / "pickled.pt")
    with pytest.raises(ModelError, match="file not found"):
        load_weights(build_model(_custom()), tmp_path / "absent.pt")


def test_zero_epochs_score_the_model_as_it_is():
    model = build_model(_custom())
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    rng = np.random.default_rng(0)
    split = Split(rng.normal(size=(12, 3, 16, 16)).astype(np.float32),
                  rng.integers(0, 4, 12).astype(np.int64))
    result = fit(model, split, split, TrainConfig(epochs=0), progress=False)
    assert result.epochs == 0 and [log.epoch for log in result.history] == [0]
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


# ---------------------------------------------------------------------------------------------
# structured pruning: rebuilt from the class, with the shapes pruning gave it
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [
    _custom(),
    Architecture("torchvision", (3, 16, 16), 4, arch="resnet18"),
    Architecture("torchvision", (3, 16, 16), 4, arch="mobilenet_v3_small"),
], ids=["custom-residual", "resnet18", "mobilenet_v3_small-depthwise"])
def test_a_pruned_network_is_rebuilt_from_its_class_and_answers_the_same(arch, tmp_path: Path):
    torch.manual_seed(0)
    model = build_model(arch).eval()
    x = torch.randn(2, *arch.input_shape)
    pruned = prune_structured(model, x[:1], StructuredPruneConfig(), 0.5)
    # saved as the pipeline saves a candidate: architecture.json and a state dict
    recorded = Architecture.from_dict(json.loads(json.dumps(architecture_of(pruned, arch).to_dict())))
    torch.save(pruned.state_dict(), tmp_path / "model.pt")
    rebuilt = load_model(recorded, torch.load(tmp_path / "model.pt", weights_only=True))
    assert torch.allclose(rebuilt(x), pruned(x), atol=1e-5)
    count = sum(p.numel() for p in rebuilt.parameters())
    assert count < 0.5 * sum(p.numel() for p in model.parameters())



# ---------------------------------------------------------------------------------------------
# an ONNX teacher
# ---------------------------------------------------------------------------------------------
def _exported(tmp_path: Path, batch: str | int = "dynamic") -> tuple[nn.Module, Path]:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    path = tmp_path / "teacher.onnx"
    if batch == "dynamic":
        export_onnx(model, (1, 8, 8), path)
    else:  # a fixed batch axis, as torch's older exporter writes by default
        torch.onnx.export(model, (torch.zeros(batch, 1, 8, 8),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"])
    return model, path


def test_an_onnx_teacher_answers_as_the_model_it_was_exported_from(tmp_path: Path):
    model, path = _exported(tmp_path)
    teacher = OnnxTeacher(path)
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(teacher(x), model(x), atol=1e-5)
    assert list(teacher.parameters()) == []


def test_an_onnx_teacher_that_cannot_take_any_batch_or_is_no_onnx_is_refused(tmp_path: Path):
    _, fixed = _exported(tmp_path, batch=1)
    with pytest.raises(ModelError, match="one input with a dynamic batch axis"):
        OnnxTeacher(fixed)
    (tmp_path / "not.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="ONNX Runtime cannot load"):
        OnnxTeacher(tmp_path / "not.onnx")
    with pytest.raises(ModelError, match="file not found"):
        OnnxTeacher(tmp_path / "absent.onnx")


def test_an_adopted_onnx_file_takes_the_pipelines_names_and_answers_the_same(tmp_path: Path):
    import onnx
    import onnxruntime as ort

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), str(tmp_path / "theirs.onnx"),
                      dynamo=False, input_names=["pixels"], output_names=["scores"],
                      dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}})
    adopt_onnx(tmp_path / "theirs.onnx", tmp_path / "ours.onnx")
    graph = onnx.load(str(tmp_path / "ours.onnx")).graph
    assert [v.name for v in graph.input] == ["input"] and [v.name for v in graph.output] == ["logits"]
    x = torch.randn(3, 1, 8, 8)
    (answer,) = ort.InferenceSession(str(tmp_path / "ours.onnx")).run(None, {"input": x.numpy()})
    assert np.allclose(answer, model(x).detach().numpy(), atol=1e-5)


def test_an_onnx_teacher_is_the_whole_teacher():
    with pytest.raises(ValueError, match="onnx is the whole teacher"):
        BaselineConfig(onnx="teacher.onnx", weights="teacher.pt")
    assert BaselineConfig(onnx="teacher.onnx", train=TrainConfig(epochs=0)).onnx == "teacher.onnx"
