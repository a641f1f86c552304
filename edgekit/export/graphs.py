"""The graphs of an early-exit ALBERT classifier, described once for every export format.

Two layouts (``export/BUNDLE.md``):

- ``fixed``: ``model`` = (input_ids, attention_mask) -> logits after exactly k layers; the layers
  above k are not in the graph.
- ``per-layer``: ``embed`` (input_ids -> hidden), ``layer`` (hidden, attention_mask -> hidden:
  ALBERT's one shared layer, stored once) and ``head`` (hidden -> logits from [CLS]; for a
  mean-pooled checkpoint (hidden, attention_mask) -> logits from the masked token mean). The
  runtime loops ``layer`` and may stop after any application of it.

The modules compute exactly what ``EarlyExitClassifier`` computes, through the pieces of
``edgekit.albert``, with export-minded choices: the padding mask is built in the graph as an
additive float mask (plain CAST/SUB/MUL/ADD), attention is transformers' eager implementation
(plain MatMul and Softmax), and the embed graph stores only the position embeddings below
``max_length``, the longest input the runtime feeds.

What differs between formats is a ``GraphStyle``: the padding-mask value (the dtype's minimum for
ONNX; -1e4 for TFLite; -30 for all-int8 TFLite (``int8_ops="all"``), whose attention scores
share one int8 scale: with -1e4 that scale is ~40 per step and every real score rounds to the same
value, turning attention into a plain average; exp(-30) is 1e-13, so masked keys still get no
weight) and whether the head reads [CLS] with a length-1 sequence axis (ONNX: the pooler and
classifier stay MatMul nodes, which int8 quantization handles). Each backend (``onnx``, ``tflite``)
names the graphs' inputs and outputs its own way.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from edgekit.albert import POOLINGS, additive_mask, apply_layer, classifier_head
from edgekit.early_exit import EarlyExitClassifier

LAYOUTS = ("fixed", "per-layer")


def graph_inputs(pooling: str = "cls") -> dict[str, tuple[str, ...]]:
    """The inputs of each graph, by name, in the order its forward takes them: the head of a
    mean-pooled model also takes the attention mask (padding must not enter the mean)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return {"model": ("input_ids", "attention_mask"), "embed": ("input_ids",),
            "layer": ("hidden", "attention_mask"),
            "head": ("hidden", "attention_mask") if pooling == "mean" else ("hidden",)}


@dataclass(frozen=True)
class GraphStyle:
    """What a format needs differently from the same graphs (see the module docstring)."""

    mask_value: float | None = None       # None: the dtype's minimum
    head_keeps_sequence_axis: bool = False
    # Static shapes (TFLite): the position and token-type embeddings of the one input length are
    # added as one (1, T, E) constant, which the converter stores as it is; a dynamic length
    # (ONNX) gathers the position rows it needs.
    static_length: bool = False
    # Return {output name: tensor} (litert-torch names a signature's outputs after the dict's keys)
    # instead of the tensor (the ONNX exporter takes output names as an argument).
    named_outputs: bool = False


def _output(style: GraphStyle, name: str, value: torch.Tensor):
    return {name: value} if style.named_outputs else value


def export_copy(classifier: EarlyExitClassifier) -> EarlyExitClassifier:
    """A float32 eval-mode copy with eager attention; the caller's model is left as it is."""
    clone = copy.deepcopy(classifier).float().eval()
    clone.model.config._attn_implementation = "eager"
    return clone


class EmbedGraph(nn.Module):
    """input_ids -> hidden (B, T, H): word + token-type-0 + position embeddings, LayerNorm, E->H projection."""

    def __init__(self, classifier: EarlyExitClassifier, max_length: int, style: GraphStyle = GraphStyle()):
        super().__init__()
        albert = classifier.model.albert
        emb = albert.embeddings
        self.word = emb.word_embeddings
        positions = emb.position_embeddings.weight[:max_length].detach().clone()
        # Single texts have token type 0 everywhere (what AlbertEmbeddings uses without token_type_ids).
        type0 = emb.token_type_embeddings.weight[0].detach().clone()
        self.static_length = style.static_length
        if self.static_length:
            self.register_buffer("position_type0", (type0 + positions)[None])
        else:
            self.position = nn.Embedding.from_pretrained(positions)
            self.register_buffer("type0", type0)
        self.norm = emb.LayerNorm
        self.project = albert.encoder.embedding_hidden_mapping_in
        self.style = style

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.static_length:
            x = self.word(input_ids) + self.position_type0
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            x = self.word(input_ids) + self.type0  # the order of AlbertEmbeddings' sums
            x = x + self.position(positions)
        return _output(self.style, "hidden", self.project(self.norm(x)))


class LayerGraph(nn.Module):
    """(hidden, attention_mask) -> hidden: one application of the layer all depths share."""

    def __init__(self, classifier: EarlyExitClassifier, style: GraphStyle = GraphStyle()):
        super().__init__()
        self.albert = classifier.model.albert
        self.style = style

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = additive_mask(attention_mask, hidden.dtype, self.style.mask_value)
        return _output(self.style, "hidden", apply_layer(self.albert, 0, hidden, mask))


class HeadGraph(nn.Module):
    """hidden (B, T, H) -> logits (B, C), as ``EarlyExitClassifier.head``: pooler + tanh + classifier
    on [CLS]; or, for ``pooling == "mean"``, (hidden, attention_mask) -> classifier on the masked mean."""

    def __init__(self, classifier: EarlyExitClassifier, style: GraphStyle = GraphStyle()):
        super().__init__()
        self.model = classifier.model
        self.pooling = classifier.pooling
        self.style = style

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "mean" and attention_mask is None:
            raise ValueError("a mean-pooled head needs the attention mask")
        logits = classifier_head(self.model, hidden, attention_mask if self.pooling == "mean" else None,
                                 keep_sequence_axis=self.style.head_keeps_sequence_axis)
        return _output(self.style, "logits", logits)


class FixedGraph(nn.Module):
    """(input_ids, attention_mask) -> logits after exactly ``exit_layer`` layers."""

    def __init__(self, classifier: EarlyExitClassifier, exit_layer: int, max_length: int,
                 style: GraphStyle = GraphStyle()):
        super().__init__()
        inner = dataclasses.replace(style, named_outputs=False)
        self.embed = EmbedGraph(classifier, max_length, inner)
        self.albert = classifier.model.albert
        self.head = HeadGraph(classifier, inner)
        self.exit_layer = exit_layer
        self.style = style

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids)
        mask = additive_mask(attention_mask, hidden.dtype, self.style.mask_value)
        for index in range(self.exit_layer):
            hidden = apply_layer(self.albert, index, hidden, mask)
        return _output(self.style, "logits", self.head(hidden, attention_mask))


def build_graphs(classifier: EarlyExitClassifier, layout: str, exit_layer: int, max_length: int,
                 style: GraphStyle) -> dict[str, nn.Module]:
    """{graph name: eval-mode module} of a layout: ``model``, or ``embed``, ``layer`` and ``head``."""
    if layout == "fixed":
        return {"model": FixedGraph(classifier, exit_layer, max_length, style).eval()}
    return {"embed": EmbedGraph(classifier, max_length, style).eval(), "layer": LayerGraph(classifier, style).eval(),
            "head": HeadGraph(classifier, style).eval()}


def _tensor_output(graph: nn.Module):
    if not graph.style.named_outputs:
        return graph
    return lambda *args: next(iter(graph(*args).values()))


def calibration_feeds(graphs: dict[str, nn.Module], name: str, batches: list[tuple[np.ndarray, np.ndarray]],
                      depth: int, limit: int) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of graph ``name`` for int8 range calibration, computed lazily with the PyTorch graphs.

    ``batches`` are (input_ids, attention_mask) arrays in the dtype the graph takes. The shared
    layer and the head see the hidden states of every depth, so they are calibrated on all depths,
    at most ``limit`` layer applications in all: batch b contributes the depths d with
    (b + d) % stride == 0, which spreads the texts over the depths. The fixed graph (all k layers
    per feed) gets ``limit // depth`` batches; the embed graph every batch.
    """
    if name == "model":
        for ids, mask in batches[:max(1, limit // depth)]:
            yield {"input_ids": ids, "attention_mask": mask}
        return
    if name == "embed":
        for ids, _ in batches:
            yield {"input_ids": ids}
        return
    embed, layer = (_tensor_output(graphs[name]) for name in ("embed", "layer"))
    head_takes_mask = graphs["head"].pooling == "mean"
    stride = max(1, -(-len(batches) * depth // limit))
    with torch.no_grad():
        for b, (ids, mask) in enumerate(batches):
            hidden = embed(torch.from_numpy(ids))
            for d in range(depth):
                keep = (b + d) % stride == 0
                if keep and name == "layer":
                    yield {"hidden": hidden.numpy(), "attention_mask": mask}
                hidden = layer(hidden, torch.from_numpy(mask))
                if keep and name == "head":
                    yield {"hidden": hidden.numpy(), **({"attention_mask": mask} if head_takes_mask else {})}
