"""The ONNX graphs of an early-exit ALBERT classifier, and their export with torch.onnx.

Two layouts (``export/BUNDLE.md``):

- ``fixed``: ``model`` = (input_ids, attention_mask) -> logits after exactly k layers; the layers
  above k are not in the graph.
- ``per-layer``: ``embed`` (input_ids -> hidden), ``layer`` (hidden, attention_mask -> hidden:
  ALBERT's one shared layer, stored once) and ``head`` (hidden -> logits from [CLS]). The runtime
  loops ``layer`` and may stop after any application of it.

The modules compute exactly what ``EarlyExitClassifier`` computes, with three export-minded
choices: the padding mask is built in the graph as an additive float mask (what transformers'
eager attention receives), attention is transformers' eager implementation (plain MatMul and
Softmax), and the head keeps a length-1 sequence axis so the pooler and classifier stay MatMul
nodes, which int8 quantization handles (2D inputs would become Gemm, which it skips). The embed
graph stores only the position embeddings below ``max_length``, the longest input the runtime
feeds.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from edgekit.early_exit import EarlyExitClassifier, _layer

OPSET = 17
BATCH, SEQUENCE = "batch", "sequence"


def export_copy(classifier: EarlyExitClassifier) -> EarlyExitClassifier:
    """A float32 eval-mode copy with eager attention; the caller's model is left as it is."""
    clone = copy.deepcopy(classifier).float().eval()
    clone.model.config._attn_implementation = "eager"
    return clone


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 padding mask -> (B, 1, 1, T): 0 for tokens, the dtype's minimum for padding."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class EmbedGraph(nn.Module):
    """input_ids -> hidden (B, T, H): word + token-type-0 + position embeddings, LayerNorm, E->H projection."""

    def __init__(self, classifier: EarlyExitClassifier, max_length: int):
        super().__init__()
        albert = classifier.model.albert
        emb = albert.embeddings
        self.word = emb.word_embeddings
        self.position = nn.Embedding.from_pretrained(emb.position_embeddings.weight[:max_length].detach().clone())
        # Single texts have token type 0 everywhere (what AlbertEmbeddings uses without token_type_ids).
        self.register_buffer("type0", emb.token_type_embeddings.weight[0].detach().clone())
        self.norm = emb.LayerNorm
        self.project = albert.encoder.embedding_hidden_mapping_in

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.type0  # the order of AlbertEmbeddings' sums
        x = x + self.position(positions)
        return self.project(self.norm(x))


class LayerGraph(nn.Module):
    """(hidden, attention_mask) -> hidden: one application of the layer all depths share."""

    def __init__(self, classifier: EarlyExitClassifier):
        super().__init__()
        self.albert = classifier.model.albert

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _layer(self.albert, 0, hidden, additive_mask(attention_mask, hidden.dtype))


class HeadGraph(nn.Module):
    """hidden (B, T, H) -> logits (B, C): pooler + tanh + classifier on [CLS], as ``EarlyExitClassifier.head``."""

    def __init__(self, classifier: EarlyExitClassifier):
        super().__init__()
        self.pooler = classifier.model.albert.pooler
        self.classifier = classifier.model.classifier

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        cls = hidden[:, :1]  # (B, 1, H): a 3D input keeps both linears MatMul nodes
        return self.classifier(torch.tanh(self.pooler(cls)))[:, 0]


class FixedGraph(nn.Module):
    """(input_ids, attention_mask) -> logits after exactly ``exit_layer`` layers."""

    def __init__(self, classifier: EarlyExitClassifier, exit_layer: int, max_length: int):
        super().__init__()
        self.embed = EmbedGraph(classifier, max_length)
        self.albert = classifier.model.albert
        self.head = HeadGraph(classifier)
        self.exit_layer = exit_layer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids)
        mask = additive_mask(attention_mask, hidden.dtype)
        for index in range(self.exit_layer):
            hidden = _layer(self.albert, index, hidden, mask)
        return self.head(hidden)


def _tensor(name: str, dtype: str, axes: list[str], sizes: dict) -> dict:
    return {"name": name, "dtype": dtype, "shape": [sizes.get(a) for a in axes], "axes": axes}


def graph_specs(classifier: EarlyExitClassifier, layout: str, exit_layer: int, max_length: int) -> dict:
    """{graph name: (module, example inputs, manifest entry)} for a layout."""
    config = classifier.model.config
    sizes = {"hidden": config.hidden_size, "labels": config.num_labels}  # batch and sequence stay dynamic
    ids = torch.full((2, 8), config.pad_token_id or 0, dtype=torch.long)
    mask = torch.ones(2, 8, dtype=torch.long)
    hidden = torch.zeros(2, 8, config.hidden_size)
    token_axes, hidden_axes, logit_axes = [BATCH, SEQUENCE], [BATCH, SEQUENCE, "hidden"], [BATCH, "labels"]
    if layout == "fixed":
        return {"model": (FixedGraph(classifier, exit_layer, max_length), (ids, mask), {
            "inputs": [_tensor("input_ids", "int64", token_axes, sizes), _tensor("attention_mask", "int64", token_axes, sizes)],
            "outputs": [_tensor("logits", "float32", logit_axes, sizes)]})}
    return {
        "embed": (EmbedGraph(classifier, max_length), (ids,), {
            "inputs": [_tensor("input_ids", "int64", token_axes, sizes)],
            "outputs": [_tensor("hidden", "float32", hidden_axes, sizes)]}),
        "layer": (LayerGraph(classifier), (hidden, mask), {
            "inputs": [_tensor("hidden", "float32", hidden_axes, sizes), _tensor("attention_mask", "int64", token_axes, sizes)],
            "outputs": [_tensor("next_hidden", "float32", hidden_axes, sizes)]}),
        "head": (HeadGraph(classifier), (hidden,), {
            "inputs": [_tensor("hidden", "float32", hidden_axes, sizes)],
            "outputs": [_tensor("logits", "float32", logit_axes, sizes)]}),
    }


def export_onnx(module: nn.Module, args: tuple, path: Path, entry: dict) -> Path:
    """torch.onnx.export with the manifest entry's names and dynamic batch / sequence axes."""
    names_in = [t["name"] for t in entry["inputs"]]
    names_out = [t["name"] for t in entry["outputs"]]
    dynamic = {t["name"]: {i: axis for i, axis in enumerate(t["axes"]) if axis in (BATCH, SEQUENCE)}
               for t in entry["inputs"] + entry["outputs"]}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter: seconds per graph where torch.export takes a minute for 24
        # unrolled layers, and its output is what onnxruntime's quantizer expects. It warns that it
        # is legacy, and traces shape-dependent Python conditions in transformers that are
        # constant for these graphs (the parity check runs other shapes through the result).
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return path
