"""Checks of a quantized model against its float original: its outputs, and its pruned zeros.

``agreement`` compares logits (argmax agreement, max abs error, cosine, accuracy with labels).

Does pruning survive quantization? Symmetric int8 quantization stores 0.0 as the integer 0 (the
zero point), so every weight the pruner zeroed should still be zero in the quantized model.
``zeros_kept`` checks it position by position: each pruned torch weight must have a stored
counterpart of the same shape that is zero at least wherever the torch weight is (more zeros are
fine: tiny weights round to 0).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

__all__ = ["ZeroReport", "agreement", "pruned_masks", "zeros_kept"]


def pruned_masks(model: nn.Module, min_elements: int = 2) -> dict[str, np.ndarray]:
    """Boolean zero masks of the model's matrices that have any zeros (shared tensors counted once)."""
    out = {}
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or p.dim() < 2 or p.numel() < min_elements:
            continue
        seen.add(id(p))
        mask = (p.detach() == 0).cpu().numpy()
        if mask.any():
            out[name] = mask
    return out


@dataclass
class ZeroReport:
    """``tensors``: per pruned torch weight, its zeros and whether a stored counterpart keeps them."""

    tensors: dict[str, dict] = field(default_factory=dict)

    @property
    def pruned_zeros(self) -> int:
        return sum(t["zeros"] for t in self.tensors.values())

    @property
    def kept_zeros(self) -> int:
        return sum(t["zeros"] for t in self.tensors.values() if t["kept"])

    @property
    def all_kept(self) -> bool:
        return all(t["kept"] for t in self.tensors.values())

    def missing(self) -> list[str]:
        return [name for name, t in self.tensors.items() if not t["kept"]]

    def to_dict(self) -> dict:
        return {"pruned_zeros": self.pruned_zeros, "kept_zeros": self.kept_zeros, "all_kept": self.all_kept,
                "tensors": self.tensors}


def zeros_kept(reference: dict[str, np.ndarray], stored: Iterable[tuple[str, np.ndarray]],
               ignore: Iterable[str] = ()) -> ZeroReport:
    """Match every reference zero mask to a stored zero mask (``(name, mask)`` pairs) of the same shape.

    A reference tensor is kept when some stored tensor of its shape is zero everywhere it is.
    ``ignore``: reference names not expected in the stored model (e.g. position embeddings that the
    converter folded into a slice).
    """
    stored = list(stored)
    ignore = set(ignore)
    report = ZeroReport()
    for name, mask in reference.items():
        if name in ignore:
            continue
        match = next((s_name for s_name, s_mask in stored
                      if s_mask.shape == mask.shape and bool(np.all(s_mask[mask]))), None)
        report.tensors[name] = {"shape": list(mask.shape), "zeros": int(mask.sum()), "kept": match is not None,
                                "stored_as": match}
    return report


def agreement(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """How closely ``logits`` (N, C) follow the float ``reference`` (N, C).

    ``argmax_agreement``: share of examples with the same predicted class; ``max_abs_error`` and
    ``mean_abs_error`` over all logits; ``cosine``: of the flattened, per-example centred logits
    (a constant shift per example changes no prediction). With ``labels`` the accuracy of both.
    """
    reference = np.asarray(reference, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    if reference.shape != logits.shape:
        raise ValueError(f"logits of shape {logits.shape} cannot be compared with {reference.shape}")
    a = reference - reference.mean(axis=-1, keepdims=True)
    b = logits - logits.mean(axis=-1, keepdims=True)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    out = {
        "examples": int(reference.shape[0]),
        "argmax_agreement": float((reference.argmax(-1) == logits.argmax(-1)).mean()),
        "max_abs_error": float(np.abs(reference - logits).max()),
        "mean_abs_error": float(np.abs(reference - logits).mean()),
        "cosine": float((a * b).sum() / denominator) if denominator else 1.0,
        "logit_scale": float(np.abs(reference).max()),
    }
    if labels is not None:
        labels = np.asarray(labels)
        out["accuracy_reference"] = float((reference.argmax(-1) == labels).mean())
        out["accuracy"] = float((logits.argmax(-1) == labels).mean())
    return out
