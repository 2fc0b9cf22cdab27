"""A team's own networks: a class of their own, or a torchvision network, fitted to the data;
trained weights loaded safely; a pruned copy rebuilt from its class.

Keys read from `baseline.model` (and `distill.student`):
  family: custom       class_path "package.module:ClassName", importable from the project root
                       (only the configured path is imported), built with `init_args`; it must
                       map a batch of the data's inputs to one logit per class (`check_outputs`)
  family: torchvision  arch, a classification network of torchvision.models, randomly
                       initialised (nothing is downloaded): its first conv takes the data's
                       channels, its classifier the data's classes; below 64 pixels the first
                       conv becomes 3x3 with stride 1 and a max-pool right after it goes, as in
                       the networks made for 32x32 images
`baseline.weights`: a state dict read with `torch.load(weights_only=True)` (a Lightning-style
{"state_dict": ...} is unwrapped); its keys and shapes must be the model's.

Structured pruning changes a network's channels in place. A built-in MLP or CNN records its new
widths; any other network records the attributes Torch-Pruning changed (`resized_attributes`:
channels, features, groups, by module name), and `resize` gives a freshly built one those and the
state dict's tensor shapes before the weights are loaded.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shrinkflow.errors import UserError

SMALL_IMAGE = 64  # pixels: below this a torchvision network's stem keeps the resolution
_DECLARED: list[torch.library.Library] = []  # see _torchvision_models


class ModelError(UserError, ValueError):
    """A configured model cannot be imported, built, run on the data, or given its weights."""


def import_class(class_path: str, key: str = "baseline.model.class_path") -> type[nn.Module]:
    """The nn.Module subclass `class_path` ("package.module:ClassName") names."""
    module_name, _, class_name = class_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(f"{key}: cannot import {module_name!r} (it must be importable from the "
                         f"project root): {error}") from None
    except Exception as error:  # noqa: BLE001  (the user's module fails as it runs)
        raise ModelError(f"{key}: importing {module_name!r} fails: {type(error).__name__}: "
                         f"{error}") from None
    found = getattr(module, class_name, None)
    if found is None:
        raise ModelError(f"{key}: {module_name!r} ({module.__file__}) has no {class_name!r}")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ModelError(f"{key}: {class_path} is not a torch.nn.Module subclass")
    return found


def build_custom(class_path: str, init_args: Mapping[str, Any],
                 key: str = "baseline.model") -> nn.Module:
    cls = import_class(class_path, f"{key}.class_path")
    try:
        return cls(**init_args)
    except TypeError as error:
        raise ModelError(f"{key}.init_args {dict(init_args)} do not fit {class_path}: {error}"
                         ) from None


def _torchvision_models() -> Any:
    """torchvision.models. torchvision's package on the index is built against CUDA torch: with
    the CPU torch its compiled detection ops do not load, and its import then fails on the two of
    them it declares unconditionally (nms, qnms). Their schemas are declared here instead; the
    classification networks never call them."""
    try:
        import torchvision.models as found
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
        declared = torch.library.Library("torchvision", "DEF")
        for name in ("nms", "qnms"):
            declared.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _DECLARED.append(declared)  # the schemas live as long as their library object
        import torchvision.models as found
    return found


def build_torchvision(arch: str, input_shape: tuple[int, ...], n_classes: int,
                      key: str = "baseline.model.arch") -> nn.Module:
    """torchvision's `arch` for images of `input_shape` (C, H, W) and `n_classes` classes."""
    if len(input_shape) != 3:
        raise ModelError(f"{key}: torchvision networks take images (C, H, W); the data's inputs "
                         f"have shape {tuple(input_shape)}")
    zoo = _torchvision_models()
    names = sorted(zoo.list_models(module=zoo))
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        raise ModelError(f"{key}: {arch!r} is not a torchvision classification network"
                         + (f"; did you mean {', '.join(close)}?" if close else
                            f"; they are: {', '.join(names)}"))
    model = zoo.get_model(arch, weights=None, num_classes=n_classes)
    _fit_stem(model, input_shape[0], min(input_shape[1:]) < SMALL_IMAGE)
    return model


def _fit_stem(model: nn.Module, channels: int, small: bool) -> None:
    """The first conv reads `channels` channels (and, for small images, keeps the resolution:
    3x3, stride 1, and no max-pool right after it)."""
    name, first = next((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    kernel, stride, padding = first.kernel_size, first.stride, first.padding
    if small:
        kernel, stride, padding = (3, 3), (1, 1), (1, 1)
    stem = nn.Conv2d(channels, first.out_channels, kernel, stride, padding,
                     bias=first.bias is not None)
    model.set_submodule(name, stem)
    if small and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()


def check_outputs(model: nn.Module, input_shape: tuple[int, ...], n_classes: int,
                  what: str) -> None:
    """`model` maps a batch of `input_shape` inputs to (batch, n_classes) logits."""
    batch = torch.zeros(2, *input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch)
    except Exception as error:  # noqa: BLE001  (any failure of the user's forward is theirs)
        raise ModelError(f"{what} fails on a batch of the data's inputs, shape "
                         f"{tuple(batch.shape)}: {type(error).__name__}: {error}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{what} maps a batch of shape {tuple(batch.shape)} to {shape}; it must "
                         f"give one logit per class: (2, {n_classes})")


def read_state_dict(path: Path, key: str = "baseline.weights") -> dict[str, torch.Tensor]:
    """A state dict from `path`, never unpickling code."""
    if not path.is_file():
        raise ModelError(f"{key}: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (pickled code, a truncated file, not torch at all)
        raise ModelError(f"{key}: {path} is not a state dict torch.load can read with "
                         f"weights_only=True: {error}") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
            isinstance(value, torch.Tensor) for value in state.values()):
        raise ModelError(f"{key}: {path} holds no state dict (a mapping of names to tensors)")
    return dict(state)


def load_weights(model: nn.Module, path: Path, key: str = "baseline.weights") -> None:
    """Load the state dict at `path` into `model`; keys and shapes must be the model's."""
    state = read_state_dict(path, key)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{name} {tuple(state[name].shape)} (the model's {tuple(tensor.shape)})"
                  for name, tensor in expected.items()
                  if name in state and state[name].shape != tensor.shape]
    problems = [f"{label}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                for label, names in (("missing", missing), ("unexpected", unexpected),
                                     ("other shapes", mismatched)) if names]
    if problems:
        raise ModelError(f"{key}: {path} does not fit the model ({type(model).__name__}): "
                         + "; ".join(problems))
    model.load_state_dict(state)


_SHAPE_TYPES = (int, bool, tuple)  # the attributes a pruned layer's shape lives in


def _shape_attributes(module: nn.Module) -> dict[str, Any]:
    return {name: value for name, value in vars(module).items()
            if not name.startswith("_") and name != "training"
            and isinstance(value, _SHAPE_TYPES)}


def resized_attributes(fresh: nn.Module, pruned: nn.Module) -> dict[str, dict[str, Any]]:
    """By module name, the shape attributes (in/out channels and features, groups, ...) in which
    `pruned` differs from `fresh`, a newly built network of the same class: JSON data."""
    modules = dict(fresh.named_modules())
    resized = {}
    for name, module in pruned.named_modules():
        before = _shape_attributes(modules[name])
        changed = {attr: list(value) if isinstance(value, tuple) else value
                   for attr, value in _shape_attributes(module).items()
                   if before.get(attr) != value}
        if changed:
            resized[name] = changed
    return resized


def resize(model: nn.Module, resized: Mapping[str, Mapping[str, Any]],
           state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Give `model` the attributes `resized` records and every tensor the shape it has in
    `state`, so that `state` loads into it."""
    for name, attributes in resized.items():
        module = model.get_submodule(name)
        for attr, value in attributes.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    for name, tensor in state.items():
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        current = getattr(owner, attr, None)
        if isinstance(current, torch.Tensor) and current.shape != tensor.shape:
            empty = torch.empty(tensor.shape, dtype=current.dtype)
            if isinstance(current, nn.Parameter):
                setattr(owner, attr, nn.Parameter(empty, requires_grad=current.requires_grad))
            else:
                owner.register_buffer(attr, empty)
    return model


class OnnxTeacher(nn.Module):
    """An ONNX model as a frozen teacher: ONNX Runtime answers a batch as the torch module would,
    without parameters or gradients. Distillation and scoring take it like any teacher; nothing
    can prune or fine-tune it."""

    def __init__(self, path: Path, key: str = "baseline.onnx") -> None:
        super().__init__()
        import onnxruntime as ort

        if not path.is_file():
            raise ModelError(f"{key}: file not found: {path}")
        try:
            self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001  (not ONNX, or ops ONNX Runtime lacks)
            raise ModelError(f"{key}: ONNX Runtime cannot load {path}: {error}") from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or isinstance(inputs[0].shape[0], int):
            shapes = [tuple(item.shape) for item in inputs]
            raise ModelError(f"{key}: {path} must take one input with a dynamic batch axis, "
                             f"as the pipeline feeds batches of any size; it takes {shapes}")
        self._input = inputs[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().cpu().numpy().astype("float32", copy=False)
        (logits, *_) = self._session.run(None, {self._input: batch})
        return torch.from_numpy(logits).to(x.device)
