"""Golden outputs of the Python reference runtime (``edgekit_device``) for the app's JVM tests.

The Java core in ``android_demo/core`` ports ``edgekit_device``'s tokenizer, manifest checks,
pre/post-processing and exit rules. It cannot run ONNX or TFLite on the build machine, so the
tests compare everything around the model against what the reference runtime gives:

- token ids of every text (TNEWS and English sentences, probe texts, random strings) under each
  device tokenizer file, with and without truncation;
- for each bundle (cls- and mean-pooled heads): the manifest facts, the ids the bundle's tokenizer gives, every layer's logits
  (computed by the real bundle through ``edgekit_device``), their entropies, and the predictions
  of ``edgekit_device.Predictor`` for fixed exits and for dynamic exits (patience, entropy).

The predictions are made by the real ``Predictor`` code on a replay backend that serves the
recorded logits, so Python and Java decide on bit-identical logits; the Java test replays the
same logits through its own ``GraphRunner``. Entropy thresholds are placed in the middle of gaps
between observed entropies, so float rounding cannot flip a decision on either side.

    python android_demo/tools/make_goldens.py OUT.json --bundle NAME=DIR ... --tokenizer NAME=FILE ... \
        [--pack NAME=BUNDLE.edgepack ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgekit_device import Predictor, Tokenizer, load_bundle
from edgekit_device.backend import Backend
from edgekit_device.runtime import prediction_entropy

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MAX_LENGTH = 24  # truncation length of the tokenizer goldens (many TNEWS titles are longer)

# Texts where tokenizers tend to differ: scripts, grapheme clusters (flags, ZWJ emoji, skin tones,
# Hangul jamo, Indic conjuncts), normalization (full width, ligatures, accents, compatibility
# characters), whitespace runs and controls, astral CJK, added tokens typed as text, long words.
TRICKY = [
    "🇨🇳🇺🇸🇯🇵 flags 🇨🇳 and a lone 🇨",
    "family 👨‍👩‍👧‍👦 and 👍🏽👋🏿 skin tones, ❤️ with VS16",
    "Hangul jamo \u1100\u1161\u11a8 vs 각, 한국어 문장입니다.",
    "क्षत्रिय हिन्दी भाषा, ক্ষমা বাংলা, ภาษาไทยง่ายๆ",
    "e\u0301\u0302 combining stacks, A\u030a vs Å, ﬁﬂ ligatures, Ⅻ roman, ㍿ ㎏ ℃",
    "ＡＢＣ ａｂｃ １２３ 全角！？（）「」【】",
    "astral CJK 𠀀𠀁𪚥𩸽 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters",
    "[CLS] [SEP] [MASK] [UNK] [PAD] typed as text, and <s> </s> <mask> <unk> <pad> too",
    "##ing ## # #hashtag @mention",
    "a    b\t\tc\n\nd\r\ne\u3000f\u00a0g\u2003h",
    "x" * 120 + " supercalifragilisticexpialidocious",
    "y" * 100 + " " + "z" * 101,  # max_input_chars_per_word is 100
    "\u200b",
    "[CLS]\u200b[SEP] <s>\u200b</s>",
    "中文English混合mixed文本text，标点。、；：‘’“”",
    "数字12345和小数3.14159以及百分比99%和价格¥1,000",
    "\u200b\u200c\u200d\ufeff zero width and BOM",
    "Ελληνικά ΟΔΟΣ Straße İstanbul ǅ ǈ ǋ titlecase",
    "русский текст, українська мова, العربية, עברית",
    "   ",
    "\t",
    "。",
    "a",
    "，".join(["这是一个很长的句子用来测试截断"] * 12),
    "café\u0301 noe\u0308l Zoe\u0308 A\u030a\u0301 e\u0301\u0302\u0303 ｅ\u0301 e\u0301\u0301",
]


# Codepoint ranges the random texts draw from: every kind of character the normalizers, the
# grapheme rules and the pre-tokenizers treat specially.
FUZZ_RANGES = [
    (0x20, 0x7E), (0x00, 0x1F), (0x80, 0xFF), (0x100, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
    (0x590, 0x6FF), (0x900, 0x97F), (0x980, 0x9FF), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F),
    (0x20A0, 0x20CF), (0x2100, 0x218F), (0x2460, 0x24FF), (0x3000, 0x303F), (0x3040, 0x30FF), (0x3130, 0x318F),
    (0x3200, 0x33FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFB00, 0xFB4F), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF),
    (0x1D400, 0x1D7FF), (0x1F1E6, 0x1F1FF), (0x1F300, 0x1F64F), (0x1F3FB, 0x1F3FF), (0x20000, 0x2A6DF),
    (0x200D, 0x200D), (0x20, 0x20),
]


def fuzz_texts(n: int = 200, seed: int = 0) -> list[str]:
    """``n`` random strings of 1-24 codepoints drawn from ``FUZZ_RANGES`` (no surrogates: Python,
    Java and Hugging Face tokenizers cannot all represent them)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 24)):
            first, last = rng.choice(FUZZ_RANGES)
            chars.append(chr(rng.randint(first, last)))
        out.append("".join(chars))
    return out


def tnews_sentences(n: int, split: str = "dev.json") -> list[str]:
    lines = (DATA / "clue" / "tnews" / split).read_text(encoding="utf-8").split("\n")
    return [json.loads(line)["sentence"] for line in lines if line.strip()][:n]


def golden_texts(n_zh: int = 200, n_en: int = 40, n_fuzz: int = 200) -> list[str]:
    """TNEWS sentences, English probe sentences, the export's probe texts, TRICKY and random strings."""
    from edgekit.export.parity import PROBE_TEXTS

    if str(ROOT) not in sys.path:  # the English probe sentences live with the tests' e5 oracle
        sys.path.insert(0, str(ROOT))
    from tests.oracles.e5_reference import english_probe_sentences

    return tnews_sentences(n_zh) + english_probe_sentences(n_en) + list(PROBE_TEXTS) + TRICKY + fuzz_texts(n_fuzz)


def tokenizer_golden(name: str, path, texts: list[str], max_length: int = MAX_LENGTH) -> dict:
    """Ids of ``texts`` (and, for a SentencePiece normalizer, their grapheme clusters in codepoints)."""
    from edgekit_device.tokenizer import Graphemes

    tok = Tokenizer.from_file(path)
    precompiled = [step for step in tok.spec["normalizer"] if step["type"] == "precompiled"]
    graphemes = Graphemes(precompiled[0]["graphemes"]) if precompiled else None
    cases = []
    for t in texts:
        case = {"text": t, "ids": tok.encode(t), "truncated": tok.encode(t, max_length)}
        if graphemes is not None:
            case["clusters"] = [len(c) for c in graphemes.split(t)]
        cases.append(case)
    return {"name": name, "file": str(Path(path).resolve()), "type": tok.type, "max_length": max_length,
            "pad_id": tok.pad_id, "unk_id": tok.unk_id, "num_special": tok.num_special, "cases": cases}


# Multi-codepoint keys inside one grapheme cluster, some with a shorter key as a prefix: real
# SentencePiece charsmaps (nmt_nfkc) have them; the e5 import's per-codepoint map does not.
# "\u200b" -> "" makes a text segment normalize to nothing (the pre-tokenizers then see an empty word).
EXTRA_CHARSMAP = {"e": "e", "e\u0301": "\u00e9", "o\u0308": "\u00f6", "A\u030a\u0301": "\u01fa", "\u200b": ""}


# Added tokens matched even with split_special_tokens (not special), the shorter one listed first:
# the longest match must win.
EXTRA_ADDED = [{"id": 10, "content": "<s", "special": False}, {"id": 11, "content": "<s>", "special": False}]


def with_extra_entries(spec: dict, charsmap: dict = EXTRA_CHARSMAP, added: list = EXTRA_ADDED) -> dict:
    """A copy of a device tokenizer spec whose ``precompiled`` step also maps ``charsmap`` and
    whose added tokens start with ``added``: exercises the shortest-matching-key rule on whole
    clusters and the longest-first added-token match, which real vocabularies rarely reach."""
    import copy

    from edgekit.export.device_tokenizer import encode_v2
    from edgekit_device.tokenizer import expand_v2

    spec = copy.deepcopy(spec)
    v2 = spec.get("version") == 2  # edit the plain tables, then write the version that came in
    if v2:
        spec = expand_v2(spec)
    step = next(s for s in spec["normalizer"] if s["type"] == "precompiled")
    step["map"].update(charsmap)
    spec["added_tokens"] = list(added) + spec["added_tokens"]
    return encode_v2(spec) if v2 else spec


class ReplayBackend(Backend):
    """Serves recorded logits: ``embed`` marks the example (found by its ids) in the hidden state,
    ``layer`` counts depth in it, ``head`` returns that example's logits at that depth."""

    format = "replay"

    def __init__(self, rows: list[list[int]], logits: np.ndarray, pad_id: int):
        super().__init__()
        self.index = {}
        for i, row in enumerate(rows):
            self.index.setdefault(tuple(row), i)
        self.logits = np.asarray(logits, dtype=np.float32)  # (K, N, C)
        self.pad_id = pad_id

    def load(self, bundle_dir, manifest: dict) -> None:
        self.graphs = manifest["graphs"]

    def _out(self, name: str) -> str:
        return self.graphs[name]["outputs"][0]["name"]

    def _rows(self, input_ids: np.ndarray) -> np.ndarray:
        found = []
        for row in input_ids.tolist():
            while row and row[-1] == self.pad_id:
                row.pop()
            found.append(self.index.get(tuple(row), 0))  # an all-padding filler row of a static batch
        return np.asarray(found)

    def run(self, name: str, feeds: dict) -> dict:
        if name == "model":
            return {self._out(name): self.logits[0, self._rows(feeds["input_ids"])]}
        if name == "embed":
            ids = feeds["input_ids"]
            size = next(s for s, a in zip(self.graphs["layer"]["inputs"][0]["shape"],
                                          self.graphs["layer"]["inputs"][0]["axes"]) if a == "hidden")
            hidden = np.zeros(ids.shape + (size,), dtype=np.float32)
            hidden[:, 0, 0] = self._rows(ids)
            return {self._out(name): hidden}
        if name == "layer":
            hidden = feeds["hidden"].copy()
            hidden[:, 0, 1] += 1
            return {self._out(name): hidden}
        hidden = feeds["hidden"]
        rows, depth = hidden[:, 0, 0].astype(int), hidden[:, 0, 1].astype(int)
        return {self._out(name): self.logits[np.maximum(depth, 1) - 1, rows]}


def _thresholds(entropies: np.ndarray, quantiles=(0.2, 0.5, 0.8), gap: float = 1e-4) -> list[float]:
    """Thresholds between two observed entropies (float32-exact decisions): near the quantiles, at
    the midpoint of a gap of at least ``gap`` nats."""
    values = np.unique(entropies.astype(np.float64).ravel())
    mids = [(a + b) / 2 for a, b in zip(values[:-1], values[1:]) if b - a >= gap]
    if not mids:
        return [float(values.max()) + 1.0]
    out = []
    for q in quantiles:
        target = np.quantile(values, q)
        out.append(float(min(mids, key=lambda m: abs(m - target))))
    return sorted(set(out))


def _result_rows(prediction) -> list[dict]:
    return [{"label": label, "label_id": int(i), "exit_layer": int(k), "scores": [float(s) for s in scores]}
            for label, i, k, scores in zip(prediction.labels, prediction.label_ids, prediction.exit_layers,
                                           prediction.scores)]


def bundle_golden(name: str, bundle_dir, texts: list[str]) -> dict:
    """Manifest facts, ids, per-layer logits (real bundle) and Predictor decisions (replayed) for ``texts``."""
    bundle = load_bundle(bundle_dir)
    real = Predictor(bundle, threads=1)
    tok = real.tokenizer
    rows = [tok.encode(t, bundle.max_length) for t in texts]
    ids, mask = real.encode(texts)
    if bundle.layout == "fixed":
        logits = real.exit_logits(ids, mask)
    else:
        logits = real.exit_logits(ids, mask, max(bundle.exit_layers))
    logits = np.asarray(logits, dtype=np.float32)
    entropies = prediction_entropy(logits)  # (K, N) float32

    replay = Predictor(bundle, backend=ReplayBackend(rows, logits, tok.pad_id))
    runs = []
    for k in bundle.exit_layers:
        p = replay.predict(texts, exit_layer=k)
        runs.append({"kind": "fixed", "exit_layer": k, "layer_evaluations": p.layer_evaluations,
                     "results": _result_rows(p)})
    if bundle.layout == "per-layer":
        depth = max(bundle.exit_layers)
        dynamic = [("patience", {"patience": p}) for p in (1, 2, 3)]
        dynamic += [("entropy", {"entropy_threshold": t}) for t in _thresholds(entropies[:-1])]
        if depth > 2:
            dynamic += [("patience", {"patience": 1, "max_layer": depth - 1}),
                        ("entropy", {"entropy_threshold": _thresholds(entropies[:1])[-1], "max_layer": depth - 1})]
        for mode, kwargs in dynamic:
            p = replay.predict(texts, mode=mode, **kwargs)
            runs.append({"kind": mode, "patience": kwargs.get("patience"),
                         "threshold": kwargs.get("entropy_threshold"), "max_layer": kwargs.get("max_layer"),
                         "layer_evaluations": p.layer_evaluations,
                         "exit_layers_seen": sorted(set(p.exit_layers.tolist())),
                         "results": _result_rows(p)})
    manifest = bundle.manifest
    return {
        "name": name, "dir": str(Path(bundle_dir).resolve()),
        "expect": {"format": manifest["format"], "layout": manifest["layout"], "precision": manifest["precision"],
                   "max_length": bundle.max_length, "exits": bundle.exit_layers, "labels": bundle.labels,
                   "pooling": bundle.pooling,
                   "pad_id": tok.pad_id, "graphs": sorted(manifest["graphs"])},
        "texts": texts, "ids": rows,
        "layer_logits": [[[float(x) for x in row] for row in layer] for layer in logits],
        "entropies": [[float(x) for x in layer] for layer in entropies],
        "runs": runs,
    }


def write_goldens(out, bundles: dict, tokenizers: dict, texts: list[str] | None = None,
                  bundle_texts: list[str] | None = None, packs: dict | None = None,
                  bad_packs: list[dict] | None = None) -> Path:
    """Write the golden file ``out`` for ``bundles`` {name: dir} and ``tokenizers`` {name: device_tokenizer.json}.

    ``packs`` {bundle name: .edgepack of that bundle}: the Java side loads that bundle from its pack
    (``Bundle.loadPacked``, the app's entry) and checks every decoded file against the directory.
    ``bad_packs`` [{"file", "expect"}]: packs the Java side must refuse with a message containing
    ``expect``."""
    texts = golden_texts() if texts is None else texts
    if bundle_texts is None:
        bundle_texts = tnews_sentences(40) + TRICKY + ["", "the same text twice", "the same text twice"]
    packs = packs or {}
    golden = {"tokenizers": [tokenizer_golden(n, p, texts) for n, p in tokenizers.items()],
              "bundles": [{**bundle_golden(n, d, bundle_texts),
                           **({"pack": str(Path(packs[n]).resolve())} if n in packs else {})}
                          for n, d in bundles.items()],
              "bad_packs": [{**b, "file": str(Path(b["file"]).resolve())} for b in bad_packs or []]}
    out = Path(out)
    # ASCII escapes (surrogate pairs for astral characters): the Java JSON reader is tested on them too.
    out.write_text(json.dumps(golden, ensure_ascii=True), encoding="utf-8")
    return out


def _pairs(values: list[str]) -> dict:
    out = {}
    for v in values or []:
        name, _, path = v.partition("=")
        if not path:
            raise SystemExit(f"expected NAME=PATH, got {v!r}")
        out[name] = path
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--bundle", action="append", help="NAME=DIR of a bundle (repeatable)")
    parser.add_argument("--tokenizer", action="append", help="NAME=FILE of a device_tokenizer.json (repeatable)")
    parser.add_argument("--pack", action="append", help="NAME=FILE: the .edgepack of bundle NAME (repeatable)")
    args = parser.parse_args(argv)
    print(write_goldens(args.out, _pairs(args.bundle), _pairs(args.tokenizer), packs=_pairs(args.pack)))


if __name__ == "__main__":
    main()
