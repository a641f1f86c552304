"""TFLite export (litert-torch), int8 (ai-edge-quantizer) and the device backend (ai-edge-litert).

Every conversion runs once per module (a few seconds each). The tiny classifier is pruned to 50%
so that the zero checks have zeros to find. Tolerances are stated against its logits, which are
small (|logit| < 0.05: random init), so they are tighter than they look in absolute terms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.early_exit import EarlyExitClassifier
from edgekit.errors import UserError
from edgekit.export.tflite import export_tflite, op_counts, tflite_logits, weight_tensors
from edgekit.prune import MagnitudePruner
from edgekit.quantize import agreement, pruned_masks, zeros_kept
from edgekit.student import StudentConfig, build_student
from edgekit_device import BundleError
from edgekit_device.tflite_backend import TFLiteBackend

T = 16  # static sequence length
N = 48  # test examples
# Folded by the converter into one (T, E) constant with the token-type row: not stored as-is.
FOLDED = ("model.albert.embeddings.position_embeddings.weight", "model.albert.embeddings.token_type_embeddings.weight")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices; a shared 2-core machine makes a second thread a cost
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def classifier():
    model = EarlyExitClassifier.from_student(
        build_student(StudentConfig(num_layers=4, num_heads=2, hidden_size=32, embedding_size=16, intermediate_size=64),
                      vocab_size=100, pooler=True, seed=0), num_labels=3).eval()
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.update_masks(0.5)
    pruner.squash_mask()
    return model


def _inputs(seed: int, n: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 100, (n, T)).astype(np.int32)
    mask = np.ones((n, T), np.int32)
    for i in range(n):
        mask[i, rng.integers(3, T + 1):] = 0
    ids[:, 0] = 2
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture(scope="module")
def data(classifier):
    ids, mask = _inputs(0, N)
    with torch.no_grad():
        reference = classifier(torch.from_numpy(ids).long(), torch.from_numpy(mask).long()).logits.numpy()
    cal_ids, cal_mask = _inputs(1, 32)
    return {"ids": ids, "mask": mask, "reference": reference,
            "calibration": {"input_ids": cal_ids, "attention_mask": cal_mask}}


@pytest.fixture(scope="module")
def exports(classifier, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite")
    specs = {
        "fixed1": dict(layout="fixed", exit_layer=1),
        "fixed3": dict(layout="fixed", exit_layer=3),
        "fixed3-dynamic": dict(layout="fixed", exit_layer=3, int8="dynamic"),
        "fixed3-full": dict(layout="fixed", exit_layer=3, int8="full"),
        "layers": dict(layout="per-layer"),
        "layers-dynamic": dict(layout="per-layer", int8="dynamic"),
        "layers-full": dict(layout="per-layer", int8="full"),
    }
    return {name: export_tflite(classifier, root / name, max_length=T, calibration_inputs=data["calibration"], **spec)
            for name, spec in specs.items()}


def _graph_bytes(export) -> list[bytes]:
    return [(export.out_dir / g["file"]).read_bytes() for g in export.metadata["graphs"].values()]


# ---------------------------------------------------------------------------------------------


def test_fp32_fixed_export_equals_torch(exports, data):
    logits = tflite_logits(exports["fixed3"], data["ids"], data["mask"])
    assert list(logits) == [3]
    np.testing.assert_allclose(logits[3], data["reference"][2], atol=1e-5, rtol=0)


def test_metadata_describes_static_int32_inputs(exports):
    meta = exports["fixed3"].metadata
    assert (meta["layout"], meta["exit_layer"], meta["max_length"], meta["int8"]) == ("fixed", 3, T, None)
    graph = meta["graphs"]["model"]
    assert [(i["name"], i["dtype"], i["shape"]) for i in graph["inputs"]] == \
        [("input_ids", "int32", [1, T]), ("attention_mask", "int32", [1, T])]
    assert [(o["name"], o["shape"]) for o in graph["outputs"]] == [("logits", [1, 3])]
    assert exports["fixed3"].files == [exports["fixed3"].out_dir / "model.tflite"]
    assert graph["bytes"] == exports["fixed3"].files[0].stat().st_size
    layers = exports["layers"].metadata
    assert sorted(layers["graphs"]) == ["embed", "head", "layer"]
    assert layers["exits"] == [1, 2, 3, 4]


def test_fixed_exit_graph_computes_only_k_layers(exports):
    one, three = (op_counts(_graph_bytes(exports[name])[0]) for name in ("fixed1", "fixed3"))
    # A layer: Q, K, V, attention output, FFN in and out = 6 FULLY_CONNECTED, 2 BATCH_MATMUL, 1 SOFTMAX.
    assert three["FULLY_CONNECTED"] - one["FULLY_CONNECTED"] == 2 * 6
    assert (one["BATCH_MATMUL"], three["BATCH_MATMUL"]) == (2, 6)
    assert (one["SOFTMAX"], three["SOFTMAX"]) == (1, 3)


def test_per_layer_graphs_reproduce_every_exit(exports, data):
    logits = tflite_logits(exports["layers"], data["ids"], data["mask"])
    assert sorted(logits) == [1, 2, 3, 4]
    for k, value in logits.items():
        np.testing.assert_allclose(value, data["reference"][k - 1], atol=1e-5, rtol=0)
    layer = op_counts(_graph_bytes(exports["layers"])[1])
    assert (layer["FULLY_CONNECTED"], layer["SOFTMAX"]) == (6, 1)


@pytest.mark.parametrize("name", ["fixed3-dynamic", "layers-dynamic"])
def test_dynamic_int8_agrees_with_torch(exports, data, name):
    for k, value in tflite_logits(exports[name], data["ids"], data["mask"]).items():
        a = agreement(data["reference"][k - 1], value)
        # measured: max |Δ| ~3.5e-4 on logits of |x| < 0.03, centred cosine > 0.999
        assert a["argmax_agreement"] >= 0.95 and a["cosine"] >= 0.995 and a["max_abs_error"] < 2e-3, (k, a)


@pytest.mark.parametrize("name", ["fixed3-full", "layers-full"])
def test_full_int8_agrees_with_torch(exports, data, name):
    for k, value in tflite_logits(exports[name], data["ids"], data["mask"]).items():
        a = agreement(data["reference"][k - 1], value)
        # int8 activations at every FULLY_CONNECTED, LayerNorm/softmax/GELU in float (the default
        # int8_ops); the all-int8 graphs measured argmax 1.0, centred cosine >= 0.994, max |Δ| <= 0.017
        assert a["argmax_agreement"] >= 0.95 and a["cosine"] >= 0.98 and a["max_abs_error"] < 0.03, (k, a)


def test_int8_exports_store_int8_weights_and_are_smaller(exports):
    # Stored constants, not file sizes: at this size the file is mostly tensor names, and full int8
    # adds a named QUANTIZE / DEQUANTIZE tensor around every FULLY_CONNECTED.
    fp32, dynamic, full = (sum(w.values.nbytes for data in _graph_bytes(exports[n]) for w in weight_tensors(data))
                           for n in ("fixed3", "fixed3-dynamic", "fixed3-full"))
    assert dynamic < 0.8 * fp32 and full < 0.8 * fp32
    for name in ("fixed3-dynamic", "fixed3-full"):
        matrices = [w for w in weight_tensors(_graph_bytes(exports[name])[0]) if len(w.shape) == 2 and min(w.shape) > 3]
        assert matrices and all(w.dtype == "INT8" for w in matrices), [(w.name, w.dtype) for w in matrices]
    io = exports["fixed3-full"].metadata["graphs"]["model"]
    # int8 activations only around each FULLY_CONNECTED (test_tflite_int8_speed.py): the logits leave
    # the classifier through a DEQUANTIZE, so the graph's output is float32
    assert io["outputs"][0]["dtype"] == "float32" and io["outputs"][0]["quantization"] is None


@pytest.mark.parametrize("name", ["fixed3", "fixed3-dynamic", "fixed3-full", "layers-dynamic", "layers-full"])
def test_pruned_zeros_stay_zero(classifier, exports, name):
    stored = [(w.name, w.zero_mask()) for data in _graph_bytes(exports[name]) for w in weight_tensors(data)]
    report = zeros_kept(pruned_masks(classifier), stored, ignore=FOLDED)
    assert report.pruned_zeros > 4000
    assert report.all_kept, report.missing()


def test_device_backend_runs_every_graph(exports, data):
    fixed = TFLiteBackend(exports["fixed3-full"].files[0])
    assert fixed.inputs["input_ids"] == {"shape": (1, T), "dtype": "int32"}
    assert fixed.outputs["logits"]["dtype"] == "float32"  # dequantized for the caller
    expected = tflite_logits(exports["fixed3-full"], data["ids"][:4], data["mask"][:4])[3]
    got = np.concatenate([fixed.run({"input_ids": data["ids"][i:i + 1], "attention_mask": data["mask"][i:i + 1]})["logits"]
                          for i in range(4)])
    np.testing.assert_array_equal(got, expected)

    graphs = {name: TFLiteBackend(exports["layers-full"].out_dir / f"{name}.tflite") for name in ("embed", "layer", "head")}
    hidden = graphs["embed"].run({"input_ids": data["ids"][:1]})["hidden"]
    assert hidden.dtype == np.float32 and hidden.shape == (1, T, 32)
    for _ in range(2):
        hidden = graphs["layer"].run({"hidden": hidden, "attention_mask": data["mask"][:1]})["hidden"]
    logits = graphs["head"].run({"hidden": hidden})["logits"]
    expected = tflite_logits(exports["layers-full"], data["ids"][:1], data["mask"][:1], exit_layers=[2])[2]
    np.testing.assert_allclose(logits, expected, atol=1e-6)
    with pytest.raises(ValueError, match="static shape"):
        fixed.run({"input_ids": data["ids"][:2], "attention_mask": data["mask"][:2]})


def test_device_backend_errors(tmp_path):
    with pytest.raises(BundleError, match="no 'missing.tflite'"):
        TFLiteBackend(tmp_path / "missing.tflite")
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(BundleError, match="cannot load 'bad.tflite'"):
        TFLiteBackend(tmp_path / "bad.tflite")


def test_user_errors(classifier, tmp_path):
    with pytest.raises(UserError, match="calibration_inputs"):
        export_tflite(classifier, tmp_path / "a", max_length=T, int8="full")
    with pytest.raises(UserError, match="exit_layer"):
        export_tflite(classifier, tmp_path / "b", max_length=T, exit_layer=5)
    with pytest.raises(UserError, match="layout"):
        export_tflite(classifier, tmp_path / "c", max_length=T, layout="layers")
    with pytest.raises(UserError, match="int8"):
        export_tflite(classifier, tmp_path / "d", max_length=T, int8="int4")
    with pytest.raises(UserError, match="max_length"):
        export_tflite(classifier, tmp_path / "e", max_length=100_000)
    with pytest.raises(UserError, match="shape"):
        export_tflite(classifier, tmp_path / "f", max_length=T, int8="full",
                      calibration_inputs={"input_ids": np.ones((4, T + 1)), "attention_mask": np.ones((4, T + 1))})
    assert not any(tmp_path.iterdir())
