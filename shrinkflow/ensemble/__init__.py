"""Ensembles: several candidates combined into one ONNX model that predicts better than each.

  pick_members  which candidates: the best on validation, one per lineage, within a total size
  fit_weights   the weighted method's member weights, fitted on validation labels
  compose       one ONNX graph running every member on `input`, combined into `logits` by
                average | weighted | vote

Everything here is numpy, onnx and scipy: no tracking, no files. Modules, each importing only
modules listed before it: members (and `EnsembleError`), weights, compose.
"""

from shrinkflow.ensemble.compose import METHODS, Method, compose
from shrinkflow.ensemble.members import EnsembleError, Pick, pick_members
from shrinkflow.ensemble.weights import fit_weights, log_loss, softmax

__all__ = [
    "METHODS",
    "EnsembleError",
    "Method",
    "Pick",
    "compose",
    "fit_weights",
    "log_loss",
    "pick_members",
    "softmax",
]
