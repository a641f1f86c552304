"""8-bit ONNX graphs (M6-Rec section 3.5: "8-bit quantization when deploying"), with onnxruntime.

Two schemes:

- ``dynamic`` (default, no data): MatMul weights int8, symmetric per tensor (zero point 0);
  activations quantized to uint8 at run time from their own range (MatMulInteger).
- ``static`` (QDQ, needs calibration texts): the same int8 weights; activation ranges fixed by
  min/max calibration and stored as QuantizeLinear/DequantizeLinear pairs around each MatMul.
  The per-layer ``layer`` graph is calibrated on the hidden states of every depth it serves.

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
import tempfile
from pathlib import Path

import numpy as np

SCHEMES = ("dynamic", "static")
_OPTIONS = {"WeightSymmetric": True, "MatMulConstBOnly": True}


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


class _Feeds:
    """onnxruntime's CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def quantize_onnx(src: Path, dst: Path, scheme: str = "dynamic", calibration: list[dict] | None = None) -> Path:
    """Write the int8 version of the float graph ``src`` to ``dst``: every MatMul weight (each use of a
    shared one included) and every embedding table int8, each stored once."""
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
                             per_channel=False, extra_options=dict(_OPTIONS))
        elif scheme == "static":
            if not calibration:
                raise ValueError("static quantization needs calibration feeds")
            quantize_static(str(src), str(dst), _Feeds(calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul"], per_channel=False, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            extra_options=dict(_OPTIONS))
        else:
            raise ValueError(f"unknown scheme {scheme!r}; use one of {SCHEMES}")
    finally:
        logging.getLogger().setLevel(quiet)
        work.cleanup()
    quantize_gather_tables(dst)
    left = float_matmul_weights(dst)
    if left:
        raise RuntimeError(f"int8 quantization left {len(left)} MatMul(s) on float weights: {left[:3]}")
    return dst
