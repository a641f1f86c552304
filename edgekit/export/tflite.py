"""The TFLite backend of export (M6-Rec section 3.5, the phone side): the graphs of
``edgekit.export.graphs`` converted with litert-torch, quantized with ai-edge-quantizer, and read
back with the ``tflite`` flatbuffer package.

Layouts as on the ONNX side: ``fixed`` (one ``model.tflite``: input_ids, attention_mask -> logits
after exactly k layers) or ``per-layer`` (``embed.tflite``, ``layer.tflite``, ``head.tflite``: the
device runs embed, loops the one shared layer and reads the head wherever it wants to exit).

Shapes are static, ``[batch_size, max_length]`` (what NPU delegates need); inputs are int32,
the TFLite index type (litert-torch narrows int64 to int32). Token type ids are not an input:
single-text classification uses type 0 throughout. Signature outputs are named ``logits`` and
``hidden`` (the graphs return dicts: ``GraphStyle.named_outputs``).

The padding-mask value is -1e4, and -30 for the all-int8 graphs of ``int8_ops="all"`` (their
attention scores are int8; ``tflite_style``, why in ``edgekit.export.graphs``).

Two int8 schemes:

- ``"dynamic"``: int8 weights, per output channel, symmetric; activations stay float and the
  kernels quantize them on the fly (``recipe.dynamic_wi8_afp32``). No data needed.
- ``"full"``: int8 weights and int8 activations with ranges calibrated on sample inputs, where
  int8 is fast (``int8_ops``). The default, ``"fully-connected"``, gives every FULLY_CONNECTED
  (all the model's weights but the embedding table) int8 inputs and outputs with static scales
  and keeps the rest in float32: LayerNorm, softmax, GELU, the attention BATCH_MATMULs, residual
  adds; a QUANTIZE / DEQUANTIZE pair sits around each int8 run. ``"all"`` quantizes every op
  (``recipe.static_wi8_ai8``): an all-integer graph, for integer-only accelerators, but on CPU it
  is slow. Measured (``benchmarks/export_latency.md``, per-op profile): XNNPACK has no int8
  kernel for SQUARED_DIFFERENCE, RSQRT, SOFTMAX or GELU, and takes an int8 BATCH_MATMUL, ADD or
  SUB only when its calibrated scales fall in the range its kernels accept, so the
  decomposed LayerNorm, the attention and, at depths whose scales differ, other ops fall back
  to TFLite's reference int8 kernels (the attention matmuls alone were a third of the time).
  ``xnnpack_fallbacks`` lists what falls back. Either way the embedding table, which the static
  recipe leaves in float, gets int8 weights as in the dynamic scheme, so the file is as small as
  the dynamic one.

The word-embedding table (EMBEDDING_LOOKUP, int8 weights in both schemes) has one int8 scale
for the whole table by default (``embedding_scale="table"``, as ONNX Runtime's int8 Gather), or
one per row (``"row"``, ai-edge-quantizer's own default for the op). Measured on the trained
paper-shape table (12,094 x 128), per row costs 48 KB of float32 scales that do not compress and
37 KB more for codes that fill the whole int8 range in every row (zlib-packed download), for a
relative error of the table of 0.35% instead of 0.65% (worst row 0.61% instead of 0.91%).

Weights are quantized symmetrically (zero point 0), so a weight pruned to 0.0 is stored as the
integer 0: sparsity survives quantization. ``weight_tensors`` reads the stored constants back,
which is how the tests count those zeros.
"""

from __future__ import annotations

import collections
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.albert import check_layer
from edgekit.early_exit import EarlyExitClassifier
from edgekit.errors import UserError
from edgekit.export.graphs import LAYOUTS, GraphStyle, build_graphs, calibration_feeds, export_copy, graph_inputs

__all__ = [
    "EMBEDDING_SCALES",
    "FULL_INT8_OPS",
    "INT8_SCHEMES",
    "LAYOUTS",
    "TFLiteExport",
    "WeightTensor",
    "calibration_inputs_from_texts",
    "export_tflite",
    "op_counts",
    "quantize_tflite",
    "tflite_logits",
    "tflite_style",
    "weight_tensors",
    "write_tflite",
    "xnnpack_fallbacks",
]

SIGNATURE = "serving_default"
INT8_SCHEMES = ("dynamic", "full")
# Where full int8 puts int8 activations (module docstring): the first is the default.
FULL_INT8_OPS = ("fully-connected", "all")
# What one int8 scale of an embedding table covers (module docstring): ai-edge-quantizer's granularity.
EMBEDDING_SCALES = {"table": "TENSORWISE", "row": "CHANNELWISE"}
MASK_VALUE = -1e4
FULL_INT8_MASK_VALUE = -30.0
# The per-layer graphs calibrate on (text, depth) pairs; a few hundred are plenty.
MAX_CALIBRATION_SAMPLES = 256

Feeds = Mapping[str, np.ndarray]


def tflite_style(int8: str | None, mask_value: float | None = None, int8_ops: str = FULL_INT8_OPS[0]) -> GraphStyle:
    """The graphs' style for TFLite: -1e4 padding (-30 when full int8 quantizes the attention
    scores too, ``int8_ops="all"``) unless ``mask_value`` is given."""
    if mask_value is None:
        mask_value = FULL_INT8_MASK_VALUE if int8 == "full" and int8_ops == "all" else MASK_VALUE
    return GraphStyle(mask_value=mask_value, head_keeps_sequence_axis=False, static_length=True, named_outputs=True)


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


def _check_args(classifier: EarlyExitClassifier, exit_layer, max_length, int8, layout, batch_size,
                int8_ops=FULL_INT8_OPS[0]) -> int:
    depth = classifier.depth
    exit_layer = depth if exit_layer is None else check_layer("exit_layer", exit_layer, depth)
    limit = classifier.model.config.max_position_embeddings
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= limit:
        raise UserError(f"max_length must be an integer in 1..{limit} (the model's position embeddings), "
                        f"got {max_length!r}.")
    if int8 is not None and int8 not in INT8_SCHEMES:
        raise UserError(f"int8 must be None (float), 'dynamic' or 'full', got {int8!r}.")
    if int8_ops not in FULL_INT8_OPS:
        raise UserError(f"int8_ops must be one of {', '.join(FULL_INT8_OPS)}, got {int8_ops!r}.")
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
                  batch_size: int = 1, mask_value: float | None = None,
                  int8_ops: str = FULL_INT8_OPS[0], embedding_scale: str = "table") -> TFLiteExport:
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
        mask_value: the additive padding-mask value (default: -1e4, or -30 for ``int8_ops="all"``).
        int8_ops: where full int8 uses int8 activations: ``"fully-connected"`` (the fast default)
            or ``"all"`` (an all-integer graph; see the module docstring).
        embedding_scale: int8 only: one scale for each embedding table (``"table"``) or one per
            row (``"row"``); see the module docstring.

    Returns the files written into ``out_dir`` and metadata describing each graph (file, signature,
    input and output names, dtypes, shapes, quantization, bytes, sha256) for the bundle manifest.
    """
    classifier = export_copy(_as_classifier(model))
    exit_layer = _check_args(classifier, exit_layer, max_length, int8, layout, batch_size, int8_ops)
    style = tflite_style(int8, mask_value, int8_ops)
    batches = None
    if int8 == "full":
        if calibration_inputs is None:
            raise UserError("int8='full' needs calibration_inputs (tokenized sample texts, e.g. from "
                            "calibration_inputs_from_texts); use int8='dynamic' to quantize without data.")
        batches = _calibration_batches(calibration_inputs, batch_size, max_length)

    graphs = build_graphs(classifier, layout, exit_layer, max_length, style)
    config = classifier.model.config
    samples = {"input_ids": torch.ones(batch_size, max_length, dtype=torch.int32),
               "attention_mask": torch.ones(batch_size, max_length, dtype=torch.int32),
               "hidden": torch.zeros(batch_size, max_length, config.hidden_size)}
    calibration = {}
    if batches and layout == "fixed":
        calibration = {"model": batches}
    elif batches:
        pairs = [(b["input_ids"], b["attention_mask"]) for b in batches]
        calibration = {name: list(calibration_feeds(graphs, name, pairs, classifier.depth, MAX_CALIBRATION_SAMPLES))
                       for name in graphs}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, described = [], {}
    inputs = graph_inputs(classifier.pooling)
    for name, module in graphs.items():
        data = _convert(module, {k: samples[k] for k in inputs[name]})
        if int8 is not None:
            data = quantize_tflite(data, int8, {SIGNATURE: calibration[name]} if int8 == "full" else None,
                                   int8_ops=int8_ops, embedding_scale=embedding_scale)
        path = out_dir / f"{name}.tflite"
        _write(path, data)
        files.append(path)
        described[name] = {"file": path.name, **_io_spec(data), "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}

    metadata = {
        "format": "tflite",
        "layout": layout,
        "exit_layer": exit_layer,
        "exits": list(range(1, classifier.depth + 1)) if layout == "per-layer" else [exit_layer],
        "num_layers": classifier.depth,
        "max_length": max_length,
        "batch_size": batch_size,
        "int8": int8,
        **({"int8_ops": int8_ops} if int8 == "full" else {}),
        **({"embedding_scale": embedding_scale} if int8 else {}),
        "mask_value": style.mask_value,
        "pooling": classifier.pooling,
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
# A bundle's graphs


_AXES = {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
         "hidden": ["batch", "sequence", "hidden"], "next_hidden": ["batch", "sequence", "hidden"],
         "logits": ["batch", "labels"]}


def _manifest_tensor(t: dict) -> dict:
    quantized = t.get("quantization") and t["dtype"] in ("int8", "uint8", "int16")
    return {"name": t["name"], "dtype": "float32" if quantized else t["dtype"], "shape": list(t["shape"]),
            "axes": _AXES.get(t["name"], [f"dim{i}" for i in range(len(t["shape"]))]),
            "stored_dtype": t["dtype"], "quantization": t.get("quantization")}


def write_tflite(model, tokenizer, directory: Path, layout: str, exit_layer: int, max_length: int,
                 scheme: str | None, texts: list[str], embedding_scale: str = "table") -> tuple[dict, dict | None]:
    """Write the layout's graphs of ``model`` (an export copy) into ``directory``, float32 or int8.

    ``scheme``: None (float32), ``"dynamic"`` (int8 weights) or ``"static"`` (full int8, ranges
    calibrated on ``texts``); ``embedding_scale``: int8 scales of the embedding tables, one per
    table or per row. Returns (the manifest's ``graphs`` entry, its ``quantization``): what
    ``write_onnx`` returns for ONNX.
    """
    int8 = {None: None, "dynamic": "dynamic", "static": "full"}[scheme]
    calibration = calibration_inputs_from_texts(tokenizer, texts, max_length) if scheme == "static" else None
    result = export_tflite(model, directory, exit_layer=exit_layer, max_length=max_length, int8=int8,
                           calibration_inputs=calibration, layout=layout, batch_size=1,
                           embedding_scale=embedding_scale)
    graphs = {name: {"file": g["file"], "signature": g.get("signature"),
                     "inputs": [_manifest_tensor(t) for t in g["inputs"]],
                     "outputs": [_manifest_tensor(t) for t in g["outputs"]]}
              for name, g in result.metadata["graphs"].items()}
    activations = {None: None, "dynamic": "float",
                   "full": "int8, calibrated, at every FULLY_CONNECTED; LayerNorm, softmax, GELU and the attention "
                           "matmuls in float32"}[int8]
    quantization = None if int8 is None else {
        "scheme": int8, "tool": "ai-edge-quantizer",
        "weights": "int8 (symmetric)", "activations": activations,
        "mask_value": result.metadata.get("mask_value"), "embedding_scale": embedding_scale}
    return graphs, quantization


# ---------------------------------------------------------------------------------------------
# int8


def quantize_tflite(float_model: bytes, scheme: str,
                    calibration: Mapping[str, Iterable[Feeds]] | Iterable[Feeds] | None = None,
                    int8_ops: str = FULL_INT8_OPS[0], embedding_scale: str = "table") -> bytes:
    """The int8 version of a float .tflite model (bytes in, bytes out).

    ``calibration`` (scheme ``"full"`` only): sample inputs, as a list of ``{input name: array}``
    for a model with one signature, or ``{signature name: list of feeds}``. Inputs must have the
    model's exact shapes and dtypes. ``int8_ops`` (scheme ``"full"``): which ops get int8
    activations, ``"fully-connected"`` or ``"all"`` (see the module docstring). ``embedding_scale``:
    one int8 scale per EMBEDDING_LOOKUP table (``"table"``) or one per row (``"row"``).
    """
    from ai_edge_quantizer import qtyping, quantizer, recipe

    if scheme not in INT8_SCHEMES:
        raise UserError(f"int8 must be one of {', '.join(INT8_SCHEMES)} (or None for float), got {scheme!r}.")
    if int8_ops not in FULL_INT8_OPS:
        raise UserError(f"int8_ops must be one of {', '.join(FULL_INT8_OPS)}, got {int8_ops!r}.")
    if embedding_scale not in EMBEDDING_SCALES:
        raise UserError(f"embedding_scale must be one of {', '.join(EMBEDDING_SCALES)}, got {embedding_scale!r}.")
    table = (".*", qtyping.TFLOperationName.EMBEDDING_LOOKUP, 8,
             qtyping.QuantGranularity[EMBEDDING_SCALES[embedding_scale]])
    if scheme == "dynamic":
        q = quantizer.Quantizer(bytearray(float_model), recipe.dynamic_wi8_afp32())
        q.add_dynamic_config(*table)  # the recipe's own EMBEDDING_LOOKUP entry is per row
        return bytes(q.quantize(enable_progress_report=False).quantized_model)

    if calibration is None:
        raise UserError("full int8 quantization needs calibration inputs (a few dozen tokenized sample texts); "
                        "pass calibration_inputs, or use int8='dynamic', which needs none.")
    if int8_ops == "all":
        q = quantizer.Quantizer(bytearray(float_model), recipe.static_wi8_ai8())
    else:
        # Only the matrix products get int8 activations: XNNPACK's int8 GEMM is several times
        # faster than float, while every other op either has no int8 kernel there or is cheap
        # in float (the module docstring has the measurement).
        q = quantizer.Quantizer(bytearray(float_model))
        q.add_static_config(".*", qtyping.TFLOperationName.FULLY_CONNECTED, 8, 8)
    # The static recipe leaves EMBEDDING_LOOKUP in float; int8 weights with a float output
    # (the dynamic kernel) shrink the largest table 4x and cost nothing at runtime.
    q.add_dynamic_config(*table)
    if not isinstance(calibration, Mapping):
        calibration = {_only_signature(float_model): list(calibration)}
    calibration = {key: [dict(feeds) for feeds in samples] for key, samples in calibration.items()}
    if not any(calibration.values()):
        raise UserError("the calibration set is empty; pass at least one tokenized sample text.")
    result = q.calibrate(calibration, num_threads=1)
    return bytes(q.quantize(result, enable_progress_report=False).quantized_model)


def _only_signature(model: bytes) -> str:
    from ai_edge_litert.interpreter import Interpreter

    signatures = list(Interpreter(model_content=model).get_signature_list())
    if len(signatures) != 1:
        raise UserError(f"the model has signatures {signatures}; give calibration inputs per signature "
                        "as {signature name: list of feeds}.")
    return signatures[0]


# ---------------------------------------------------------------------------------------------
# Reading a .tflite flatbuffer


def _enum_names(enum_class) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def _builtin_code(code) -> int:
    """An OperatorCode's builtin operator. The schema has two fields (codes above 127 only in
    ``builtin_code``); writers fill either or both. The ``tflite`` package's ``BuiltinCode()``
    returns the deprecated field whenever the code is below 127, which ai-edge-quantizer leaves 0
    for the QUANTIZE / DEQUANTIZE it adds, so they would read as ADD: read the raw field."""
    import flatbuffers

    offset = code._tab.Offset(10)  # builtin_code, field 3 of OperatorCode
    raw = code._tab.Get(flatbuffers.number_types.Int32Flags, offset + code._tab.Pos) if offset else 0
    return max(raw, code.DeprecatedBuiltinCode())


def op_counts(model: bytes) -> collections.Counter:
    """How many times each builtin operator appears across the model's subgraphs."""
    import tflite
    from tflite.BuiltinOperator import BuiltinOperator

    names = _enum_names(BuiltinOperator)
    m = tflite.Model.GetRootAsModel(model, 0)
    counts = collections.Counter()
    for s in range(m.SubgraphsLength()):
        graph = m.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            counts[names.get(_builtin_code(m.OperatorCodes(graph.Operators(i).OpcodeIndex())), "CUSTOM")] += 1
    return counts


def xnnpack_fallbacks(model: bytes) -> collections.Counter:
    """{(operator, output dtype): count} of the ops the XNNPACK delegate does not take, which run on
    TFLite's builtin kernels (for int8, mostly reference kernels, several times slower).

    Read from the interpreter itself: with delegate node fusion disabled every op the delegate
    takes becomes its own DELEGATE node with the op's outputs, so an op whose outputs no DELEGATE
    node produces ran on a builtin kernel. Whether XNNPACK takes an int8 op can depend on its
    calibrated scales, so this is a property of the quantized file, not of the op types.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=1, experimental_disable_delegate_node_fusion=True)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    delegated = {int(i) for op in ops if op["op_name"] == "DELEGATE" for i in op["outputs"]}
    out = collections.Counter()
    for op in ops:
        outputs = [int(i) for i in op["outputs"]]
        if op["op_name"] != "DELEGATE" and outputs and not set(outputs) <= delegated:
            out[(op["op_name"], dtypes.get(outputs[0], "?"))] += 1
    return out


@dataclass
class WeightTensor:
    """A constant tensor stored in the model: raw stored values and their quantization."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    values: np.ndarray
    scales: np.ndarray | None = None
    zero_points: np.ndarray | None = None

    axis: int = 0

    def zero_mask(self) -> np.ndarray:
        """Where the stored value means 0.0: the zero point of its channel, or 0 when not quantized."""
        zp = self.zero_points
        if zp is None or zp.size == 0:
            return self.values == 0
        if zp.size == 1:
            return self.values == zp.item()
        shape = [1] * self.values.ndim
        shape[self.axis] = -1
        return self.values == zp.reshape(shape)

    @property
    def zeros(self) -> int:
        return int(self.zero_mask().sum())


_NUMPY = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT8": np.int8, "UINT8": np.uint8,
          "INT16": np.int16, "INT32": np.int32, "INT64": np.int64}


def weight_tensors(model: bytes, min_elements: int = 2) -> list[WeightTensor]:
    """Every constant tensor with at least ``min_elements`` values (weights, tables, folded constants)."""
    import tflite
    from tflite.TensorType import TensorType

    type_names = _enum_names(TensorType)
    m = tflite.Model.GetRootAsModel(model, 0)
    out = []
    seen = set()
    for s in range(m.SubgraphsLength()):
        graph = m.Subgraphs(s)
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            if t.Buffer() in seen or t.Buffer() == 0:
                continue
            buffer = m.Buffers(t.Buffer())
            if buffer.DataLength() > 0:
                raw = buffer.DataAsNumpy().tobytes()
            elif buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
                raw = bytes(model[buffer.Offset():buffer.Offset() + buffer.Size()])
            else:
                continue
            dtype = type_names.get(t.Type(), str(t.Type()))
            if dtype not in _NUMPY:
                continue
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            values = np.frombuffer(raw, dtype=_NUMPY[dtype])
            if values.size < min_elements or values.size != int(np.prod(shape)):
                continue
            seen.add(t.Buffer())
            q = t.Quantization()
            scales = zero_points = None
            axis = 0
            if q is not None and q.ScaleLength():
                scales, zero_points, axis = q.ScaleAsNumpy(), np.asarray(q.ZeroPointAsNumpy()), q.QuantizedDimension()
            out.append(WeightTensor(t.Name().decode(), dtype, shape, values.reshape(shape), scales, zero_points, axis))
    return out


# ---------------------------------------------------------------------------------------------
# Running an export (parity checks on the build machine, through the device runtime's backend)


def tflite_logits(export: TFLiteExport, input_ids: np.ndarray, attention_mask: np.ndarray,
                  exit_layers: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Logits {exit layer: (N, C)} of an export on (N, max_length) inputs, ``batch_size`` rows at a time.

    A ``fixed`` export answers its one exit; a ``per-layer`` export answers every exit in
    ``exit_layers`` (default: all) from one pass of the loop.
    """
    from edgekit_device.tflite_backend import TFLiteBackend

    meta = export.metadata
    graphs = {name: TFLiteBackend(export.out_dir / g["file"]) for name, g in meta["graphs"].items()}
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
            out[wanted[0]].append(graphs["model"].run(feeds)["logits"])
            continue
        hidden = graphs["embed"].run({"input_ids": feeds["input_ids"]})["hidden"]
        for layer in range(1, wanted[-1] + 1):
            hidden = graphs["layer"].run({"hidden": hidden, "attention_mask": feeds["attention_mask"]})["hidden"]
            if layer in out:
                head_feeds = {"hidden": hidden}
                if meta.get("pooling") == "mean":
                    head_feeds["attention_mask"] = feeds["attention_mask"]
                out[layer].append(graphs["head"].run(head_feeds)["logits"])
    return {k: np.concatenate(v) for k, v in out.items()}
