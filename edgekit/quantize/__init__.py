"""8-bit PyTorch models (M6-Rec section 3.5) through Intel Neural Compressor, and the checks that a
quantized model still matches its float original (outputs, and the zeros pruning left).

The stage's entry point is ``quantize_pytorch`` (``edgekit quantize``, in ``stage.py``; Neural Compressor itself in ``inc.py``): a checkpoint
directory in, an int8 PyTorch program out. The int8 of exported graphs belongs to each export
backend (``edgekit.export.onnx``, ``edgekit.export.tflite``); ``checks.py`` serves both.
``table_bits.py`` snaps an embedding table's rows to fewer levels (``edgekit export --embedding-bits``).
"""

from edgekit.quantize.checks import ZeroReport, agreement, pruned_masks, zeros_kept
from edgekit.quantize.inc import APPROACHES, quantize_classifier, weight_zero_masks
from edgekit.quantize.stage import load_quantized, quantize_pytorch

__all__ = [
    "APPROACHES",
    "ZeroReport",
    "agreement",
    "load_quantized",
    "pruned_masks",
    "quantize_classifier",
    "quantize_pytorch",
    "weight_zero_masks",
    "zeros_kept",
]
