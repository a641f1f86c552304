"""Read Q, K and V of any layer of a Hugging Face encoder without modifying it.

One thin adapter per architecture family, in one registry (TextBrewer's lesson): an adapter
names the query/key/value projection modules. Forward hooks record their outputs in call
order, so the i-th call of a query module is layer i. That covers models with one module per
layer (BERT, RoBERTa, ...) and ALBERT, whose single shared layer is called L times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from edgekit.errors import UserError


@dataclass(frozen=True)
class QKVAdapter:
    """Regular expressions over ``named_modules()`` names for the Q, K and V projections."""

    query: str
    key: str
    value: str
    hidden_attr: str = "hidden_size"
    heads_attr: str = "num_attention_heads"
    layers_attr: str = "num_hidden_layers"


_BERT_LIKE = QKVAdapter(
    query=r"(^|\.)encoder\.layer\.\d+\.attention\.self\.query$",
    key=r"(^|\.)encoder\.layer\.\d+\.attention\.self\.key$",
    value=r"(^|\.)encoder\.layer\.\d+\.attention\.self\.value$",
)

# Families whose modules are named like BERT's (encoder.layer.N...): every per-family registry
# (these Q/K/V adapters, tune's FFN sites) maps them all to one entry, so a family added here is
# added everywhere at once.
BERT_LIKE_FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "megatron-bert")

ADAPTERS: dict[str, QKVAdapter] = {
    **dict.fromkeys(BERT_LIKE_FAMILIES, _BERT_LIKE),
    "albert": QKVAdapter(
        query=r"(^|\.)encoder\.albert_layer_groups\.\d+\.albert_layers\.\d+\.attention\.query$",
        key=r"(^|\.)encoder\.albert_layer_groups\.\d+\.albert_layers\.\d+\.attention\.key$",
        value=r"(^|\.)encoder\.albert_layer_groups\.\d+\.albert_layers\.\d+\.attention\.value$",
    ),
    "distilbert": QKVAdapter(
        query=r"(^|\.)transformer\.layer\.\d+\.attention\.q_lin$",
        key=r"(^|\.)transformer\.layer\.\d+\.attention\.k_lin$",
        value=r"(^|\.)transformer\.layer\.\d+\.attention\.v_lin$",
        hidden_attr="dim", heads_attr="n_heads", layers_attr="n_layers",
    ),
}


def register_adapter(model_type: str, adapter: QKVAdapter) -> None:
    """Support another architecture family without editing edgekit."""
    ADAPTERS[model_type] = adapter


def adapter_for(config) -> QKVAdapter:
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UserError(
            f"architecture '{model_type}' is not supported as a teacher or student; supported: "
            f"{', '.join(sorted(ADAPTERS))} (register another with edgekit.distill.adapters.register_adapter)."
        )
    return ADAPTERS[model_type]


def model_shape(config) -> tuple[int, int, int]:
    """(num_layers, hidden_size, num_heads) of a supported encoder config."""
    a = adapter_for(config)
    return getattr(config, a.layers_attr), getattr(config, a.hidden_attr), getattr(config, a.heads_attr)


class _StopForward(Exception):
    pass


class QKVRecorder:
    """Records Q, K, V outputs of chosen layers (1-based) during a forward pass.

    ``stop_after_last=True`` aborts the forward pass once the highest wanted layer's V is
    recorded: a teacher read at an upper-middle layer never computes the layers above it.
    Use as ``with recorder: model(...)``; then ``recorder.layers[k] == (Q, K, V)``.
    """

    def __init__(self, model: nn.Module, layers, stop_after_last: bool = False):
        self.adapter = adapter_for(model.config)
        self.wanted = sorted(set(int(k) for k in layers))
        self.stop_after_last = stop_after_last
        self.layers: dict[int, list] = {}
        self._counts = {"q": 0, "k": 0, "v": 0}
        self._handles = []
        found = {"q": 0, "k": 0, "v": 0}
        for name, module in model.named_modules():
            for slot, pattern in (("q", self.adapter.query), ("k", self.adapter.key), ("v", self.adapter.value)):
                if re.search(pattern, name):
                    found[slot] += 1
                    self._handles.append(module.register_forward_hook(self._hook(slot)))
        if not all(found.values()):
            self.remove()
            raise UserError(
                f"could not find the attention projections of this '{model.config.model_type}' model; "
                "it does not look like a standard Hugging Face encoder checkpoint."
            )

    def _hook(self, slot: str):
        index = "qkv".index(slot)

        def hook(_module, _inputs, output):
            self._counts[slot] += 1
            layer = self._counts[slot]
            if layer in self.wanted:
                self.layers.setdefault(layer, [None, None, None])[index] = output
                if self.stop_after_last and slot == "v" and layer == self.wanted[-1]:
                    raise _StopForward

        return hook

    def reset(self) -> None:
        self.layers = {}
        self._counts = {"q": 0, "k": 0, "v": 0}

    def __enter__(self):
        self.reset()
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is _StopForward

    def qkv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(self.layers[layer])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
