"""Late interaction (M6-Rec 3.3): mask math by hand, one pass = cached serving path, isolation, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.errors import UserError
from edgekit_device import segments as dseg
from tests.conftest import clue_sentences, make_tiny_teacher

TEXTS = clue_sentences(6)


# -- the math, by hand


def test_segment_layout_restarts_positions_and_pads():
    seg, pos = dseg.segment_layout([2, 3], total=6)
    assert seg.tolist() == [0, 0, 1, 1, 1, -1]
    assert pos.tolist() == [0, 1, 0, 1, 2, 0]
    segs, poss = dseg.pack_layout([[1, 2], [2]])
    assert segs.tolist() == [[0, 1, 1], [0, 0, -1]]
    assert poss.tolist() == [[0, 0, 1], [0, 1, 0]]
    with pytest.raises(dseg.SegmentError, match="every segment needs a token"):
        dseg.segment_layout([2, 0])


def test_masks_by_hand():
    seg = np.array([0, 0, 1, -1])
    assert dseg.block_diagonal_allowed(seg).astype(int).tolist() == [
        [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]  # padding row sees nothing
    assert dseg.full_allowed(seg).astype(int).tolist() == [[1, 1, 1, 0]] * 4
    add = dseg.additive_mask(np.array([[True, False]]))
    assert add.shape == (1, 1, 2) and add[0, 0, 0] == 0 and add[0, 0, 1] == np.finfo(np.float32).min
    assert dseg.segment_embedding_index(seg).tolist() == [0, 0, 1, 0]


def test_torch_masks_equal_numpy_formulas():
    from edgekit.late_interaction import segments as tseg

    seg = np.array([[0, 0, 1, 2, -1], [0, 1, 1, -1, -1]])
    t = torch.as_tensor(seg)
    assert np.array_equal(tseg.block_diagonal_allowed(t).numpy(), dseg.block_diagonal_allowed(seg))
    assert np.array_equal(tseg.full_allowed(t).numpy(), dseg.full_allowed(seg))
    assert np.array_equal(tseg.additive_mask(tseg.full_allowed(t), torch.float32).numpy(),
                          dseg.additive_mask(dseg.full_allowed(seg)))


# -- the model: both families


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_tiny_teacher(tmp_path_factory.mktemp("li") / "bert", layers=4)


@pytest.fixture(scope="module", params=["albert", "bert"])
def served(request, tiny_classifier, bert_dir, single_torch_thread):
    """(SegmentModel, LateInteractionClassifier) split at L' = 2 of 4, with a non-zero segment embedding."""
    from edgekit.late_interaction import load_segment_model

    path = tiny_classifier if request.param == "albert" else bert_dir
    sm = load_segment_model(path, late_layers=2)
    torch.manual_seed(1)
    with torch.no_grad():
        sm.model.segment_embedding.weight.normal_(0, 0.5)
    return sm, sm.model


def packed(sm, requests: list[list[str]]) -> dict:
    ids = [[sm.tokenize(r)] for r in requests]
    flat = [[t for s in r[0] for t in s] for r in ids]
    seg, pos = dseg.pack_layout([[len(s) for s in r[0]] for r in ids])
    input_ids = np.zeros(seg.shape, dtype=np.int64)
    for i, tokens in enumerate(flat):
        input_ids[i, :len(tokens)] = tokens
    return {"input_ids": torch.as_tensor(input_ids), "segment_ids": torch.as_tensor(seg),
            "position_ids": torch.as_tensor(pos)}


def test_one_pass_equals_cached_serving_path(served):
    sm, model = served
    requests = [TEXTS[:3], [TEXTS[3]], [TEXTS[4], TEXTS[0]]]
    with torch.no_grad():
        one_pass = model.forward_one_pass(packed(sm, requests)).numpy()
    cache = dict(zip(TEXTS[:5], sm.encode_segments(TEXTS[:5])))
    served_logits = sm.interact([[cache[t] for t in r] for r in requests])
    assert served_logits.shape == (3, len(sm.labels)) and served_logits.dtype == np.float32
    np.testing.assert_allclose(one_pass, served_logits, atol=1e-5, rtol=0)
    # the segment embedding is used: the same segments in another order give other logits
    swapped = sm.interact([[cache[TEXTS[1]], cache[TEXTS[0]], cache[TEXTS[2]]]])
    assert np.abs(swapped[0] - served_logits[0]).max() > 1e-3


def test_segment_isolation_in_first_layers(served):
    sm, model = served
    a = packed(sm, [[TEXTS[0], TEXTS[1]]])
    b = packed(sm, [[TEXTS[0], TEXTS[2]]])
    n0 = len(sm.tokenize([TEXTS[0]])[0])
    with torch.no_grad():
        lower_a = model.lower(model.embed(a["input_ids"], a["position_ids"]), a["segment_ids"])
        lower_b = model.lower(model.embed(b["input_ids"], b["position_ids"]), b["segment_ids"])
    assert torch.equal(lower_a[0, :n0], lower_b[0, :n0])  # segment 1 does not see segment 2
    alone = sm.encode_segments([TEXTS[0]])[0]
    np.testing.assert_allclose(lower_a[0, :n0].numpy(), alone, atol=1e-5, rtol=0)
    # and the last layers do see it
    with torch.no_grad():
        assert (model.forward_one_pass(a) - model.forward_one_pass(b)).abs().max() > 1e-4


def test_fresh_model_on_one_segment_equals_plain_classifier(tiny_classifier, single_torch_thread):
    from edgekit.early_exit import EarlyExitClassifier
    from edgekit.late_interaction import load_segment_model

    sm = load_segment_model(tiny_classifier, late_layers=3)
    assert torch.count_nonzero(sm.model.segment_embedding.weight) == 0
    plain = EarlyExitClassifier.from_pretrained(tiny_classifier).eval()
    ids = sm.tokenize([TEXTS[0]])[0]
    with torch.no_grad():
        expected = plain(torch.tensor([ids])).logits[-1].numpy()
    np.testing.assert_allclose(sm.interact([sm.encode_segments([TEXTS[0]])]), expected, atol=1e-5, rtol=0)


def test_tokenization_is_per_segment_with_cls_and_sep(served):
    sm, _ = served
    tok = sm.tokenizer
    ids = sm.tokenize([TEXTS[0], "好"])
    assert ids[0][0] == tok.cls_token_id and ids[0][-1] == tok.sep_token_id
    assert ids[1] == [tok.cls_token_id, tok.convert_tokens_to_ids("好"), tok.sep_token_id]
    long = sm.tokenize(["好" * 500])[0]
    assert len(long) == sm.max_segment_tokens and long[-1] == tok.sep_token_id


def test_bad_requests_are_one_sentence_segment_errors(served):
    sm, _ = served
    enc = sm.encode_segments([TEXTS[0]])[0]
    with pytest.raises(dseg.SegmentError, match="has no segments"):
        sm.interact([[]])
    with pytest.raises(dseg.SegmentError, match="at most 16"):
        sm.interact([[enc] * 17])
    with pytest.raises(dseg.SegmentError, match=r"must be \(tokens, 32\)"):
        sm.interact([[enc[:, :5]]])
    with pytest.raises(dseg.SegmentError, match="not a string"):
        sm.encode_segments([3])
    with pytest.raises(ValueError):  # servers can catch SegmentError as ValueError
        sm.interact([[]])


def test_protocol_and_hash(served, tiny_classifier):
    from edgekit.late_interaction import SegmentModel, load_segment_model

    sm, _ = served
    assert isinstance(sm, SegmentModel)
    assert len(sm.model_hash) == 64 and sm.max_segments == 16 and sm.max_segment_tokens == 64
    assert load_segment_model(tiny_classifier, late_layers=1).model_hash != \
        load_segment_model(tiny_classifier, late_layers=2).model_hash


def test_split_checks_and_plain_checkpoint_needs_late_layers(tiny_classifier):
    from edgekit.late_interaction import LateInteractionClassifier

    with pytest.raises(UserError, match="not a late-interaction checkpoint"):
        LateInteractionClassifier.from_pretrained(tiny_classifier)
    with pytest.raises(UserError, match="between 1 and the model's depth 4"):
        LateInteractionClassifier.from_pretrained(tiny_classifier, late_layers=5)


def test_save_and_load_roundtrip(served, tmp_path):
    from edgekit.late_interaction import LateInteractionClassifier

    sm, model = served
    model.save_pretrained(tmp_path)
    sm.tokenizer.save_pretrained(tmp_path)
    back = LateInteractionClassifier.from_pretrained(tmp_path)
    assert back.settings() == {"late_layers": 2, "max_segments": 16, "max_segment_tokens": 64}
    assert torch.equal(back.segment_embedding.weight, model.segment_embedding.weight)
    (tmp_path / "segment_embedding.safetensors").unlink()
    with pytest.raises(UserError, match="has no segment_embedding.safetensors"):
        LateInteractionClassifier.from_pretrained(tmp_path)


# -- data: segmenters and packed batches


def test_builtin_segmenters_by_hand():
    from edgekit.tasks import csl_segments, iflytek_segments, tnews_segments

    assert csl_segments({"keyword": ["重建", "水磨"], "abst": "概述了汶川"}) == ["重建", "水磨", "概述了汶川"]
    assert tnews_segments({"sentence": "出栏一头猪", "keywords": "商品猪, 养猪,"}) == ["出栏一头猪", "商品猪", "养猪"]
    assert tnews_segments({"sentence": "标题", "keywords": ""}) == ["标题"]
    assert iflytek_segments({"sentence": "朴朴快送。商品多！好吗？最后"}) == ["朴朴快送。", "商品多！", "好吗？", "最后"]


def test_fit_segments_joins_extras_onto_the_last():
    from edgekit.late_interaction.data import fit_segments

    assert fit_segments(["a", "b", "c", "d"], 2) == ["a", "bcd"]
    assert fit_segments(["a"], 2) == ["a"]


def test_clue_tasks_load_segmented():
    from edgekit.tasks import load_task
    from tests.conftest import DATA

    task = load_task("csl", DATA / "clue" / "csl", segmented=True)
    first = task.dev.segments[0]
    assert first[:3] == ["重建", "建成", "水磨"] and first[3].startswith('"概述了汶川')
    assert len(task.dev.segments) == len(task.dev.labels) == 998
    with pytest.raises(UserError, match="no built-in segmenter"):
        load_task("afqmc", DATA / "clue" / "csl", segmented=True)


def test_segment_corpus_packs_examples(tiny_classifier):
    from transformers import AutoTokenizer

    from edgekit.late_interaction.data import SegmentCorpus

    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    corpus = SegmentCorpus(tok, [["好", "坏人"], ["好"]], max_segments=4, max_segment_tokens=8, labels=[1, 0])
    batch = corpus.collate([0, 1])
    cls, sep = tok.cls_token_id, tok.sep_token_id
    assert batch["input_ids"].tolist()[1] == [cls, tok.convert_tokens_to_ids("好"), sep, 0, 0, 0, 0]
    assert batch["input_ids"][0, :3].tolist() == [cls, tok.convert_tokens_to_ids("好"), sep]
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, -1, -1, -1, -1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


def write_segment_set(directory, n_train=32, n_dev=8):
    import json

    texts = clue_sentences(n_train + n_dev + 2)
    directory.mkdir(parents=True, exist_ok=True)
    for name, lo, hi in (("train", 0, n_train), ("dev", n_train, n_train + n_dev)):
        lines = [json.dumps({"segments": [texts[i], texts[i + 1][:6], "男"], "label": ["a", "b", "c"][i % 3]},
                            ensure_ascii=False) for i in range(lo, hi)]
        (directory / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_classifier, single_torch_thread):
    """``edgekit finetune --late-interaction --late-layers 2`` of the pruned tiny student on a jsonl segment set."""
    from click.testing import CliRunner

    from edgekit.cli import app

    base = tmp_path_factory.mktemp("li-train")
    data = write_segment_set(base / "data")
    result = CliRunner().invoke(app, [
        "finetune", "--model", str(tiny_classifier), "--task", "jsonl", "--data-dir", str(data),
        "--out", str(base / "run"), "--late-interaction", "--late-layers", "2", "--max-steps", "6",
        "--batch-size", "8", "--lr", "1e-2", "--eval-every", "3",
        "--set", "late_interaction.max_segments=4", "--set", "train.save_every=6"])
    assert result.exit_code == 0, result.output
    return base / "run" / "model", data


def test_finetune_late_interaction_writes_a_servable_checkpoint(trained):
    import json

    from edgekit.late_interaction import load_segment_model

    model_dir, _ = trained
    meta = json.loads((model_dir / "edgekit.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    settings = {"late_layers": 2, "max_segments": 4, "max_segment_tokens": 64}
    assert meta["late_interaction"] == settings and config["late_interaction"] == settings
    assert meta["sparsity_kept"] > 0.4
    sm = load_segment_model(model_dir)
    assert sm.labels == ["a", "b", "c"] and sm.max_segments == 4
    # the segment embedding learned; the pruned encoder kept its zeros (pruning composes)
    assert torch.count_nonzero(sm.model.segment_embedding.weight) > 0
    ffn = sm.model.classifier.albert.encoder.albert_layer_groups[0].albert_layers[0].ffn.weight
    assert (ffn == 0).float().mean() > 0.4
    logits = sm.interact([sm.encode_segments(["今天", "男"])])
    assert logits.shape == (1, 3) and np.isfinite(logits).all()


def run_cli(capsys, *args):
    from edgekit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def test_finetune_late_interaction_bad_settings_are_one_sentence(tmp_path, tiny_classifier, capsys):
    data = write_segment_set(tmp_path / "data", 8, 2)
    common = ["finetune", "--model", tiny_classifier, "--task", "jsonl", "--data-dir", data, "--max-steps", "1"]
    code, out = run_cli(capsys, *common, "--out", tmp_path / "run", "--late-layers", "9")
    assert code == 2 and "late_interaction.late_layers must be between 1 and the model's depth 4" in out
    assert "Traceback" not in out
    (data / "train.jsonl").write_text('{"segments": "x", "label": "a"}\n{"segments": [3], "label": "b"}\n')
    code, out = run_cli(capsys, *common, "--out", tmp_path / "run2", "--late-interaction")
    assert code == 2 and "train.jsonl:2: field 'segments' must be a list of strings" in out


# -- export: the two halves as ONNX graphs, run without torch


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from click.testing import CliRunner

    from edgekit.cli import app

    model_dir, _ = trained
    base = tmp_path_factory.mktemp("li-export")
    samples = base / "samples.txt"
    samples.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = base / "bundle"
    result = CliRunner().invoke(app, ["export", str(model_dir), "--out", str(out), "--samples", str(samples)])
    assert result.exit_code == 0, result.output
    assert "onnx fp32 late-interaction (exit 4)" in result.output and "argmax agreement 100.0%" in result.output
    return model_dir, out


def test_export_writes_both_halves_and_matches_the_checkpoint(exported):
    import json

    from edgekit.late_interaction import load_segment_model
    from edgekit_device.segments import SegmentBundle

    model_dir, out = exported
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layout"] == "late-interaction" and sorted(manifest["graphs"]) == ["interaction", "segment_encoder"]
    assert manifest["late_interaction"] == {"late_layers": 2, "max_segments": 4, "max_segment_tokens": 64,
                                            "split_layer": 2, "hidden_size": 32}
    assert manifest["parity"]["max_abs_diff"] < 1e-3 and manifest["parity"]["raw_agreement"] == 1.0
    bundle, torch_side = load_segment_model(out), load_segment_model(model_dir)
    assert isinstance(bundle, SegmentBundle) and bundle.labels == ["a", "b", "c"] and len(bundle.model_hash) == 64
    texts = [TEXTS[0], "男", TEXTS[2]]
    ours, theirs = torch_side.encode_segments(texts), bundle.encode_segments(texts)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
    requests = [[theirs[0], theirs[1]], [theirs[2]], [theirs[1], theirs[2], theirs[0]]]
    np.testing.assert_allclose(bundle.interact(requests), torch_side.interact([[ours[0], ours[1]], [ours[2]],
                                                                               [ours[1], ours[2], ours[0]]]),
                               atol=1e-4, rtol=0)
    with pytest.raises(dseg.SegmentError, match="at most 4"):
        bundle.interact([[theirs[0]] * 5])


def test_plain_predictor_refuses_a_late_interaction_bundle(exported):
    from edgekit_device import BundleError, Predictor

    with pytest.raises(BundleError, match="run it with edgekit_device.segments.SegmentBundle"):
        Predictor(exported[1])


def test_bert_family_exports_int8(bert_dir, tmp_path, single_torch_thread):
    import json

    from edgekit.export import export_model
    from edgekit.late_interaction import LateInteractionClassifier, load_segment_model

    model = LateInteractionClassifier.from_pretrained(bert_dir, late_layers=1)
    model.save_pretrained(tmp_path / "ckpt")
    load_segment_model(bert_dir, late_layers=1).tokenizer.save_pretrained(tmp_path / "ckpt")
    export_model(tmp_path / "ckpt", tmp_path / "bundle", int8=True, sample_texts=TEXTS)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["model"]["architecture"] == "bert"
    assert manifest["late_interaction"]["split_layer"] == 3
    bundle, ref = load_segment_model(tmp_path / "bundle"), load_segment_model(tmp_path / "ckpt")
    texts = TEXTS[:3]
    got = bundle.interact([bundle.encode_segments(texts)])
    expected = ref.interact([ref.encode_segments(texts)])
    assert got.shape == expected.shape == (1, 2)
    assert np.abs(got - expected).max() < 0.5  # int8: close, not equal


def test_late_interaction_export_refuses_what_it_cannot_do(exported, tmp_path):
    from edgekit.export import export_model

    model_dir, _ = exported
    with pytest.raises(UserError, match="drop --max-length"):
        export_model(model_dir, tmp_path / "b1", max_length=32)
    with pytest.raises(UserError, match="ONNX only"):
        export_model(model_dir, tmp_path / "b2", format="tflite")
    with pytest.raises(UserError, match="drop --exit-layer"):
        export_model(model_dir, tmp_path / "b3", exit_layer=2)
    with pytest.raises(UserError, match="--accuracy-aware does not support late-interaction"):
        export_model(model_dir, tmp_path / "b4", int8=True, accuracy_aware=0.99)
    with pytest.raises(UserError, match="--embedding-bits applies to int8 bundles"):
        export_model(model_dir, tmp_path / "b5", embedding_bits=4)
    assert not any(tmp_path.iterdir())


def test_int8_bundle_packs_snaps_its_table_and_is_checked_on_the_dev_examples(trained, tmp_path):
    """`edgekit export --int8 --pack --embedding-bits 4 --task` of a late-interaction checkpoint: the
    parity gate runs the dev examples as requests (each its segments), the table is on 15 levels,
    and the .edgepack unpacks to the same files, which run."""
    import json

    from click.testing import CliRunner

    import edgekit_device
    from edgekit.cli import app
    from edgekit.late_interaction import load_segment_model
    from edgekit_device.segments import SegmentBundle

    model_dir, data = trained
    out = tmp_path / "bundle"
    result = CliRunner().invoke(app, ["export", str(model_dir), "--out", str(out), "--int8", "--pack",
                                      "--embedding-bits", "4", "--task", "jsonl", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    parity = manifest["parity"]
    dev = [json.loads(line)["segments"] for line in (data / "dev.jsonl").read_text().splitlines()]
    assert parity["samples"] == len(dev) == 8 and parity["inputs"].startswith("examples of the jsonl dev split")
    assert parity["segments"] == len({s for ex in dev for s in ex})
    assert parity["raw_agreement"] + parity["near_ties"] / 8 >= parity["min_agreement"] == 0.98
    q = manifest["quantization"]
    assert q["embedding_bits"] == 4 and q["embedding_snap"]["levels_per_row"] <= 15
    packed = tmp_path / "bundle.edgepack"
    assert "packed:" in result.output and packed.is_file()
    assert packed.stat().st_size < manifest["sizes"]["dense_bytes"]
    restored = edgekit_device.unpack(packed, tmp_path / "restored")
    for name in manifest["files"]:
        assert (restored / name).read_bytes() == (out / name).read_bytes(), name
    bundle, ref = SegmentBundle(restored), load_segment_model(model_dir)
    got = bundle.interact([bundle.encode_segments(ex) for ex in dev])
    expected = ref.interact([ref.encode_segments(ex) for ex in dev])
    assert got.shape == expected.shape == (8, 3)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 7 / 8


def test_a_damaged_late_interaction_graph_fails_export_with_one_sentence_and_writes_nothing(trained, tmp_path,
                                                                                           monkeypatch):
    from edgekit.export import export_model
    from edgekit.late_interaction import export as li_export

    real = li_export.export_copy

    def damaged(model):
        copy = real(model)
        with torch.no_grad():
            copy.segment_embedding.weight.add_(3.0)  # what the interaction graph adds per segment
        return copy

    monkeypatch.setattr(li_export, "export_copy", damaged)
    model_dir, data = trained
    with pytest.raises(UserError) as e:
        export_model(model_dir, tmp_path / "bundle", pack=True, sample_texts=TEXTS)
    message = str(e.value)
    assert "does not compute what the PyTorch model computes" in message and "\n" not in message
    assert "requests of 1..n of" in message
    assert not any(tmp_path.iterdir())  # no bundle, no temporary, no .edgepack


def test_recipe_section_turns_late_interaction_on(tmp_path):
    from edgekit.finetune import load_finetune_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("late_interaction:\n  late_layers: 1\n  max_segments: 8\n")
    cfg = load_finetune_config(recipe)
    assert (cfg.late_interaction.late_layers, cfg.late_interaction.max_segments,
            cfg.late_interaction.max_segment_tokens) == (1, 8, 64)
    assert load_finetune_config(None).late_interaction.late_layers is None


def test_eval_runs_checkpoint_and_bundle_on_segments(trained, exported):
    from edgekit.eval.evaluate import evaluate

    (model_dir, data), (_, bundle) = trained, exported
    ckpt = evaluate(model_dir, "jsonl", data_dir=data)
    dev = evaluate(bundle, "jsonl", data_dir=data)
    assert ckpt["kind"] == "checkpoint (PyTorch, late-interaction)" and dev["kind"] == "bundle (late-interaction, fp32)"
    assert ckpt["examples"] == dev["examples"] == 8 and ckpt["exit_layers"] == dev["exit_layers"] == [4]
    assert ckpt["accuracy"] == dev["accuracy"]


def test_segment_settings_are_checked(tiny_classifier):
    from edgekit.late_interaction import LateInteractionClassifier

    for key, value, match in (("max_segments", 0, "max_segments must be an integer between 1 and 65536, got 0"),
                              ("max_segment_tokens", 65, "max_segment_tokens must be an integer between 2 and 64")):
        with pytest.raises(UserError, match=match):
            LateInteractionClassifier.from_pretrained(tiny_classifier, late_layers=1, **{key: value})


def test_export_parity_check_fails_on_a_bundle_that_disagrees():
    """The late-interaction export's own gate: a bundle whose logits drift fails with one sentence."""
    import numpy as np

    from edgekit.errors import UserError
    from edgekit.late_interaction.export import check_parity, parity_requests

    class Side:
        max_segments = 4

        def __init__(self, shift):
            self.shift = shift

        def encode_segments(self, texts):
            return [np.full((2, 3), float(len(t)), dtype=np.float32) for t in texts]

        def interact(self, requests):
            return np.array([[sum(float(s.sum()) for s in r), 0.0] for r in requests], dtype=np.float32) + self.shift

    requests = parity_requests(["甲", "乙乙", "丙丙丙", "丁"], 4)
    assert requests == [["甲"], ["乙乙", "丙丙丙"], ["丁"]]
    entry = check_parity(Side(0.0), Side(np.float32(1e-5)), requests, "fp32", depth=4)
    assert entry["raw_agreement"] == 1.0 and entry["max_abs_diff"] < 1e-3 and entry["samples"] == 3
    assert entry["segments"] == 4 and entry["min_agreement"] == 0.999 and entry["per_exit"][0]["exit"] == 4
    with pytest.raises(UserError) as info:
        check_parity(Side(0.0), Side(np.array([0.0, 0.5], dtype=np.float32)), requests, "fp32", depth=4)
    message = str(info.value)
    assert "does not compute what the PyTorch model computes: at exit 4 its logits differ by up to 0.5 on 3 " \
           "requests" in message and "\n" not in message
    with pytest.raises(UserError) as info:  # int8: no logit bound, but every class flips
        check_parity(Side(0.0), Side(np.array([0.0, 100.0], dtype=np.float32)), requests, "int8", depth=4)
    assert "predicts the same class on 0.0% of 3 requests, below the int8 threshold 98.0%" in str(info.value)
    assert "export fp32, or lower --min-agreement" in str(info.value) and "accuracy-aware" not in str(info.value)
    # 1 flip in 3 passes only a threshold it meets
    half = Side(0.0)
    half.interact = lambda rs: np.array([[1.0, 0.0] if i else [0.0, 1.0] for i, _ in enumerate(rs)], dtype=np.float32)
    assert check_parity(Side(0.0), half, requests, "int8", depth=4, min_agreement=0.6)["raw_agreement"] == \
        pytest.approx(2 / 3)


def test_predict_reads_the_texts_as_the_segments_of_one_request(exported, capsys):
    """`edgekit predict` on a late-interaction checkpoint or bundle: one request of the given segments,
    the label and probabilities of `interact` (the checkpoint, not a plain classifier reading each
    text alone), the same from the bundle; exit options are refused in one sentence."""
    from edgekit.cli import main
    from edgekit.early_exit import predict_texts
    from edgekit.late_interaction import load_segment_model

    model_dir, bundle_dir = exported
    segments = [TEXTS[0], "男", TEXTS[2]]
    ref = load_segment_model(model_dir)
    logits = ref.interact([ref.encode_segments(segments)])[0].astype(np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    (row,) = predict_texts(model_dir, segments)
    assert row["segments"] == segments and row["exit_layer"] == 4
    assert row["label"] == ref.labels[int(expected.argmax())]
    np.testing.assert_allclose(row["scores"], expected, atol=1e-6)
    (from_bundle,) = predict_texts(bundle_dir, segments)
    assert from_bundle["label"] == row["label"]
    np.testing.assert_allclose(from_bundle["scores"], row["scores"], atol=1e-3)
    with pytest.raises(SystemExit) as e:
        main(["predict", str(bundle_dir), "男", "--patience", "2"])
    assert e.value.code == 2
    assert "a late-interaction model has one exit" in capsys.readouterr().err
