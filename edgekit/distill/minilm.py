"""MiniLM relation distillation as one object whose call returns the loss.

The teacher (frozen, eval mode) is read at one layer (default its last; MiniLMv2 recommends an
upper-middle layer for large teachers); the student at its last layer, or at several layers with
weights (the early-exit loss of M6-Rec section 3.5). Q, K and V are read by forward hooks
(``edgekit.distill.adapters``), so neither model is modified.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.distill.adapters import QKVRecorder, model_shape
from edgekit.distill.losses import RELATION_LOSSES, default_relation_heads
from edgekit.errors import UserError


def resolve_layer(layer: int, num_layers: int, what: str) -> int:
    """1-based layer index; negative counts from the top (-1 = last)."""
    resolved = layer + num_layers + 1 if layer < 0 else layer
    if not 1 <= resolved <= num_layers:
        raise UserError(f"{what} {layer} does not exist: the model has {num_layers} layers "
                        f"(use 1..{num_layers}, or -1 for the last).")
    return resolved


class RelationDistiller(nn.Module):
    """``loss, metrics = distiller(batch)`` for batches from ``TokenizedCorpus.collate``.

    The student is this module's only sub-module (what is trained, checkpointed and wrapped in
    DDP); the teacher is held outside the module tree, so it is neither trained nor saved, and
    the loss is computed inside ``forward`` where DDP can see which parameters produced it.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, teacher_layer: int = -1,
                 student_layers: dict[int, float] | None = None, method: str = "minilmv2",
                 relation_heads: int | None = None):
        super().__init__()
        if method not in RELATION_LOSSES:
            raise UserError(f"distill.method '{method}' is unknown; choose one of {', '.join(sorted(RELATION_LOSSES))}.")
        t_layers, t_hidden, t_heads = model_shape(teacher.config)
        s_layers, s_hidden, s_heads = model_shape(student.config)
        self.teacher_layer = resolve_layer(teacher_layer, t_layers, "teacher layer")
        if student_layers is None:
            student_layers = {s_layers: 1.0}
        self.student_layers = {resolve_layer(k, s_layers, "student layer"): float(w) for k, w in student_layers.items()}
        self.relation_heads = relation_heads or default_relation_heads(t_hidden, t_heads, s_hidden, s_heads)
        for name, hidden in (("teacher", t_hidden), ("student", s_hidden)):
            if hidden % self.relation_heads:
                raise UserError(f"distill.relation_heads={self.relation_heads} does not divide the {name}'s hidden "
                                f"size {hidden}; choose a divisor of both hidden sizes ({t_hidden} and {s_hidden}).")
        self.method = method
        self.loss_fn = RELATION_LOSSES[method]
        self.student = student
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))  # not a sub-module
        self.teacher_rec = QKVRecorder(teacher, [self.teacher_layer], stop_after_last=True)
        self.student_rec = QKVRecorder(student, list(self.student_layers))

    def teacher_qkv(self, batch):
        with torch.no_grad(), self.teacher_rec:
            self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return self.teacher_rec.qkv(self.teacher_layer)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never leaves eval mode
        return self

    def forward(self, batch):
        mask = batch["attention_mask"]
        t_qkv = self.teacher_qkv(batch)
        with self.student_rec:
            self.student(input_ids=batch.get("student_input_ids", batch["input_ids"]), attention_mask=mask)
        per_layer = {k: self.loss_fn(t_qkv, self.student_rec.qkv(k), mask, self.relation_heads)
                     for k in self.student_layers}
        loss = sum(self.student_layers[k] * v for k, v in per_layer.items())
        metrics = {"loss": loss.detach()}
        top = max(per_layer)
        metrics[f"relation_loss_L{top}"] = per_layer[top].detach()
        return loss, metrics

    def close(self) -> None:
        self.teacher_rec.remove()
        self.student_rec.remove()
