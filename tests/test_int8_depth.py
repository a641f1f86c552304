"""int8 over many applications of one shared layer: per-column weight scales, float modules, and
Neural Compressor's accuracy-aware choice of them (``benchmarks/int8_depth.py`` measures the real models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import clue_sentences

DEPTH = 24
LAYER = "/albert_layer_groups.0/albert_layers.0/"


def deep_classifier():
    """A 24-application shared layer, hidden 32, whose output columns differ in range by up to 30x
    (as trained and pruned columns do; iid random columns would all share one range)."""
    from edgekit.early_exit import EarlyExitClassifier
    from edgekit.student import StudentConfig, build_student

    cfg = StudentConfig(num_layers=DEPTH, num_heads=2, hidden_size=32, embedding_size=16, intermediate_size=64,
                        max_position_embeddings=32)
    clf = EarlyExitClassifier.from_student(build_student(cfg, vocab_size=300, pooler=True, seed=0), num_labels=3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in clf.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2, generator=g)
                if "albert_layers" in name:
                    p.mul_(torch.logspace(-1.5, 0, p.shape[0])[torch.randperm(p.shape[0], generator=g)][:, None])
    return clf.float().eval()


def run_layers(paths: dict, ids: np.ndarray) -> np.ndarray:
    """The per-layer runtime loop: logits after each application, (K, B, C)."""
    import onnxruntime as ort

    s = {n: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for n, p in paths.items()}
    mask = np.ones_like(ids)
    h = s["embed"].run(None, {"input_ids": ids})[0]
    out = []
    for _ in range(DEPTH):
        h = s["layer"].run(None, {"hidden": h, "attention_mask": mask})[0]
        out.append(s["head"].run(None, {"hidden": h})[0])
    return np.stack(out)


@pytest.fixture(scope="module")
def deep(tmp_path_factory, single_torch_thread):
    from edgekit.export.graphs import export_copy
    from edgekit.export.onnx import export_onnx, graph_specs

    work = tmp_path_factory.mktemp("deep")
    specs = graph_specs(export_copy(deep_classifier()), "per-layer", DEPTH, 32)
    fp32 = {n: export_onnx(m, a, work / f"{n}.onnx", e) for n, (m, a, e) in specs.items()}
    ids = np.random.default_rng(0).integers(5, 300, size=(32, 16)).astype(np.int64)
    return work, fp32, ids, run_layers(fp32, ids)


def test_per_column_weight_scales_halve_the_error_of_24_applications(deep):
    from edgekit.export.onnx import quantize_onnx

    work, fp32, ids, reference = deep
    error = {}
    for per_channel in (False, True):
        paths = {n: quantize_onnx(p, work / f"{n}-{per_channel}.onnx", "dynamic", per_channel=per_channel)
                 for n, p in fp32.items()}
        error[per_channel] = np.abs(run_layers(paths, ids) - reference).max(-1).mean(-1)  # mean over texts, per exit
    # measured: per tensor 0.052 mean over exits (0.031 at exit 1, 0.072 at exit 12); per column 0.025 (0.016, 0.025)
    assert error[True].mean() < 0.7 * error[False].mean()
    assert error[True][DEPTH // 2:].mean() < 0.7 * error[False][DEPTH // 2:].mean()  # the deep exits too


def test_the_default_is_per_column(deep):
    import onnx
    from onnx import numpy_helper

    from edgekit.export.onnx import quantize_onnx

    work, fp32, _, _ = deep
    path = quantize_onnx(fp32["layer"], work / "default-layer.onnx")
    graph = onnx.load(str(path)).graph
    scales = {i.name: numpy_helper.to_array(i).shape for i in graph.initializer if i.name.endswith("_scale")}
    # the layer's weights are (32, 32), (32, 64) and (64, 32): one scale per output column
    assert sorted(shape for shape in scales.values() if shape) == [(32,)] * 5 + [(64,)], scales


def test_float_modules_stay_float_and_everything_else_is_int8(deep):
    from edgekit.export.onnx import float_matmul_weights, matmul_nodes_of, quantize_onnx

    work, fp32, _, _ = deep
    keep = matmul_nodes_of(fp32["layer"], ["attention/query", "ffn_output", "pooler"])  # no pooler in this graph
    assert keep == (LAYER + "attention/query/MatMul", LAYER + "ffn_output/MatMul")
    path = quantize_onnx(fp32["layer"], work / "kept-layer.onnx", keep_float=keep)
    assert sorted(float_matmul_weights(path)) == sorted(keep)
    assert matmul_nodes_of(fp32["head"], ["pooler", "classifier"]) == ("/pooler/MatMul", "/classifier/MatMul")
    assert matmul_nodes_of(fp32["embed"], ["project"]) == ("/project/MatMul",)


def test_worst_exit_agreement_by_hand():
    from edgekit.quantize.inc import worst_exit_agreement

    reference = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]],
                              [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    got = reference.clone()
    got[1, 0] = torch.tensor([0.0, 1.0])  # exit 2 flips one of four: 3/4; exit 1 agrees on all
    assert worst_exit_agreement(reference, got) == 0.75


@pytest.mark.slow
def test_accuracy_aware_export_keeps_in_float_what_inc_picked(tiny_classifier, tmp_path, monkeypatch):
    import edgekit.quantize.inc as inc_module
    from edgekit.export import export_model
    from edgekit.export.onnx import float_matmul_weights, matmul_nodes_of

    picked = []
    real = inc_module.float_modules_by_inc

    def spy(*args, **kwargs):
        picked.append(real(*args, **kwargs))
        return picked[-1]

    monkeypatch.setattr(inc_module, "float_modules_by_inc", spy)
    # 1.0: every exit must agree on every text; on 64 texts INC walked the ladder to classifier, pooler,
    # attention/dense, attention/query
    out = export_model(tiny_classifier, tmp_path / "b", int8="dynamic", sample_texts=clue_sentences(32),
                       accuracy_aware=1.0, max_length=24, min_agreement=0.9)  # the gate is not what this checks
    assert picked and picked[0] == list(inc_module.FALLBACK_LADDER[:len(picked[0])])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["float_modules"] == picked[0]
    for graph in ("embed", "layer", "head"):
        path = Path(out, f"{graph}.onnx")
        assert sorted(float_matmul_weights(path)) == sorted(matmul_nodes_of(path, picked[0])), graph


def test_accuracy_aware_refuses_what_it_cannot_do(tiny_classifier, tmp_path):
    from edgekit.errors import UserError
    from edgekit.export import export_model

    with pytest.raises(UserError, match="applies to dynamic int8 ONNX bundles"):
        export_model(tiny_classifier, tmp_path / "b", format="tflite", int8="dynamic",
                     sample_texts=clue_sentences(8), accuracy_aware=True)
    with pytest.raises(UserError, match="between 0 and 1"):
        export_model(tiny_classifier, tmp_path / "c", int8="dynamic", sample_texts=clue_sentences(8),
                     accuracy_aware=1.5)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
