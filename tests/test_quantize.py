"""PyTorch int8 through Intel Neural Compressor 3.10, and the quantization checks.

The tiny classifier (pruned to 50%) gets a 100-piece tokenizer built from real CLUE text, so the
stage runs end to end on a real checkpoint directory.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from conftest import clue_sentences
from edgekit.cli import main
from edgekit.early_exit import EarlyExitClassifier
from edgekit.errors import UserError
from edgekit.prune import MagnitudePruner
from edgekit.quantize import agreement, load_quantized, quantize_pytorch, zeros_kept
from edgekit.export.tflite import quantize_tflite
from edgekit.student import StudentConfig, build_student

MAX_LENGTH = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matrices: a second thread only adds synchronisation, and on a shared 2-core machine
    # waiting for a busy core costs more than the whole model.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def texts():
    return clue_sentences(160)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, texts):
    from transformers import BertTokenizer

    path = tmp_path_factory.mktemp("inc") / "tiny"
    path.mkdir()
    chars = collections.Counter(c for t in texts for c in t)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [c for c, _ in chars.most_common(95)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(path)
    model = EarlyExitClassifier.from_student(
        build_student(StudentConfig(num_layers=4, num_heads=2, hidden_size=32, embedding_size=16, intermediate_size=64),
                      vocab_size=100, pooler=True, seed=0), num_labels=3)
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.update_masks(0.5)
    pruner.squash_mask()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dynamic(model_dir, texts, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "dynamic"
    return out, quantize_pytorch(model_dir, out, approach="dynamic", eval_texts=texts[:64], max_length=MAX_LENGTH)


def test_inc_dynamic_agrees_with_fp32_and_keeps_zeros(dynamic):
    out, report = dynamic
    a = report["agreement"]
    # measured: argmax 1.0, max |Δ| 3.5e-4 on logits of |x| < 0.03, centred cosine 0.99997
    assert a["examples"] == 64 and a["argmax_agreement"] >= 0.95 and a["cosine"] >= 0.999
    assert a["max_abs_error"] < 2e-3
    assert report["zeros"]["all_kept"] and report["zeros"]["pruned_linear_zeros"] > 2000
    assert {"quantized_model.pt2", "quantize.json", "qconfig.json", "edgekit.json", "config.json", "tokenizer_config.json"} \
        <= {p.name for p in out.iterdir()}


def test_saved_int8_model_loads_and_matches(dynamic, model_dir, texts):
    from transformers import AutoTokenizer

    out, _ = dynamic
    module = load_quantized(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    enc = tokenizer(texts[:1], padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    reference = EarlyExitClassifier.from_pretrained(model_dir).eval()
    with torch.no_grad():
        got = module(enc["input_ids"], enc["attention_mask"]).numpy()
        want = reference(enc["input_ids"], enc["attention_mask"]).logits[-1].numpy()
    assert got.shape == (1, 3)
    np.testing.assert_allclose(got, want, atol=2e-3)


def test_inc_static_with_calibration(model_dir, texts, tmp_path):
    report = quantize_pytorch(model_dir, tmp_path / "static", approach="static", calibration_texts=texts[64:96],
                              eval_texts=texts[:64], exit_layer=2, max_length=MAX_LENGTH)
    a = report["agreement"]
    assert report["exit_layer"] == 2
    assert a["argmax_agreement"] >= 0.95 and a["cosine"] >= 0.999, a
    assert report["zeros"]["all_kept"]


def test_inc_autotune_against_an_eval_function(model_dir, texts, tmp_path):
    calls = []

    def eval_fn(module):
        calls.append(module)
        return 1.0

    report = quantize_pytorch(model_dir, tmp_path / "tuned", approach="static", calibration_texts=texts[64:80],
                              eval_fn=eval_fn, eval_texts=texts[:16], max_length=MAX_LENGTH, max_trials=2)
    assert report["autotune"] and len(calls) == 2  # the fp32 baseline, then one trial within tolerance
    assert report["qconfig"]["static_quant"]["act_sym"] is False  # the first configuration of the set


def test_cli_quantize(model_dir, tmp_path, capsys):
    corpus = tmp_path / "eval.jsonl"
    corpus.write_text("".join(f'{{"text": "{t}", "label": {i % 3}}}\n' for i, t in enumerate(clue_sentences(16))),
                      encoding="utf-8")
    main(["quantize", str(model_dir), "--out", str(tmp_path / "q"), "--eval", str(corpus), "--label-field", "label",
          "--max-length", str(MAX_LENGTH)])
    out = capsys.readouterr().out
    assert "int8 (dynamic) agrees with fp32" in out and "accuracy" in out and "pruned zeros kept: True" in out


def test_user_errors(model_dir, tmp_path):
    with pytest.raises(UserError, match="calibration_texts"):
        quantize_pytorch(model_dir, tmp_path / "x", approach="static")
    with pytest.raises(UserError, match="approach"):
        quantize_pytorch(model_dir, tmp_path / "x", approach="qat")
    with pytest.raises(UserError, match="config.json"):
        quantize_pytorch(tmp_path, tmp_path / "x")
    with pytest.raises(UserError, match="calibration"):
        quantize_tflite(b"", "full")
    with pytest.raises(UserError, match="int8"):
        quantize_tflite(b"", "int4")
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(tmp_path / "missing"), "--out", str(tmp_path / "y")])
    assert e.value.code == 2


def test_agreement_by_hand():
    reference = np.array([[1.0, 0.0], [0.0, 2.0]])
    logits = np.array([[1.5, 0.5], [1.0, 0.0]])
    a = agreement(reference, logits, labels=np.array([0, 1]))
    # centred: reference [.5,-.5],[-1,1]; logits [.5,-.5],[.5,-.5] -> cosine (.5 - 1) / (sqrt(2.5) * 1)
    assert a["argmax_agreement"] == 0.5 and a["max_abs_error"] == 2.0 and a["mean_abs_error"] == 1.0
    assert a["cosine"] == pytest.approx(-0.5 / np.sqrt(2.5))
    assert (a["accuracy_reference"], a["accuracy"]) == (1.0, 0.5)


def test_zeros_kept_by_position():
    reference = {"w": np.array([[True, False], [False, True]])}
    assert zeros_kept(reference, [("a", np.array([[True, True], [False, True]]))]).all_kept
    report = zeros_kept(reference, [("a", np.array([[True, False], [False, False]])), ("b", np.ones((3, 2), bool))])
    assert not report.all_kept and report.missing() == ["w"] and report.pruned_zeros == 2
