"""The classification head's pooling (cls | mean) in every runtime that computes the head.

- ``mean_pool`` on a hand-computed example; the mean-pooled head skips the pooler and ignores padding;
- the early-exit classifier (fixed and dynamic exits) with a mean head;
- exported bundles (ONNX per-layer and fixed, TFLite fixed) reproduce the PyTorch logits, and the
  manifest says ``model.pooling``; the device runtime refuses a manifest whose head does not match it;
- fine-tuning records the pooling (ALBERT students and a BERT teacher) and loading honours it.
The Java and JavaScript runtimes are compared on a mean-pooled bundle in ``test_android_jvm.py``
and ``test_web_demo.py``.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import VOCAB
from edgekit.albert import classifier_head, mean_pool, pooling_of
from edgekit.errors import UserError

TEXTS = ["这家店的菜很好吃，服务也很热情！", "物流太慢了。", "iPhone 15 的电池续航怎么样？", "好",
         "今天天气不错, let's go hiking 吧", "北京欢迎你，欢迎你来到北京，这里有长城和故宫，还有很多好吃的东西"]


@pytest.fixture(scope="module", autouse=True)
def one_thread(single_torch_thread):
    yield


# ---------------------------------------------------------------------------------------------
# The math


def test_mean_pool_hand_computed():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],
                           [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # row 0: (1+3)/2, (2+4)/2; the padded third position is left out. row 1: all three tokens.
    expected = torch.tensor([[2.0, 3.0], [7.0, 8.0]])
    assert torch.equal(mean_pool(hidden, mask), expected)
    assert torch.equal(mean_pool(hidden, mask, keepdim=True), expected[:, None])
    assert torch.equal(mean_pool(hidden, None), torch.tensor([[104 / 3, -94 / 3], [7.0, 8.0]]))
    # An all-padding row divides by max(0, 1): zeros, not NaN.
    assert torch.equal(mean_pool(hidden, torch.zeros(2, 3, dtype=torch.long)), torch.zeros(2, 2))


def test_pooling_of_reads_the_config(classifier):
    config = copy.deepcopy(classifier.model.config)
    assert pooling_of(config) == "cls"  # absent: what AlbertForSequenceClassification does
    config.classifier_pooling = "mean"
    assert pooling_of(config) == "mean"
    config.classifier_pooling = "max"
    with pytest.raises(UserError, match=r"classifier_pooling 'max'; it must be one of cls, mean"):
        pooling_of(config)
    with pytest.raises(UserError, match="pooling must be one of cls, mean"):
        copy.deepcopy(classifier).pooling = "max"


@pytest.fixture(scope="module")
def mean_classifier(classifier):
    clf = copy.deepcopy(classifier).eval()
    clf.pooling = "mean"
    return clf


def _batch(tokenizer_dir=VOCAB.parent, texts=TEXTS):
    from transformers import BertTokenizer

    enc = BertTokenizer.from_pretrained(tokenizer_dir)(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_mean_head_is_the_classifier_on_the_masked_mean(classifier, mean_classifier):
    ids, mask = _batch()
    assert int((mask == 0).sum()) > 20  # the batch is padded
    with torch.no_grad():
        logits = mean_classifier(ids, mask).logits  # (K, B, C)
        hidden = mean_classifier.model.albert(ids, attention_mask=mask).last_hidden_state
        m = mask[..., None].float()
        by_hand = mean_classifier.model.classifier((hidden * m).sum(1) / m.sum(1))
        torch.testing.assert_close(logits[-1], by_hand, rtol=1e-5, atol=1e-6)
        # The pooler is not part of a mean head, and the cls head is untouched.
        changed = copy.deepcopy(mean_classifier)
        changed.model.albert.pooler.weight.mul_(3)
        torch.testing.assert_close(changed(ids, mask).logits, logits)
        reference = classifier.model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(classifier(ids, mask).logits[-1], reference, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(logits[-1], reference, atol=1e-3)
        # Padding does not change an example's logits: each text alone gives the batch's row.
        for i in range(len(TEXTS)):
            n = int(mask[i].sum())
            alone = mean_classifier(ids[i:i + 1, :n], mask[i:i + 1, :n]).logits
            torch.testing.assert_close(alone[:, 0], logits[:, i], rtol=1e-4, atol=1e-5)
        # classifier_head itself: a (B, 1, H) slice gives the same logits
        torch.testing.assert_close(classifier_head(mean_classifier.model, hidden, mask, keep_sequence_axis=True),
                                   by_hand, rtol=1e-5, atol=1e-6)


def test_mean_head_dynamic_exits_match_fixed_exits(mean_classifier):
    ids, mask = _batch()
    with torch.no_grad():
        every = mean_classifier(ids, mask).logits
    for mode, kwargs in (("patience", {"patience": 1}), ("entropy", {"entropy_threshold": 1.05})):
        _, layers, logits = mean_classifier.predict_dynamic(ids, mask, mode=mode, **kwargs)
        assert len(set(layers.tolist())) > 1 or mode == "entropy", layers
        for i, k in enumerate(layers.tolist()):
            torch.testing.assert_close(logits[i], every[k - 1, i], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bundles


@pytest.fixture(scope="module")
def mean_checkpoint(tiny_classifier, tmp_path_factory):
    from edgekit.early_exit import EarlyExitClassifier

    path = tmp_path_factory.mktemp("pooling") / "mean-classifier"
    shutil.copytree(tiny_classifier, path)
    clf = EarlyExitClassifier.from_pretrained(path)
    clf.pooling = "mean"
    clf.save_pretrained(path)
    assert json.loads((path / "config.json").read_text())["classifier_pooling"] == "mean"
    return path


def _bundle_vs_torch(bundle, checkpoint, texts=TEXTS):
    import edgekit_device
    from edgekit.early_exit import EarlyExitClassifier

    predictor = edgekit_device.Predictor(bundle, threads=1)
    clf = EarlyExitClassifier.from_pretrained(checkpoint).eval()
    assert clf.pooling == "mean"
    ids, mask = predictor.encode(texts)
    got = predictor.exit_logits(ids, mask)
    with torch.no_grad():
        ref = clf(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)),
                  exit_layer=max(predictor.exits)).logits.numpy()
    ref = ref[[k - 1 for k in predictor.exits]]
    assert (mask == 0).any()
    return predictor, got, ref


@pytest.mark.parametrize("exit_layer", [None, 2], ids=["per-layer", "fixed-2"])
def test_onnx_mean_bundle_reproduces_torch(mean_checkpoint, tmp_path, exit_layer):
    from edgekit.export import export_model

    bundle = export_model(mean_checkpoint, tmp_path / "bundle", exit_layer=exit_layer, max_length=32,
                          sample_texts=TEXTS)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["pooling"] == "mean"
    if exit_layer is None:
        head = [t["name"] for t in manifest["graphs"]["head"]["inputs"]]
        assert head == ["hidden", "attention_mask"]
    predictor, got, ref = _bundle_vs_torch(bundle, mean_checkpoint)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    if exit_layer is None:
        # The runtime's dynamic exits (rows leave the batch, padding columns are cut) give the
        # exit layer's logits of each example.
        ids, mask = predictor.encode(TEXTS)
        _, layers, logits, _ = predictor.dynamic(ids, mask, mode="patience", patience=1)
        for i, k in enumerate(layers.tolist()):
            np.testing.assert_allclose(logits[i], got[k - 1, i], rtol=1e-4, atol=1e-5)


def test_cls_bundle_says_cls(tiny_classifier, tmp_path):
    from edgekit.export import export_model

    bundle = export_model(tiny_classifier, tmp_path / "bundle", max_length=32, sample_texts=TEXTS[:2])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["pooling"] == "cls"
    assert [t["name"] for t in manifest["graphs"]["head"]["inputs"]] == ["hidden"]


@pytest.mark.slow
def test_tflite_fixed_mean_bundle_reproduces_torch(mean_checkpoint, tmp_path):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    from edgekit.export import export_model

    bundle = export_model(mean_checkpoint, tmp_path / "bundle", format="tflite", exit_layer=3, max_length=32,
                          sample_texts=TEXTS)
    assert json.loads((bundle / "manifest.json").read_text())["model"]["pooling"] == "mean"
    _, got, ref = _bundle_vs_torch(bundle, mean_checkpoint)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_tflite_per_layer_mean_head_takes_the_mask(mean_checkpoint, tmp_path):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    from edgekit.export import export_model

    bundle = export_model(mean_checkpoint, tmp_path / "bundle", format="tflite", max_length=32, sample_texts=TEXTS)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert sorted(t["name"] for t in manifest["graphs"]["head"]["inputs"]) == ["attention_mask", "hidden"]
    _, got, ref = _bundle_vs_torch(bundle, mean_checkpoint)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def _manifest(**model):
    hidden = {"name": "hidden", "dtype": "float32", "shape": [None, None, 4], "axes": ["batch", "sequence", "hidden"]}
    mask = {"name": "attention_mask", "dtype": "int64", "shape": [None, None], "axes": ["batch", "sequence"]}
    ids = dict(mask, name="input_ids")
    logits = {"name": "logits", "dtype": "float32", "shape": [None, 2], "axes": ["batch", "labels"]}
    files = {name: {"bytes": 0, "sha256": ""} for name in ("e", "l", "h", "t.json", "labels.json")}
    return {"format_version": 1, "format": "onnx", "precision": "fp32", "layout": "per-layer",
            "graphs": {"embed": {"file": "e", "inputs": [ids], "outputs": [hidden]},
                       "layer": {"file": "l", "inputs": [hidden, mask], "outputs": [hidden]},
                       "head": {"file": "h", "inputs": [hidden], "outputs": [logits]}},
            "max_length": 8, "exits": {"layers": [1, 2]}, "model": {"num_labels": 2, **model},
            "tokenizer": {"file": "t.json"}, "labels": {"file": "labels.json"}, "files": files}


def test_device_runtime_refuses_a_head_that_does_not_match_the_pooling():
    from edgekit_device import BundleError
    from edgekit_device.bundle import validate_manifest

    validate_manifest(_manifest())  # no pooling: a cls bundle of an earlier edgekit
    validate_manifest(_manifest(pooling="cls"))
    with pytest.raises(BundleError, match=r"a mean-pooled head takes hidden, attention_mask, but graph 'head' in "
                                          r"manifest.json takes hidden; export the bundle again"):
        validate_manifest(_manifest(pooling="mean"))
    with_mask = _manifest(pooling="mean")
    with_mask["graphs"]["head"]["inputs"].append(with_mask["graphs"]["layer"]["inputs"][1])
    validate_manifest(with_mask)
    with_mask["model"]["pooling"] = "cls"
    with pytest.raises(BundleError, match="a cls-pooled head takes hidden, but graph 'head'"):
        validate_manifest(with_mask)
    with pytest.raises(BundleError, match="model.pooling 'max' is not one of cls, mean"):
        validate_manifest(_manifest(pooling="max"))


# ---------------------------------------------------------------------------------------------
# Fine-tuning records the pooling; loading honours it


@pytest.fixture()
def separable(tmp_path):
    lines = []
    for i in range(48):
        label = i % 2
        word = "好极了" if label else "糟透了"
        lines.append(json.dumps({"text": "今天" * (i % 5) + word, "y": "pos" if label else "neg"}, ensure_ascii=False))
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    (tmp_path / "dev.jsonl").write_text("\n".join(lines[40:]) + "\n", encoding="utf-8")
    return tmp_path


def _finetune(model, data, out, **finetune_section):
    from edgekit.finetune import finetune, load_finetune_config

    cfg = load_finetune_config(None, {
        "model": str(model),
        "task": {"name": "jsonl", "data_dir": str(data), "text_field": "text", "label_field": "y", "max_length": 16},
        "finetune": {"eval_every": 4, **finetune_section},
        "train": {"max_steps": 4, "batch_size": 8, "lr": 1e-3, "save_every": 4, "log_every": 2, "warmup_ratio": 0.0},
    })
    return finetune(cfg, out)


def test_student_finetuned_with_mean_records_it_and_loads_with_mean(tiny_classifier, separable, tmp_path):
    from transformers import BertTokenizer

    from edgekit.early_exit import EarlyExitClassifier
    from edgekit.eval import evaluate

    result = _finetune(tiny_classifier, separable, tmp_path / "mean", pooling="mean")
    model_dir = tmp_path / "mean" / "model"
    assert result["pooling"] == "mean"
    assert json.loads((model_dir / "config.json").read_text())["classifier_pooling"] == "mean"
    assert json.loads((model_dir / "edgekit.json").read_text())["pooling"] == "mean"
    clf = EarlyExitClassifier.from_pretrained(model_dir).eval()
    assert clf.pooling == "mean"
    enc = BertTokenizer.from_pretrained(model_dir)(["好极了", "今天今天糟透了"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = clf.model.albert(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].float()
        by_hand = clf.model.classifier((hidden * m).sum(1) / m.sum(1))
        torch.testing.assert_close(clf(enc["input_ids"], enc["attention_mask"]).logits[-1], by_hand,
                                   rtol=1e-5, atol=1e-6)
    # eval reloads it the same way: the accuracy it reports is the fine-tuning's own.
    ev = evaluate(model_dir, "jsonl", separable, text_field="text", label_field="y")
    assert ev["accuracy_per_exit"] == pytest.approx(result["dev_accuracy_per_exit"], abs=1e-6)

    # auto: the checkpoint's own (a student without a record pools [CLS]; the mean one keeps mean)
    assert _finetune(tiny_classifier, separable, tmp_path / "auto")["pooling"] == "cls"
    again = _finetune(model_dir, separable, tmp_path / "again")
    assert again["pooling"] == "mean"
    with pytest.raises(UserError, match=r"finetune.pooling must be one of auto, cls, mean .* got 'max'"):
        _finetune(tiny_classifier, separable, tmp_path / "bad", pooling="max")


def test_bert_teacher_finetunes_with_the_pooling_it_was_trained_with(tiny_teacher, separable, tmp_path):
    """A teacher whose edgekit.json says it was trained with mean pooling (as e5's import does) gets
    a mean head under ``auto``, without the pooler, and every loader reads it back that way."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from edgekit.finetune.pooling import MeanPooledClassifier, checkpoint_pooling, load_sequence_classifier

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher, teacher)
    assert checkpoint_pooling(teacher) == "cls"
    (teacher / "edgekit.json").write_text(json.dumps({"kind": "teacher", "pooling": "mean"}))
    assert checkpoint_pooling(teacher) == "mean"

    result = _finetune(teacher, separable, tmp_path / "ft")
    model_dir = tmp_path / "ft" / "model"
    assert result["pooling"] == "mean" and result["early_exit"] is False
    assert json.loads((model_dir / "config.json").read_text())["classifier_pooling"] == "mean"
    assert json.loads((model_dir / "edgekit.json").read_text())["pooling"] == "mean"
    model = load_sequence_classifier(model_dir).eval()
    assert isinstance(model, MeanPooledClassifier)
    enc = AutoTokenizer.from_pretrained(model_dir)(["好极了", "今天今天今天糟透了"], padding=True, return_tensors="pt")
    plain = BertForSequenceClassification.from_pretrained(model_dir).eval()  # pools [CLS], as HF does
    with torch.no_grad():
        hidden = plain.bert(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].float()
        by_hand = plain.classifier((hidden * m).sum(1) / m.sum(1))
        got = model(**enc).logits
        torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(got, plain(**enc).logits, atol=1e-4)

    # cls asked for explicitly: the plain HF head, recorded as cls
    cls = _finetune(teacher, separable, tmp_path / "cls", pooling="cls")
    assert cls["pooling"] == "cls"
    assert not isinstance(load_sequence_classifier(tmp_path / "cls" / "model"), MeanPooledClassifier)


def test_mean_pooling_needs_a_linear_head():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from edgekit.finetune.pooling import with_pooling

    model = RobertaForSequenceClassification(RobertaConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                           num_attention_heads=2, intermediate_size=16))
    with pytest.raises(UserError, match="mean pooling needs a classifier that is one linear layer .* set "
                                        "finetune.pooling to cls"):
        with_pooling(model, "mean")
    assert with_pooling(model, "cls") is model
