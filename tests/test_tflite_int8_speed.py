"""What makes full-int8 TFLite fast: int8 activations only at FULLY_CONNECTED, every int8 op on XNNPACK.

``benchmarks/export_latency.md`` has the measurement: the all-int8 graph (``int8_ops="all"``) ran
its decomposed LayerNorm, softmax, GELU and attention matmuls on TFLite's reference int8 kernels
(1.2x faster than fp32 at full depth); keeping those in float32 makes every int8 op an XNNPACK
one. These tests pin that property on a tiny model (2 layers, hidden 32), one conversion per style.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import OpResolverType

from edgekit.early_exit import EarlyExitClassifier
from edgekit.errors import UserError
from edgekit.export.tflite import export_tflite, op_counts, quantize_tflite, tflite_style, xnnpack_fallbacks
from edgekit.quantize import agreement
from edgekit.student import StudentConfig, build_student
from edgekit_device.tflite_backend import TFLiteBackend

T = 16
# Ops the float32 graph already runs on builtin kernels (the int32 mask and the table lookup).
FLOAT_BUILTINS = {("CAST", "float32"), ("EMBEDDING_LOOKUP", "float32"), ("RESHAPE", "int32")}


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    model = EarlyExitClassifier.from_student(
        build_student(StudentConfig(num_layers=2, num_heads=2, hidden_size=32, embedding_size=16, intermediate_size=64),
                      vocab_size=100, pooler=True, seed=0), num_labels=3).eval()
    with torch.no_grad():  # std 0.2 weights: int8 scales that differ from op to op, as in a trained model
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, (24, T)).astype(np.int32)
    # No padding: the all-int8 graph needs its own -30 mask for padded texts (tflite_style), and
    # one float graph serves both styles here; the padded path is tested in test_export_tflite.py.
    return {"ids": ids, "mask": np.ones_like(ids)}


@pytest.fixture(scope="module")
def models(classifier, data, tmp_path_factory) -> dict[str, bytes]:
    """{"float", "fully-connected", "all"}: one conversion (the slow part), quantized both ways."""
    float_model = export_tflite(classifier, tmp_path_factory.mktemp("fp32"), exit_layer=2,
                                max_length=T).files[0].read_bytes()
    calibration = [{"input_ids": data["ids"][i:i + 1], "attention_mask": data["mask"][i:i + 1]} for i in range(16)]
    return {"float": float_model, **{ops: quantize_tflite(float_model, "full", calibration, int8_ops=ops)
                                     for ops in ("fully-connected", "all")}}


def test_default_full_int8_runs_every_int8_op_on_xnnpack(models):
    fallbacks = xnnpack_fallbacks(models["fully-connected"])
    assert set(fallbacks) <= FLOAT_BUILTINS, fallbacks


def test_all_int8_graph_falls_off_xnnpack(models):
    # The old graph, kept for integer-only accelerators: what the gate above catches.
    fallbacks = xnnpack_fallbacks(models["all"])
    int8 = {op for op, dtype in fallbacks if dtype == "int8"}
    assert {"SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX", "GELU"} <= int8, fallbacks


def _ops_by_output_dtype(model: bytes) -> dict[str, set[str]]:
    """{output dtype: op names} as the interpreter reads the file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    out: dict[str, set[str]] = {}
    for op in interpreter._get_ops_details():
        for i in op["outputs"]:
            out.setdefault(dtypes[int(i)], set()).add(op["op_name"])
    return out


def test_only_fully_connected_ops_are_int8(models):
    by_dtype = _ops_by_output_dtype(models["fully-connected"])
    assert by_dtype["int8"] == {"FULLY_CONNECTED", "QUANTIZE"}, by_dtype
    assert {"SOFTMAX", "GELU", "BATCH_MATMUL", "SQUARED_DIFFERENCE", "RSQRT", "DEQUANTIZE"} <= by_dtype["float32"]
    counts, float_counts = op_counts(models["fully-connected"]), op_counts(models["float"])
    # Every FC is int8 and hands float32 on through its own DEQUANTIZE; the ops of the float graph
    # are all still there (nothing was rewritten, only QUANTIZE / DEQUANTIZE added).
    assert counts["DEQUANTIZE"] == counts["FULLY_CONNECTED"] == float_counts["FULLY_CONNECTED"] == 15
    assert 1 <= counts["QUANTIZE"] <= counts["FULLY_CONNECTED"]
    assert counts - float_counts == {"QUANTIZE": counts["QUANTIZE"], "DEQUANTIZE": 15}
    assert by_dtype != _ops_by_output_dtype(models["all"])  # the old style is all int8


def test_op_counts_reads_quantize_ops_as_themselves(models):
    # ai-edge-quantizer writes QUANTIZE / DEQUANTIZE codes only in the new schema field, which the
    # tflite package's BuiltinCode() ignores below 127 (it read them as ADD).
    counts = op_counts(models["all"])
    assert counts["QUANTIZE"] >= 1 and counts["ADD"] == op_counts(models["float"])["ADD"]


def test_default_full_int8_is_as_accurate_as_all_int8(classifier, models, data, tmp_path):
    with torch.no_grad():
        reference = classifier(torch.from_numpy(data["ids"]).long(), torch.from_numpy(data["mask"]).long(),
                               exit_layer=2).logits[-1].numpy()
    errors = {}
    for ops in ("fully-connected", "all"):
        (tmp_path / f"{ops}.tflite").write_bytes(models[ops])
        graph = TFLiteBackend(tmp_path / f"{ops}.tflite")
        logits = np.concatenate([graph.run({"input_ids": data["ids"][i:i + 1], "attention_mask": data["mask"][i:i + 1]})
                                 ["logits"] for i in range(len(data["ids"]))])
        errors[ops] = agreement(reference, logits)["max_abs_error"]
    scale = float(np.abs(reference).max())
    # measured: 0.043 (fully-connected) and 0.039 (all) on logits of |x| <= 0.94 (std 0.2 weights);
    # on the paper shape at exit 2 the float LayerNorm/softmax halve the error (export_latency.md)
    assert errors["fully-connected"] < 0.06 * scale and errors["fully-connected"] < 1.25 * errors["all"], (errors, scale)


def test_mask_value_follows_int8_ops():
    # Float attention scores take the usual -1e4; int8 ones share one scale and need -30 (graphs.py).
    assert tflite_style("full").mask_value == tflite_style("dynamic").mask_value == -1e4
    assert tflite_style("full", int8_ops="all").mask_value == -30.0


def test_bad_int8_ops(classifier, tmp_path):
    with pytest.raises(UserError, match="int8_ops must be one of fully-connected, all"):
        export_tflite(classifier, tmp_path / "a", max_length=T, int8="full", int8_ops="matmul",
                      calibration_inputs={"input_ids": np.ones((1, T)), "attention_mask": np.ones((1, T))})
    with pytest.raises(UserError, match="int8_ops must be one of"):
        quantize_tflite(b"", "full", [{}], int8_ops="none")
    assert not any(tmp_path.iterdir())
