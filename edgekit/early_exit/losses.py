"""The paper's early-exit math (M6-Rec section 3.5): the weights of the per-exit losses, their
weighted sum, and the entropy DeeBERT-style dynamic exits compare with a threshold."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from edgekit.errors import UserError

__all__ = ["exit_weights", "prediction_entropy", "weighted_exit_loss"]


def exit_weights(num_layers: int) -> torch.Tensor:
    r"""Weights of the per-exit losses: :math:`w_k = \frac{2k}{L(L+1)}` for :math:`k = 1..L`.

    M6-Rec section 3.5 follows PABEE (Zhou et al. 2020, "BERT Loses Patience", ref [67] of the
    paper), whose loss is :math:`\sum_k k \mathcal{L}_k / \sum_k k`; since
    :math:`\sum_{k=1}^L k = L(L+1)/2` the weights are :math:`2k / (L(L+1))`, grow linearly with
    depth and sum to 1. The paper prints the denominator as :math:`k(k+1)`, a typo:
    :math:`2k / (k(k+1)) = 2/(k+1)` does not sum to 1.

    For L=4 the weights are [0.1, 0.2, 0.3, 0.4].
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise UserError(f"The number of exits must be a positive integer, got {num_layers!r}; "
                        "pass the number of layers the loss covers.")
    k = torch.arange(1, num_layers + 1, dtype=torch.float64)
    return (2 * k / (num_layers * (num_layers + 1))).to(torch.get_default_dtype())


def weighted_exit_loss(per_exit_losses: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    r"""The accumulated early-exit loss :math:`\sum_{k=1}^L w_k \mathcal{L}_k` (M6-Rec section 3.5).

    ``per_exit_losses[k-1]`` is :math:`\mathcal{L}_k`, the loss when exiting at layer k, and
    :math:`w_k` comes from :func:`exit_weights`. With losses [1, 2, 3, 4] the result is
    0.1 + 0.4 + 0.9 + 1.6 = 3.0.
    """
    losses = per_exit_losses if isinstance(per_exit_losses, torch.Tensor) else torch.stack(list(per_exit_losses))
    if losses.dim() != 1 or losses.numel() == 0:
        raise UserError(f"weighted_exit_loss needs one scalar loss per exit, got a tensor of shape "
                        f"{tuple(losses.shape)}; pass a sequence of L scalar losses.")
    weights = exit_weights(losses.numel()).to(device=losses.device, dtype=losses.dtype)
    return (weights * losses).sum()


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    r"""Entropy of the softmax over the last dimension, in nats: :math:`-\sum_c p_c \log p_c`.

    DeeBERT (Xin et al. 2020, ref [53] of M6-Rec) exits at the first layer whose entropy is below
    a threshold. Two equal logits give :math:`\log 2 \approx 0.693`.
    """
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)
