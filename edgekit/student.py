"""The ALBERT-style student (M6-Rec section 3.5, "M6-Edge").

M6-Edge has L=24 layers that all share one set of weights, H=16 heads, hidden size 768, and
token embeddings of size E=128 linearly projected to 768 (ALBERT's factorized embedding).
With the 21,128-token Chinese vocabulary that is about 10.5M parameters.

A student is saved as a standard ``transformers`` ALBERT checkpoint, so ``AlbertModel.from_pretrained``
loads it; the student's forward pass returns every layer's hidden state when asked
(``output_hidden_states=True``), which is what early exits read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import AlbertConfig, AlbertModel


@dataclass
class StudentConfig:
    """Shape of an ALBERT-style student. Defaults are the paper's M6-Edge."""

    num_layers: int = 24
    num_heads: int = 16
    hidden_size: int = 768
    embedding_size: int = 128
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    hidden_act: str = "gelu_new"
    dropout: float = 0.0

    def validate(self) -> None:
        from edgekit.errors import UserError

        for name in ("num_layers", "num_heads", "hidden_size", "embedding_size", "intermediate_size",
                     "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise UserError(f"student.{name} must be a positive integer, got {getattr(self, name)}.")
        if self.hidden_size % self.num_heads:
            raise UserError(
                f"student.hidden_size ({self.hidden_size}) must be divisible by student.num_heads "
                f"({self.num_heads}); pick a head count that divides the hidden size."
            )


def albert_config(cfg: StudentConfig, vocab_size: int, pad_token_id: int = 0,
                  bos_token_id: int | None = None, eos_token_id: int | None = None) -> AlbertConfig:
    """The ``AlbertConfig`` for a student: one layer group, one inner layer, shared by all layers."""
    cfg.validate()
    return AlbertConfig(
        vocab_size=vocab_size,
        embedding_size=cfg.embedding_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_hidden_groups=1,
        inner_group_num=1,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=2,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )


def build_student(cfg: StudentConfig, vocab_size: int, pad_token_id: int = 0, seed: int | None = None,
                  pooler: bool = False, **special_ids) -> AlbertModel:
    """A freshly initialised student of shape ``cfg`` for a vocabulary of ``vocab_size`` pieces.

    No pooler by default: task-agnostic distillation never trains it (relations are read inside
    the encoder), so it would ship 590k random weights; a task head adds its own when fine-tuning.
    Without it the paper shape has 9.96M parameters (10.55M with), and 80% sparsity leaves 1.99M.
    """
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    return AlbertModel(albert_config(cfg, vocab_size, pad_token_id, **special_ids), add_pooling_layer=pooler)


def load_student(path) -> AlbertModel:
    """An ALBERT student directory, with a pooler only if the checkpoint has one."""
    from pathlib import Path

    from safetensors import safe_open

    from edgekit.checkpoint import load_config_of
    from edgekit.errors import UserError

    model_type = load_config_of(path).model_type
    if model_type != "albert":  # AlbertModel would load a BERT's weights into the wrong shapes and raise
        raise UserError(f"'{path}' is a {model_type} model, not an ALBERT student; pass a student written by "
                        "`edgekit distill` or `edgekit prune`.")
    weights = Path(path) / "model.safetensors"
    has_pooler = True
    if weights.exists():
        with safe_open(str(weights), framework="pt") as f:
            has_pooler = any(k.startswith("pooler.") or ".pooler." in k for k in f.keys())
    return AlbertModel.from_pretrained(path, add_pooling_layer=has_pooler)


def student_config_dict(cfg: StudentConfig) -> dict:
    return asdict(cfg)


def count_parameters(model) -> tuple[int, int]:
    """(parameters, non-zero parameters), counting shared tensors once."""
    seen = set()
    total = nonzero = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        nonzero += int((p != 0).sum())
    return total, nonzero
