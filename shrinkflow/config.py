"""Typed, frozen view of params.yaml.

Every knob of the pipeline lives in params.yaml, one section per stage. It is parsed once into
these pydantic models, which are frozen (a stage cannot mutate its inputs) and forbid unknown keys
(a typo stops the run at once, naming the key). DVC reads the same file, so `dvc exp run -S
baseline.train.lr=0.01` and `shrinkflow run --set baseline.train.lr=0.01` mean the same thing.

The meaning of each key is documented twice on purpose: as a comment in params.yaml (for people
editing the file) and as the `description` of the field here (for `--help` and error messages).
The values are stated once: each field's default here is params.yaml's value, so `Params()` is
the shipped configuration (tests/core/test_config.py fails naming any key where the two differ).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shrinkflow.errors import UserError


class ConfigError(UserError, ValueError):
    """params.yaml (or an override) is missing, malformed, or names an unknown key/bad value."""


class _Section(BaseModel):
    # coerce_numbers_to_str: `--set project.experiment=2024` parses as YAML int, means the name
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False, coerce_numbers_to_str=True)


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------
class CsvSource(_Section):
    """A user CSV: one row per sample, feature columns and one target column."""

    path: str | None = Field(None, description="path to the CSV file, relative to the project root")
    target: str = Field("label", description="name of the target (class label) column")
    features: tuple[str, ...] | None = Field(
        None, description="the feature columns, in the model's order; default: every column but "
        "the target and `drop`")
    drop: tuple[str, ...] = Field((), description="columns that are not features (ids, notes)")
    allow_identifier: tuple[str, ...] = Field(
        (), description="columns that look like row identifiers but are real features")
    ordinal: dict[str, tuple[str, ...]] = Field(
        {}, description="text columns encoded as one code per category, in the order given "
        "(others: one-hot); e.g. {size: [S, M, L]}")
    missing: Literal["impute", "refuse"] = Field(
        "impute", description="missing feature values: filled with the training split's median "
        "(numbers) or most frequent category (text), also when served; or refused")
    missing_indicator: bool = Field(
        False, description="add a 0/1 'was missing' input for each column with missing values")

    @model_validator(mode="after")
    def _columns_agree(self) -> CsvSource:
        for key in ("features", "drop", "allow_identifier", "ordinal"):
            if self.target in (getattr(self, key) or ()):
                raise ValueError(f"prepare.csv.{key} names the target column {self.target!r}")
        both = sorted(set(self.features or ()) & set(self.drop))
        if both:
            raise ValueError(f"prepare.csv.features and prepare.csv.drop both name {both}")
        for column, order in self.ordinal.items():
            if not order or len(set(order)) != len(order):
                raise ValueError(f"prepare.csv.ordinal.{column}: list each category once, in "
                                 f"order; got {list(order)}")
        return self


class ValidationRules(_Section):
    """Data-quality rules enforced with Great Expectations on raw and processed data."""

    min_rows: int = Field(50, ge=1, description="fewest rows a data set may have")
    max_abs_value: float = Field(1e6, gt=0, description="largest |feature| accepted; inf fails")
    imbalance_warn_ratio: float = Field(
        5.0, ge=1, description="warn when the largest class is this many times the smallest"
    )


class ImageSource(_Section):
    """A folder of images, one sub-folder per class (torchvision's ImageFolder)."""

    path: str | None = Field(
        None, description="the folder, relative to the project root: <path>/<class>/<image>")
    size: int = Field(32, ge=8, le=1024, description="images are resized to size x size pixels "
                      "(in the served graph too, so any size may be sent)")
    channels: Literal[1, 3] = Field(3, description="1: grey, 3: RGB (images are converted)")
    min_per_class: int = Field(10, ge=3, description="fewest images a class may have")


class PrepareConfig(_Section):
    """Stage `prepare`: load a source, validate it, split it, fit normalization on train only."""

    source: Literal["digits", "mnist1d", "breast_cancer", "csv", "images"] = Field(
        "digits", description="data set: digits | mnist1d | breast_cancer | csv | images"
    )
    csv: CsvSource = CsvSource()
    images: ImageSource = ImageSource()
    mnist1d_samples: int = Field(
        10_000, ge=100, multiple_of=10, description="samples generated for mnist1d (10 classes)"
    )
    unlabeled_samples: int = Field(
        0, ge=0, description="mnist1d: extra signals generated without labels, for distillation"
    )
    unlabeled_csv: str | None = Field(
        None, description="CSV of inputs without labels (the feature columns), for distillation"
    )
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="share of rows for validation")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="share of rows for the test split")
    seed: int = Field(0, description="seed of the stratified split (and of mnist1d generation)")
    validation: ValidationRules = ValidationRules()

    @model_validator(mode="after")
    def _csv_needs_path(self) -> PrepareConfig:
        if self.source == "csv" and not self.csv.path:
            raise ValueError("prepare.source is 'csv' but prepare.csv.path is not set")
        if self.source == "images" and not self.images.path:
            raise ValueError("prepare.source is 'images' but prepare.images.path is not set")
        if self.source == "images" and self.unlabeled_csv:
            raise ValueError("prepare.unlabeled_csv holds table rows; the source is 'images'")
        if self.unlabeled_samples and self.source != "mnist1d":
            raise ValueError(f"prepare.unlabeled_samples generates mnist1d signals, but the source "
                             f"is {self.source!r}: give prepare.unlabeled_csv instead")
        if self.unlabeled_samples and self.unlabeled_csv:
            raise ValueError("set one of prepare.unlabeled_samples and prepare.unlabeled_csv")
        return self


# ---------------------------------------------------------------------------------------------
# baseline
# ---------------------------------------------------------------------------------------------
CLASS_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # package.module:ClassName


class ModelConfig(_Section):
    """Architecture: an MLP for tabular data, a CNN for images (2-D) and signals (1-D), a class of
    the user's own, or a torchvision network."""

    family: Literal["auto", "mlp", "cnn", "custom", "torchvision"] = Field(
        "auto", description="auto picks cnn for images/signals, mlp for tabular data; custom: "
        "class_path; torchvision: arch"
    )
    class_path: str | None = Field(
        None, description="custom: the nn.Module's 'package.module:ClassName', importable from "
        "the project root; it maps a batch of the data's inputs to one logit per class")
    init_args: dict[str, Any] = Field({}, description="custom: keyword arguments of the class")
    arch: str | None = Field(
        None, description="torchvision: a classification network of torchvision.models, e.g. "
        "resnet18 or mobilenet_v3_small, randomly initialised, its first conv and classifier "
        "fitted to the data")
    depth: int = Field(2, ge=1, le=8, description="hidden layers (mlp) or conv blocks (cnn)")
    width: int = Field(64, ge=1, le=4096, description="units (mlp) or channels of the first block")
    width_multiplier: float = Field(
        2.0, ge=1.0, le=4.0, description="cnn: each block has this many times the previous channels"
    )
    kernel_size: int = Field(3, ge=1, le=15, description="cnn kernel size (odd keeps the length)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout before the classifier")

    @model_validator(mode="after")
    def _family_keys(self) -> ModelConfig:
        """class_path (and init_args) belong to custom, arch to torchvision, and each needs its."""
        needs = {"custom": "class_path", "torchvision": "arch"}
        for family, key in needs.items():
            given = getattr(self, key) is not None
            if self.family == family and not given:
                raise ValueError(f"family {family!r} needs {key}")
            if given and self.family != family:
                raise ValueError(f"{key} is for family {family!r}, not {self.family!r}")
        if self.init_args and self.family != "custom":
            raise ValueError(f"init_args is for family 'custom', not {self.family!r}")
        if self.class_path is not None and not CLASS_PATH.fullmatch(self.class_path):
            raise ValueError(f"class_path {self.class_path!r} is not 'package.module:ClassName'")
        return self

    @property
    def is_builtin(self) -> bool:
        """An MLP or CNN that shrinkflow builds and sizes itself (what the search explores)."""
        return self.family in ("auto", "mlp", "cnn")


class AugmentConfig(_Section):
    """Training-time augmentation for images and signals (never applied to val/test)."""

    enabled: bool = Field(True, description="augment image/signal batches while training")
    max_shift: int = Field(1, ge=0, description="largest random shift, in pixels or samples")
    max_rotation_deg: float = Field(10.0, ge=0, le=180, description="images: largest rotation")
    noise_std: float = Field(0.05, ge=0, description="std of Gaussian noise, in normalized units")


class TrainConfig(_Section):
    """The one training loop: optimizer, schedule, early stopping, device and precision."""

    epochs: int = Field(60, ge=0, description="upper bound on epochs; early stopping may end "
                        "sooner; 0 (baseline with weights): the given weights as they are")
    batch_size: int | Literal["auto"] = Field(
        "auto", description="mini-batch size; auto: 64, doubled for each doubling of the training "
        "rows beyond reference_rows, at most 1024")
    reference_rows: int | None = Field(
        10_000, ge=1, description="epochs and patience hold as given up to this many training "
        "rows; beyond, they shrink in proportion (at least 1), so a big table gets a budget "
        "of samples like a small one; null: as given whatever the rows")
    lr: float = Field(3e-3, gt=0, description="peak learning rate of AdamW (one-cycle schedule)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    patience: int = Field(15, ge=1, description="epochs without val-accuracy gain before stopping")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA if present")
    amp: bool = Field(True, description="mixed precision on CUDA (bf16 if supported, else fp16)")
    seed: int = Field(0, description="seed for init, shuffling and augmentation")

    def for_rows(self, rows: int) -> TrainConfig:
        """This loop's budget for `rows` training rows: a concrete batch size, and the epochs
        and patience `reference_rows` implies (see the fields)."""
        scale = 1.0 if self.reference_rows is None else max(1.0, rows / self.reference_rows)
        batch = self.batch_size if self.batch_size != "auto" else min(
            MAX_AUTO_BATCH, AUTO_BATCH * 2 ** int(math.log2(scale)))
        return self.model_copy(update={
            "batch_size": batch, "epochs": min(self.epochs, max(1, math.ceil(self.epochs / scale))),
            "patience": max(1, math.ceil(self.patience / scale))})


AUTO_BATCH, MAX_AUTO_BATCH = 64, 1024  # batch_size auto: up to reference_rows, and at most


class BaselineConfig(_Section):
    """Stage `baseline`: train the reference model every compressed model is compared with."""

    model: ModelConfig = ModelConfig()
    weights: str | None = Field(
        None, description="a state dict (torch.save of model.state_dict(), read with "
        "weights_only=True) to start from, relative to the project root; with train.epochs 0 "
        "the teacher is these weights as they are")
    onnx: str | None = Field(
        None, description="an ONNX model to be the teacher as it is, relative to the project "
        "root: float32 inputs as prepare normalizes them (batch axis dynamic), one logit per "
        "class out; stages that need the torch graph (pruning, quantization-aware training, the "
        "recipe search) are skipped, with the reason recorded")
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _untrained_needs_weights(self) -> BaselineConfig:
        if self.onnx is not None and (self.weights is not None or not self.model.is_builtin):
            raise ValueError("onnx is the whole teacher: leave weights and model.family unset")
        if self.train.epochs == 0 and self.weights is None and self.onnx is None:
            raise ValueError("train.epochs 0 keeps the given weights as they are: set weights")
        return self


# ---------------------------------------------------------------------------------------------
# prune
# ---------------------------------------------------------------------------------------------
Ratio = Annotated[float, Field(ge=0.0, lt=1.0)]


class StructuredPruneConfig(_Section):
    """Remove whole channels/filters/neurons (Torch-Pruning): a smaller dense network."""

    enabled: bool = Field(True, description="produce structured-pruning candidates")
    ratios: tuple[Ratio, ...] = Field(
        (0.5, 0.75), description="channel fractions to remove, one candidate each")
    importance: Literal["l1", "l2", "group_norm"] = Field(
        "l1", description="how channels are ranked: l1 | l2 norm of weights, group_norm over coupled layers"
    )
    scope: Literal["global", "layer"] = Field(
        "layer", description="layer: the same ratio in every layer; global: one ranking across layers"
    )
    conv_ratio: Ratio | None = Field(None, description="override the ratio for conv layers")
    linear_ratio: Ratio | None = Field(None, description="override the ratio for hidden linear layers")


class UnstructuredPruneConfig(_Section):
    """Zero individual weights by magnitude; stored sparse so the file really shrinks."""

    enabled: bool = Field(True, description="produce unstructured-pruning candidates")
    method: Literal["ratio", "threshold", "histogram"] = Field(
        "ratio", description="ratio: zero this fraction; threshold: |w| below it; histogram: "
        "threshold at the valley of the |w| histogram"
    )
    ratios: tuple[Ratio, ...] = Field((0.8,), description="method ratio: fractions of weights to zero")
    threshold: float | None = Field(None, gt=0, description="method threshold: |w| below this is zeroed")
    scope: Literal["global", "layer"] = Field("global", description="rank weights globally or per layer")


class PruneConfig(_Section):
    """Stage `prune`: structured and unstructured pruning, iterative, with fine-tuning."""

    structured: StructuredPruneConfig = StructuredPruneConfig()
    unstructured: UnstructuredPruneConfig = UnstructuredPruneConfig()
    steps: int = Field(3, ge=1, le=50, description="prune in this many steps to the target")
    finetune_epochs: int = Field(5, ge=0, description="fine-tuning epochs after each step")
    finetune_lr: float = Field(1e-3, gt=0, description="peak lr while fine-tuning (below the baseline's)")
    penalty: Literal["none", "l1", "group_lasso"] = Field(
        "none", description="sparsity penalty added while fine-tuning (via the extra-loss hook)"
    )
    penalty_weight: float = Field(1e-4, ge=0, description="weight of the sparsity penalty")
    finetune_with_teacher: bool = Field(
        False, description="fine-tune on the unpruned model's soft labels too (distill.temperature, alpha)"
    )
    max_accuracy_drop_pp: float | None = Field(
        None, gt=0, description="if set: search the highest ratio whose drop stays within it"
    )
    search_ratios: tuple[Ratio, ...] = Field(
        (0.3, 0.5, 0.7, 0.8, 0.9), description="ratios tried by the accuracy-aware search"
    )


# ---------------------------------------------------------------------------------------------
# quantize
# ---------------------------------------------------------------------------------------------
class QuantizeConfig(_Section):
    """Stage `quantize`: fp16, int8 and 4-bit weight-only, int8 dynamic and static (ONNX),
    quantization-aware training, and ternary or binary weights (trained)."""

    methods: tuple[Literal["fp16", "int8_weights", "int4_weights", "int8_dynamic", "int8_static",
                           "qat", "ternary", "binary"], ...] = Field(
        ("fp16", "int8_weights", "int4_weights", "int8_dynamic", "int8_static", "ternary"),
        description="quantized variants made of each candidate",
    )
    calibration: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="int8 static calibration: minmax | percentile | entropy (KL)"
    )
    calibration_samples: int = Field(
        256, ge=1, description="held-out training rows used to calibrate activation ranges"
    )
    percentile: float = Field(99.99, gt=50, le=100, description="percentile calibration cut-off")
    per_channel: bool = Field(True, description="one weight scale per output channel")
    format: Literal["qdq", "qoperator"] = Field(
        "qoperator", description="int8 graph: qoperator (QLinearConv..., smaller file) or qdq; "
        "ONNX Runtime runs both with the same int8 kernels"
    )
    max_accuracy_drop_pp: float = Field(
        0.5, gt=0, description="a larger drop triggers the fallback chain"
    )
    fallback: tuple[Literal["percentile", "entropy", "minmax", "exclude_sensitive", "qat"], ...] = Field(
        ("percentile", "entropy", "exclude_sensitive", "qat"),
        description="what to try, in order, when int8 static loses too much",
    )
    qat_epochs: int = Field(5, ge=1, description="quantization-aware fine-tuning epochs")
    low_bit_epochs: int = Field(30, ge=1, description="ternary and binary fine-tuning epochs "
                                "(2-bit weights need more than QAT's int8 ones)")


# ---------------------------------------------------------------------------------------------
# distill
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------------------------
Scalar = int | float | str | bool


class Range(_Section):
    """A numeric range of the search space: integers when `low` and `high` are both integers."""

    low: int | float = Field(description="smallest value")
    high: int | float = Field(description="largest value")
    log: bool = Field(False, description="sample on a log scale (learning rates, weight decay)")
    step: int | float | None = Field(None, gt=0, description="only multiples of this above low")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) is below low ({self.low})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("a range is either log or stepped, not both")
        return self

    @property
    def integer(self) -> bool:
        return all(isinstance(value, int) and not isinstance(value, bool)
                   for value in (self.low, self.high, self.step or 1))


Dimension = Range | Annotated[tuple[Scalar, ...], Field(min_length=1)]
SEARCHABLE = ("model", "train", "augment")  # the baseline sections a teacher search may vary


Choices = Annotated[tuple[Scalar, ...], Field(min_length=1)]


class RecipeSpace(_Section):
    """What a compression recipe may be: which method, its settings, and the file's precision.
    Each key is a list of choices or a range; a key is asked for only when its method is."""

    method: tuple[Literal["structured", "unstructured", "distill"], ...] = Field(
        ("structured", "distill"), min_length=1, description="how the teacher is made smaller")
    conv_ratio: Range = Field(Range(low=0.3, high=0.85), description="structured: conv channels removed")
    linear_ratio: Range = Field(Range(low=0.0, high=0.5), description="structured: hidden neurons removed")
    importance: tuple[Literal["l1", "l2", "group_norm"], ...] = Field(
        ("l1", "group_norm"), min_length=1, description="structured: how channels are ranked")
    unstructured_ratio: Range = Field(Range(low=0.5, high=0.95), description="unstructured: "
                                      "weights zeroed (stored sparse, kept fp32)")
    student_width: Range = Field(Range(low=4, high=16), description="distill: first block's width")
    student_depth: Choices = Field((2, 3), description="distill: blocks or hidden layers")
    temperature: Range = Field(Range(low=1.0, high=8.0), description="distill: KD temperature")
    alpha: Range = Field(Range(low=0.5, high=1.0), description="distill: weight of the soft labels")
    quantization: tuple[Literal["fp32", "fp16", "int8_weights", "int4_weights", "int8_dynamic",
                                "int8_static", "ternary", "binary"], ...] = Field(
        ("fp32", "fp16", "int8_weights", "int4_weights", "int8_static", "ternary"), min_length=1,
        description="the file's precision (not for unstructured; ternary and binary train)")
    calibration: tuple[Literal["minmax", "percentile", "entropy"], ...] = Field(
        ("minmax", "percentile"), min_length=1, description="int8_static: calibration")


class CompressionSearchConfig(_Section):
    """Stage `recipes`: a multi-objective study over compression recipes (validation accuracy,
    file size, batch-1 latency); the Pareto front's candidates go to `compare`."""

    enabled: bool = Field(False, description="search compression recipes")
    sampler: Literal["random", "tpe", "nsga2"] = Field("nsga2", description="how recipes are proposed")
    trials: int = Field(16, ge=1, description="finished recipes in the study (resumable)")
    epochs: int = Field(10, ge=1, description="fine-tuning epochs of a pruned recipe, training "
                        "epochs of a student")
    steps: int = Field(2, ge=1, le=10, description="pruning steps (fine-tuning after each)")
    max_candidates: int = Field(6, ge=1, description="front candidates sent to compare, the most "
                                "accurate on validation first")
    space: RecipeSpace = RecipeSpace()


class SearchConfig(_Section):
    """Stage `search`: an Optuna study over the teacher's architecture and training."""

    enabled: bool = Field(True, description="search the teacher before `baseline` trains it")
    sampler: Literal["grid", "random", "tpe", "cmaes", "nsga2"] = Field(
        "tpe", description="how trials are proposed")
    pruner: Literal["none", "median", "sha", "hyperband"] = Field(
        "hyperband", description="how bad trials are stopped early, from their per-epoch "
        "validation accuracy (one objective only)")
    trials: int = Field(6, ge=1, description="finished trials (complete or pruned) the study "
                        "holds at the end; a resumed study only runs the missing ones")
    timeout_s: float | None = Field(None, gt=0, description="wall-clock budget of one search run")
    epochs: int = Field(8, ge=1, description="epochs of a trial that is not pruned")
    max_rows: int | None = Field(20_000, ge=100, description="trials train on a stratified "
                                 "sample of at most this many training rows (null: all); the "
                                 "baseline confirms the proposal on all of them")
    min_epochs: int = Field(2, ge=1, description="pruners judge a trial from this epoch on")
    objectives: tuple[Literal["val_accuracy", "params", "latency_ms"], ...] = Field(
        ("val_accuracy",), description="val_accuracy (maximised) first, optionally params or "
        "batch-1 latency_ms (minimised): two make a Pareto front")
    max_params: int | None = Field(None, ge=1, description="multi-objective: the chosen front "
                                   "trial has at most this many parameters")
    max_latency_ms: float | None = Field(None, gt=0, description="multi-objective: ... and at "
                                         "most this batch-1 latency")
    within_se: float = Field(1.0, ge=0, description="a smaller config this many standard errors "
                             "of validation accuracy below the best counts as as accurate (1: the "
                             "one-standard-error rule; 0: strictly as accurate)")
    grid_points: int = Field(3, ge=2, le=10, description="grid sampler: values per range")
    storage: str | None = Field(None, description="SQLAlchemy URL of the study "
                                "(SHRINKFLOW_SEARCH_STORAGE wins; null: sqlite optuna.db here)")
    study: str | None = Field(None, description="study name (null: data set + a hash of what "
                              "the trials mean, so the same search resumes)")
    workers: int = Field(1, ge=1, le=64, description="parallel trials; >1 runs them on Dask")
    threads_per_worker: int = Field(1, ge=1, description="torch threads of each "
                                    "Dask worker")
    heartbeat_s: int = Field(10, ge=1, description="a running trial's heartbeat; one silent for "
                             "3 beats was killed and is retried")
    seed: int = Field(0, description="sampler seed")
    space: dict[str, dict[str, Dimension]] = Field(
        default_factory=lambda: {
            "model": {"width": (32, 48, 64), "width_multiplier": (1.0, 1.5, 2.0),
                      "dropout": Range(low=0.0, high=0.3)},
            "train": {"lr": Range(low=0.001, high=0.01, log=True),
                      "weight_decay": Range(low=1e-5, high=1e-3, log=True)},
        }, description="baseline keys to vary, by section (model, train, augment): a list of "
        "choices or a range {low, high, log, step}")
    compression: CompressionSearchConfig = CompressionSearchConfig()

    @model_validator(mode="after")
    def _coherent(self) -> SearchConfig:
        for section, keys in self.space.items():
            if section not in SEARCHABLE:
                raise ValueError(f"search.space.{section}: only {', '.join(SEARCHABLE)} can be "
                                 f"searched")
            model = BaselineConfig.model_fields[section].annotation
            for key, dimension in keys.items():
                if key not in model.model_fields:
                    raise ValueError(f"search.space.{section}.{key}: baseline.{section} has no "
                                     f"key {key!r} (it has {', '.join(model.model_fields)})")
                values = ((dimension.low, dimension.high) if isinstance(dimension, Range)
                          else dimension)
                for value in values:  # every choice and both ends must be valid baseline values
                    try:
                        model.model_validate({key: value})
                    except ValidationError as exc:
                        raise ValueError(f"search.space.{section}.{key}: {value!r} is not a valid "
                                         f"baseline.{section}.{key}: {exc.errors()[0]['msg']}"
                                         ) from None
        if self.objectives[0] != "val_accuracy" or len(set(self.objectives)) != len(self.objectives):
            raise ValueError("search.objectives starts with val_accuracy, each objective once")
        if len(self.objectives) > 1 and self.pruner != "none":
            raise ValueError("search.pruner stops trials on one objective; with several "
                             "objectives set search.pruner: none")
        if self.min_epochs > self.epochs:
            raise ValueError(f"search.min_epochs ({self.min_epochs}) exceeds search.epochs "
                             f"({self.epochs})")
        return self


_STUDENT_NAME = re.compile(r"[a-z][a-z0-9_]*")  # a candidate and directory name part


class StudentConfig(ModelConfig):
    """A student: an architecture, and how many seeds it is distilled from."""

    seeds: int | None = Field(
        None, ge=1, le=16, description="distil this student from this many seeds (null: "
        "distill.seeds)")


class DistillConfig(_Section):
    """Stage `distill`: a smaller student trained from the teacher's soft labels (and features)."""

    enabled: bool = Field(True, description="train a distilled student")
    # smaller than the teacher (baseline.model), and without dropout: a small student underfits
    student: StudentConfig = Field(default_factory=lambda: StudentConfig(width=16, dropout=0.0))
    temperature: float = Field(2.0, gt=0, description="softens both distributions; higher shares more")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the KD loss; 1 - alpha on the labels")
    feature_pairs: tuple[tuple[str, str], ...] = Field(
        (), description="(teacher layer, student layer) names whose outputs are matched by MSE"
    )
    feature_weight: float = Field(1.0, ge=0, description="weight of the feature-matching loss")
    epochs: int | None = Field(
        150, ge=1, description="student epochs (null: baseline.train.epochs); small students keep "
        "improving long after the teacher stops")
    patience: int | None = Field(
        150, ge=1, description="student early-stopping patience (null: baseline.train.patience; "
        "as many as epochs: train them all, keep the best)"
    )
    train_without_teacher: bool = Field(
        True, description="also train the student alone, to measure what distillation adds"
    )
    extra_students: dict[str, StudentConfig] = Field(
        {}, description="more students by name, each trained like `student`: '<name>-kd' etc."
    )
    use_unlabeled: bool = Field(
        True, description="distil on prepare's unlabeled inputs too (the teacher labels them)"
    )
    seeds: int = Field(
        1, ge=1, le=16, description="each student is distilled from this many seeds "
        "(baseline.train.seed + k; '<name>-kd', then '<name>-kd-seed<k>'): students that differ "
        "only by initialisation and data order make different mistakes, what an ensemble needs"
    )

    @model_validator(mode="after")
    def _student_names(self) -> DistillConfig:
        for name in self.extra_students:
            if not _STUDENT_NAME.fullmatch(name) or name == "student":
                raise ValueError(f"distill.extra_students: {name!r} is not a usable name "
                                 f"(lower-case letters, digits and '_', not 'student')")
        return self

    def students(self) -> dict[str, StudentConfig]:
        """Every student by name: 'student' (`student`) first, then `extra_students`."""
        return {"student": self.student, **self.extra_students}


# ---------------------------------------------------------------------------------------------
# ensemble
# ---------------------------------------------------------------------------------------------
class EnsembleConfig(_Section):
    """Stage `ensemble`: several candidates composed into one ONNX graph with a combining head."""

    enabled: bool = Field(True, description="build ensemble candidates")
    methods: tuple[Literal["average", "weighted", "vote"], ...] = Field(
        ("average", "weighted", "vote"), description="average: mean of the members' probabilities; "
        "weighted: weights from validation (greedy: the times each member was added; top_k or "
        "`members`: fitted by log-loss); vote: majority of the members' labels",
    )
    members: tuple[str, ...] = Field(
        (), description="candidate names to combine; empty: picked as `selection` says")
    selection: Literal["greedy", "top_k"] = Field(
        "greedy", description="how members are picked when `members` is empty. greedy: forward "
        "selection with replacement on validation log-loss (Caruana et al. 2004), each round "
        "adding the candidate that most lowers the log-loss of the averaged probabilities; "
        "top_k: the top_k by validation accuracy. Both take one per lineage, within "
        "max_size_fraction")
    greedy_rounds: int = Field(
        20, ge=2, le=1000, description="greedy: at most this many additions (a member added 3 "
        "times of 20 weighs 0.15); it stops sooner when no addition lowers the log-loss")
    top_k: int = Field(3, ge=2, le=16, description="top_k: members picked by validation accuracy")
    max_size_fraction: float = Field(
        0.5, gt=0, description="the members' files together at most this share of the baseline's "
        "ONNX file (the size budget of the automatic pick)")


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------
class CompareConfig(_Section):
    """Stage `compare`: measure every candidate side by side and pick the deployable one."""

    max_accuracy_drop_pp: float = Field(
        0.5, ge=0, description="largest validation accuracy drop vs the teacher a deployable "
        "model may have"
    )
    min_speedup: float = Field(
        1.05, ge=1.0, description="a candidate counts as faster than another only when the whole "
        "interval of its batch-1 speed-up clears this: a smaller gain, however sure, does not pay "
        "for a bigger file (the two tie and the smaller file is deployed)"
    )
    min_agreement: float | None = Field(
        None, gt=0, le=1, description="a deployable model gives the teacher's top class on at "
        "least this share of the validation samples (null: no such rule)")
    max_robustness_drop_pp: float | None = Field(
        None, ge=0, description="a deployable model loses at most this much validation accuracy "
        "on strongly corrupted inputs (null: no such rule)")
    seed: int = Field(0, description="seed of the corrupted copies of the inputs (the same for "
                      "every candidate)")


# ---------------------------------------------------------------------------------------------
# deploy and serve
# ---------------------------------------------------------------------------------------------
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a registered model name: letters, digits, _ . -


class DeployConfig(_Section):
    """Stage `deploy`: register compare's choice in the MLflow Model Registry, gate its promotion."""

    registered_model: str | None = Field(
        None, pattern=MODEL_NAME, description="registered model name (default: shrinkflow-<data set>)")
    auto_promote: bool = Field(
        True, description="promote the new version to `champion` when it passes the gate")
    max_accuracy_drop_pp: float = Field(
        0.0, ge=0, description="the challenger may trail the champion by at most this on "
        "validation (both re-evaluated now)")
    max_size_bytes: int | None = Field(None, ge=1, description="largest deployable file (null: no budget)")
    max_latency_ms: float | None = Field(
        None, gt=0, description="largest batch-1 p50 latency measured by compare (null: no budget)")


class ServeConfig(_Section):
    """`shrinkflow serve`: the HTTP model server."""

    host: str = Field("127.0.0.1", description="interface to bind (0.0.0.0 exposes it to the network)")
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    alias: str = Field("champion", min_length=1, description="registry alias served")
    max_batch: int = Field(64, ge=1, description="rows run together in one ONNX Runtime call")
    max_wait_ms: float = Field(
        2.0, ge=0, description="longest a request waits for others to share its call")
    max_request_rows: int = Field(1024, ge=1, description="rows one request may send")
    max_body_bytes: int = Field(4_000_000, ge=1024, description="largest request body")
    max_image_pixels: int = Field(
        4096 * 4096, ge=64, description="pixels of one image sent to an image model (more: 413)")
    poll_seconds: float = Field(
        5.0, gt=0, description="how often the alias is checked (the server follows it)")
    threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads")


# ---------------------------------------------------------------------------------------------
# measure
# ---------------------------------------------------------------------------------------------
class MeasureConfig(_Section):
    """How latency and throughput are measured (the same settings for every model)."""

    threads: int = Field(1, ge=1, description="intra-op threads for torch and ONNX Runtime")
    warmup: int = Field(20, ge=0, description="untimed calls before timing")
    repeats: int = Field(200, ge=5, description="timed calls at batch 1 (p50/p95 over these)")
    throughput_repeats: int = Field(20, ge=3, description="timed calls at batch 256")
    rounds: int = Field(
        10, ge=2, description="models timed together take turns in this many rounds (drift hits "
        "all; the intervals of speed ratios resample the rounds)"
    )


# ---------------------------------------------------------------------------------------------
# project / tracking
# ---------------------------------------------------------------------------------------------
class ProjectConfig(_Section):
    """Names shared by all stages."""

    experiment: str = Field("shrinkflow", min_length=1, description="MLflow experiment name")


class Params(_Section):
    """The whole of params.yaml."""

    project: ProjectConfig = ProjectConfig()
    prepare: PrepareConfig = PrepareConfig()
    search: SearchConfig = SearchConfig()
    baseline: BaselineConfig = BaselineConfig()
    prune: PruneConfig = PruneConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    distill: DistillConfig = DistillConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    compare: CompareConfig = CompareConfig()
    deploy: DeployConfig = DeployConfig()
    serve: ServeConfig = ServeConfig()
    measure: MeasureConfig = MeasureConfig()

    @property
    def user_modules(self) -> tuple[str, ...]:
        """The modules of the user's own network classes these params name (baseline.model and
        distill's students): code the stages that build networks depend on."""
        configs = [self.baseline.model, *self.distill.students().values()]
        return tuple(sorted({config.class_path.partition(":")[0] for config in configs
                             if config.class_path}))

    @property
    def user_files(self) -> tuple[str, ...]:
        """The files of the user's own model these params name (baseline.weights, .onnx), relative to
        the project root: data the stages that build networks depend on."""
        return tuple(path for path in (self.baseline.weights, self.baseline.onnx) if path)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def _format_errors(error: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}' (check the spelling against params.yaml)")
        else:
            lines.append(f"  - {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


# mappings given whole (in an overlay file, or as `--set search.space={...}`) replace the one
# before instead of merging into it: a search space or a set of students given again is the new
# one (merging would keep every entry of the old one, with no way to drop one);
# `--set search.space.train.lr=...` still changes one entry
# a class's keyword arguments are one unit: an overlay's replace params.yaml's, key by key never
REPLACED_WHOLE = frozenset({"search.space", "distill.extra_students", "baseline.model.init_args",
                            "distill.student.init_args"})


def _deep_merge(base: dict[str, Any], override: dict[str, Any],
                replaced: frozenset[str] = frozenset(), path: str = "") -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        dotted = f"{path}{key}"
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and dotted not in replaced:
            merged[key] = _deep_merge(merged[key], value, replaced, f"{dotted}.")
        else:
            merged[key] = value
    return merged


# libyaml's parser where PyYAML was built with it (its wheels are): about twenty times faster than
# the pure-Python one on params.yaml, which every stage, check and cache key reads; as safe
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """`yaml.safe_load`, with libyaml's parser where there is one (SAFE_LOADER is a safe loader,
    which bandit cannot see through the getattr)."""
    return yaml.load(text, Loader=SAFE_LOADER)  # nosec B506


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        data = safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, found {type(data).__name__}")
    return data


def parse_override(assignment: str) -> dict[str, Any]:
    """Turn `a.b.c=value` into {'a': {'b': {'c': value}}}; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    value: Any = safe_load(raw)
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_params(
    path: str | Path = "params.yaml",
    overlays: list[str | Path] | None = None,
    overrides: list[str] | None = None,
) -> Params:
    """Load params.yaml, deep-merge overlay files then `key=value` overrides, and validate.

    Raises:
        ConfigError: naming the file and every bad key or value.
    """
    path = Path(path)
    data = _read_yaml(path)
    origins = [str(path)]
    for overlay in overlays or []:
        data = _deep_merge(data, _read_yaml(Path(overlay)), REPLACED_WHOLE)
        origins.append(str(overlay))
    for assignment in overrides or []:
        given_whole = assignment.partition("=")[0].strip() in REPLACED_WHOLE
        data = _deep_merge(data, parse_override(assignment),
                           REPLACED_WHOLE if given_whole else frozenset())
        origins.append(f"--set {assignment}")
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, " + ".join(origins))) from None


def flatten(section: BaseModel, prefix: str = "") -> dict[str, Any]:
    """{'baseline.train.lr': 0.003, ...}: the form MLflow params and DVC `-S` use."""
    flat: dict[str, Any] = {}
    for key, value in section.model_dump().items():
        _flatten_into(flat, f"{prefix}{key}", value)
    return flat


def _flatten_into(flat: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict):
        for sub_key, sub_value in value.items():
            _flatten_into(flat, f"{key}.{sub_key}", sub_value)
    else:
        flat[key] = value
