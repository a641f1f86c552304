"""``Predictor``: text in, label out, with fixed or dynamic early exit (M6-Rec section 3.5).

A ``per-layer`` bundle holds ALBERT's single shared layer once; the predictor runs ``embed``
once, then ``layer`` k times and ``head`` at each layer where it may stop:

- a fixed budget (``exit_layer=k``): k layers, the head once;
- ``mode="patience"`` (PABEE): an example stops when ``patience`` consecutive layers repeat the
  previous layer's prediction;
- ``mode="entropy"`` (DeeBERT): an example stops at the first layer whose prediction entropy
  (nats) is below ``entropy_threshold``.

The head reads the layer it is given by the bundle's pooling (manifest ``model.pooling``): [CLS]
(``cls``), or the masked token mean (``mean``), in which case it is fed the attention mask too.

Dynamic exits follow ``edgekit.early_exit.EarlyExitClassifier.predict_dynamic`` step for step:
examples that have exited leave the running batch, and trailing padding no remaining example
needs is cut, so deeper layers cost only what is still undecided. A ``fixed`` bundle computes its
one exit layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import Backend, get_backend
from .bundle import Bundle, load_bundle
from .errors import BundleError

_DTYPES = {"int64": np.int64, "int32": np.int32, "float32": np.float32}


@dataclass
class Prediction:
    """One row per text. ``scores``: softmax probabilities (B, C) at the exit; ``exit_layers``: the
    layer each example exited at; ``layer_evaluations``: (example, layer) pairs actually computed."""

    labels: list[str]
    label_ids: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    exit_layers: np.ndarray
    layer_evaluations: int


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def prediction_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of the softmax over the last axis, in nats (as ``edgekit.early_exit.prediction_entropy``)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -(np.exp(log_p) * log_p).sum(axis=-1)


class Predictor:
    """Runs a bundle: ``Predictor("bundle/").predict(["文本"], mode="patience")``."""

    def __init__(self, bundle: Bundle | str | Path, backend: Backend | None = None, threads: int | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        manifest = self.bundle.manifest
        if manifest["layout"] == "late-interaction":
            raise BundleError(f"bundle '{self.bundle.path}' is a late-interaction bundle (segments in, scores out); "
                              "run it with edgekit_device.segments.SegmentBundle, not Predictor.")
        self.backend = backend or get_backend(manifest["format"], threads=threads)
        self.backend.load(self.bundle.path, manifest)
        self.graphs = manifest["graphs"]
        self.tokenizer = self.bundle.tokenizer()
        self.labels = self.bundle.labels
        self.exits = self.bundle.exit_layers
        self.depth = max(self.exits)

    # -- running graphs with static or dynamic shapes

    def _static(self, name: str, axis: str):
        for t in self.graphs[name]["inputs"]:
            if axis in t["axes"] and isinstance(t["shape"][t["axes"].index(axis)], int):
                return t["shape"][t["axes"].index(axis)]
        return None

    def _pad_value(self, tensor: str) -> int:
        return self.tokenizer.pad_id if tensor == "input_ids" else 0

    def _run(self, name: str, feeds: dict) -> dict:
        """Run a graph on any batch size and length, padding to the manifest's static dimensions."""
        spec = {t["name"]: t for t in self.graphs[name]["inputs"]}
        static_seq = self._static(name, "sequence")
        static_batch = self._static(name, "batch")
        length = None
        prepared = {}
        for key, array in feeds.items():
            t = spec[key]
            array = np.ascontiguousarray(array, dtype=_DTYPES[t["dtype"]])
            if "sequence" in t["axes"]:
                axis = t["axes"].index("sequence")
                length = array.shape[axis]
                if static_seq is not None:
                    if length > static_seq:
                        raise BundleError(f"an input of {length} tokens is longer than this bundle's fixed length "
                                          f"{static_seq}; truncate texts to max_length.")
                    widths = [(0, 0)] * array.ndim
                    widths[axis] = (0, static_seq - length)
                    array = np.pad(array, widths, constant_values=self._pad_value(key))
            prepared[key] = array
        batch = next(iter(prepared.values())).shape[0]
        if static_batch is None or static_batch == batch:
            outputs = self.backend.run(name, prepared)
        else:
            parts = []
            for start in range(0, batch, static_batch):
                chunk = {}
                for key, array in prepared.items():
                    rows = array[start:start + static_batch]
                    if rows.shape[0] < static_batch:
                        fill = np.full((static_batch - rows.shape[0],) + rows.shape[1:], self._pad_value(key), rows.dtype)
                        rows = np.concatenate([rows, fill])
                    chunk[key] = rows
                parts.append(self.backend.run(name, chunk))
            outputs = {k: np.concatenate([p[k] for p in parts])[:batch] for k in parts[0]}
        if static_seq is not None and length is not None:
            for t in self.graphs[name]["outputs"]:
                if "sequence" in t["axes"]:
                    index = [slice(None)] * outputs[t["name"]].ndim
                    index[t["axes"].index("sequence")] = slice(0, length)
                    outputs[t["name"]] = outputs[t["name"]][tuple(index)]
        return outputs

    def _output(self, name: str, feeds: dict) -> np.ndarray:
        return self._run(name, feeds)[self.graphs[name]["outputs"][0]["name"]]

    def _check_length(self, input_ids) -> None:
        if np.shape(input_ids)[1] > self.bundle.max_length:
            raise BundleError(f"inputs of {np.shape(input_ids)[1]} tokens are longer than the bundle's max_length "
                              f"{self.bundle.max_length}; truncate them (Predictor.encode does).")

    def _embed(self, input_ids):
        self._check_length(input_ids)
        return self._output("embed", {"input_ids": input_ids})

    def _layer(self, hidden, attention_mask):
        return self._output("layer", {"hidden": hidden, "attention_mask": attention_mask})

    def _head(self, hidden, attention_mask):
        if self.bundle.pooling == "mean":
            return self._output("head", {"hidden": hidden, "attention_mask": attention_mask})
        return self._output("head", {"hidden": hidden})

    # -- logits

    def _check_exit(self, exit_layer):
        if exit_layer is None:
            return self.exits[-1] if self.bundle.layout == "fixed" else max(self.exits)
        if isinstance(exit_layer, bool) or not isinstance(exit_layer, (int, np.integer)) or exit_layer not in self.exits:
            if self.bundle.layout == "fixed":
                raise BundleError(f"this bundle computes exactly {self.exits[0]} layers (a fixed exit); exit_layer "
                                  f"{exit_layer!r} needs a per-layer bundle (export without --exit-layer).")
            raise BundleError(f"exit_layer must be a layer between 1 and {self.depth}, got {exit_layer!r}.")
        return int(exit_layer)

    def exit_logits(self, input_ids, attention_mask, max_layer: int | None = None) -> np.ndarray:
        """Logits of every exit 1..``max_layer`` (K, B, C); a fixed bundle gives its one exit (1, B, C)."""
        if self.bundle.layout == "fixed":
            self._check_length(input_ids)
            return self._output("model", {"input_ids": input_ids, "attention_mask": attention_mask})[None]
        max_layer = self._check_exit(max_layer)
        hidden = self._embed(input_ids)
        out = []
        for _ in range(max_layer):
            hidden = self._layer(hidden, attention_mask)
            out.append(self._head(hidden, attention_mask))
        return np.stack(out)

    def logits(self, input_ids, attention_mask, exit_layer: int | None = None) -> np.ndarray:
        """Logits (B, C) when every example exits at ``exit_layer``; no layer above it is run."""
        exit_layer = self._check_exit(exit_layer)
        if self.bundle.layout == "fixed":
            return self.exit_logits(input_ids, attention_mask)[0]
        hidden = self._embed(input_ids)
        for _ in range(exit_layer):
            hidden = self._layer(hidden, attention_mask)
        return self._head(hidden, attention_mask)

    def dynamic(self, input_ids, attention_mask, mode: str = "patience", patience: int = 2,
                entropy_threshold: float = 0.1, max_layer: int | None = None):
        """Per-example early exit: (predictions (B,), exit layers (B,), logits at the exit (B, C), layer evaluations)."""
        if self.bundle.layout != "per-layer":
            raise BundleError("dynamic exits need a per-layer bundle (export without --exit-layer); "
                              f"this one computes exactly {self.exits[0]} layers.")
        max_layer = self._check_exit(max_layer)
        if mode not in ("patience", "entropy"):
            raise BundleError(f"mode must be 'patience' (PABEE) or 'entropy' (DeeBERT), got {mode!r}.")
        if mode == "patience" and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise BundleError(f"patience must be an integer of at least 1, got {patience!r}.")
        if mode == "entropy" and not entropy_threshold > 0:
            raise BundleError(f"entropy_threshold must be greater than 0, got {entropy_threshold!r}.")
        input_ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(attention_mask, dtype=np.int64)
        batch = input_ids.shape[0]
        exit_layers = np.zeros(batch, dtype=np.int64)
        exit_logits = np.zeros((batch, len(self.labels)), dtype=np.float32)
        rows = np.arange(batch)
        hidden = self._embed(input_ids)
        previous = np.full(batch, -1, dtype=np.int64)
        counter = np.zeros(batch, dtype=np.int64)
        evaluations = 0
        for layer in range(1, max_layer + 1):
            hidden = self._layer(hidden, mask)
            evaluations += len(rows)
            logits = self._head(hidden, mask)
            prediction = logits.argmax(axis=-1)
            if layer == max_layer:
                done = np.ones(len(rows), dtype=bool)
            elif mode == "patience":
                counter = np.where(prediction == previous, counter + 1, 0)
                previous = prediction
                done = counter >= patience
            else:
                done = prediction_entropy(logits) < entropy_threshold
            exit_layers[rows[done]] = layer
            exit_logits[rows[done]] = logits[done]
            if done.all():
                break
            keep = ~done
            rows, hidden, previous, counter, mask = rows[keep], hidden[keep], previous[keep], counter[keep], mask[keep]
            # Padded keys are masked out, so columns that every remaining example pads can go.
            used = np.flatnonzero(mask.astype(bool).any(axis=0))
            if len(used):
                length = int(used.max()) + 1
                hidden, mask = hidden[:, :length], mask[:, :length]
        return exit_logits.argmax(axis=-1), exit_layers, exit_logits, evaluations

    # -- texts

    def encode(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) for ``texts``, truncated to the bundle's max_length."""
        return self.tokenizer.encode_batch(list(texts), max_length=self.bundle.max_length)

    def predict(self, texts, exit_layer: int | None = None, mode: str | None = None, patience: int = 2,
                entropy_threshold: float = 0.1, max_layer: int | None = None, batch_size: int = 32) -> Prediction:
        """Labels of ``texts``: a fixed exit (``exit_layer``, default the deepest) or a dynamic one (``mode``)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if mode is not None and exit_layer is not None:
            raise BundleError("pass either exit_layer (a fixed budget) or mode (a dynamic exit), not both.")
        parts = []
        for start in range(0, len(texts), batch_size):
            ids, mask = self.encode(texts[start:start + batch_size])
            if mode is None:
                layer = self._check_exit(exit_layer)
                logits = self.logits(ids, mask, layer)
                parts.append((logits, np.full(len(ids), layer, dtype=np.int64), layer * len(ids)))
            else:
                _, layers, logits, evaluations = self.dynamic(ids, mask, mode, patience, entropy_threshold, max_layer)
                parts.append((logits, layers, evaluations))
        if parts:
            logits = np.concatenate([p[0] for p in parts])
            layers = np.concatenate([p[1] for p in parts])
        else:
            logits = np.zeros((0, len(self.labels)), dtype=np.float32)
            layers = np.zeros(0, dtype=np.int64)
        label_ids = logits.argmax(axis=-1)
        return Prediction(labels=[self.labels[i] for i in label_ids], label_ids=label_ids, scores=softmax(logits),
                          logits=logits, exit_layers=layers, layer_evaluations=int(sum(p[2] for p in parts)))
