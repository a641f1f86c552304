"""Multi-segment late interaction (M6-Rec section 3.3): the serving interface and its mask math.

A request is a list of text segments. The first L' layers run on every segment alone (positions
restart at 0 in each), so their output can be cached per segment text; a request concatenates
the cached outputs, adds a learnable segment embedding by segment index, and runs only the last
L - L' layers and the head.

Tokenization: every segment is tokenized alone with the checkpoint's own tokenizer and special
tokens, ``[CLS] text [SEP]``, truncated to ``max_segment_tokens``. A segment's encoding therefore
does not depend on where it stands in a request, so one cache entry (segment text, model hash)
serves every position. The summary position the head reads is the first token of the request,
the [CLS] of its first segment (the head of a ``mean`` model reads the mean of all tokens).

``SegmentModel`` is what a server runs; ``edgekit.late_interaction.load_segment_model`` returns
the PyTorch one for a checkpoint and ``SegmentBundle`` (here, numpy + onnxruntime) for a bundle.
The functions below are the mask and position math both share (pure numpy).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .errors import BundleError

__all__ = ["SegmentBundle", "SegmentError", "SegmentModel", "additive_mask", "block_diagonal_allowed", "full_allowed",
           "pack_layout", "segment_layout", "segment_embedding_index"]


class SegmentError(BundleError, ValueError):
    """A request the model cannot take (no segments, too many, a wrong array): one sentence, the
    caller's fault (a server answers it with 4xx). The PyTorch side raises a subclass that is also
    an ``edgekit.errors.UserError``."""


@runtime_checkable
class SegmentModel(Protocol):
    """A late-interaction classifier served segment by segment (numpy in, numpy out).

    - ``model_hash``: sha256 (hex) of what determines a segment's encoding; part of a cache key.
    - ``max_segments``: the most segments a request may have (the segment embedding's size).
    - ``max_segment_tokens``: tokens per segment, [CLS] and [SEP] included; longer text is truncated.
    - ``labels``: class names, the columns of ``interact``'s logits.
    - ``encode_segments(texts)``: one float32 array (n_tokens_i, hidden) per text: the output of
      the first L' layers on that text alone. Cache these.
    - ``interact(requests)``: (n_requests, n_labels) float32 logits; each request is the list of
      its segments' arrays, in order, as ``encode_segments`` returned them.

    Bad requests raise ``SegmentError`` (a ``ValueError``) with one sentence.
    """

    model_hash: str
    max_segments: int
    max_segment_tokens: int
    labels: list[str]

    def encode_segments(self, texts: list[str]) -> list[np.ndarray]: ...

    def interact(self, requests: list[list[np.ndarray]]) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# The math: positions, segment ids, masks


def segment_layout(lengths: list[int], total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids and position ids (both int64, shape (T,)) of segments of ``lengths`` packed in order.

    segment_id[t] = s for the tokens of segment s (0-based), -1 for padding after the last segment;
    position_id[t] = t - start(s), the token's place in its own segment (padding: 0), so every
    segment starts at position 0 as it does when it is encoded alone. T = ``total`` (default
    Σ lengths). Example: lengths (2, 3), total 6 -> segments [0 0 1 1 1 -1], positions [0 1 0 1 2 0].
    """
    used = int(sum(lengths))
    total = used if total is None else total
    if any(n < 1 for n in lengths) or total < used:
        raise SegmentError(f"segment lengths {list(lengths)} do not fit {total} positions; every segment needs a token.")
    segments = np.full(total, -1, dtype=np.int64)
    positions = np.zeros(total, dtype=np.int64)
    start = 0
    for s, n in enumerate(lengths):
        segments[start:start + n] = s
        positions[start:start + n] = np.arange(n)
        start += n
    return segments, positions


def pack_layout(lengths_per_example: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``segment_layout`` of a batch, padded to the longest example: (B, T) segment ids and position ids."""
    total = max(int(sum(lengths)) for lengths in lengths_per_example)
    rows = [segment_layout(lengths, total) for lengths in lengths_per_example]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def block_diagonal_allowed(segment_ids: np.ndarray) -> np.ndarray:
    """The first L' layers' attention: (..., T, T) bool, allowed[i, j] = seg_i == seg_j and seg_i >= 0.

    A token sees only the tokens of its own segment; padding (-1) sees nothing and is seen by
    nothing. A padding row gets no allowed key, which an additive mask turns into a uniform (finite,
    never read) attention row."""
    seg = np.asarray(segment_ids)
    return (seg[..., :, None] == seg[..., None, :]) & (seg[..., :, None] >= 0)


def full_allowed(segment_ids: np.ndarray) -> np.ndarray:
    """The last L - L' layers' attention: (..., T, T) bool, allowed[i, j] = seg_j >= 0: every real token.

    This is the usual padding mask, the same for every query row."""
    seg = np.asarray(segment_ids)
    return np.broadcast_to((seg >= 0)[..., None, :], seg.shape + seg.shape[-1:]).copy()


def additive_mask(allowed: np.ndarray, value: float = float(np.finfo(np.float32).min)) -> np.ndarray:
    """Bool (..., T, T) -> float32 (..., 1, T, T), one head axis: 0 where allowed, ``value`` where not.

    Added to attention scores before the softmax; with the float32 minimum a blocked key gets
    weight exactly 0 (exp underflows), so a segment's tokens compute what they compute alone."""
    mask = np.where(np.asarray(allowed), np.float32(0), np.float32(value)).astype(np.float32)
    return mask[..., None, :, :]


def segment_embedding_index(segment_ids: np.ndarray) -> np.ndarray:
    """Row of the segment embedding each position adds: its segment id, padding (-1) -> row 0 (never read)."""
    return np.maximum(np.asarray(segment_ids), 0).astype(np.int64)


# --------------------------------------------------------------------------------------------
# The torch-free implementation: a ``late-interaction`` bundle (export/BUNDLE.md)


class SegmentBundle:
    """``SegmentModel`` over an exported ``late-interaction`` bundle (numpy + the bundle's engine).

    Graphs: ``segment_encoder`` (input_ids, attention_mask (B, T) int64 -> hidden (B, T, H), one
    segment per row, padded on the right) and ``interaction`` (hidden (B, T, H) float32, segment_ids
    (B, T) int64, -1 for padding -> logits (B, C)). ``model_hash`` is the sha256 of the segment
    encoder's file, the device tokenizer's file and the split settings (what a segment's encoding
    depends on), as the manifest records them."""

    def __init__(self, bundle, backend=None, threads: int | None = None):
        from .backend import get_backend
        from .bundle import Bundle, load_bundle

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        manifest = self.bundle.manifest
        if manifest["layout"] != "late-interaction":
            raise BundleError(f"bundle '{self.bundle.path}' has layout {manifest['layout']!r}, not late-interaction; "
                              "run it with edgekit_device.Predictor, or export a late-interaction checkpoint.")
        settings = manifest.get("late_interaction")
        if not isinstance(settings, dict) or not {"max_segments", "max_segment_tokens", "hidden_size"} <= set(settings):
            raise BundleError(f"bundle '{self.bundle.path}': manifest 'late_interaction' must give max_segments, "
                              "max_segment_tokens and hidden_size; export the bundle again.")
        self.backend = backend or get_backend(manifest["format"], threads=threads)
        self.backend.load(self.bundle.path, manifest)
        self.tokenizer = self.bundle.tokenizer()
        self.labels = list(self.bundle.labels)
        self.max_segments = int(settings["max_segments"])
        self.max_segment_tokens = int(settings["max_segment_tokens"])
        self.hidden_size = int(settings["hidden_size"])
        files = manifest["files"]
        import hashlib
        import json

        h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for name in (manifest["graphs"]["segment_encoder"]["file"], manifest["tokenizer"]["file"]):
            h.update(files[name]["sha256"].encode())
        self.model_hash = h.hexdigest()

    def encode_segments(self, texts: list[str]) -> list[np.ndarray]:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise SegmentError(f"segment {i} is a {type(text).__name__}, not a string; send segments as text.")
        if not texts:
            return []
        ids, mask = self.tokenizer.encode_batch(list(texts), self.max_segment_tokens)
        hidden = self.backend.run("segment_encoder", {"input_ids": ids, "attention_mask": mask})["hidden"]
        return [np.ascontiguousarray(hidden[i, :int(mask[i].sum())], dtype=np.float32) for i in range(len(texts))]

    def interact(self, requests: list[list[np.ndarray]]) -> np.ndarray:
        if not requests:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        lengths = []
        for r, request in enumerate(requests):
            if not isinstance(request, (list, tuple)) or not request:
                raise SegmentError(f"request {r} has no segments; send at least one segment.")
            if len(request) > self.max_segments:
                raise SegmentError(f"request {r} has {len(request)} segments but the model takes at most "
                                   f"{self.max_segments}; send fewer (or merge some).")
            for s, part in enumerate(request):
                shape = np.shape(part)
                if len(shape) != 2 or shape[0] < 1 or shape[1] != self.hidden_size:
                    raise SegmentError(f"segment {s} of request {r} has shape {tuple(shape)}; it must be "
                                       f"(tokens, {self.hidden_size}) as encode_segments returned it.")
            lengths.append([int(np.shape(p)[0]) for p in request])
        segment_ids, _ = pack_layout(lengths)
        hidden = np.zeros(segment_ids.shape + (self.hidden_size,), dtype=np.float32)
        for r, request in enumerate(requests):
            hidden[r, :sum(lengths[r])] = np.concatenate([np.asarray(p, dtype=np.float32) for p in request])
        logits = self.backend.run("interaction", {"hidden": hidden, "segment_ids": segment_ids})["logits"]
        return np.asarray(logits, dtype=np.float32)
