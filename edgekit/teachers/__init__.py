"""Teachers: large pretrained models imported as standard Hugging Face checkpoints."""

from edgekit.teachers.e5 import import_e5_small

__all__ = ["import_e5_small"]
