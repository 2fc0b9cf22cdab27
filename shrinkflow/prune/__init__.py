"""Pruning: structured (whole channels) and unstructured (single weights), iterative, searched.

Structured pruning removes whole output channels of convolutions and neurons of hidden linear
layers with Torch-Pruning, which follows the dependencies between layers (a removed conv channel
also leaves its BatchNorm and the next layer's inputs). The result is a physically smaller dense
network, faster everywhere; `architecture_of` reads its new per-layer widths (of a team's own
network: the layer attributes pruning changed) so it is saved and rebuilt like any other model.
The classifier's outputs are never pruned.

Unstructured pruning zeroes individual Conv/Linear weights (the classifier included; biases and
BatchNorm are left alone) by magnitude. Zeros alone do not shrink a file, so `shrinkflow.sparse`
stores sparse weights compactly.

Both can be reached in `steps` steps with fine-tuning in between (through train.fit, optionally
with a sparsity penalty), and `search_ratio` finds the highest ratio whose accuracy drop stays
within a limit. Every entry point deep-copies the model it is given: the caller's model is never
changed.

One file per idea:
  layers        which layers are pruned (Conv/Linear) and which one is protected (the classifier)
  schedule      the cubic schedule of cumulative ratios over the steps
  structured    channel importance, per-type ratio overrides, prune_structured, architecture_of
  unstructured  magnitude masks, histogram threshold, prune_unstructured, weight_sparsity
  finetune      sparsity penalties, make_finetune, iterative (either kind in steps)
  search        search_ratio, the accuracy-aware choice of the ratio

Keys read from `prune`:
  structured.ratios       fractions of channels/neurons to remove, one candidate each, in [0, 1)
  structured.importance   how channels are ranked: l1 | l2 norm of the channel's own filter,
                          group_norm: L2 norm over every coupled layer (filter, BatchNorm, the next
                          layer's input weights), as in DepGraph (Fang et al. 2023)
  structured.scope        layer: the same ratio in every layer; global: one ranking across layers
                          (importance normalized by each layer's mean so layers compare)
  structured.conv_ratio   overrides the ratio for conv layers
  structured.linear_ratio overrides the ratio for hidden linear layers (never the classifier)
  unstructured.method     ratio: zero that fraction of weights; threshold: zero |w| < threshold;
                          histogram: threshold chosen by Otsu's method on the histogram of log|w|
  unstructured.ratios     method ratio: fractions of weights to zero, one candidate each
  unstructured.threshold  method threshold: |w| below it is zeroed
  unstructured.scope      global: one ranking (or histogram) over all weights; layer: per layer
  steps                   prune in this many steps to the target (cubic schedule, see `schedule`)
  finetune_epochs         fine-tuning epochs after each step (0: no fine-tuning)
  penalty                 none | l1 | group_lasso, added to the loss while fine-tuning
  penalty_weight          weight of the penalty
  finetune_with_teacher   read by the stage: fine-tuning also matches the unpruned model's soft
                          labels (knowledge distillation, `distill.temperature` and `alpha`)
  max_accuracy_drop_pp    the accuracy-aware search accepts drops up to this (percentage points)
  search_ratios           ratios tried by the search, in ascending order
"""

from shrinkflow.prune.finetune import (
    Kind,
    group_lasso_penalty,
    iterative,
    l1_penalty,
    make_finetune,
    sparsity_penalty,
)
from shrinkflow.prune.schedule import Finetune, schedule
from shrinkflow.prune.search import PruneAt, SearchResult, SearchTry, search_ratio
from shrinkflow.prune.structured import architecture_of, prune_structured, structured_importance
from shrinkflow.prune.unstructured import histogram_threshold, prune_unstructured, weight_sparsity

__all__ = [
    "Finetune",
    "Kind",
    "PruneAt",
    "SearchResult",
    "SearchTry",
    "architecture_of",
    "group_lasso_penalty",
    "histogram_threshold",
    "iterative",
    "l1_penalty",
    "make_finetune",
    "prune_structured",
    "prune_unstructured",
    "schedule",
    "search_ratio",
    "sparsity_penalty",
    "structured_importance",
    "weight_sparsity",
]
