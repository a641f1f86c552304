"""8-bit quantization (M6-Rec section 3.5): PyTorch models through Intel Neural Compressor, TFLite
models through ai-edge-quantizer, and the checks that a quantized model still matches its float
original (outputs, and the zeros pruning left).

The stage's entry point is ``quantize_pytorch`` (``edgekit quantize``): a checkpoint directory in,
an int8 PyTorch program out. TFLite int8 happens during export (``edgekit.export.tflite``), which
calls ``quantize_tflite``.
"""

from edgekit.quantize.checks import ZeroReport, agreement, pruned_masks, zeros_kept
from edgekit.quantize.inc import APPROACHES, load_quantized, quantize_classifier, quantize_pytorch, weight_zero_masks
from edgekit.quantize.tflite import INT8_SCHEMES, op_counts, quantize_tflite, weight_tensors

__all__ = [
    "APPROACHES",
    "INT8_SCHEMES",
    "ZeroReport",
    "agreement",
    "load_quantized",
    "op_counts",
    "pruned_masks",
    "quantize_classifier",
    "quantize_pytorch",
    "quantize_tflite",
    "weight_tensors",
    "weight_zero_masks",
    "zeros_kept",
]
