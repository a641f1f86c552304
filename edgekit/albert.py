"""ALBERT, piece by piece: the small public API that early exit, export and late interaction share.

``AlbertModel.forward`` runs the embeddings, projects them to the hidden size, prepares the padding
mask and applies the layer groups L times; it can only be run whole. The stages that run part of
a model (early exit stops after k layers, export writes the embeddings, one layer and the head as
separate graphs, late interaction runs the first layers per segment) use these functions instead,
so they compute exactly what the model computes, in one place:

- ``embed``: the input of layer 1 (word + token-type + position embeddings, LayerNorm, E -> H).
- ``layer_mask``: the mask transformers prepares for the model's attention implementation.
- ``additive_mask``: the same mask as plain arithmetic (0 for tokens, a large negative value for
  padding), which is what exported graphs compute.
- ``apply_layer``: layer ``index`` (0-based) of the encoder; with one shared layer every index
  applies the same weights.
- ``classifier_head``: the task head: pooler, tanh, dropout, classifier on the [CLS] position
  (``cls`` pooling), or dropout and classifier on the masked mean of all tokens (``mean``).

Pooling is a property of the checkpoint: ``config.classifier_pooling`` (``pooling_of``; absent
means ``cls``, what ``AlbertForSequenceClassification`` does). ``mean`` is what e5 was trained
with; it feeds the classifier directly, without the pooler and tanh (e5's import has no pooler
weights, and a student's pooler would only be one more layer to learn from scratch). A plain
Hugging Face loader ignores the setting and pools [CLS]: load edgekit classifiers with
``EarlyExitClassifier.from_pretrained`` (or ``edgekit.finetune.load_sequence_classifier``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AlbertForSequenceClassification, AlbertModel
from transformers.masking_utils import create_bidirectional_mask

from edgekit.errors import UserError

__all__ = [
    "POOLINGS",
    "additive_mask",
    "albert_of",
    "apply_layer",
    "check_layer",
    "classifier_head",
    "embed",
    "layer_mask",
    "mean_pool",
    "pooling_of",
]

POOLINGS = ("cls", "mean")


def albert_of(model: nn.Module) -> AlbertModel:
    """The ``AlbertModel`` inside ``model`` (the model itself, or the base of a task model)."""
    base = getattr(model, "base_model", model)
    if not isinstance(base, AlbertModel):
        raise UserError(f"Early exit needs an ALBERT model, got {type(model).__name__}; "
                        "build the student with edgekit.student.build_student.")
    return base


def check_layer(name: str, layer, depth: int) -> int:
    """``layer`` if it is a layer number in 1..``depth``; a one-sentence UserError otherwise."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= depth:
        raise UserError(f"{name} must be a layer between 1 and the model's depth {depth}, got {layer!r}; "
                        f"pick a layer in 1..{depth}.")
    return layer


def embed(albert: AlbertModel, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The input of layer 1, (B, T, H): token embeddings projected to the hidden size (ALBERT's factorization)."""
    embedding_output = albert.embeddings(input_ids, token_type_ids=token_type_ids)
    return albert.encoder.embedding_hidden_mapping_in(embedding_output)


def layer_mask(albert: AlbertModel, hidden: torch.Tensor, mask2d: torch.Tensor | None):
    """The mask ``AlbertModel.forward`` gives its layers for the (B, T) 1/0 padding mask ``mask2d``.

    The result depends on the attention implementation (an additive float mask for eager, a boolean
    mask or None for sdpa when nothing is padded). Only the batch size, length, dtype and device of
    ``hidden`` are read.
    """
    return create_bidirectional_mask(config=albert.config, inputs_embeds=hidden, attention_mask=mask2d)


def additive_mask(mask2d: torch.Tensor, dtype: torch.dtype, value: float | None = None) -> torch.Tensor:
    """(B, T) 1/0 padding mask -> (B, 1, 1, T): 0 for tokens, ``value`` for padding.

    ``value`` defaults to the dtype's minimum, what transformers' eager attention receives. A
    graph whose scores share one int8 scale needs a smaller magnitude (see ``edgekit.export.graphs``).
    """
    fill = torch.finfo(dtype).min if value is None else value
    return (1.0 - mask2d.to(dtype))[:, None, None, :] * fill


def apply_layer(albert: AlbertModel, index: int, hidden: torch.Tensor, mask) -> torch.Tensor:
    """Layer ``index`` (0-based) of the encoder: the layer group ``AlbertTransformer`` picks for that depth."""
    config = albert.config
    group = int(index / (config.num_hidden_layers / config.num_hidden_groups))
    return albert.encoder.albert_layer_groups[group](hidden, mask)


def pooling_of(config) -> str:
    """The checkpoint's head pooling, ``cls`` or ``mean`` (``config.classifier_pooling``; absent: ``cls``)."""
    pooling = getattr(config, "classifier_pooling", None) or "cls"
    if pooling not in POOLINGS:
        raise UserError(f"config.json sets classifier_pooling {pooling!r}; it must be one of {', '.join(POOLINGS)}: "
                        "fix the checkpoint's config.json.")
    return pooling


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, keepdim: bool = False) -> torch.Tensor:
    """Masked mean over the sequence: (B, T, H), (B, T) 1/0 -> (B, H), or (B, 1, H) with ``keepdim``.

    mean_b = Σ_t m_bt · h_bt / max(Σ_t m_bt, 1), m = ``attention_mask`` (1 for tokens, 0 for
    padding; None: every position is a token). Special tokens ([CLS], [SEP]) count as tokens, as in
    e5's own pooling; the max(·, 1) only guards an all-padding row.
    """
    if attention_mask is None:
        return hidden.mean(dim=1, keepdim=keepdim)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    total = (hidden * mask).sum(dim=1, keepdim=keepdim)
    count = mask.sum(dim=1, keepdim=keepdim).clamp(min=1.0)
    return total / count


def classifier_head(model: AlbertForSequenceClassification, hidden: torch.Tensor,
                    attention_mask: torch.Tensor | None = None, keep_sequence_axis: bool = False) -> torch.Tensor:
    """Logits (B, C) from one layer's hidden states (B, T, H), by the checkpoint's pooling (``pooling_of``).

    ``cls``: classifier(dropout(tanh(pooler(h[:, 0])))), the model's own head.
    ``mean``: classifier(dropout(mean_pool(h, attention_mask))); the pooler is not used.

    ``keep_sequence_axis`` pools to a (B, 1, H) slice, so an exported graph keeps the pooler and
    classifier as MatMul nodes (which ONNX int8 quantization handles; on 2D inputs they become
    Gemm, which it skips); the result is the same.
    """
    albert = model.albert
    if pooling_of(model.config) == "mean":
        pooled = mean_pool(hidden, attention_mask, keepdim=keep_sequence_axis)
    else:
        cls = hidden[:, :1] if keep_sequence_axis else hidden[:, 0]
        pooled = albert.pooler_activation(albert.pooler(cls))
    logits = model.classifier(model.dropout(pooled))
    return logits[:, 0] if keep_sequence_axis else logits
