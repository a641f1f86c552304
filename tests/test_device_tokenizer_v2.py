"""device_tokenizer.json version 2: the same tokenizer as version 1, smaller under zlib.

The writer (``edgekit.export.device_tokenizer.encode_v2``) and the Python reader
(``edgekit_device.tokenizer.expand_v2``) must round-trip every version-1 table exactly, scores as
identical doubles; the JavaScript reader is checked here on a hand-made score list through node
(the Java one in ``GoldenTest``'s "v2 scores by hand"; both also run whole bundles in
tests/test_android_jvm.py and tests/test_web_demo.py).
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from conftest import VOCAB

from edgekit.errors import UserError
from edgekit.export.device_tokenizer import (VERSION, device_tokenizer_spec, encode_charsmap, encode_scores,
                                             encode_v2, flat_ranges, valued_ranges)
from edgekit_device.errors import BundleError
from edgekit_device.tokenizer import Tokenizer, expand_v2

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["你好，世界！Hello wörld", "新闻：北京时间１２月３日 😀👍🏽 ①②", "  A\u030a\u0301 e\u0301 ﬁ \u200b x", "",
         "unknownwordsxyz 彅 ☃"]


def bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def from_bits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<q", b))[0]


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


BASE = f32(-7.4715776)
# Positive and negative, float32 values and values 1..3 double ulps off them either way (Rust
# prints float32 scores as such doubles), doubles far from any float32 (0.1, -1/3), a float32
# subnormal, near float32's largest and smallest normal magnitudes, and both zeros.
HAND = [0.0, -0.0, 1.5, from_bits(bits(f32(2.3)) + 1), from_bits(bits(f32(2.3)) - 2), from_bits(bits(f32(3.7)) + 3),
        BASE, from_bits(bits(BASE) + 1), from_bits(bits(BASE) - 1), from_bits(bits(BASE) + 2),
        from_bits(bits(BASE) - 3), -3.4635426998138428, -7.471577644348144, 0.1, -1 / 3, 1e-40, -3.0e38,
        1.1754943508222875e-38, -20.364652633666992]


def unigram_spec(pieces, scores) -> dict:
    return {"format": "edgekit-device-tokenizer", "version": 2, "type": "unigram",
            "special": {"pad_id": 0, "unk_id": 0, "cls_id": None, "sep_id": None, "mask_id": None},
            "template": {"prefix": [], "suffix": []}, "added_tokens": [], "split_special_tokens": False,
            "normalizer": [], "pre_tokenizer": [],
            "model": {"type": "unigram", "pieces": pieces, "scores": scores, "unk_id": 0}}


def as_file(spec: dict) -> dict:
    """``spec`` as the device reads it back from device_tokenizer.json."""
    return json.loads(json.dumps(spec, ensure_ascii=False, separators=(",", ":")))


# ---------------------------------------------------------------------------------------------
# The encodings, by hand


def test_scores_encoding_by_hand():
    # 1.0 = 0x3F800000, 0.5 = 0x3F000000; 1 + 2**-52 is 1.0 plus one double ulp; -2.0 = 0xC0000000
    # as int32 is -1073741824; a negative double one ulp farther from 0 has int64 bits + 1.
    e = encode_scores([1.0, 0.5, 1.0 + 2**-52, -2.0, math.nextafter(-2.0, -math.inf)])
    assert e == {"encoding": "f32-delta+f64-ulp", "f32": [0x3F800000, -0x00800000, 0x00800000, -1073741824 - 0x3F800000, 0],
                 "ulp": [0, 0, 1, 0, 1]}


def test_hand_written_scores_round_trip_exactly():
    encoded = encode_scores(HAND)
    assert max(abs(u) for u in encoded["ulp"][:11]) == 3  # the +-1..3 ulp cases are what they claim
    pieces = [f"p{i}" for i in range(len(HAND))]
    got = expand_v2(as_file(unigram_spec(pieces, encoded)))["model"]["pieces"]
    assert [p for p, _ in got] == pieces
    assert [bits(s) for _, s in got] == [bits(s) for s in HAND]  # bit-identical, so -0.0 stays -0.0


@pytest.mark.parametrize("score, what", [(math.nan, "not a finite number"), (math.inf, "not a finite number"),
                                         (-1e300, "outside float32's range"), (1e-300, "outside float32's range")])
def test_scores_the_format_cannot_hold_are_refused(score, what):
    with pytest.raises(UserError, match=what) as e:
        encode_scores([-1.0, score], ["a", "b"])
    assert "piece 'b'" in str(e.value) and str(e.value).count(". ") == 0  # one sentence


def test_ranges_by_hand():
    assert flat_ranges([[3, 5], [9, 9], [12, 20]]) == [3, 2, 4, 0, 3, 8]
    assert valued_ranges([[1, 2, "A"], [5, 5, "B"], [7, 9, "A"]]) == {"A": [1, 1, 5, 2], "B": [5, 0]}
    assert encode_charsmap({"b": "x", "a": "y", "e\u0301": "\u00e9"}) == {
        "codepoints": [97, 1], "replacements": ["y", "x"], "other": {"e\u0301": "\u00e9"}}


# ---------------------------------------------------------------------------------------------
# Real tokenizers: version 2 expanded is version 1, and both tokenize alike


@pytest.fixture(scope="module")
def unigram():
    """A 54-piece Unigram over the e5 tokenizer's normalizer (Precompiled charsmap, grapheme
    tables) and pre-tokenizer (Metaspace, Split isolating a character class)."""
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast

    from edgekit.checkpoint import resolve_teacher

    full = json.loads((Path(resolve_teacher("e5-small")) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = full["model"]["vocab"][:50] + [p for p in full["model"]["vocab"] if p[0] in ("你", "好", "▁新闻", "世界")]
    vocab.append(["<mask>", 0.0])
    model = {**full["model"], "vocab": vocab, "unk_id": 3}
    backend = {**full, "model": model, "added_tokens": [t for t in full["added_tokens"] if t["id"] < 4]}
    hf = PreTrainedTokenizerFast(tokenizer_object=HFTokenizer.from_str(json.dumps(backend)), bos_token="<s>",
                                 eos_token="</s>", unk_token="<unk>", pad_token="<pad>", cls_token="<s>", sep_token="</s>")
    return hf


@pytest.fixture(scope="module")
def wordpiece():
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(VOCAB.parent)


@pytest.mark.parametrize("name", ["unigram", "wordpiece"])
def test_v2_expands_to_v1_exactly_and_tokenizes_alike(name, request, tmp_path):
    hf = request.getfixturevalue(name)
    v1 = device_tokenizer_spec(hf, version=1)
    v2 = device_tokenizer_spec(hf)
    assert VERSION == 2 and v1["version"] == 1 and v2["version"] == 2
    assert v2 == encode_v2(v1)
    expanded = expand_v2(as_file(v2))
    assert expanded == v1
    if name == "unigram":
        assert [bits(s) for _, s in expanded["model"]["pieces"]] == [bits(s) for _, s in v1["model"]["pieces"]]
    # Both files load (version 1: backward compatibility) and give the Hugging Face ids.
    (tmp_path / "v1.json").write_text(json.dumps(v1, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "v2.json").write_text(json.dumps(v2, ensure_ascii=False), encoding="utf-8")
    old, new = Tokenizer.from_file(tmp_path / "v1.json"), Tokenizer.from_file(tmp_path / "v2.json")
    assert new.spec == old.spec == v1
    for text in TEXTS:
        want = hf(text)["input_ids"]
        assert old.encode(text) == new.encode(text) == want, text
    zipped = [len(zlib.compress(json.dumps(s, ensure_ascii=False, separators=(",", ":")).encode(), 9)) for s in (v1, v2)]
    # Measured: tiny unigram 0.29 (isolate ranges, charsmap, grapheme tables), bert-base-chinese 0.77
    # (its codepoint map; the 21,128-piece vocabulary is kept as it is).
    assert zipped[1] < {"unigram": 0.45, "wordpiece": 0.8}[name] * zipped[0], zipped


def test_unknown_version_and_malformed_v2_are_refused():
    spec = unigram_spec(["a"], encode_scores([-1.0]))
    with pytest.raises(BundleError, match=r"version 3; this runtime reads 'edgekit-device-tokenizer' versions 1 and 2\.$"):
        Tokenizer({**spec, "version": 3})
    with pytest.raises(BundleError, match="scores in an unknown encoding or of the wrong length"):
        Tokenizer(unigram_spec(["a", "b"], encode_scores([-1.0])))
    with pytest.raises(BundleError, match="a range list has an odd length"):
        Tokenizer({**spec, "pre_tokenizer": [{"type": "isolate", "ranges": [1, 2, 3]}]})
    with pytest.raises(BundleError, match="missing or has an unknown entry 'scores'"):
        Tokenizer({**spec, "model": {"type": "unigram", "pieces": ["a"], "unk_id": 0}})
    assert Tokenizer(spec).encode("a") == [0]


@pytest.mark.skipif(shutil.which("node") is None, reason="node not found: the web demo's tokenizer needs Node.js")
def test_web_reader_decodes_hand_written_scores_exactly(tmp_path):
    spec = unigram_spec([f"p{i}" for i in range(len(HAND))], encode_scores(HAND))
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    # The JS doubles leave as their 64-bit patterns (hex), so nothing is lost on the way back.
    script = (f"import {{ readFileSync }} from 'node:fs'; import {{ expandV2 }} from '{ROOT / 'web_demo' / 'tokenizer.js'}';"
              f"const s = expandV2(JSON.parse(readFileSync('{path}', 'utf8'))); const v = new DataView(new ArrayBuffer(8));"
              "console.log(JSON.stringify(s.model.pieces.map(([p, x]) => { v.setFloat64(0, x); return [p, v.getBigInt64(0).toString()]; })));")
    out = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert [p for p, _ in got] == [f"p{i}" for i in range(len(HAND))]
    assert [int(b) for _, b in got] == [bits(s) for s in HAND]
