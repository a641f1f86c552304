"""The option-adapter's FFN adapter (M6-Rec section 3.4, rank from Appendix A.2), and where it
attaches in each encoder family.

Every Transformer layer's feed-forward network gets a parallel low-rank term:

    FFN̄⁽ˡ⁾(Z) = FFN⁽ˡ⁾(Z) + λ⁽ˡ⁾ · [σ(Z W₁⁽ˡ⁾ + b₁⁽ˡ⁾) W₂⁽ˡ⁾ + b₂⁽ˡ⁾]

Z (…, d) is the FFN's input (the attention block's output), W₁ (d, r), b₁ (r), W₂ (r, d), b₂ (d),
λ⁽ˡ⁾ a learnable scalar that starts at 0, so a fresh adapter leaves the model exactly as it was;
r = d / H (A.2: hidden size over attention heads). σ is GELU, BERT's own FFN activation (the paper
does not name it). The term is added to the FFN's output before the layer's residual connection
and LayerNorm, which is where FFN(Z) ends in BERT and ALBERT alike.

The model is not modified: forward hooks on each family's FFN modules (one registry, like the
Q/K/V adapters of ``edgekit.distill.adapters``) read Z and add the term. FFN calls are counted in
order, so call i is depth i: BERT has one FFN per layer; ALBERT's one shared layer is called L
times, and ``sharing`` says whether each depth gets its own adapter (``per-depth``: the paper's
"every layer", read as every application of a layer) or all depths one adapter (``shared``, as
ALBERT shares the layer itself; ``auto``, the default, picks it for ALBERT, per-depth elsewhere).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.distill.adapters import BERT_LIKE_FAMILIES
from edgekit.errors import UserError

SHARINGS = ("auto", "per-depth", "shared")


def adapter_rank(hidden: int, heads: int) -> int:
    """r = d / H (A.2): the hidden size over the number of attention heads."""
    return max(1, hidden // heads)


def adapter_delta(z: torch.Tensor, lam: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                  b2: torch.Tensor, activation=F.gelu) -> torch.Tensor:
    """λ · [σ(Z W₁ + b₁) W₂ + b₂], the term the option-adapter adds to FFN(Z) (M6-Rec 3.4).

    One adapter for the whole batch: ``z`` (…, d), ``lam`` scalar, ``w1`` (d, r), ``b1`` (r),
    ``w2`` (r, d), ``b2`` (d). One per example (a mixed-task batch, each example its own task's
    adapter): ``z`` (B, T, d), ``lam`` (B,), ``w1`` (B, d, r), ``b1`` (B, r), ``w2`` (B, r, d), ``b2`` (B, d).
    """
    if w1.dim() == 2:
        return lam * (activation(z @ w1 + b1) @ w2 + b2)
    h = activation(torch.einsum("btd,bdr->btr", z, w1) + b1[:, None])
    return lam[:, None, None] * (torch.einsum("btr,brd->btd", h, w2) + b2[:, None])


class FFNAdapters(nn.Module):
    """The adapters of one task: ``count`` sets of (λ, W₁, b₁, W₂, b₂), stacked on a first axis.

    λ starts at 0 (the adapter is a no-op until trained); W₁ and W₂ start as ``nn.Linear``'s
    default initialization, not 0, so that λ's gradient, ⟨∂L/∂FFN̄, σ(ZW₁+b₁)W₂+b₂⟩, is not 0 too.
    """

    def __init__(self, count: int, hidden: int, rank: int):
        super().__init__()
        self.lam = nn.Parameter(torch.zeros(count))
        self.w1 = nn.Parameter(torch.empty(count, hidden, rank))
        self.b1 = nn.Parameter(torch.zeros(count, rank))
        self.w2 = nn.Parameter(torch.empty(count, rank, hidden))
        self.b2 = nn.Parameter(torch.zeros(count, hidden))
        with torch.no_grad():  # nn.Linear's default: U(±1/√fan_in)
            self.w1.uniform_(-1 / math.sqrt(hidden), 1 / math.sqrt(hidden))
            self.w2.uniform_(-1 / math.sqrt(rank), 1 / math.sqrt(rank))

    @property
    def count(self) -> int:
        return self.lam.shape[0]

    @property
    def rank(self) -> int:
        return self.w1.shape[-1]

    def stacked(self) -> tuple[torch.Tensor, ...]:
        return self.lam, self.w1, self.b1, self.w2, self.b2


# --- where the FFN is, per family -------------------------------------------------------------

@dataclass(frozen=True)
class FFNSite:
    """Regular expressions over ``named_modules()`` names: the FFN's first module (its input is Z)
    and the module whose output is FFN(Z) (before the residual connection)."""

    ffn_in: str
    ffn_out: str


_BERT_LIKE = FFNSite(ffn_in=r"(^|\.)encoder\.layer\.\d+\.intermediate$",
                     ffn_out=r"(^|\.)encoder\.layer\.\d+\.output\.dense$")

FFN_SITES: dict[str, FFNSite] = {
    **dict.fromkeys(BERT_LIKE_FAMILIES, _BERT_LIKE),
    "albert": FFNSite(ffn_in=r"(^|\.)encoder\.albert_layer_groups\.\d+\.albert_layers\.\d+\.ffn$",
                      ffn_out=r"(^|\.)encoder\.albert_layer_groups\.\d+\.albert_layers\.\d+\.ffn_output$"),
    "distilbert": FFNSite(ffn_in=r"(^|\.)transformer\.layer\.\d+\.ffn\.lin1$",
                          ffn_out=r"(^|\.)transformer\.layer\.\d+\.ffn\.lin2$"),
}


def register_ffn_site(model_type: str, site: FFNSite) -> None:
    FFN_SITES[model_type] = site


def ffn_modules(model: nn.Module, model_type: str) -> list[tuple[nn.Module, nn.Module]]:
    """(FFN input module, FFN output module) pairs of ``model``, in module order."""
    if model_type not in FFN_SITES:
        raise UserError(f"adapters do not know where the feed-forward network is in a '{model_type}' model; "
                        f"supported: {', '.join(sorted(FFN_SITES))} (or register_ffn_site).")
    site = FFN_SITES[model_type]
    named = list(model.named_modules())
    ins = [m for n, m in named if re.search(site.ffn_in, n)]
    outs = [m for n, m in named if re.search(site.ffn_out, n)]
    if not ins or len(ins) != len(outs):
        raise UserError(f"found {len(ins)} FFN inputs and {len(outs)} FFN outputs in this '{model_type}' model; "
                        "its module names differ from the family's: register_ffn_site with the right names.")
    return list(zip(ins, outs))


class AdapterHooks:
    """Forward hooks that add ``adapter_delta`` to every FFN call while adapter weights are set.

    ``set(weights)`` gives the weights of the next forward pass: a tuple (λ, W₁, b₁, W₂, b₂) with
    the depth on the first axis (one task), or on the second axis after the batch (one adapter set
    per example); ``None`` leaves the model untouched. ``start()`` resets the call count; the
    caller runs it before each forward pass.
    """

    def __init__(self, pairs: list[tuple[nn.Module, nn.Module]], activation=F.gelu):
        self.weights: tuple[torch.Tensor, ...] | None = None
        self.per_example = False
        self.activation = activation
        self.calls = 0
        self._z: torch.Tensor | None = None
        self.handles = []
        for ffn_in, ffn_out in pairs:
            self.handles.append(ffn_in.register_forward_pre_hook(self._read_input))
            self.handles.append(ffn_out.register_forward_hook(self._add_term))

    def set(self, weights, per_example: bool = False) -> None:
        self.weights, self.per_example = weights, per_example

    def start(self) -> None:
        self.calls = 0

    def _read_input(self, _module, args):
        self._z = args[0]
        self.calls += 1

    def _add_term(self, _module, _args, output):
        if self.weights is None:
            return None
        lam, w1, b1, w2, b2 = self.weights
        count = lam.shape[1] if self.per_example else lam.shape[0]
        i = 0 if count == 1 else self.calls - 1  # a shared adapter (count 1) serves every depth
        if self.per_example:
            return output + adapter_delta(self._z, lam[:, i], w1[:, i], b1[:, i], w2[:, i], b2[:, i], self.activation)
        return output + adapter_delta(self._z, lam[i], w1[i], b1[i], w2[i], b2[i], self.activation)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
