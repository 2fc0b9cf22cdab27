"""shrinkflow.export: ONNX export with a dynamic batch axis and ONNX Runtime predictors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shrinkflow.export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_predictor, onnx_session
from shrinkflow.models import Architecture, build_model

ARCHITECTURES = {
    "mlp-table": Architecture("mlp", (30,), 2, (16, 8), dropout=0.1),
    "cnn-1d-signal": Architecture("cnn", (1, 40), 10, (4, 8), kernel_size=5, dropout=0.1),
    "cnn-2d-image": Architecture("cnn", (1, 8, 8), 10, (4, 8), dropout=0.1),
}


@pytest.fixture(scope="module", params=list(ARCHITECTURES), ids=list(ARCHITECTURES))
def exported(request, tmp_path_factory) -> tuple[torch.nn.Module, Architecture, Path]:
    """A model with non-trivial BatchNorm statistics, exported once per architecture."""
    arch = ARCHITECTURES[request.param]
    torch.manual_seed(0)
    model = build_model(arch)
    model.train()
    with torch.no_grad():  # move running statistics away from (0, 1) so BN folding is exercised
        model(torch.randn(64, *arch.input_shape) * 2 + 0.5)
    model.eval()
    path = export_onnx(model, arch.input_shape, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return model, arch, path


def test_the_file_is_the_one_torch_onnx_export_writes(tmp_path):
    import onnx

    from shrinkflow.export import strip_metadata

    # given: a convolutional model (conv, batch norm, pooling, linear) exported twice, then by
    # the public exporter
    arch = ARCHITECTURES["cnn-2d-image"]
    model = build_model(arch).eval()
    first = export_onnx(model, arch.input_shape, tmp_path / "first.onnx")
    again = export_onnx(model, arch.input_shape, tmp_path / "again.onnx")
    public = torch.onnx.export(model, (torch.zeros(2, *arch.input_shape),), dynamo=True,
                               input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                               dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    public.save(str(tmp_path / "public.onnx"))
    # then: one translation table serves every export, and the graphs are the same
    assert again.read_bytes() == first.read_bytes()
    assert strip_metadata(onnx.load(str(tmp_path / "public.onnx"))) == onnx.load(str(first))


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_output_matches_torch_for_any_batch_size(exported, batch):
    # given a model exported with an example batch of 2
    model, arch, path = exported
    x = np.random.default_rng(batch).standard_normal((batch, *arch.input_shape)).astype(np.float32)
    # when ONNX Runtime and torch predict the same inputs (a batch size never seen at export)
    got = onnx_predictor(path)(x)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    # then the logits agree within 1e-4
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4,
                               err_msg=f"ONNX logits should match torch at batch {batch}")


def test_onnx_predictor_returns_float32_logits_of_shape_batch_by_classes(exported):
    _, arch, path = exported
    predict = onnx_predictor(path, threads=1)
    out = predict(np.zeros((3, *arch.input_shape), np.float32))
    assert out.dtype == np.float32, f"logits should be float32, got {out.dtype}"
    assert out.shape == (3, arch.n_classes), f"expected (3, {arch.n_classes}), got {out.shape}"


def test_onnx_predictor_accepts_float64_input(exported):
    _, arch, path = exported
    predict = onnx_predictor(path)
    x = np.random.default_rng(0).standard_normal((4, *arch.input_shape))
    np.testing.assert_allclose(predict(x), predict(x.astype(np.float32)), rtol=0, atol=0,
                               err_msg="float64 input should be cast to float32, not rejected")


def test_exported_graph_has_named_input_output_and_a_dynamic_batch_axis(exported):
    _, arch, path = exported
    session = onnx_session(path, threads=2)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME), f"names should be {INPUT_NAME}/{OUTPUT_NAME}"
    assert not isinstance(inp.shape[0], int), f"the batch axis should be symbolic, got {inp.shape[0]!r}"
    assert list(inp.shape[1:]) == list(arch.input_shape), "per-sample dims should be fixed"
    assert session.get_providers() == ["CPUExecutionProvider"], "sessions should run on the CPU"


def test_export_onnx_returns_the_path_and_leaves_the_model_on_cpu_in_eval_mode(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model(Architecture("mlp", (4,), 2, (4,)))
    model.train()
    path = export_onnx(model, (4,), tmp_path / "m.onnx")
    assert path == tmp_path / "m.onnx" and path.stat().st_size > 0, "the ONNX file should be written"
    assert not model.training, "export should put the model in eval mode"
