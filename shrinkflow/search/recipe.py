"""One compression recipe: shrink the teacher one way, store it at one precision, measure it.

A recipe is what a person otherwise sets by hand in `prune`, `distill` and `quantize`: a method
(structured pruning with a conv and a linear ratio and an importance criterion, unstructured
pruning with a ratio, or a distilled student with a width, depth, temperature and alpha), then a
precision for the ONNX file (fp32, fp16, int8 or 4-bit weight-only, dynamic or static int8 with a
calibration, or ternary or binary weights, trained to those values).
It is built with the same functions those stages use, trained for `search.compression.epochs`,
and scored on three objectives: validation accuracy (maximised), file size and batch-1 ONNX
Runtime latency (minimised). Only the validation split is read.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from shrinkflow import data, measure, models, prune, quantize, train
from shrinkflow.config import (
    BaselineConfig,
    CompressionSearchConfig,
    DistillConfig,
    ModelConfig,
    PruneConfig,
    RecipeSpace,
    StructuredPruneConfig,
    TrainConfig,
    UnstructuredPruneConfig,
)
from shrinkflow.distill import distill
from shrinkflow.export import export_onnx, onnx_predictor
from shrinkflow.search import space
from shrinkflow.sparse import sparsify_onnx

OBJECTIVES = ("val_accuracy", "size_bytes", "latency_ms")
DIRECTIONS = ("maximize", "minimize", "minimize")
FINETUNE_LR_SHARE = 0.3  # fine-tuning after pruning runs at this share of the teacher's lr
TWO_BIT = ("ternary", "binary")  # precisions whose weights are trained to their values


@dataclass(frozen=True)
class RecipeData:
    """What every recipe trains, calibrates and validates on (no test split here)."""

    train: data.Split
    val: data.Split
    unlabeled_x: np.ndarray | None  # inputs without labels, for students (None: none)
    kind: str
    input_shape: tuple[int, ...]
    n_classes: int


def sampler(cfg: CompressionSearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The recipe study's sampler, seeded."""
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, cfg.trials // 3),
                                          multivariate=True)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, cfg.trials // 3))


METHOD_KEYS = {"structured": ("conv_ratio", "linear_ratio", "importance"),
               "unstructured": ("unstructured_ratio",),
               "distill": ("student_width", "student_depth", "temperature", "alpha")}


def suggest(trial: optuna.Trial, recipes: RecipeSpace) -> dict[str, Any]:
    """A recipe's values: the method, its own settings, then the precision (sparse files of
    unstructured pruning stay fp32) and the calibration of int8_static."""
    recipe = {"method": space.ask(trial, "method", recipes.method)}
    for key in METHOD_KEYS[recipe["method"]]:
        recipe[key] = space.ask(trial, key, getattr(recipes, key))
    recipe["quantization"] = ("fp32" if recipe["method"] == "unstructured"
                              else space.ask(trial, "quantization", recipes.quantization))
    if recipe["quantization"] == "int8_static":
        recipe["calibration"] = space.ask(trial, "calibration", recipes.calibration)
    return recipe


def _finetune_config(cfg: CompressionSearchConfig, baseline: BaselineConfig) -> TrainConfig:
    return baseline.train.model_copy(update={"epochs": cfg.epochs,
                                             "lr": baseline.train.lr * FINETUNE_LR_SHARE,
                                             "patience": cfg.epochs})


def _finetune(cfg: CompressionSearchConfig, baseline: BaselineConfig, recipe_data: RecipeData,
              prune_cfg: PruneConfig):
    return prune.make_finetune(recipe_data.train, recipe_data.val,
                               _finetune_config(cfg, baseline), prune_cfg,
                               data.Augmenter(baseline.augment, recipe_data.kind))


def shrink(recipe: dict[str, Any], teacher: torch.nn.Module, teacher_arch: models.Architecture,
           cfg: CompressionSearchConfig, baseline: BaselineConfig, recipe_data: RecipeData
           ) -> tuple[torch.nn.Module, models.Architecture, bool]:
    """The smaller torch model of `recipe`: (model, architecture, stored sparse); for a ternary
    or binary precision, its hidden weights then trained to 2-bit values (`search.compression.
    epochs`, at the pruning fine-tune's learning rate)."""
    model, arch, sparse = _smaller(recipe, teacher, teacher_arch, cfg, baseline, recipe_data)
    if recipe["quantization"] in TWO_BIT:
        model = quantize.low_bit_training(model, recipe_data.train, recipe_data.val,
                                          _finetune_config(cfg, baseline),
                                          data.Augmenter(baseline.augment, recipe_data.kind),
                                          binary=recipe["quantization"] == "binary")
    return model, arch, sparse


def _smaller(recipe: dict[str, Any], teacher: torch.nn.Module, teacher_arch: models.Architecture,
             cfg: CompressionSearchConfig, baseline: BaselineConfig, recipe_data: RecipeData
             ) -> tuple[torch.nn.Module, models.Architecture, bool]:
    if recipe["method"] == "distill":
        # a student of the built-in family of the data (of the teacher's when it is one)
        family = teacher_arch.family if teacher_arch.is_builtin else "auto"
        student_cfg = ModelConfig(family=family, depth=recipe["student_depth"],
                                  width=recipe["student_width"],
                                  kernel_size=teacher_arch.kernel_size, dropout=0.0)
        arch = models.architecture_for(student_cfg, recipe_data.kind, recipe_data.input_shape,
                                       recipe_data.n_classes)
        train.seed_everything(baseline.train.seed)
        student = models.build_model(arch)
        distill(teacher, student, recipe_data.train, recipe_data.val,
                DistillConfig(temperature=recipe["temperature"], alpha=recipe["alpha"],
                              epochs=cfg.epochs, patience=cfg.epochs),
                baseline.train, data.Augmenter(baseline.augment, recipe_data.kind),
                progress=False, unlabeled_x=recipe_data.unlabeled_x)
        return student, arch, False
    prune_cfg = PruneConfig(
        steps=cfg.steps, finetune_epochs=cfg.epochs,
        structured=StructuredPruneConfig(
            ratios=(recipe.get("conv_ratio", 0.0),), importance=recipe.get("importance", "l1"),
            conv_ratio=recipe.get("conv_ratio"), linear_ratio=recipe.get("linear_ratio")),
        unstructured=UnstructuredPruneConfig(ratios=(recipe.get("unstructured_ratio", 0.5),)))
    finetune = _finetune(cfg, baseline, recipe_data, prune_cfg)
    if recipe["method"] == "structured":
        example = torch.zeros(1, *teacher_arch.input_shape)
        model, _ = prune.iterative(teacher, prune_cfg, "structured", recipe["conv_ratio"],
                                   example_input=example, finetune=finetune)
        return model, prune.architecture_of(model, teacher_arch), False
    model, _ = prune.iterative(teacher, prune_cfg, "unstructured", recipe["unstructured_ratio"],
                               finetune=finetune)
    return model, teacher_arch, True


def store(model: torch.nn.Module, arch: models.Architecture, sparse: bool,
          recipe: dict[str, Any], calibration_x: np.ndarray, path: Path) -> Path:
    """The recipe's ONNX file at `path`, at its precision (int8 QOperator as `quantize` makes)."""
    with tempfile.TemporaryDirectory(prefix="shrinkflow-recipe-") as tmp:
        fp32 = export_onnx(model, arch.input_shape, Path(tmp) / "fp32.onnx")
        precision = recipe["quantization"]
        if sparse:
            return sparsify_onnx(fp32, path)
        converters: dict[str, Callable[[], Path]] = {
            "fp32": lambda: Path(fp32).replace(path),
            "fp16": lambda: quantize.to_fp16(fp32, path),
            "int8_weights": lambda: quantize.to_int8_weights(fp32, path),
            "int4_weights": lambda: quantize.to_int4_weights(fp32, path),
            **{two_bit: lambda: quantize.to_ternary_weights(fp32, path) for two_bit in TWO_BIT},
            "int8_dynamic": lambda: quantize.to_int8_dynamic(fp32, path),
            "int8_static": lambda: quantize.to_int8_static(
                fp32, path, calibration_x, recipe["calibration"], quant_format="qoperator"),
        }
        return converters[precision]()


def score(path: Path, val: data.Split) -> dict[str, float]:
    """The three objectives of a recipe's file."""
    predict = onnx_predictor(path)
    accuracy = measure.classification_metrics(
        val.y, measure.predict_batched(predict, val.x).argmax(1))["accuracy"]
    return {"val_accuracy": accuracy, "size_bytes": float(measure.file_size(path)),
            "latency_ms": measure.quick_latency_ms(lambda: onnx_predictor(path), val.x[:1])}


def objective(cfg: CompressionSearchConfig, baseline: BaselineConfig, teacher: torch.nn.Module,
              teacher_arch: models.Architecture, recipe_data: RecipeData, calibration_x: np.ndarray,
              files: Path) -> Callable[[optuna.Trial], tuple[float, float, float]]:
    """The study's objective: build, store and score one recipe; its file is
    `files`/trial-<number>.onnx and its objectives are also user attributes."""

    def run(trial: optuna.Trial) -> tuple[float, float, float]:
        recipe = suggest(trial, cfg.space)
        model, arch, sparse = shrink(recipe, teacher, teacher_arch, cfg, baseline, recipe_data)
        files.mkdir(parents=True, exist_ok=True)
        path = store(model, arch, sparse, recipe, calibration_x, files / f"trial-{trial.number}.onnx")
        found = score(path, recipe_data.val)
        for key, value in found.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("params", measure.count_params(model)[0])
        return tuple(found[name] for name in OBJECTIVES)

    return run
