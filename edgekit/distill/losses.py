"""MiniLM relation losses as pure functions.

MiniLMv2 (Wang et al., 2021, "MiniLMv2: Multi-Head Self-Attention Relation Distillation", eq. 1-3):
for each X in {Q, K, V} of one teacher layer and one student layer, split the hidden dimension
into R *relation heads* of size d_r (teacher and student may differ in hidden size and head
count; only R must be shared), and form the self-attention relation

    R_X = softmax(X_r X_rᵀ / √d_r)        (one T×T distribution per token, per relation head)

The loss is  Σ_{X∈{Q,K,V}} KL(R_X^teacher ‖ R_X^student), averaged over relation heads, valid
(non-padding) query tokens and the batch. Padding keys are masked out of every softmax and
padding queries are left out of the average.

MiniLMv1 (Wang et al., 2020, eq. 4-6): KL between the teacher's and the student's attention
distributions softmax(Q Kᵀ/√d_r), plus KL between their value relations softmax(V Vᵀ/√d_r).

M6-Rec section 3.5 uses "MiniLM's relation-based approach" to distill the 300M M6-base into the
10M M6-Edge during pre-training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_NEG = -1e4  # large enough to zero a masked key under softmax in fp32 and bf16


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, R, T, D/R)."""
    b, t, d = x.shape
    if d % num_heads:
        raise ValueError(f"hidden size {d} is not divisible by {num_heads} relation heads")
    return x.view(b, t, num_heads, d // num_heads).transpose(1, 2)


def relation_log_probs(a: torch.Tensor, b: torch.Tensor, num_heads: int,
                       attention_mask: torch.Tensor | None) -> torch.Tensor:
    """log softmax(A_r B_rᵀ / √d_r) over keys, per relation head: (B, R, T, T).

    With ``a = b = X`` this is MiniLMv2's self-attention relation of X; with ``a = Q, b = K`` it
    is MiniLMv1's attention distribution. Keys where ``attention_mask`` is 0 get no probability.
    """
    ah, bh = split_heads(a.float(), num_heads), split_heads(b.float(), num_heads)
    scores = ah @ bh.transpose(-1, -2) / math.sqrt(ah.shape[-1])
    if attention_mask is not None:
        keep = attention_mask[:, None, None, :].to(torch.bool)
        scores = scores.masked_fill(~keep, _NEG)
    return F.log_softmax(scores, dim=-1)


def relation_kl(teacher_logp: torch.Tensor, student_logp: torch.Tensor,
                attention_mask: torch.Tensor | None) -> torch.Tensor:
    """KL(teacher ‖ student) = Σ_j p_t(j) (log p_t(j) − log p_s(j)), averaged over relation heads,
    valid query tokens and the batch. Inputs are (B, R, T, T) log-probabilities."""
    p_t = teacher_logp.exp()
    kl = (p_t * (teacher_logp - student_logp)).sum(-1)  # (B, R, T)
    if attention_mask is None:
        return kl.mean()
    valid = attention_mask[:, None, :].to(kl.dtype).expand_as(kl)
    return (kl * valid).sum() / valid.sum().clamp_min(1.0)


def minilmv2_loss(teacher_qkv, student_qkv, attention_mask, num_relation_heads: int) -> torch.Tensor:
    """Σ_{X∈{Q,K,V}} KL(softmax(X_t X_tᵀ/√d_t) ‖ softmax(X_s X_sᵀ/√d_s)) with R relation heads."""
    total = 0.0
    for xt, xs in zip(teacher_qkv, student_qkv):
        total = total + relation_kl(
            relation_log_probs(xt, xt, num_relation_heads, attention_mask),
            relation_log_probs(xs, xs, num_relation_heads, attention_mask),
            attention_mask,
        )
    return total


def minilmv1_loss(teacher_qkv, student_qkv, attention_mask, num_relation_heads: int) -> torch.Tensor:
    """KL of attention distributions softmax(QKᵀ/√d) plus KL of value relations softmax(VVᵀ/√d)."""
    (qt, kt, vt), (qs, ks, vs) = teacher_qkv, student_qkv
    attention = relation_kl(
        relation_log_probs(qt, kt, num_relation_heads, attention_mask),
        relation_log_probs(qs, ks, num_relation_heads, attention_mask),
        attention_mask,
    )
    value = relation_kl(
        relation_log_probs(vt, vt, num_relation_heads, attention_mask),
        relation_log_probs(vs, vs, num_relation_heads, attention_mask),
        attention_mask,
    )
    return attention + value


RELATION_LOSSES = {"minilmv2": minilmv2_loss, "minilmv1": minilmv1_loss}


def register_relation_loss(name: str, fn) -> None:
    """Add a relation loss ``fn(teacher_qkv, student_qkv, attention_mask, num_relation_heads)``."""
    RELATION_LOSSES[name] = fn


def default_relation_heads(teacher_hidden: int, teacher_heads: int, student_hidden: int, student_heads: int) -> int:
    """The largest of the two models' head counts that divides both hidden sizes (MiniLMv2 uses
    more relation heads than attention heads for large models; this is the safe default), else
    the greatest common divisor of the hidden sizes that is at most 64 heads."""
    for r in sorted({teacher_heads, student_heads}, reverse=True):
        if teacher_hidden % r == 0 and student_hidden % r == 0:
            return r
    g = math.gcd(teacher_hidden, student_hidden)
    for r in range(min(g, 64), 0, -1):
        if g % r == 0:
            return r
    return 1
