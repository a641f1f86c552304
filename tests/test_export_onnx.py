"""ONNX export (``edgekit.export.export_model``, ``edgekit export``): bundles that reproduce PyTorch.

One tiny classifier (4 shared layers, hidden 32, 50% pruned, bert-base-chinese WordPiece) is
exported once per layout and precision for the module; every check reads those bundles.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import edgekit_device
from conftest import clue_sentences
from edgekit.errors import UserError
from edgekit.export import export_model, packed_path
from edgekit.quantize import pruned_masks, zeros_kept
from edgekit.student import StudentConfig, build_student, count_parameters

DEPTH = 4


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def texts():
    return clue_sentences(200)


@pytest.fixture(scope="module")
def bundles(tiny_classifier, texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    specs = {
        "layers": {},
        "fixed1": {"exit_layer": 1},
        "fixed3": {"exit_layer": 3},
        "layers-int8": {"int8": True, "pack": True},
        "fixed3-int8": {"int8": True, "exit_layer": 3},
        # static int8 of a random model: measured agreement 0.98-1.0 per exit on these texts
        "fixed2-static": {"int8": True, "exit_layer": 2, "calibration_texts": texts[100:200], "min_agreement": 0.95},
    }
    return {name: export_model(tiny_classifier, root / name, sample_texts=texts[:64], **kw) for name, kw in specs.items()}


def reference(classifier, ids, mask, exit_layer=None):
    with torch.no_grad():
        return classifier(torch.from_numpy(ids), torch.from_numpy(mask), exit_layer=exit_layer).logits.numpy()


def manifest(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def op_count(path, op: str) -> int:
    return sum(n.op_type == op for n in onnx.load(str(path)).graph.node)


# ---------------------------------------------------------------------------------------------


def test_fp32_per_layer_bundle_gives_every_exit_of_pytorch(bundles, classifier, texts):
    predictor = edgekit_device.Predictor(bundles["layers"])
    ids, mask = predictor.encode(texts[64:128])
    got = predictor.exit_logits(ids, mask)
    expected = reference(classifier, ids, mask)
    assert got.shape == expected.shape == (DEPTH, 64, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
    assert len({tuple(np.bincount(e.argmax(-1), minlength=3)) for e in expected}) > 1  # exits disagree: a real test
    for k in range(1, DEPTH + 1):
        np.testing.assert_allclose(predictor.logits(ids, mask, exit_layer=k), expected[k - 1], atol=1e-5, rtol=1e-4)
    parity = manifest(bundles["layers"])["parity"]
    assert parity["source"] == "text" and parity["samples"] == 64 and parity["agreement"] == 1.0
    assert [e["exit"] for e in parity["per_exit"]] == [1, 2, 3, 4] and parity["max_abs_diff"] < 1e-4


def test_fixed_bundle_computes_only_k_layers(bundles, classifier, texts):
    one, three = bundles["fixed1"] / "model.onnx", bundles["fixed3"] / "model.onnx"
    # One layer: Q, K, V, attention output, FFN in and out, QK^T and attention x V = 8 MatMuls.
    assert op_count(three, "MatMul") - op_count(one, "MatMul") == 2 * 8
    assert op_count(one, "Softmax") == 1 and op_count(three, "Softmax") == 3
    # The shared layer's weights are stored once whatever k is: only graph nodes are added.
    weights = [sorted((v.shape, v.nbytes) for v in initializers(path).values()) for path in (one, three)]
    assert weights[0] == weights[1]
    assert three.stat().st_size - one.stat().st_size < 0.1 * one.stat().st_size
    for name, k in (("fixed1", 1), ("fixed3", 3)):
        m = manifest(bundles[name])
        assert (m["layout"], m["exits"]["layers"], list(m["graphs"])) == ("fixed", [k], ["model"])
        predictor = edgekit_device.Predictor(bundles[name])
        ids, mask = predictor.encode(texts[:16])
        np.testing.assert_allclose(predictor.logits(ids, mask), reference(classifier, ids, mask, k)[-1], atol=1e-5)
        with pytest.raises(edgekit_device.BundleError, match="fixed exit"):
            predictor.logits(ids, mask, exit_layer=k + 1)


def test_int8_bundles_agree_with_pytorch(bundles, classifier, texts):
    for name, threshold in (("layers-int8", 0.99), ("fixed3-int8", 0.99), ("fixed2-static", 0.95)):
        m = manifest(bundles[name])
        assert m["precision"] == "int8"
        assert all(e["agreement"] >= threshold for e in m["parity"]["per_exit"]), m["parity"]
        predictor = edgekit_device.Predictor(bundles[name])
        ids, mask = predictor.encode(texts[128:192])  # texts the export did not check
        expected = reference(classifier, ids, mask, max(predictor.exits))[[k - 1 for k in predictor.exits]]
        got = predictor.exit_logits(ids, mask)
        agreement = (got.argmax(-1) == expected.argmax(-1)).mean(axis=1)
        assert agreement.min() >= 0.9, agreement
        assert np.abs(got - expected).max() < 0.25 * np.abs(expected).max()
    assert manifest(bundles["layers-int8"])["quantization"]["scheme"] == "dynamic"
    assert manifest(bundles["fixed2-static"])["quantization"]["scheme"] == "static-qdq"
    assert op_count(bundles["fixed2-static"] / "model.onnx", "QuantizeLinear") > 0


def weight_matmuls(path) -> dict[str, int]:
    """MatMul-like nodes by the kind of weight they multiply: a float initializer (directly or through
    Identity), an int8 initializer (MatMulInteger, or MatMul after DequantizeLinear of one), or none."""
    graph = onnx.load(str(path)).graph
    dtypes = {i.name: i.data_type for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def kind(name):
        node = producer.get(name)
        while node is not None and node.op_type == "Identity":
            name, node = node.input[0], producer.get(node.input[0])
        if node is not None and node.op_type == "DequantizeLinear":
            name = node.input[0]
        return {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.INT8: "int8"}.get(dtypes.get(name))

    counts = {"fp32": 0, "int8": 0, None: 0}
    for n in graph.node:
        if n.op_type in ("MatMul", "MatMulInteger"):
            kinds = {kind(i) for i in n.input[:2]} - {None}
            counts[kinds.pop() if len(kinds) == 1 else None] += 1
    return counts


def test_int8_fixed_graph_quantizes_every_use_of_the_shared_weights(bundles, classifier, texts):
    # k = 3 layers of 6 weight MatMuls each, plus the embedding projection, pooler and classifier; the
    # exporter refers to the shared weights of layers 2..k through Identity nodes, which onnxruntime's
    # quantizer does not look through (it used to leave 2 * 6 MatMuls and their fp32 weights behind).
    fp32, dynamic = bundles["fixed3"] / "model.onnx", bundles["fixed3-int8"] / "model.onnx"
    assert weight_matmuls(fp32) == {"fp32": 3 * 6 + 3, "int8": 0, None: 3 * 2}
    assert weight_matmuls(dynamic) == {"fp32": 0, "int8": 3 * 6 + 3, None: 3 * 2}
    assert op_count(dynamic, "MatMulInteger") == 3 * 6 + 3 and op_count(dynamic, "MatMul") == 3 * 2
    # static QDQ: every weight MatMul reads DequantizeLinear of the int8 weight (not a re-quantized copy)
    assert weight_matmuls(bundles["fixed2-static"] / "model.onnx") == {"fp32": 0, "int8": 2 * 6 + 3, None: 2 * 2}
    # each weight is stored once, as int8: one int8 matrix per fp32 matrix, no float matrix left
    floats = {k: v for k, v in initializers(fp32).items() if v.ndim == 2}
    stored = initializers(dynamic)
    int8 = {k: v for k, v in stored.items() if v.dtype == np.int8 and v.ndim == 2}
    assert sorted(v.shape for v in int8.values()) == sorted(v.shape for v in floats.values())
    assert not [k for k, v in stored.items() if v.dtype == np.float32 and v.ndim == 2]
    assert sum(v.nbytes for v in stored.values()) < 0.3 * sum(v.nbytes for v in floats.values())
    assert dynamic.stat().st_size < 0.4 * fp32.stat().st_size


def test_int8_weights_are_int8_and_pruned_zeros_stay_zero(bundles, classifier):
    masks = pruned_masks(classifier)
    for name in ("layers-int8", "fixed3-int8", "fixed2-static"):
        stored, float_matrices = [], []
        for path in sorted(bundles[name].glob("*.onnx")):
            for key, value in initializers(path).items():
                if value.ndim == 2 and value.dtype == np.int8:
                    stored += [(key, value == 0), (key + ".T", (value == 0).T)]
                elif value.ndim == 2 and min(value.shape) > 1:
                    float_matrices.append(key)
        assert not float_matrices, float_matrices  # every weight matrix and embedding table is int8
        # token type 0 is a single row (a 1-D constant) in the graph; every other pruned tensor is checked
        report = zeros_kept(masks, stored, ignore=["model.albert.embeddings.token_type_embeddings.weight"])
        assert report.pruned_zeros > 100_000 and report.all_kept, report.missing()


def test_manifest_describes_the_bundle(bundles, classifier):
    m = manifest(bundles["layers-int8"])
    edgekit_device.validate_manifest(m)
    assert (m["format_version"], m["format"], m["layout"]) == (1, "onnx", "per-layer")
    assert m["exits"]["layers"] == [1, 2, 3, 4] and m["exits"]["dynamic"] == ["patience", "entropy"]
    layer = m["graphs"]["layer"]
    assert [(t["name"], t["dtype"], t["axes"]) for t in layer["inputs"]] == [
        ("hidden", "float32", ["batch", "sequence", "hidden"]), ("attention_mask", "int64", ["batch", "sequence"])]
    assert layer["inputs"][0]["shape"] == [None, None, 32] and m["graphs"]["head"]["outputs"][0]["shape"] == [None, 3]
    assert set(m["files"]) == {"embed.onnx", "layer.onnx", "head.onnx", "device_tokenizer.json", "labels.json"}
    for name, entry in m["files"].items():
        assert entry["bytes"] == (bundles["layers-int8"] / name).stat().st_size and len(entry["sha256"]) == 64
    assert m["sizes"]["dense_bytes"] == sum(f["bytes"] for f in m["files"].values()) > m["sizes"]["gzip_bytes"]
    parameters, nonzero = count_parameters(classifier)
    assert (m["model"]["parameters"], m["model"]["nonzero_parameters"]) == (parameters, nonzero)
    assert m["max_length"] == 64 and m["tokenizer"]["type"] == "wordpiece"
    assert json.loads((bundles["layers-int8"] / "labels.json").read_text()) == ["negative", "neutral", "positive"]
    assert m["source"]["checkpoint"].endswith("clf") and set(m["source"]["sha256"]) == {"config.json", "model.safetensors"}


def test_pack_is_small_and_unpacks_bit_exactly(bundles, tmp_path):
    bundle = bundles["layers-int8"]
    pack = packed_path(bundle)
    assert pack.name == "layers-int8.edgepack" and pack.is_file()
    assert pack.stat().st_size < manifest(bundle)["sizes"]["gzip_bytes"]
    restored = edgekit_device.unpack(pack, tmp_path / "restored")
    for name in manifest(bundle)["files"] | {"manifest.json": None}:
        assert (restored / name).read_bytes() == (bundle / name).read_bytes(), name
    edgekit_device.load_bundle(restored)
    report = edgekit_device.pack(bundles["fixed3"], tmp_path / "fixed3.edgepack", codec="zlib")
    assert report["files"]["model.onnx"]["parts"].keys() >= {"skeleton", "masks", "values4"}
    restored = edgekit_device.unpack(tmp_path / "fixed3.edgepack", tmp_path / "fixed3")
    assert (restored / "model.onnx").read_bytes() == (bundles["fixed3"] / "model.onnx").read_bytes()


# A failing parity check (damaged graphs, the simulated noise of issue 10): tests/test_parity_gate.py.


def test_bad_input_is_one_clear_sentence(tiny_classifier, tmp_path):
    (tmp_path / "empty").mkdir()
    student = tmp_path / "student"
    build_student(StudentConfig(num_layers=2, num_heads=2, hidden_size=16, embedding_size=8, intermediate_size=32),
                  vocab_size=50).save_pretrained(student)
    cases = [
        (dict(model_dir=tmp_path / "empty"), r"is not a Hugging Face checkpoint directory \(it has no config.json\)"),
        (dict(model_dir=tmp_path / "missing"), r"does not exist"),
        (dict(model_dir=student), r"holds a AlbertModel checkpoint, not an ALBERT classifier"),
        (dict(exit_layer=5), r"exit layer 5 is outside the model's layers 1\.\.4"),
        (dict(exit_layer=0), r"exit layer 0 is outside the model's layers 1\.\.4"),
        (dict(max_length=65), r"max_length 65 is beyond the model's 64 position embeddings"),
        (dict(int8="static"), r"static int8 needs calibration texts"),
        (dict(format="coreml"), r"format must be one of onnx, tflite"),
    ]
    for kwargs, pattern in cases:
        args = {"model_dir": tiny_classifier, **kwargs}
        with pytest.raises(UserError, match=pattern) as info:
            export_model(args.pop("model_dir"), tmp_path / "out", **args)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def run_cli(capsys, *args):
    from edgekit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_export_and_errors(tiny_classifier, tmp_path, capsys):
    out = tmp_path / "bundle"
    code, stdout, _ = run_cli(capsys, "export", tiny_classifier, "--out", out, "--exit-layer", "2", "--int8", "--pack")
    assert code == 0 and "onnx int8 fixed (exit 2)" in stdout and "packed:" in stdout, stdout
    assert (out / "model.onnx").is_file() and packed_path(out).is_file()
    (tmp_path / "empty").mkdir()
    for args, pattern in [
        (("export", tmp_path / "empty", "--out", tmp_path / "x"), "has no config.json"),
        (("export", tiny_classifier, "--out", tmp_path / "x", "--exit-layer", "9"), "outside the model's layers 1..4"),
        (("export", tiny_classifier, "--out", tmp_path / "x", "--max-length", "1000"), "beyond the model's 64 position"),
    ]:
        code, _, stderr = run_cli(capsys, *args)
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and pattern in lines[0] and "Traceback" not in stderr, stderr
    assert not (tmp_path / "x").exists()
