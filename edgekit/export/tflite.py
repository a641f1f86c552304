"""TFLite export of the early-exit classifier through litert-torch (M6-Rec section 3.5, the phone side).

Two graph layouts, as on the ONNX side:

- ``fixed``: one graph ``model.tflite``, (input_ids, attention_mask) -> logits after exactly k
  layers. Layers above k are not in the file's program, so it costs k layers of compute.
- ``per-layer``: three graphs, ``embed.tflite`` (input_ids -> hidden), ``layer.tflite`` (the one
  ALBERT layer all depths share: hidden, attention_mask -> hidden) and ``head.tflite`` (hidden ->
  logits). The device runs embed, loops the layer and reads the head wherever it wants to exit,
  so one bundle serves every exit, including per-example (dynamic) exits.

Shapes are static, ``[batch_size, max_length]`` (what NPU delegates need); inputs are int32,
the TFLite index type (litert-torch narrows int64 to int32). Token type ids are not an input:
single-text classification uses type 0 throughout, which the graph takes from the model's buffer.

The padding mask is built inside the graph as an additive float mask, ``(1 - mask) * mask_value``,
instead of through transformers' mask helper, and attention runs transformers' eager
implementation: both lower to plain TFLite ops (CAST, SUB, MUL, ADD, BATCH_MATMUL, SOFTMAX).
``mask_value`` is -1e4 for float and dynamic-int8 graphs; full int8 uses -30, because the
scores after the mask is added share one int8 scale: with -1e4 that scale is ~40 per step and
every real score rounds to the same value, which turns attention into a plain average. exp(-30)
is 1e-13, so the masked keys still get no weight.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.early_exit import EarlyExitClassifier, _check_layer, _embed, _layer
from edgekit.errors import UserError
from edgekit.quantize.tflite import INT8_SCHEMES, quantize_tflite

__all__ = [
    "LAYOUTS",
    "TFLiteExport",
    "TFLiteGraph",
    "additive_attention_mask",
    "calibration_inputs_from_texts",
    "export_tflite",
    "tflite_logits",
]

LAYOUTS = ("fixed", "per-layer")
SIGNATURE = "serving_default"
MASK_VALUE = -1e4
FULL_INT8_MASK_VALUE = -30.0
# The per-layer graphs calibrate on (text, depth) pairs; a few hundred are plenty.
MAX_CALIBRATION_SAMPLES = 256


# ---------------------------------------------------------------------------------------------
# The graphs


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype, mask_value: float) -> torch.Tensor:
    """(B, T) 1/0 padding mask -> (B, 1, 1, T) additive mask: 0 for tokens, ``mask_value`` for padding."""
    return (1.0 - attention_mask.to(dtype))[:, None, None, :] * mask_value


class FixedExitGraph(nn.Module):
    """(input_ids, attention_mask) -> {"logits"} after exactly ``exit_layer`` layers."""

    def __init__(self, classifier: EarlyExitClassifier, exit_layer: int, mask_value: float):
        super().__init__()
        self.classifier, self.exit_layer, self.mask_value = classifier, exit_layer, mask_value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        albert = self.classifier.model.albert
        hidden = _embed(albert, input_ids, None)
        mask = additive_attention_mask(attention_mask, hidden.dtype, self.mask_value)
        for index in range(self.exit_layer):
            hidden = _layer(albert, index, hidden, mask)
        return {"logits": self.classifier.head(hidden)}


class EmbedGraph(nn.Module):
    """input_ids -> {"hidden"}: the input of layer 1 (embeddings projected to the hidden size)."""

    def __init__(self, classifier: EarlyExitClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hidden": _embed(self.classifier.model.albert, input_ids, None)}


class SharedLayerGraph(nn.Module):
    """(hidden, attention_mask) -> {"hidden"}: one application of the layer every depth shares."""

    def __init__(self, classifier: EarlyExitClassifier, mask_value: float):
        super().__init__()
        self.classifier, self.mask_value = classifier, mask_value

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = additive_attention_mask(attention_mask, hidden.dtype, self.mask_value)
        return {"hidden": _layer(self.classifier.model.albert, 0, hidden, mask)}


class HeadGraph(nn.Module):
    """hidden -> {"logits"}: the head all exits share (pooler on [CLS], tanh, classifier)."""

    def __init__(self, classifier: EarlyExitClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.classifier.head(hidden)}


# ---------------------------------------------------------------------------------------------
# Export


@dataclass
class TFLiteExport:
    """What ``export_tflite`` wrote: the files (in ``out_dir``) and their description for the manifest."""

    out_dir: Path
    files: list[Path]
    metadata: dict = field(default_factory=dict)


def _as_classifier(model) -> EarlyExitClassifier:
    from transformers import AlbertForSequenceClassification

    if isinstance(model, EarlyExitClassifier):
        return model
    if isinstance(model, AlbertForSequenceClassification):
        return EarlyExitClassifier(model)
    raise UserError(f"TFLite export needs an ALBERT classifier (EarlyExitClassifier or "
                    f"AlbertForSequenceClassification), got {type(model).__name__}.")


def _export_copy(model) -> EarlyExitClassifier:
    """A float32, eval-mode copy that uses eager attention (the user's model is left as it was)."""
    classifier = copy.deepcopy(_as_classifier(model)).float().eval()
    classifier.model.config._attn_implementation = "eager"
    return classifier


def _check_args(classifier: EarlyExitClassifier, exit_layer, max_length, int8, layout, batch_size) -> int:
    depth = classifier.depth
    exit_layer = depth if exit_layer is None else _check_layer("exit_layer", exit_layer, depth)
    limit = classifier.model.config.max_position_embeddings
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= limit:
        raise UserError(f"max_length must be an integer in 1..{limit} (the model's position embeddings), "
                        f"got {max_length!r}.")
    if int8 is not None and int8 not in INT8_SCHEMES:
        raise UserError(f"int8 must be None (float), 'dynamic' or 'full', got {int8!r}.")
    if layout not in LAYOUTS:
        raise UserError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if layout == "per-layer" and classifier.model.config.num_hidden_groups != 1:
        raise UserError("the per-layer layout needs one layer shared by all depths (num_hidden_groups=1); "
                        "export this model with layout='fixed'.")
    return exit_layer


def _convert(module: nn.Module, sample: Mapping[str, torch.Tensor]) -> bytes:
    import litert_torch

    with torch.no_grad():
        return bytes(litert_torch.convert(module.eval(), sample_kwargs=dict(sample)).model_content())


def _calibration_batches(calibration_inputs, batch_size: int, max_length: int) -> list[dict[str, np.ndarray]]:
    """{"input_ids": (N, T), "attention_mask": (N, T)} -> feeds of ``batch_size`` rows (int32)."""
    if not isinstance(calibration_inputs, Mapping) or "input_ids" not in calibration_inputs:
        raise UserError("calibration_inputs must be a mapping with 'input_ids' and 'attention_mask' arrays of "
                        "shape (N, max_length); build it with calibration_inputs_from_texts(tokenizer, texts, ...).")
    ids = np.asarray(calibration_inputs["input_ids"], dtype=np.int32)
    mask = np.asarray(calibration_inputs.get("attention_mask", np.ones_like(ids)), dtype=np.int32)
    if ids.ndim != 2 or ids.shape[1] != max_length or mask.shape != ids.shape:
        raise UserError(f"calibration input_ids and attention_mask must both have shape (N, {max_length}), got "
                        f"{ids.shape} and {mask.shape}; tokenize with padding='max_length', max_length={max_length}.")
    n = ids.shape[0] - ids.shape[0] % batch_size
    if n == 0:
        raise UserError(f"calibration needs at least batch_size={batch_size} examples, got {ids.shape[0]}.")
    return [{"input_ids": ids[i:i + batch_size], "attention_mask": mask[i:i + batch_size]}
            for i in range(0, n, batch_size)]


def _per_layer_calibration(classifier: EarlyExitClassifier, batches: list[dict[str, np.ndarray]],
                           mask_value: float) -> dict:
    """Calibration feeds of the three per-layer graphs: hidden states of every depth, from torch.

    The shared layer and the head see every depth, so their ranges must cover every depth. Text b
    keeps the depths d with (b + d) % stride == 0: about ``MAX_CALIBRATION_SAMPLES`` pairs in all.
    """
    albert = classifier.model.albert
    stride = max(1, -(-len(batches) * classifier.depth // MAX_CALIBRATION_SAMPLES))
    embed, layer, head = [], [], []
    with torch.no_grad():
        for b, feeds in enumerate(batches):
            ids = torch.from_numpy(feeds["input_ids"])
            mask = torch.from_numpy(feeds["attention_mask"])
            hidden = _embed(albert, ids, None)
            additive = additive_attention_mask(mask, hidden.dtype, mask_value)
            embed.append({"input_ids": feeds["input_ids"]})
            for index in range(classifier.depth):
                keep = (b + index) % stride == 0  # rotating, so that the texts cover every depth
                if keep:
                    layer.append({"hidden": hidden.numpy(), "attention_mask": feeds["attention_mask"]})
                hidden = _layer(albert, index, hidden, additive)
                if keep:
                    head.append({"hidden": hidden.numpy()})
    return {"embed": embed, "layer": layer, "head": head}


def _io_spec(model: bytes) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=model).get_signature_runner(SIGNATURE)

    def describe(details: dict) -> list[dict]:
        out = []
        for name, d in sorted(details.items(), key=lambda kv: kv[1]["index"]):
            scale, zero_point = d["quantization"]
            out.append({"name": name, "dtype": np.dtype(d["dtype"]).name, "shape": [int(x) for x in d["shape"]],
                        "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None})
        return out

    return {"signature": SIGNATURE, "inputs": describe(runner.get_input_details()),
            "outputs": describe(runner.get_output_details())}


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def export_tflite(model, out_dir, exit_layer: int | None = None, max_length: int = 128, int8: str | None = None,
                  calibration_inputs: Mapping[str, np.ndarray] | None = None, layout: str = "fixed",
                  batch_size: int = 1, mask_value: float | None = None) -> TFLiteExport:
    """Convert ``model`` (an ``EarlyExitClassifier`` or ``AlbertForSequenceClassification``) to TFLite.

    Args:
        exit_layer: layers the ``fixed`` graph computes (default: all); for ``per-layer`` it is
            only recorded as the default exit, since the device picks the exit.
        max_length: the static sequence length of every input.
        int8: None (float32), ``"dynamic"`` (int8 weights) or ``"full"`` (int8 weights and
            activations; needs ``calibration_inputs``).
        calibration_inputs: ``{"input_ids": (N, max_length), "attention_mask": (N, max_length)}``,
            tokenized sample texts (``calibration_inputs_from_texts``).
        layout: ``"fixed"`` or ``"per-layer"`` (see the module docstring).
        batch_size: the static batch dimension (1 on phones).
        mask_value: the additive padding-mask value (default: -1e4, or -30 for full int8).

    Returns the files written into ``out_dir`` and metadata describing each graph (file, signature,
    input and output names, dtypes, shapes, quantization, bytes, sha256) for the bundle manifest.
    """
    classifier = _export_copy(model)
    exit_layer = _check_args(classifier, exit_layer, max_length, int8, layout, batch_size)
    if mask_value is None:
        mask_value = FULL_INT8_MASK_VALUE if int8 == "full" else MASK_VALUE
    batches = None
    if int8 == "full":
        if calibration_inputs is None:
            raise UserError("int8='full' needs calibration_inputs (tokenized sample texts, e.g. from "
                            "calibration_inputs_from_texts); use int8='dynamic' to quantize without data.")
        batches = _calibration_batches(calibration_inputs, batch_size, max_length)

    ids = torch.ones(batch_size, max_length, dtype=torch.int32)
    mask = torch.ones(batch_size, max_length, dtype=torch.int32)
    if layout == "fixed":
        graphs = {"model": (FixedExitGraph(classifier, exit_layer, mask_value),
                            {"input_ids": ids, "attention_mask": mask})}
        calibration = {"model": batches}
    else:
        hidden = torch.zeros(batch_size, max_length, classifier.model.config.hidden_size)
        graphs = {"embed": (EmbedGraph(classifier), {"input_ids": ids}),
                  "layer": (SharedLayerGraph(classifier, mask_value), {"hidden": hidden, "attention_mask": mask}),
                  "head": (HeadGraph(classifier), {"hidden": hidden})}
        calibration = _per_layer_calibration(classifier, batches, mask_value) if batches else {}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, described = [], {}
    for name, (module, sample) in graphs.items():
        data = _convert(module, sample)
        if int8 is not None:
            data = quantize_tflite(data, int8, {SIGNATURE: calibration[name]} if int8 == "full" else None)
        path = out_dir / f"{name}.tflite"
        _write(path, data)
        files.append(path)
        described[name] = {"file": path.name, **_io_spec(data), "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}

    config = classifier.model.config
    metadata = {
        "format": "tflite",
        "layout": layout,
        "exit_layer": exit_layer,
        "exits": list(range(1, classifier.depth + 1)) if layout == "per-layer" else [exit_layer],
        "num_layers": classifier.depth,
        "max_length": max_length,
        "batch_size": batch_size,
        "int8": int8,
        "mask_value": mask_value,
        "num_labels": config.num_labels,
        "hidden_size": config.hidden_size,
        "graphs": described,
    }
    return TFLiteExport(out_dir=out_dir, files=files, metadata=metadata)


def calibration_inputs_from_texts(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """Tokenize sample texts the way the device does (padded to ``max_length``) for int8 calibration."""
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise UserError("no calibration texts; pass a few dozen sentences like the ones the model will see.")
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int32), "attention_mask": enc["attention_mask"].astype(np.int32)}


# ---------------------------------------------------------------------------------------------
# Running an export (parity checks on the build machine; the phone uses edgekit_device)


class TFLiteGraph:
    """One exported .tflite graph under ai-edge-litert: float feeds in, float outputs out.

    Quantized inputs and outputs (full int8) are quantized and dequantized with the tensor's own
    scale and zero point, so every graph takes and returns float32 / int32 arrays.
    """

    def __init__(self, path, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        self.inputs = self.runner.get_input_details()
        self.outputs = self.runner.get_output_details()

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        prepared = {}
        for name, detail in self.inputs.items():
            value = np.asarray(feeds[name])
            scale, zero_point = detail["quantization"]
            if scale and np.issubdtype(detail["dtype"], np.integer) and np.issubdtype(value.dtype, np.floating):
                info = np.iinfo(detail["dtype"])
                value = np.clip(np.round(value / scale) + zero_point, info.min, info.max)
            prepared[name] = value.astype(detail["dtype"])
        raw = self.runner(**prepared)
        out = {}
        for name, value in raw.items():
            scale, zero_point = self.outputs[name]["quantization"]
            out[name] = (value.astype(np.float32) - zero_point) * scale if scale else value
        return out


def tflite_logits(export: TFLiteExport, input_ids: np.ndarray, attention_mask: np.ndarray,
                  exit_layers: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Logits {exit layer: (N, C)} of an export on (N, max_length) inputs, ``batch_size`` rows at a time.

    A ``fixed`` export answers its one exit; a ``per-layer`` export answers every exit in
    ``exit_layers`` (default: all) from one pass of the loop.
    """
    meta = export.metadata
    graphs = {name: TFLiteGraph(export.out_dir / g["file"]) for name, g in meta["graphs"].items()}
    ids = np.asarray(input_ids, dtype=np.int32)
    mask = np.asarray(attention_mask, dtype=np.int32)
    b = meta["batch_size"]
    if ids.shape[0] % b:
        raise UserError(f"the number of examples ({ids.shape[0]}) must be a multiple of the export's batch size {b}.")
    if meta["layout"] == "fixed":
        wanted = [meta["exit_layer"]]
    else:
        wanted = sorted(set(exit_layers or meta["exits"]))
    out = {k: [] for k in wanted}
    for i in range(0, ids.shape[0], b):
        feeds = {"input_ids": ids[i:i + b], "attention_mask": mask[i:i + b]}
        if meta["layout"] == "fixed":
            out[wanted[0]].append(graphs["model"](**feeds)["logits"])
            continue
        hidden = graphs["embed"](input_ids=feeds["input_ids"])["hidden"]
        for layer in range(1, wanted[-1] + 1):
            hidden = graphs["layer"](hidden=hidden, attention_mask=feeds["attention_mask"])["hidden"]
            if layer in out:
                out[layer].append(graphs["head"](hidden=hidden)["logits"])
    return {k: np.concatenate(v) for k, v in out.items()}
