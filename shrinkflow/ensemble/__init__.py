"""Ensembles: several candidates combined into one ONNX model that predicts better than each.

  select_greedy which candidates, and their weights: greedy forward selection with replacement
                on validation log-loss (Caruana et al. 2004), one per lineage, within a total
                size (`ensemble.selection: greedy`, the default)
  pick_members  which candidates: the top_k by validation accuracy, one per lineage, within a
                total size (`ensemble.selection: top_k`), or the names given
  fit_weights   the weighted method's member weights, fitted on validation labels (for members
                picked by pick_members; greedy's weights are its counts)
  compose       one ONNX graph running every member on `input`, combined into `logits` by
                average | weighted | vote

Everything here is numpy, onnx and scipy: no tracking, no files. Modules, each importing only
modules listed before it: members (and `EnsembleError`), weights, selection,
compose.
"""

from shrinkflow.ensemble.compose import METHODS, Method, compose
from shrinkflow.ensemble.members import EnsembleError, Pick, pick_members
from shrinkflow.ensemble.selection import Selection, select_greedy
from shrinkflow.ensemble.weights import fit_weights, log_loss, softmax

__all__ = [
    "METHODS",
    "EnsembleError",
    "Method",
    "Pick",
    "Selection",
    "compose",
    "fit_weights",
    "log_loss",
    "pick_members",
    "select_greedy",
    "softmax",
]
