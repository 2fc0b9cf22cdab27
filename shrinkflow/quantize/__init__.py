"""Quantization: fp16 and int8 ONNX models, quantization-aware training, accuracy-aware fallback.

Every function takes a float32 ONNX file (as written by `shrinkflow.export.export_onnx`) and writes
a new one that runs in ONNX Runtime on the CPU with the same float32 input and logits. Measured on
this CPU:

  to_fp16          half-precision weights, float32 input and output. ORT's CPU provider computes
                   in float32: the file halves, the time does not.
  to_int8_weights  weight-only int8: the file shrinks ~4x; ORT expands the weights once at load,
                   so latency is the float32 model's.
  to_int4_weights  weight-only 4-bit: packed INT4 in blocks of up to 64 weights of a channel, a
                   float16 scale each (opset 21); expanded at load like int8 weights.
  to_int8_dynamic  int8 weights; MatMul/Gemm quantize their activations at run time. Conv weights
                   are only stored as int8 (expanded at load): ConvInteger, what dynamic
                   quantization makes of a Conv, ran 5x (batch 1) to 13x (batch 256) slower
                   than float32.
  to_int8_static   int8 weights (per channel) and activations (ranges calibrated on given rows):
                   the variant that runs int8 kernels (digits CNN: ~1.1x float32 throughput at
                   batch 256, ~30% slower at batch 1).
  quantization_aware_training
                   fine-tunes a torch model through fake quantization; `export_qat_onnx` +
                   `to_int8_static` make the int8 file.
  quantize_with_fallback
                   int8 static, and when it loses too much accuracy: other calibrations, the most
                   sensitive layers kept in float, then QAT; every attempt is recorded.

Keys read from params.yaml `quantize` (`QuantizeConfig`, which validates them, so these functions
do not re-check choices and bounds; read by `quantize_with_fallback` and `qat_train_config`;
`low_bit_epochs` by the stage):
  calibration           minmax | percentile | entropy: the calibration tried first
  calibration_samples   at most this many rows of the calibration array are used
  percentile            percentile calibration keeps this share (in %) of |activation| values
  per_channel           one weight scale per output channel (else one per tensor)
  format                qdq | qoperator: how the int8 graph is written
  max_accuracy_drop_pp  largest accepted accuracy drop, in percentage points of the reference
  fallback              steps tried in order after a too large drop: percentile | entropy | minmax
                        (another calibration), exclude_sensitive (keep the most sensitive layers in
                        float, one more at a time; for 4-bit, ternary and binary files: at 8
                        bits), qat (quantization-aware training)
  qat_epochs            epochs of quantization-aware fine-tuning
  low_bit_epochs        epochs of ternary and binary fine-tuning
(`quantize.methods`, which variants to make, is read by the stage that calls these functions.)

Calibration. ONNX Runtime's `quantize_static` does not pass histogram sizes on to its calibrators,
and with its defaults (128 bins, 128 quantized bins) the entropy search has a single candidate,
the full range: a model byte-identical to minmax. So the ranges are computed with ORT's
calibrators and explicit sizes, and handed to `quantize_static` as a calibration cache:
  minmax      the observed minimum and maximum of each activation
  percentile  |x| histogram of 2048 bins cut at `percentile` %, clipped to the observed [min, max]
  entropy     ORT's KL-divergence threshold search (TensorRT's method) over a 512-bin histogram
              with 128 quantized bins, clipped to [min, max]. Finer histograms (1024+ bins) made
              the search settle on its first, degenerate candidate for ReLU outputs (clipping them
              to a quarter of their range) and took seconds.

  low_bit_training + to_ternary_weights
                   ternary ({-a, 0, +a} per channel) or binary ({-a, +a}) hidden weights, fine-tuned
                   through a straight-through estimator, stored as packed INT2 (opset 25).
  low_bit_with_fallback
                   4-bit, ternary or binary weights, and when they lose too much accuracy, the
                   most sensitive weights (int4_sensitivity, ternary_sensitivity) kept one step
                   up (4-bit at 8 bits, ternary and binary at 4), one more at a time; every
                   attempt is recorded.

Modules, each importing only modules listed before it: graph (ONNX helpers), convert (needs no
data), calibrate (int8 static, sensitivity), qat (quantization-aware training), ternary (ternary
and binary weights), fallback.
"""

from shrinkflow.quantize.calibrate import to_int8_static
from shrinkflow.quantize.convert import (
    int4_sensitivity,
    to_fp16,
    to_int4_weights,
    to_int8_dynamic,
    to_int8_weights,
)
from shrinkflow.quantize.fallback import (
    Attempt,
    FallbackResult,
    low_bit_with_fallback,
    quantize_with_fallback,
)
from shrinkflow.quantize.graph import quantizable_nodes
from shrinkflow.quantize.qat import (
    export_qat_onnx,
    fine_tune_config,
    qat_train_config,
    quantization_aware_training,
)
from shrinkflow.quantize.ternary import low_bit_training, ternary_sensitivity, to_ternary_weights

__all__ = [
    "Attempt",
    "FallbackResult",
    "export_qat_onnx",
    "fine_tune_config",
    "int4_sensitivity",
    "low_bit_with_fallback",
    "qat_train_config",
    "quantizable_nodes",
    "quantization_aware_training",
    "quantize_with_fallback",
    "to_fp16",
    "to_int8_dynamic",
    "to_int8_static",
    "to_int8_weights",
    "to_int4_weights",
    "low_bit_training",
    "ternary_sensitivity",
    "to_ternary_weights",
]
