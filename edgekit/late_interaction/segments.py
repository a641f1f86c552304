"""The late-interaction mask and position math, in torch for training (M6-Rec section 3.3, Figure 4).

The formulas live in ``edgekit_device.segments`` (numpy; the torch-free runtime needs them too);
these are the same formulas on tensors, checked against them in ``tests/test_late_interaction.py``:

- ``block_diagonal_allowed``: allowed[b, i, j] = seg[b, i] == seg[b, j] and seg[b, i] >= 0
  (the first L' layers: a token sees its own segment; padding sees nothing).
- ``full_allowed``: allowed[b, i, j] = seg[b, j] >= 0 (the last L - L' layers: every real token).
- ``additive_mask``: 0 where allowed, the dtype's minimum where not, shape (B, 1, T, T).
"""

from __future__ import annotations

import torch

from edgekit_device.segments import (  # noqa: F401  (re-exported: one place for the numpy formulas)
    pack_layout,
    segment_embedding_index,
    segment_layout,
)

__all__ = ["additive_mask", "block_diagonal_allowed", "full_allowed", "pack_layout", "segment_embedding_index",
           "segment_layout"]


def block_diagonal_allowed(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids (-1: padding) -> (B, T, T) bool: a token sees only its own segment."""
    return (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, :, None] >= 0)


def full_allowed(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids -> (B, T, T) bool: every query sees every real (non-padding) token."""
    real = segment_ids >= 0
    return real[:, None, :].expand(-1, segment_ids.shape[1], -1)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, T) bool -> (B, 1, T, T): 0 where allowed, finfo(dtype).min where not (exp underflows to 0)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, blocked)[:, None]
