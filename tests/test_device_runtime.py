"""The torch-free device runtime (``export/edgekit_device``): tokenizer, predictor, bundles, packs.

The tokenizer is checked against the Hugging Face tokenizers it replaces on hundreds of real CLUE
sentences, for a WordPiece student (bert-base-chinese) and an e5-trimmed Unigram student; dynamic
exits against ``EarlyExitClassifier.predict_dynamic``; and the package is imported and run in a
process where torch and transformers cannot be imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import edgekit_device
from conftest import DATA, ROOT, VOCAB, clue_sentences
from edgekit.export import export_model, packed_path
from edgekit_device import BundleError, Predictor, Tokenizer, load_bundle

# Edge cases real text has: empty and blank texts, special-token strings, full-width forms,
# accents (precomposed and combining), case, emoji, controls, CRLF, NBSP, very long words.
EDGE_TEXTS = ["", " ", "   ", "[CLS]hi[SEP] <s>hi</s> <unk>", "Héllo WORLD ÅÄÖ! ΟΔΟΣ İstanbul", "\u00a0x\u2028y\u3000z",
              "ｈｅｌｌｏ　世界１２３", "🥰😀👍🏽 emoji", "a" * 120, "tab\there\r\nline\x00\x7f", "Ａ\u0301x e\u0301\u0302",
              "\u0600a ©\u200d© ﬁ ㍿ ｶﾞ", "한국어 텍스트 가나다", "混合 text，标点！？、“引号”"]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def texts():
    return clue_sentences(160)


@pytest.fixture(scope="module")
def bundle(tiny_classifier, texts, tmp_path_factory):
    return export_model(tiny_classifier, tmp_path_factory.mktemp("runtime") / "bundle", sample_texts=texts[:32], pack=True)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def assert_same_ids(hf, device: Tokenizer, texts, max_length=64):
    assert texts
    for text in texts:
        expected = hf(text, truncation=True, max_length=max_length)["input_ids"]
        assert device.encode(text, max_length) == expected, text


def test_wordpiece_device_tokenizer_matches_hf_on_clue(bundle):
    from transformers import BertTokenizer

    hf = BertTokenizer.from_pretrained(VOCAB.parent)
    device = load_bundle(bundle).tokenizer()
    spec = device.spec
    assert spec["type"] == "wordpiece" and spec["template"] == {"prefix": [101], "suffix": [102]}
    lines = (DATA / "clue" / "iflytek" / "dev.json").read_text(encoding="utf-8").split("\n")
    long_texts = [json.loads(line)["sentence"] for line in lines[:100] if line.strip()]  # truncated at 64
    assert_same_ids(hf, device, clue_sentences(500) + long_texts + EDGE_TEXTS)


@pytest.mark.e5
def test_unigram_e5_trimmed_device_tokenizer_matches_hf_on_clue():
    from edgekit.checkpoint import load_tokenizer, resolve_teacher
    from edgekit.export.device_tokenizer import device_tokenizer_spec
    from edgekit.vocab import trim_vocabulary

    corpus = clue_sentences(1500)
    teacher = load_tokenizer(resolve_teacher("e5-small"))
    student = trim_vocabulary(teacher, corpus[:1000]).tokenizer
    spec = json.loads(json.dumps(device_tokenizer_spec(student), ensure_ascii=False))  # as read from the file
    assert spec["type"] == "unigram" and [s["type"] for s in spec["normalizer"]] == ["precompiled", "replace"]
    assert len(spec["model"]["pieces"]) == len(student) < 10_000
    # Sentences outside the trimming corpus reach pieces the student lacks: fused unknowns.
    held_out = corpus[1000:1500]
    assert any(student.unk_token_id in student(t)["input_ids"] for t in held_out + EDGE_TEXTS)
    assert_same_ids(student, Tokenizer(spec), held_out + EDGE_TEXTS, max_length=512)
    assert_same_ids(teacher, Tokenizer(device_tokenizer_spec(teacher)), held_out[:100] + EDGE_TEXTS, max_length=512)


# ---------------------------------------------------------------------------------------------
# Predictor


def test_dynamic_exits_equal_predict_dynamic(bundle, classifier, texts):
    predictor = Predictor(bundle)
    ids, mask = predictor.encode(texts[32:96])
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    entropies = [float(np.median(e)) for e in edgekit_device.runtime.prediction_entropy(predictor.exit_logits(ids, mask))]
    settings = [dict(mode="patience", patience=1), dict(mode="patience", patience=2),
                dict(mode="entropy", entropy_threshold=entropies[0]), dict(mode="entropy", entropy_threshold=entropies[1]),
                dict(mode="patience", patience=1, max_layer=3)]
    varied = False
    for kw in settings:
        pred, layers, logits, evaluations = predictor.dynamic(ids, mask, **kw)
        t_pred, t_layers, t_logits = classifier.predict_dynamic(t_ids, t_mask, **kw)
        np.testing.assert_array_equal(layers, t_layers.numpy(), err_msg=str(kw))
        np.testing.assert_array_equal(pred, t_pred.numpy(), err_msg=str(kw))
        np.testing.assert_allclose(logits, t_logits.numpy(), atol=1e-5)
        assert evaluations == int(layers.sum())  # exited examples cost nothing more: real savings
        varied |= len(set(layers.tolist())) > 1
    assert varied  # some setting exits different examples at different layers

    result = predictor.predict(texts[32:96], mode="entropy", entropy_threshold=entropies[0])
    assert result.labels[:3] == [predictor.labels[i] for i in result.label_ids[:3]]
    assert result.layer_evaluations < 64 * 4 and np.allclose(result.scores.sum(-1), 1, atol=1e-5)
    fixed = predictor.predict(texts[32:96], exit_layer=2)
    np.testing.assert_array_equal(fixed.label_ids, classifier.predict(t_ids, t_mask, exit_layer=2).numpy())
    assert set(fixed.exit_layers.tolist()) == {2} and fixed.layer_evaluations == 2 * 64
    with pytest.raises(BundleError, match="exit_layer must be a layer between 1 and 4"):
        predictor.predict(texts[:2], exit_layer=5)
    with pytest.raises(BundleError, match="mode must be"):
        predictor.predict(texts[:2], mode="confidence")


def test_static_shapes_are_padded_and_batched(bundle, texts, tmp_path):
    """A bundle whose manifest fixes batch 1 and length 64 (as TFLite bundles do) predicts the same."""
    static = tmp_path / "static"
    shutil.copytree(bundle, static)
    m = json.loads((static / "manifest.json").read_text())
    for graph in m["graphs"].values():
        for t in graph["inputs"] + graph["outputs"]:
            t["shape"] = [{"batch": 1, "sequence": 64}.get(a, s) for a, s in zip(t["axes"], t["shape"])]
    (static / "manifest.json").write_text(json.dumps(m))
    dynamic, padded = Predictor(bundle), Predictor(static)
    for kw in ({}, {"mode": "patience", "patience": 1}):
        a, b = dynamic.predict(texts[:12], **kw), padded.predict(texts[:12], **kw)
        np.testing.assert_array_equal(a.exit_layers, b.exit_layers)
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)


def test_runtime_runs_without_torch(bundle, texts, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        for name in ("torch", "transformers", "tokenizers", "edgekit"):
            sys.modules[name] = None  # any import of these raises ImportError
        import edgekit_device
        bundle = edgekit_device.unpack({str(packed_path(bundle))!r}, {str(tmp_path / "unpacked")!r})
        p = edgekit_device.Predictor(bundle)
        r = p.predict({texts[:8]!r}, mode="patience", patience=1)
        print(json.dumps({{"labels": r.labels, "exits": r.exit_layers.tolist(),
                          "loaded": sorted(m for m in ("torch", "transformers", "edgekit") if sys.modules.get(m))}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    expected = Predictor(bundle).predict(texts[:8], mode="patience", patience=1)
    assert out == {"labels": expected.labels, "exits": expected.exit_layers.tolist(), "loaded": []}


def test_tflite_bundle_runs_through_the_same_runtime(tiny_classifier, classifier, texts, tmp_path):
    pytest.importorskip("litert_torch")
    bundle = export_model(tiny_classifier, tmp_path / "tflite", format="tflite", exit_layer=2, max_length=32,
                          sample_texts=texts[:16])
    m = json.loads((bundle / "manifest.json").read_text())
    assert (m["format"], m["layout"], m["graphs"]["model"]["file"]) == ("tflite", "fixed", "model.tflite")
    assert m["graphs"]["model"]["inputs"][0]["shape"] == [1, 32] and m["parity"]["max_abs_diff"] < 1e-4
    predictor = Predictor(bundle)  # static batch 1, length 32: the runtime pads and loops
    ids, mask = predictor.encode(texts[16:24])
    with torch.no_grad():
        expected = classifier(torch.from_numpy(ids), torch.from_numpy(mask), exit_layer=2).logits[-1].numpy()
    np.testing.assert_allclose(predictor.logits(ids, mask), expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Bundles and packs


def test_load_bundle_validates_manifest_and_files(bundle, tmp_path):
    b = load_bundle(bundle)
    assert b.layout == "per-layer" and b.exit_layers == [1, 2, 3, 4] and b.labels == ["negative", "neutral", "positive"]

    def broken(name):
        target = tmp_path / name
        shutil.copytree(bundle, target)
        return target

    flipped = broken("flipped")
    data = bytearray((flipped / "layer.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / "layer.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"file 'layer.onnx' does not match its sha256 in manifest.json") as info:
        load_bundle(flipped)
    assert "\n" not in str(info.value)

    missing = broken("missing")
    (missing / "head.onnx").unlink()
    with pytest.raises(BundleError, match="file 'head.onnx' listed in manifest.json is missing"):
        load_bundle(missing)
    truncated = broken("truncated")
    (truncated / "labels.json").write_text("[]")
    with pytest.raises(BundleError, match="file 'labels.json' has 2 bytes"):
        load_bundle(truncated)
    for edit, pattern in [(lambda m: m.update(format_version=2), "format_version 2 is not supported"),
                          (lambda m: m.pop("graphs"), "manifest.json lacks graphs"),
                          (lambda m: m.update(layout="tree"), "layout 'tree' is not one of"),
                          (lambda m: m["graphs"].pop("head"), "a per-layer bundle needs the graphs embed, layer, head")]:
        target = broken("manifest")
        m = json.loads((target / "manifest.json").read_text())
        edit(m)
        (target / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BundleError, match=pattern):
            load_bundle(target)
        shutil.rmtree(target)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_bundle(tmp_path / "empty")
    with pytest.raises(BundleError, match="is a packed bundle; restore it with edgekit_device.unpack"):
        load_bundle(packed_path(bundle))


def test_corrupted_pack_is_refused(bundle, tmp_path):
    data = bytearray(packed_path(bundle).read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "bad.edgepack").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupted"):
        edgekit_device.unpack(tmp_path / "bad.edgepack", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "not.edgepack").write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(BundleError, match="not a packed edgekit bundle"):
        edgekit_device.unpack(tmp_path / "not.edgepack", tmp_path / "out")


def test_cli_refuses_a_corrupted_bundle(bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    data = bytearray((target / "embed.onnx").read_bytes())
    data[100] ^= 0x01
    (target / "embed.onnx").write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "bundle", "check", str(target)], capture_output=True,
                          text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert "file 'embed.onnx' does not match its sha256" in lines[0]
