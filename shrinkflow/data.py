"""Data sets, splits, normalization and augmentation.

Sources (params.yaml `prepare.source`):
  digits         scikit-learn's 8x8 handwritten digits, 1,797 images, 10 classes (image, 1x8x8)
  mnist1d        the MNIST-1D benchmark (Greydanus 2020): 40-sample signals, 10 classes, generated
                 locally with `mnist1d.data.make_dataset` and a fixed seed, never downloaded (signal, 1x40)
  breast_cancer  scikit-learn's Wisconsin breast cancer table, 30 features, 2 classes (tabular)
  csv            any user CSV: feature columns (numbers or text, encoded by `shrinkflow.encode`)
                 plus `prepare.csv.target` (tabular)
  images         a folder of images, one sub-folder per class (`shrinkflow.images`), resized to
                 `prepare.images.size` (image, channels x size x size)

Every source but images is first expressed as one raw table (feature columns + a `label` column
for the built-in ones), which is what DVC versions and Great Expectations validates; an image
folder is kept as its decoded, resized pixels. `DatasetSpec` says how to read
that table back into tensors. Other keys read from `prepare`: `val_fraction`, `test_fraction`, `seed`
(stratified split) and `mnist1d_samples`. Augmentation keys come from `baseline.augment`.

An unlabeled pool (`prepare.unlabeled_samples` for mnist1d, `prepare.unlabeled_csv` for any source)
holds inputs without labels: a distilled student learns from the teacher's predictions on them.
Within a training split such rows carry the label `UNLABELED`.

Normalization is fitted on the training split only and stored with the data, so the exact same
transform is applied at serving time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from shrinkflow.config import AugmentConfig, PrepareConfig
from shrinkflow.errors import UserError

Kind = Literal["image", "signal", "tabular"]
RawFormat = Literal["table", "images"]  # how the raw data is kept: a table, or uint8 N x H x W x C
BUILTIN_TARGET = "label"
UNLABELED = -100  # label of a row without one: cross-entropy's default ignore_index skips it
_DIGIT_NAMES = tuple(str(digit) for digit in range(10))


class DataError(UserError, ValueError):
    """The data does not have the shape or content a stage needs."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a raw table holds and how to turn it into model inputs."""

    name: str
    kind: Kind
    input_shape: tuple[int, ...]  # per-sample shape fed to the model, e.g. (1, 8, 8)
    feature_columns: tuple[str, ...]
    target: str
    classes: tuple[str, ...]  # class names, in the order of the integer targets
    labels: tuple[str, ...]  # the target column's values (as text), in the same order
    value_range: tuple[float, float] | None = None  # known bounds of raw features, if any
    raw: RawFormat = "table"  # images: no feature columns; the raw input is the uint8 image

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "feature_columns": list(self.feature_columns),
            "target": self.target,
            "classes": list(self.classes),
            "labels": list(self.labels),
            "value_range": list(self.value_range) if self.value_range else None,
            "raw": self.raw,
        }

    @classmethod
    def from_dict(cls, data: dict) -> DatasetSpec:
        value_range = data.get("value_range")
        return cls(
            name=data["name"],
            kind=data["kind"],
            input_shape=tuple(data["input_shape"]),
            feature_columns=tuple(data["feature_columns"]),
            target=data["target"],
            classes=tuple(data["classes"]),
            labels=tuple(data["labels"]),
            value_range=tuple(value_range) if value_range else None,
            raw=data.get("raw", "table"),
        )


# ---------------------------------------------------------------------------------------------
# Built-in sources as raw tables
# ---------------------------------------------------------------------------------------------
def _digits_table() -> tuple[pd.DataFrame, DatasetSpec]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    columns = [f"px_{row}_{col}" for row in range(8) for col in range(8)]
    frame = pd.DataFrame(bunch.data.astype(np.float64), columns=columns)
    frame[BUILTIN_TARGET] = bunch.target.astype(np.int64)
    spec = DatasetSpec(
        "digits", "image", (1, 8, 8), tuple(columns), BUILTIN_TARGET,
        _DIGIT_NAMES, _DIGIT_NAMES, value_range=(0.0, 16.0),
    )
    return frame, spec


def _mnist1d_signals(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = samples
    args.seed = seed
    args.train_split = 1.0  # we split ourselves (stratified, with a validation set)
    generated = make_dataset(args)  # pure numpy generation: no download, no pickle cache
    return generated["x"], generated["y"]


def _signal_frame(signals: np.ndarray) -> pd.DataFrame:
    columns = [f"x_{i}" for i in range(signals.shape[1])]
    return pd.DataFrame(signals.astype(np.float64), columns=columns)


def _mnist1d_table(samples: int, seed: int) -> tuple[pd.DataFrame, DatasetSpec]:
    signals, labels = _mnist1d_signals(samples, seed)
    frame = _signal_frame(signals)
    columns = list(frame.columns)
    frame[BUILTIN_TARGET] = labels.astype(np.int64)
    spec = DatasetSpec(
        "mnist1d", "signal", (1, signals.shape[1]), tuple(columns), BUILTIN_TARGET,
        _DIGIT_NAMES, _DIGIT_NAMES, value_range=(-50.0, 50.0),
    )
    return frame, spec


_UNLABELED_SEED_OFFSET = 1_000_003  # far from any seed a user would step through


def mnist1d_unlabeled(samples: int, seed: int) -> pd.DataFrame:
    """Fresh MNIST-1D signals without their labels, generated from a seed of their own.

    The generator draws every signal at random (template, shift, scale, noise), so a pool from
    another seed shares no rows with the labeled table made from `seed`.
    """
    signals, _ = _mnist1d_signals(samples, seed + _UNLABELED_SEED_OFFSET)
    return _signal_frame(signals)


def _breast_cancer_table() -> tuple[pd.DataFrame, DatasetSpec]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    columns = [name.replace(" ", "_") for name in bunch.feature_names]
    frame = pd.DataFrame(bunch.data.astype(np.float64), columns=columns)
    frame[BUILTIN_TARGET] = bunch.target.astype(np.int64)
    spec = DatasetSpec(
        "breast_cancer", "tabular", (len(columns),), tuple(columns), BUILTIN_TARGET,
        tuple(str(name) for name in bunch.target_names),
        tuple(str(i) for i in range(len(bunch.target_names))), value_range=(0.0, 1e4),
    )
    return frame, spec


def builtin_table(cfg: PrepareConfig) -> tuple[pd.DataFrame, DatasetSpec]:
    """The raw table of a built-in source, generated deterministically from `cfg`."""
    if cfg.source == "digits":
        return _digits_table()
    if cfg.source == "mnist1d":
        return _mnist1d_table(cfg.mnist1d_samples, cfg.seed)
    if cfg.source == "breast_cancer":
        return _breast_cancer_table()
    raise DataError(f"prepare.source {cfg.source!r} is not a built-in source")


def images_spec(name: str, classes: Sequence[str], size: int, channels: int) -> DatasetSpec:
    """Spec of an image folder: its class folders' names are its classes and labels."""
    return DatasetSpec(name, "image", (channels, size, size), (), BUILTIN_TARGET, tuple(classes),
                       tuple(classes), value_range=(0.0, 255.0), raw="images")


def images_to_features(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x C images as the float32 N x C x H x W inputs of a network."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


def csv_spec(frame: pd.DataFrame, target: str, name: str, features: Sequence[str] | None = None,
             drop: Sequence[str] = ()) -> DatasetSpec:
    """Spec of a user table: the `features` columns (default: every column but `target` and
    `drop`), in that order; classes are the sorted labels. A column named in `features` or `drop`
    that the header lacks is refused, listing the columns there are."""
    columns = [str(column) for column in frame.columns]
    for key, names in (("prepare.csv.target", [target]), ("prepare.csv.features", features or ()),
                       ("prepare.csv.drop", drop)):
        unknown = [column for column in names if column not in columns]
        if unknown:
            raise DataError(f"{key}: no column {_quoted(unknown)} in the table; its columns are "
                            f"{columns}")
    chosen = tuple(features) if features is not None else tuple(
        column for column in columns if column != target and column not in set(drop))
    if not chosen:
        raise DataError(f"the table has no feature columns besides the target {target!r}"
                        + (f" once {list(drop)} are dropped" if drop else ""))
    classes = tuple(sorted({str(value) for value in frame[target].dropna()}))
    return DatasetSpec(name, "tabular", (len(chosen),), chosen, target, classes, classes)


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


# ---------------------------------------------------------------------------------------------
# Table -> arrays -> splits
# ---------------------------------------------------------------------------------------------
def table_to_features(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """Features as float32 of shape (N, *input_shape)."""
    features = frame.loc[:, list(spec.feature_columns)].to_numpy(dtype=np.float32)
    return features.reshape(len(frame), *spec.input_shape)


def table_labels(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """The target column as int64 class indices (labels matched as text)."""
    index = {label: i for i, label in enumerate(spec.labels)}
    labels = frame[spec.target].map(lambda value: index.get(str(value), -1)).to_numpy(np.int64)
    unknown = sorted({str(v) for v, i in zip(frame[spec.target], labels, strict=True) if i < 0})
    if unknown:
        raise DataError(f"column {spec.target!r} has labels outside {list(spec.labels)}: {unknown}")
    return labels


def table_to_arrays(frame: pd.DataFrame, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 of shape (N, *input_shape); labels as int64 class indices."""
    return table_to_features(frame, spec), table_labels(frame, spec)


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def with_unlabeled(split: Split, unlabeled_x: np.ndarray | None) -> Split:
    """`split` followed by the unlabeled rows, whose label is `UNLABELED`."""
    if unlabeled_x is None or len(unlabeled_x) == 0:
        return split
    if unlabeled_x.shape[1:] != split.x.shape[1:]:
        raise DataError(f"unlabeled inputs have shape {unlabeled_x.shape[1:]}, "
                        f"the training split {split.x.shape[1:]}")
    labels = np.full(len(unlabeled_x), UNLABELED, dtype=split.y.dtype)
    return Split(np.concatenate([split.x, unlabeled_x.astype(split.x.dtype)]),
                 np.concatenate([split.y, labels]))


def rows_found_in(rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """A boolean mask over `rows`: True where a row equals some row of `others` exactly.

    Rows are compared whole (every value of the per-row shape, which both arrays must share), in
    the dtype both convert to without loss. Each row is hashed by its bytes, so the cost is linear
    in both sizes; -0.0 counts as 0.0 (equal values, different bytes) and a NaN matches only a NaN
    of the same bits.
    """
    if rows.shape[1:] != others.shape[1:]:
        raise DataError(f"rows of shape {rows.shape[1:]} cannot be found among rows of shape "
                        f"{others.shape[1:]}")
    dtype = np.result_type(rows, others)
    width = math.prod(rows.shape[1:])

    def row_bytes(array: np.ndarray) -> list[bytes]:
        flat = np.ascontiguousarray(array, dtype=dtype).reshape(len(array), width)
        if np.issubdtype(dtype, np.floating):
            flat = flat + 0.0  # -0.0 + 0.0 is +0.0
        return [row.tobytes() for row in flat]

    seen = set(row_bytes(others))
    return np.fromiter((row in seen for row in row_bytes(rows)), dtype=bool, count=len(rows))


def sample_rows(split: Split, max_rows: int | None, seed: int) -> Split:
    """At most `max_rows` rows of `split`, with its class proportions (seeded); all of them when
    there are no more than that or `max_rows` is None."""
    if max_rows is None or len(split) <= max_rows:
        return split
    from sklearn.model_selection import train_test_split

    kept, _ = train_test_split(np.arange(len(split)), train_size=max_rows, stratify=split.y,
                               random_state=seed)
    kept = np.sort(kept)
    return Split(split.x[kept], split.y[kept])


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split


def stratified_split(
    x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> Splits:
    """Train/val/test with the class proportions of the whole set, reproducible from `seed`."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(y))
    rest, test = train_test_split(indices, test_size=test_fraction, stratify=y, random_state=seed)
    # val_fraction is a share of the whole set, so rescale it to the remaining rows
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=seed)
    return Splits(*(Split(x[part], y[part]) for part in (train, val, test)))


# ---------------------------------------------------------------------------------------------
# Normalization (fitted on train only)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Normalizer:
    """x -> (x - mean) / std, per feature for tables and per channel for images/signals."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, kind: Kind) -> Normalizer:
        # tables: features have unrelated units; images/signals: one scale per channel keeps
        # the spatial structure (a per-pixel std would blow up near-constant border pixels)
        axes = (0,) if kind == "tabular" else tuple(i for i in range(x.ndim) if i != 1)
        mean, std = _mean_and_std(x, axes)
        constant = x.max(axis=axes, keepdims=True)[0] == x.min(axis=axes, keepdims=True)[0]
        std = np.where(constant | (std < 1e-12), 1.0, std)  # constant features stay as they are
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        normalized = np.subtract(x, self.mean, dtype=np.float32)
        normalized /= self.std
        return normalized

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> Normalizer:
        return cls(np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32))


_ROWS_AT_ONCE = 65536  # of a split, in the normalization's float64 sums


def _mean_and_std(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over `axes` (which include 0), summed in float64 (float32 sums
    leave a constant column with std ~1e-4) a block of rows at a time: a float64 copy of a big
    split would be twice its size."""
    count = x.size // math.prod(x.shape[axis] for axis in range(x.ndim) if axis not in axes)
    blocks = [x[start:start + _ROWS_AT_ONCE] for start in range(0, len(x), _ROWS_AT_ONCE)]
    mean = sum(block.sum(axis=axes, dtype=np.float64, keepdims=True) for block in blocks) / count
    squares = sum(np.square(block - mean).sum(axis=axes, keepdims=True) for block in blocks)
    return mean[0], np.sqrt(squares / count)[0]


def normalize_splits(splits: Splits, kind: Kind) -> tuple[Splits, Normalizer]:
    normalizer = Normalizer.fit(splits.train.x, kind)
    normalized = Splits(*(Split(normalizer(s.x), s.y) for s in (splits.train, splits.val, splits.test)))
    return normalized, normalizer


def class_counts(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y, minlength=n_classes)


# ---------------------------------------------------------------------------------------------
# Augmentation and loaders
# ---------------------------------------------------------------------------------------------
@dataclass
class Augmenter:
    """Random shifts, small rotations (images) and Gaussian noise, applied per training batch."""

    cfg: AugmentConfig
    kind: Kind
    generator: torch.Generator = field(default_factory=torch.Generator)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.enabled or self.kind == "tabular":
            return x
        if self.kind == "image":
            x = self._affine_2d(x)
        elif self.cfg.max_shift:
            x = self._shift_1d(x)
        if self.cfg.noise_std:
            noise = torch.randn(x.shape, generator=self.generator, device="cpu").to(x.device)
            x = x + self.cfg.noise_std * noise
        return x

    def _uniform(self, n: int, bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=self.generator) * 2 - 1) * bound

    def _affine_2d(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        angle = self._uniform(n, math.radians(self.cfg.max_rotation_deg))
        # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size
        shift_x = self._uniform(n, self.cfg.max_shift * 2.0 / width)
        shift_y = self._uniform(n, self.cfg.max_shift * 2.0 / height)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
        ).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, padding_mode="border", align_corners=False)

    def _shift_1d(self, x: torch.Tensor) -> torch.Tensor:
        n, length = x.shape[0], x.shape[-1]
        bound = self.cfg.max_shift
        shift = torch.randint(-bound, bound + 1, (n, 1, 1), generator=self.generator)
        # edge padding: a shifted signal repeats its end value instead of wrapping around
        positions = (torch.arange(length).view(1, 1, -1) - shift).clamp(0, length - 1)
        return torch.gather(x, -1, positions.expand(x.shape).to(x.device))


def make_loader(split: Split, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    dataset = TensorDataset(torch.from_numpy(split.x), torch.from_numpy(split.y))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
