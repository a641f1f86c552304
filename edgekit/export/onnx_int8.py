"""8-bit ONNX graphs (M6-Rec section 3.5: "8-bit quantization when deploying"), with onnxruntime.

Two schemes:

- ``dynamic`` (default, no data): MatMul weights int8, symmetric per tensor (zero point 0);
  activations quantized to uint8 at run time from their own range (MatMulInteger).
- ``static`` (QDQ, needs calibration texts): the same int8 weights; activation ranges fixed by
  min/max calibration and stored as QuantizeLinear/DequantizeLinear pairs around each MatMul.
  The per-layer ``layer`` graph is calibrated on the hidden states of every depth it serves.

Either way the embedding tables (Gather) become int8, symmetric per tensor, with a
DequantizeLinear after the lookup (onnxruntime's own Gather quantization is asymmetric uint8,
which would store pruned zeros as the zero point). Symmetric quantization maps 0.0 to the integer
0, so every weight pruning zeroed is still 0 in the file: the packer's bit masks stay as sparse
as the pruned model.
"""

from __future__ import annotations

import logging
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


class _Feeds:
    """onnxruntime's CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def quantize_onnx(src: Path, dst: Path, scheme: str = "dynamic", calibration: list[dict] | None = None) -> Path:
    """Write the int8 version of the float graph ``src`` to ``dst``."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "please run pre-processing" advice on every call
    try:
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
    quantize_gather_tables(dst)
    return dst
