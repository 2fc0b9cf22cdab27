"""Pruning in steps: the cubic schedule of cumulative ratios, and the fine-tuning run after each step."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

# finetune(model, step) trains `model` in place after pruning step `step` (1-based)
Finetune = Callable[[nn.Module, int], object]


def schedule(target: float, steps: int) -> list[float]:
    """Cumulative ratio after each of `steps` steps: cubic, ending exactly at `target`.

    r_k = target * (1 - (1 - k/steps)^3) (Zhu & Gupta 2017). Early steps remove much, late steps
    little: at first there is plenty of redundancy, near the target every weight matters more and
    fine-tuning needs smaller changes to recover from. steps=1 gives [target] (one shot).
    """
    ratios = [target * (1.0 - (1.0 - k / steps) ** 3) for k in range(1, steps + 1)]
    ratios[-1] = target  # no floating-point drift at the end
    return ratios
