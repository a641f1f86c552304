"""The cubic sparsity schedule of gradual magnitude pruning, as a pure function of the step.

Zhu & Gupta (2017, "To prune, or not to prune", eq. 1), used by M6-Rec section 3.5 to take every
embedding table and linear layer of M6-Edge gradually to 80% sparsity while training continues:

    s_t = s_f + (s_i − s_f) · (1 − (t − t_0) / (n·Δt))³        for t ∈ {t_0, t_0 + Δt, …, t_0 + n·Δt}

s_i is the initial and s_f the final sparsity, t_0 the step pruning begins and n·Δt the span
(``end_step − begin_step``); masks are recomputed every Δt steps (``frequency``). The curve prunes
fast early, while there are many redundant weights, and slowly near the end, so the network can
recover from each cut.
"""

from __future__ import annotations

import math

from edgekit.errors import UserError


def check_sparsity(value: float, name: str = "sparsity") -> None:
    """Raise ``UserError`` unless ``value`` is a fraction in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise UserError(f"{name} must be in [0, 1), got {value!r}; use a fraction such as 0.8 for 80% zeros.")


def cubic_sparsity(step: int, initial_sparsity: float, final_sparsity: float, begin_step: int,
                   end_step: int, frequency: int) -> float:
    """Target sparsity at training step ``step`` (Zhu & Gupta eq. 1, M6-Rec section 3.5).

    s_t = s_f + (s_i − s_f) · (1 − (t_q − t_0) / (n·Δt))³, with t_0 = ``begin_step``,
    n·Δt = ``end_step − begin_step``, Δt = ``frequency`` and t_q = t_0 + ⌊(t − t_0)/Δt⌋·Δt the
    last mask update at or before t, so the value only changes every Δt steps. Before t_0 it is
    s_i; from ``end_step`` on it is s_f (when n·Δt is not a multiple of Δt, that last jump
    happens at ``end_step``).

    Example (s_i=0, s_f=0.8, t_0=0, n·Δt=100, Δt=10): t=55 → t_q=50 → 0.8·(1 − 0.5³) = 0.7.
    """
    check_sparsity(initial_sparsity, "initial_sparsity")
    check_sparsity(final_sparsity, "final_sparsity")
    if final_sparsity < initial_sparsity:
        raise UserError(f"final_sparsity {final_sparsity} is below initial_sparsity {initial_sparsity}; "
                        "gradual pruning only adds zeros, so set final_sparsity >= initial_sparsity.")
    if end_step <= begin_step:
        raise UserError(f"end step {end_step} is not after begin step {begin_step}; "
                        "set end_step > begin_step so the sparsity has steps to ramp over.")
    if isinstance(frequency, bool) or frequency != int(frequency) or frequency < 1:
        raise UserError(f"frequency must be a whole number of steps >= 1, got {frequency!r}; "
                        "masks are recomputed every `frequency` steps.")

    if step < begin_step:
        return float(initial_sparsity)
    if step >= end_step:
        return float(final_sparsity)
    span = end_step - begin_step
    t_q = math.floor((step - begin_step) / frequency) * frequency
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - t_q / span) ** 3
