"""Every candidate judged the same way, beside the teacher: how far it agrees with it, how well
its confidence is calibrated, and how it holds up on corrupted inputs.

  agreement          share of samples whose top class is the teacher's (1.0 for the teacher)
  kl_to_teacher      mean KL(teacher || candidate) of the class probabilities, in nats: the
                     compression error a user feels, before it shows as a wrong label
  ece                expected calibration error, 15 equal-width bins of the top probability
                     (Guo et al. 2017): the gap between how sure the model is and how often right
  corrupted_accuracy_<severity>   accuracy on a corrupted copy of the inputs (`corrupted`)
  robustness_drop_pp_<severity>   clean accuracy minus that, in percentage points

each on test, and with a `val_` prefix on validation (what a choice may read).

The corrupted copies are made once per split and severity (`corrupted`, seeded), so every
candidate sees the same ones: Gaussian noise of a share of each input's own spread for every kind
of data (normalization divides by the training split's standard deviation, so in normalized
units this is the share itself); for images also a shift and a rotation, for signals a shift and
an amplitude scaling around the training mean; tables get the noise alone, scaled to each
column's spread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from shrinkflow.config import AugmentConfig
from shrinkflow.data import Augmenter, Kind
from shrinkflow.measure import predict_batched

ECE_BINS = 15
SPLITS = ("val", "test")
_EPSILON = 1e-12  # probabilities are clipped to it before a logarithm


@dataclass(frozen=True)
class Severity:
    """How hard a corruption is."""

    noise_std: float  # Gaussian noise, in standard deviations of each input
    max_shift: int  # images: pixels; signals: samples
    max_rotation_deg: float  # images
    max_scale: float  # signals: amplitude scaled by a factor within 1 +/- this


SEVERITIES = {"mild": Severity(0.1, 1, 5.0, 0.05), "strong": Severity(0.3, 2, 15.0, 0.15)}


def corrupted(x: np.ndarray, kind: Kind, severity: Severity, seed: int | Sequence[int]
              ) -> np.ndarray:
    """A corrupted copy of the normalized inputs `x` (see the module docstring); the same for the
    same arguments."""
    rng = np.random.default_rng(seed)
    out = x
    if kind != "tabular":
        moved = Augmenter(AugmentConfig(max_shift=severity.max_shift,
                                        max_rotation_deg=severity.max_rotation_deg,
                                        noise_std=0.0),
                          kind, torch.Generator().manual_seed(int(rng.integers(2**31))))
        out = moved(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    if kind == "signal":
        out = out * rng.uniform(1 - severity.max_scale, 1 + severity.max_scale,
                                (len(out),) + (1,) * (out.ndim - 1))
    return (out + rng.normal(0.0, severity.noise_std, out.shape)).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True), dtype=np.float64)
    return shifted / shifted.sum(axis=1, keepdims=True)


def agreement(probabilities: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """Top-1 agreement with the teacher's probabilities, and the mean KL(teacher || these)."""
    kl = np.sum(teacher * (np.log(np.clip(teacher, _EPSILON, None))
                           - np.log(np.clip(probabilities, _EPSILON, None))), axis=1)
    return {"agreement": float(np.mean(probabilities.argmax(1) == teacher.argmax(1))),
            "kl_to_teacher": float(max(kl.mean(), 0.0))}


def calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
                      ) -> float:
    """Expected calibration error: |accuracy - confidence| in equal-width bins of the top
    probability ((0, 1/bins], ..., ((bins-1)/bins, 1]), weighted by each bin's share."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = 0.0
    for index in np.unique(which):
        members = which == index
        gap += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap)


@dataclass(frozen=True)
class Inputs:
    """What every candidate is judged on: each split's inputs, labels and corrupted copies, and
    the teacher's probabilities on the clean inputs."""

    x: Mapping[str, np.ndarray]  # split -> inputs
    y: Mapping[str, np.ndarray]  # split -> labels
    corrupted: Mapping[str, Mapping[str, np.ndarray]]  # split -> severity -> inputs
    teacher: Mapping[str, np.ndarray]  # split -> the teacher's probabilities

    @classmethod
    def make(cls, x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray], kind: Kind,
             teacher: Callable[[np.ndarray], np.ndarray], seed: int = 0) -> Inputs:
        """The corrupted copies (seeded per split and severity) and the `teacher`'s (a function
        from inputs to logits) probabilities."""
        copies = {split: {name: corrupted(x[split], kind, severity, (seed, number, level))
                          for level, (name, severity) in enumerate(SEVERITIES.items())}
                  for number, split in enumerate(SPLITS)}
        return cls(x, y, copies, {split: softmax(predict_batched(teacher, x[split]))
                                  for split in SPLITS})


def judged(predict: Callable[[np.ndarray], np.ndarray], inputs: Inputs) -> dict[str, float]:
    """The module docstring's figures of one model (`predict`: inputs to logits)."""
    found: dict[str, float] = {}
    for split in SPLITS:
        prefix = "" if split == "test" else f"{split}_"
        probabilities = softmax(predict_batched(predict, inputs.x[split]))
        clean = float(np.mean(probabilities.argmax(1) == inputs.y[split]))
        found |= {f"{prefix}{key}": value
                  for key, value in agreement(probabilities, inputs.teacher[split]).items()}
        found[f"{prefix}ece"] = calibration_error(probabilities, inputs.y[split])
        for name, x in inputs.corrupted[split].items():
            accuracy = float(np.mean(predict_batched(predict, x).argmax(1) == inputs.y[split]))
            found[f"{prefix}corrupted_accuracy_{name}"] = accuracy
            found[f"{prefix}robustness_drop_pp_{name}"] = 100.0 * (clean - accuracy)
    return found
