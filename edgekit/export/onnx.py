"""The ONNX backend of export: write the graphs of ``edgekit.export.graphs`` as ONNX, and quantize them.

``write_onnx`` is what ``export_model`` calls; ``export_onnx`` and ``quantize_onnx`` are its two
steps, public for benchmarks. Graphs are written with the TorchScript exporter: seconds per graph
where torch.export takes a minute for 24 unrolled layers, and its output is what onnxruntime's
quantizer expects. Batch and sequence axes stay dynamic. The padding mask uses the float32
minimum, and the head keeps a length-1 sequence axis (``ONNX_STYLE``).

8-bit graphs (M6-Rec section 3.5: "8-bit quantization when deploying"), with onnxruntime.

Two schemes:

- ``dynamic`` (default, no data): MatMul weights int8, symmetric, one scale per output column
  (zero point 0); activations quantized to uint8 at run time from their own range (MatMulInteger).
- ``static`` (QDQ, needs calibration texts): the same int8 weights; activation ranges fixed by
  min/max calibration and stored as QuantizeLinear/DequantizeLinear pairs around each MatMul.
  The per-layer ``layer`` graph is calibrated on the hidden states of every depth it serves.

Why dynamic is the default for a shared layer (``benchmarks/int8_depth.md``): the per-layer bundle
runs one ``layer`` graph for all 24 applications, so a static scale is a constant that must cover
the union of 24 different ranges (on the distilled paper shape the query input spans |x| <= 1.0 at
depth 1, where it is the embedding projection, and up to 5.1 at depths 2..24). Depth 1 is then
quantized with a step five times coarser than its own range needs: static int8 had 4-5x the
hidden-state error of dynamic at exits 1..5 (6.3% vs 1.3% at exit 1), and its worst exit agreed
with float on 88% of texts. Per-application static scales would need the depth as a graph input
(a scale table) or 24 graphs; dynamic quantization
takes each application's range at run time, which is the same thing for free. What remains is
weight rounding, and per-column weight scales lower it (pruned, trained columns differ in range).
LayerNorm, softmax and GELU stay float32 in both schemes (only MatMul is quantized); ``keep_float``
leaves chosen MatMuls in float as well (``edgekit export --accuracy-aware`` lets Neural Compressor
choose them, ``edgekit.quantize.inc.float_modules_by_inc``).

Shared weights: a ``fixed`` graph computes the one shared ALBERT layer k times, and the PyTorch
exporter refers to the shared weights from layers 2..k through ``Identity`` nodes. onnxruntime
only quantizes a MatMul whose weight is an initializer itself, so those MatMuls stayed fp32 (dynamic:
the fp32 weight copies stayed in the file beside the int8 ones; static: the dequantized int8 weight
was re-quantized as an activation, asymmetric uint8 with a calibrated range). ``fold_initializer_identities``
runs first and points every such MatMul straight at the initializer; onnxruntime then quantizes
every use of a weight with the same int8 initializer, stored once.

Either way the embedding tables (Gather) become int8, symmetric per tensor, with a
DequantizeLinear after the lookup (onnxruntime's own Gather quantization is asymmetric uint8,
which would store pruned zeros as the zero point). Symmetric quantization maps 0.0 to the integer
0, so every weight pruning zeroed is still 0 in the file: the packer's bit masks stay as sparse
as the pruned model.
"""

from __future__ import annotations

import logging
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.albert import pooling_of
from edgekit.export.graphs import GraphStyle, build_graphs, calibration_feeds, graph_inputs

__all__ = ["ONNX_STYLE", "OPSET", "SCHEMES", "export_onnx", "graph_entries", "graph_specs", "quantize_onnx", "write_onnx"]

OPSET = 17
SCHEMES = ("dynamic", "static")
ONNX_STYLE = GraphStyle(mask_value=None, head_keeps_sequence_axis=True)
BATCH, SEQUENCE = "batch", "sequence"
# onnxruntime keeps every intermediate tensor of every calibration feed in memory until the end.
MAX_CALIBRATION_LAYERS = 64

_OPTIONS = {"WeightSymmetric": True, "MatMulConstBOnly": True}


# ---------------------------------------------------------------------------------------------
# int8


def quantize_gather_tables(path: Path) -> int:
    """Rewrite every Gather over a float 2D initializer to gather int8 rows and dequantize them.

    Scale ``max|W| / 127``, values ``round(W / scale)`` in [-127, 127], zero point 0. Returns the
    number of tables quantized."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    done: dict[str, tuple[str, str, str]] = {}
    nodes = []
    for node in graph.node:
        table = node.input[0] if node.op_type == "Gather" and node.input else None
        init = inits.get(table)
        if init is None or init.data_type != TensorProto.FLOAT or len(init.dims) != 2:
            nodes.append(node)
            continue
        if table not in done:
            w = numpy_helper.to_array(init)
            absmax = float(np.abs(w).max())
            scale = np.float32(absmax / 127.0 if absmax > 0 else 1.0)
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            names = (f"{table}_quantized", f"{table}_scale", f"{table}_zero_point")
            graph.initializer.extend([numpy_helper.from_array(q, names[0]),
                                      numpy_helper.from_array(np.array(scale, dtype=np.float32), names[1]),
                                      numpy_helper.from_array(np.array(0, dtype=np.int8), names[2])])
            done[table] = names
        q_name, s_name, z_name = done[table]
        gathered = f"{node.output[0]}_quantized"
        dequantize = helper.make_node("DequantizeLinear", [gathered, s_name, z_name], [node.output[0]],
                                      name=f"{node.name or table}_dequantize")
        node.input[0] = q_name
        node.output[0] = gathered
        nodes.extend([node, dequantize])
    still_used = {name for n in nodes for name in n.input}
    for table in done:
        if table not in still_used:
            graph.initializer.remove(inits[table])
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return len(done)


def fold_initializer_identities(src: Path, dst: Path) -> int:
    """Write ``src`` to ``dst`` with every ``Identity`` of an initializer removed, its consumers reading
    the initializer directly. Returns the number of Identity nodes removed (an Identity whose output is
    a graph output is kept)."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:  # topological order: an Identity of an Identity resolves to the initializer
        source = alias.get(node.input[0], node.input[0]) if node.op_type == "Identity" and node.input else None
        if source in inits and node.output[0] not in outputs:
            alias[node.output[0]] = source
            continue
        kept.append(node)
    if alias:
        for node in kept:
            for i, name in enumerate(node.input):
                if name in alias:
                    node.input[i] = alias[name]
        del graph.node[:]
        graph.node.extend(kept)
        drop = set(alias)
        infos = [v for v in graph.value_info if v.name not in drop]
        del graph.value_info[:]
        graph.value_info.extend(infos)
    onnx.save(model, str(dst))
    return len(alias)


def float_matmul_weights(path: Path) -> list[str]:
    """Names of the MatMul nodes of the graph at ``path`` that multiply by a float initializer, directly
    or through Identity nodes: an int8 graph has none."""
    import onnx
    from onnx import TensorProto

    graph = onnx.load(str(path)).graph
    floats = {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input}

    def root(name):
        while name in alias:
            name = alias[name]
        return name

    return [n.name for n in graph.node if n.op_type == "MatMul" and any(root(i) in floats for i in n.input)]


def matmul_nodes_of(path: Path, modules) -> tuple[str, ...]:
    """Names of the MatMul nodes of the graph at ``path`` computed by the given modules, named by their
    path below the layer or the head (``"attention/query"``, ``"ffn_output"``, ``"pooler"``, ``"project"``):
    the TorchScript exporter names a node ``/.../<module path>/MatMul`` (``_<i>`` for later uses of
    a shared weight), in every graph of every layout."""
    import onnx

    patterns = [re.compile("/" + re.escape(m.strip("/")) + r"/MatMul(_\d+)?$") for m in modules]
    return tuple(n.name for n in onnx.load(str(path)).graph.node
                 if n.op_type == "MatMul" and any(p.search(n.name) for p in patterns))


class _Feeds:
    """onnxruntime's CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def quantize_onnx(src: Path, dst: Path, scheme: str = "dynamic", calibration: list[dict] | None = None,
                  per_channel: bool = True, keep_float: tuple[str, ...] = ()) -> Path:
    """Write the int8 version of the float graph ``src`` to ``dst``: every MatMul weight (each use of a
    shared one included) and every embedding table int8, each stored once.

    ``per_channel``: one weight scale per output column (default) instead of one per matrix.
    ``keep_float``: names of MatMul nodes left in float32 (names absent from the graph are ignored,
    so one list can serve the embed, layer and head graphs)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    src_path = Path(src)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "please run pre-processing" advice on every call
    work = tempfile.TemporaryDirectory(prefix="edgekit-int8-")
    try:
        src = Path(work.name) / "folded.onnx"
        fold_initializer_identities(src_path, src)
        if scheme == "dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             per_channel=per_channel, nodes_to_exclude=list(keep_float), extra_options=dict(_OPTIONS))
        elif scheme == "static":
            if not calibration:
                raise ValueError("static quantization needs calibration feeds")
            quantize_static(str(src), str(dst), _Feeds(calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul"], per_channel=per_channel, nodes_to_exclude=list(keep_float),
                            activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options=dict(_OPTIONS))
        else:
            raise ValueError(f"unknown scheme {scheme!r}; use one of {SCHEMES}")
    finally:
        logging.getLogger().setLevel(quiet)
        work.cleanup()
    quantize_gather_tables(dst)
    left = [name for name in float_matmul_weights(dst) if name not in set(keep_float)]
    if left:
        raise RuntimeError(f"int8 quantization left {len(left)} MatMul(s) on float weights: {left[:3]}")
    return dst



# ---------------------------------------------------------------------------------------------
# Writing a bundle's graphs


def _tensor(name: str, dtype: str, axes: list[str], sizes: dict) -> dict:
    return {"name": name, "dtype": dtype, "shape": [sizes.get(a) for a in axes], "axes": axes}


def graph_entries(config, layout: str) -> dict[str, dict]:
    """{graph name: manifest entry (inputs and outputs: name, dtype, shape, axes)} of a layout.

    The inputs are ``graph_inputs`` of the checkpoint's pooling: a mean-pooled head takes the
    attention mask as well."""
    sizes = {"hidden": config.hidden_size, "labels": config.num_labels}  # batch and sequence stay dynamic
    token, hidden, logits = [BATCH, SEQUENCE], [BATCH, SEQUENCE, "hidden"], [BATCH, "labels"]
    tensors = {"input_ids": ("int64", token), "attention_mask": ("int64", token), "hidden": ("float32", hidden)}
    outputs = {"model": ("logits", logits), "embed": ("hidden", hidden), "layer": ("next_hidden", hidden),
               "head": ("logits", logits)}
    inputs = graph_inputs(pooling_of(config))
    names = ("model",) if layout == "fixed" else ("embed", "layer", "head")
    return {name: {"inputs": [_tensor(t, *tensors[t], sizes) for t in inputs[name]],
                   "outputs": [_tensor(outputs[name][0], "float32", outputs[name][1], sizes)]}
            for name in names}


def example_inputs(config, entry: dict) -> tuple[torch.Tensor, ...]:
    """Tracing inputs for a graph: batch 2, length 8 (both axes stay dynamic in the file)."""
    values = {"input_ids": torch.full((2, 8), config.pad_token_id or 0, dtype=torch.long),
              "attention_mask": torch.ones(2, 8, dtype=torch.long),
              "hidden": torch.zeros(2, 8, config.hidden_size)}
    return tuple(values[t["name"]] for t in entry["inputs"])


def graph_specs(model, layout: str, exit_layer: int, max_length: int) -> dict[str, tuple[nn.Module, tuple, dict]]:
    """{graph name: (module, tracing inputs, manifest entry)} of a layout, for ``model`` (an export copy)."""
    config = model.model.config
    graphs = build_graphs(model, layout, exit_layer, max_length, ONNX_STYLE)
    entries = graph_entries(config, layout)
    return {name: (module, example_inputs(config, entries[name]), entries[name]) for name, module in graphs.items()}


def export_onnx(module: nn.Module, args: tuple, path: Path, entry: dict) -> Path:
    """torch.onnx.export with the manifest entry's names and dynamic batch / sequence axes."""
    names_in = [t["name"] for t in entry["inputs"]]
    names_out = [t["name"] for t in entry["outputs"]]
    dynamic = {t["name"]: {i: axis for i, axis in enumerate(t["axes"]) if axis in (BATCH, SEQUENCE)}
               for t in entry["inputs"] + entry["outputs"]}
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter warns that it is legacy, and traces shape-dependent Python conditions in
        # transformers that are constant for these graphs (the parity check runs other shapes
        # through the result).
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=names_in, output_names=names_out,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return path


def write_onnx(model, directory: Path, layout: str, exit_layer: int, max_length: int, scheme: str | None,
               calibration: list[tuple[np.ndarray, np.ndarray]] | None,
               float_modules: tuple[str, ...] = ()) -> tuple[dict, dict | None]:
    """Write the layout's graphs of ``model`` (an export copy) into ``directory``, float32 or int8.

    ``scheme``: None (float32), ``"dynamic"`` or ``"static"`` (needs ``calibration``: (input_ids,
    attention_mask) int64 batches). ``float_modules``: modules whose MatMuls stay float32 (``matmul_nodes_of``).
    Returns (the manifest's ``graphs`` entry, its ``quantization``).
    """
    specs = graph_specs(model, layout, exit_layer, max_length)
    graphs = {name: module for name, (module, _, _) in specs.items()}
    written = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-") as work:
        for name, (module, args, entry) in specs.items():
            target = directory / f"{name}.onnx"
            if scheme is None:
                export_onnx(module, args, target, entry)
            else:
                fp32 = export_onnx(module, args, Path(work) / f"{name}.onnx", entry)
                feeds = None
                if scheme == "static":
                    feeds = calibration_feeds(graphs, name, calibration, model.depth, MAX_CALIBRATION_LAYERS)
                quantize_onnx(fp32, target, scheme, feeds, keep_float=matmul_nodes_of(fp32, float_modules))
            written[name] = {"file": target.name, **entry}
    if scheme is None:
        return written, None
    return written, {
        "scheme": "dynamic" if scheme == "dynamic" else "static-qdq",
        "tool": "onnxruntime.quantization",
        "weights": ("int8, symmetric (zero point 0): MatMul weights one scale per output column, embedding "
                    "tables one scale per table"),
        "float_modules": list(float_modules),
        "activations": ("uint8 per tensor, range computed at run time (MatMulInteger)" if scheme == "dynamic" else
                        "uint8 per tensor, ranges from min/max calibration (QuantizeLinear/DequantizeLinear)"),
    }
