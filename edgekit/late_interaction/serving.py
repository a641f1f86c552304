"""``load_segment_model``: the ``SegmentModel`` (``edgekit_device.segments``) for a checkpoint or a bundle.

A checkpoint runs in PyTorch (``TorchSegmentModel``); an exported bundle runs without torch
(``edgekit_device.segments.SegmentBundle``). Tokenization follows ``edgekit_device.segments``:
each segment alone, ``[CLS] text [SEP]``, truncated to ``max_segment_tokens``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from edgekit.errors import UserError
from edgekit.late_interaction.model import SEGMENT_EMBEDDING_FILE, LateInteractionClassifier, SegmentInputError

# what a segment's encoding depends on: the weights, the settings, the tokenizer
_HASHED = ("model.safetensors", "config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json")


def checkpoint_hash(path, settings: dict) -> str:
    """sha256 over the checkpoint's weight, config and tokenizer files (those present) and the split settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name in _HASHED:
        p = Path(path) / name
        if p.is_file():
            h.update(name.encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


class TorchSegmentModel:
    """``SegmentModel`` over a ``LateInteractionClassifier`` and its tokenizer (numpy in, numpy out)."""

    def __init__(self, model: LateInteractionClassifier, tokenizer, labels: list[str], model_hash: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.model_hash = model_hash
        self.max_segments = model.max_segments
        self.max_segment_tokens = model.max_segment_tokens

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each segment alone: ``[CLS] text [SEP]``, at most ``max_segment_tokens``."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise SegmentInputError(f"segment {i} is a {type(text).__name__}, not a string; send segments as text.")
        if not texts:
            return []
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_segment_tokens)["input_ids"]

    def encode_segments(self, texts: list[str]) -> list[np.ndarray]:
        encoded = self.model.encode_segment_ids(self.tokenize(texts))
        return [e.detach().cpu().numpy().astype(np.float32) for e in encoded]

    def interact(self, requests: list[list[np.ndarray]]) -> np.ndarray:
        if not requests:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        tensors = []
        for r, request in enumerate(requests):
            if not isinstance(request, (list, tuple)):
                raise SegmentInputError(f"request {r} is a {type(request).__name__}; a request is a list of arrays.")
            tensors.append([torch.as_tensor(np.asarray(p, dtype=np.float32)) for p in request])
        return self.model.interact(tensors).cpu().numpy().astype(np.float32)


def is_bundle(path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def load_segment_model(path, late_layers: int | None = None, threads: int | None = None):
    """The ``SegmentModel`` for ``path``: a late-interaction checkpoint (PyTorch) or bundle (no torch).

    ``late_layers`` splits a plain classifier checkpoint (zero segment embedding), e.g. to time a
    model before training it; a late-interaction checkpoint keeps its own split unless given one."""
    p = Path(path)
    if is_bundle(p):
        if late_layers is not None:
            raise UserError("late_layers applies to checkpoints; a bundle keeps the split it was exported with.")
        from edgekit_device.segments import SegmentBundle

        return SegmentBundle(p, threads=threads)
    from edgekit.checkpoint import check_model_dir, load_tokenizer

    model_dir = check_model_dir(p)
    model = LateInteractionClassifier.from_pretrained(model_dir, late_layers=late_layers)
    id2label = getattr(model.config, "id2label", None) or {}
    labels = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(model.config.num_labels)]
    return TorchSegmentModel(model, load_tokenizer(model_dir), labels, checkpoint_hash(model_dir, model.settings()))


def predict_segments(path, segments: list[str], threads: int | None = None) -> dict:
    """One request through a late-interaction checkpoint or bundle (``edgekit predict`` on such a model):
    its label, probability, every class's probability and the exit (the last layer; there is one).
    More than ``max_segments`` segments are joined onto the last kept one, as in training."""
    from edgekit.late_interaction.data import fit_segments
    from edgekit.serve.engine import softmax

    segments = [s for s in segments if s and s.strip()]
    if not segments:
        raise UserError("a late-interaction model reads a request of segments; give at least one non-empty text.")
    model = load_segment_model(path, threads=threads)
    segments = fit_segments(segments, model.max_segments)
    p = softmax(model.interact([model.encode_segments(segments)])[0])
    manifest = getattr(getattr(model, "bundle", None), "manifest", None)
    depth = manifest["exits"]["layers"][-1] if manifest else model.model.depth
    return {"text": " | ".join(segments), "segments": segments, "label": model.labels[int(p.argmax())],
            "score": float(p.max()), "exit_layer": int(depth), "scores": [round(float(x), 6) for x in p]}


__all__ = ["SEGMENT_EMBEDDING_FILE", "TorchSegmentModel", "checkpoint_hash", "load_segment_model", "predict_segments"]
