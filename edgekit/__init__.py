"""edgekit: turn a large pretrained encoder into a model small and fast enough for a phone.

The pipeline follows M6-Rec section 3.5: distill -> prune (+ early exit) -> quantize -> export.
Each stage reads a checkpoint directory and writes one.
"""

__version__ = "0.1.0"

from edgekit.errors import UserError  # noqa: E402

__all__ = ["UserError", "__version__"]
