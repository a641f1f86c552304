"""``device_tokenizer.json``: a checkpoint's Hugging Face tokenizer as plain data for phones and browsers.

``tokenizer.json`` describes a tokenizer by naming Rust components (``BertNormalizer``,
``Precompiled``...) whose behaviour depends on Unicode tables compiled into the ``tokenizers``
library. A Java or JS port cannot call them, and its own Unicode tables differ by version, so the
device format replaces every table-driven step by the table itself, read off the Hugging Face
objects here:

- ``BertNormalizer`` / ``Lowercase``: each codepoint is normalized alone (the normalizer works
  per character), giving ranges to remove, to turn into a space or to pad with spaces (CJK), and
  an explicit map for the rest (lowercasing, accent stripping);
- ``BertPreTokenizer``: the whitespace and punctuation codepoints, probed the same way;
- ``Precompiled`` (SentencePiece, the e5 Unigram tokenizers): the key -> replacement entries of
  the double-array trie in ``precompiled_charsmap``, plus the grapheme-cluster property tables
  (UAX #29) the normalizer segments with;
- ``Split`` on a character class (the e5 tokenizer isolates characters no piece contains): the
  class as codepoint ranges.

Version 2 stores the same content in forms that compress well under zlib (the phone has no xz):
scores as float32 bit deltas plus double-ulp corrections, codepoint ranges as flat delta lists,
character maps' single-codepoint keys as codepoint deltas (``encode_v2``; ``export/BUNDLE.md``).
``edgekit_device.tokenizer.expand_v2`` turns it back into version 1 exactly.

``edgekit_device.Tokenizer`` executes the result; ``export_model`` checks it against the Hugging
Face tokenizer on the sample texts before writing a bundle.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import struct

from edgekit.errors import UserError

FORMAT = "edgekit-device-tokenizer"
VERSION = 2
SCORES_ENCODING = "f32-delta+f64-ulp"
_SAFE_INT = 2**53 - 1  # the largest integer every JSON reader (JS numbers) parses exactly
_SURROGATES = range(0xD800, 0xE000)


def _codepoints():
    return (cp for cp in range(0x110000) if cp not in _SURROGATES)


def _ranges(cps) -> list[list[int]]:
    """Sorted codepoints -> [[first, last], ...]."""
    out: list[list[int]] = []
    for cp in cps:
        if out and cp == out[-1][1] + 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


# ---------------------------------------------------------------------------------------------
# Per-codepoint normalizers (BertNormalizer, Lowercase)


@functools.lru_cache(maxsize=8)
def _probe_codepoint_map(normalizer_json: str) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"x": 0}, "unk_token": "x"},
                                          "normalizer": json.loads(normalizer_json)}))
    normalize = tok.normalizer.normalize_str
    remove, space, pad, mapping = [], [], [], {}
    for cp in _codepoints():
        c = chr(cp)
        out = normalize(c)
        if out == c:
            continue
        if out == "":
            remove.append(cp)
        elif out == " ":
            space.append(cp)
        elif out == f" {c} ":
            pad.append(cp)
        else:
            mapping[f"{cp:X}"] = out
    return {"type": "codepoint_map", "remove": _ranges(remove), "space": _ranges(space), "pad": _ranges(pad),
            "map": mapping}


# ---------------------------------------------------------------------------------------------
# SentencePiece's precompiled charsmap


def _darts_offset(unit: int) -> int:
    return (unit >> 10) << ((unit & (1 << 9)) >> 6)


@functools.lru_cache(maxsize=8)
def charsmap_entries(charsmap_b64: str) -> dict[str, str]:
    """Every key -> replacement of a SentencePiece ``precompiled_charsmap``.

    Layout: u32 (little-endian) byte size of the trie, the trie (darts-clone double array of u32
    units keyed by the key's UTF-8 bytes; a leaf's value is an offset into the blob), then the
    blob of NUL-terminated replacement strings. Walks every path of the trie.
    """
    import numpy as np

    blob = base64.b64decode(charsmap_b64)
    (size,) = struct.unpack_from("<I", blob)
    units = np.frombuffer(blob, dtype="<u4", count=size // 4, offset=4).astype(np.int64)
    strings = blob[4 + size:]
    labels = np.arange(1, 256, dtype=np.int64)
    entries: dict[str, str] = {}
    stack = [(_darts_offset(int(units[0])), b"")]
    while stack:
        pos, key = stack.pop()
        children = pos ^ labels
        inside = children < len(units)
        children, child_labels = children[inside], labels[inside]
        found = (units[children] & ((1 << 31) | 0xFF)) == child_labels
        for child, label in zip(children[found].tolist(), child_labels[found].tolist()):
            unit = int(units[child])
            nxt = child ^ _darts_offset(unit)
            child_key = key + bytes([label])
            if (unit >> 8) & 1:
                start = int(units[nxt]) & 0x7FFFFFFF
                end = strings.index(b"\0", start)
                entries[child_key.decode("utf-8")] = strings[start:end].decode("utf-8")
            stack.append((nxt, child_key))
    return entries


@functools.lru_cache(maxsize=1)
def grapheme_tables() -> dict:
    """UAX #29 property tables (Grapheme_Cluster_Break, Extended_Pictographic, Indic_Conjunct_Break).

    Read from the ``regex`` module's Unicode data (a dependency of transformers)."""
    import regex

    cps = [cp for cp in _codepoints()]
    text = "".join(map(chr, cps))

    def ranges_of(prop: str) -> list[list[int]]:
        out = []
        for m in regex.finditer(r"\p{%s}+" % prop, text):
            out.append([cps[m.start()], cps[m.end() - 1]])
        return out

    gcb = []
    for value in ("CR", "LF", "Control", "Extend", "ZWJ", "Regional_Indicator", "Prepend", "SpacingMark",
                  "L", "V", "T", "LV", "LVT"):
        gcb += [[a, z, value] for a, z in ranges_of(f"Grapheme_Cluster_Break={value}")]
    incb = []
    for value in ("Consonant", "Linker", "Extend"):
        incb += [[a, z, value] for a, z in ranges_of(f"InCB={value}")]
    return {"unicode": f"regex {regex.__version__}", "gcb": sorted(gcb),
            "extended_pictographic": ranges_of("Extended_Pictographic"), "incb": sorted(incb)}


# ---------------------------------------------------------------------------------------------
# Pre-tokenizers


@functools.lru_cache(maxsize=8)
def _probe_bert_pre_tokenizer(pre_tokenizer_json: str) -> dict:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"x": 0}, "unk_token": "x"},
                                          "pre_tokenizer": json.loads(pre_tokenizer_json)}))
    pre = tok.pre_tokenizer.pre_tokenize_str
    whitespace, punctuation = [], []
    cps = [cp for cp in _codepoints() if cp != ord("a")]
    for begin in range(0, len(cps), 1 << 16):
        chunk = cps[begin:begin + (1 << 16)]
        # "a" between probes: a character that is neither whitespace nor punctuation glues to them.
        text = "a" + "a".join(map(chr, chunk)) + "a"
        covered = set()
        alone = set()
        for piece, (start, end) in pre(text):
            covered.update(range(start, end))
            if end - start == 1 and start % 2 == 1:
                alone.add(start)
        for k, cp in enumerate(chunk):
            i = 2 * k + 1
            if i not in covered:
                whitespace.append(cp)
            elif i in alone:
                punctuation.append(cp)
    return {"type": "bert", "whitespace": _ranges(whitespace), "punctuation": _ranges(punctuation)}


_CLASS = re.compile(r"\[((?:\\x\{[0-9A-Fa-f]+\}(?:-\\x\{[0-9A-Fa-f]+\})?)+)\]")


def _char_class_ranges(pattern: str) -> list[list[int]] | None:
    m = _CLASS.fullmatch(pattern)
    if not m:
        return None
    out = []
    for a, z in re.findall(r"\\x\{([0-9A-Fa-f]+)\}(?:-\\x\{([0-9A-Fa-f]+)\})?", m.group(1)):
        out.append([int(a, 16), int(z or a, 16)])
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# Conversion


def _unsupported(what: str, node) -> UserError:
    return UserError(f"the checkpoint's tokenizer uses {what} {json.dumps(node)[:120]}, which the device tokenizer "
                     "cannot express; export a model with a BERT WordPiece or e5-style Unigram tokenizer.")


def _normalizer_steps(node) -> list[dict]:
    if node is None:
        return []
    kind = node.get("type")
    if kind == "Sequence":
        return [step for child in node["normalizers"] for step in _normalizer_steps(child)]
    if kind in ("BertNormalizer", "Lowercase"):
        return [_probe_codepoint_map(json.dumps(node, sort_keys=True))]
    if kind == "Precompiled":
        charsmap = node.get("precompiled_charsmap")
        if not charsmap:
            return []
        return [{"type": "precompiled", "map": charsmap_entries(charsmap), "graphemes": grapheme_tables()}]
    if kind == "Replace":
        pattern = node["pattern"]
        if "Regex" in pattern:
            return [{"type": "replace", "regex": pattern["Regex"], "content": node["content"]}]
        return [{"type": "replace", "string": pattern["String"], "content": node["content"]}]
    raise _unsupported("the normalizer", node)


def _pre_tokenizer_steps(node) -> list[dict]:
    if node is None:
        return []
    kind = node.get("type")
    if kind == "Sequence":
        return [step for child in node["pretokenizers"] for step in _pre_tokenizer_steps(child)]
    if kind == "BertPreTokenizer":
        return [_probe_bert_pre_tokenizer(json.dumps(node, sort_keys=True))]
    if kind == "Metaspace":
        if node.get("split") or node.get("prepend_scheme", "always") not in ("always", "never"):
            raise _unsupported("the pre-tokenizer", node)
        return [{"type": "metaspace", "replacement": node["replacement"],
                 "prepend_scheme": node.get("prepend_scheme", "always"), "split": False}]
    if kind == "Split" and node.get("behavior") == "Isolated" and not node.get("invert"):
        ranges = _char_class_ranges(node["pattern"].get("Regex", "")) if "Regex" in node["pattern"] else None
        if ranges is not None:
            return [{"type": "isolate", "ranges": ranges}]
    raise _unsupported("the pre-tokenizer", node)


def _model(node) -> dict:
    kind = node.get("type")
    if kind == "WordPiece":
        vocab = node["vocab"]
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise UserError("the WordPiece vocabulary's ids are not 0..N-1 without gaps; re-save the tokenizer "
                            "(edgekit vocab trim renumbers pieces densely).")
        if node["unk_token"] not in vocab:
            raise UserError(f"the WordPiece unknown token {node['unk_token']!r} is not in the vocabulary; fix the tokenizer.")
        return {"type": "wordpiece", "vocab": [t for t, _ in by_id], "unk_id": vocab[node["unk_token"]],
                "continuing_subword_prefix": node.get("continuing_subword_prefix") or "##",
                "max_input_chars_per_word": node.get("max_input_chars_per_word", 100)}
    if kind == "Unigram":
        if node.get("byte_fallback"):
            raise _unsupported("Unigram with byte fallback", {"type": "Unigram", "byte_fallback": True})
        if node.get("unk_id") is None:
            raise UserError("the Unigram tokenizer has no unknown piece (unk_id); fix the tokenizer.")
        return {"type": "unigram", "pieces": [[p, s] for p, s in node["vocab"]], "unk_id": node["unk_id"],
                "fuse_unk": True, "byte_fallback": False}
    raise _unsupported("the model", {"type": kind})


def _template(node) -> dict:
    if node is None:
        return {"prefix": [], "suffix": []}
    kind = node.get("type")
    if kind == "TemplateProcessing":
        prefix, suffix, seen_sequence = [], [], False
        for item in node["single"]:
            if "Sequence" in item:
                seen_sequence = True
                continue
            ids = node["special_tokens"][item["SpecialToken"]["id"]]["ids"]
            (suffix if seen_sequence else prefix).extend(ids)
        return {"prefix": prefix, "suffix": suffix}
    if kind in ("BertProcessing", "RobertaProcessing"):
        return {"prefix": [node["cls"][1]], "suffix": [node["sep"][1]]}
    if kind == "Sequence":
        steps = [s for s in node["processors"] if s.get("type") != "ByteLevel"]
        if len(steps) == 1:
            return _template(steps[0])
    raise _unsupported("the post-processor", node)


def device_tokenizer_spec(tokenizer, version: int = VERSION) -> dict:
    """The ``device_tokenizer.json`` content for a fast (``tokenizer.json``-backed) HF tokenizer,
    in format ``version`` (1: plain tables; 2: the same tables encoded by ``encode_v2``)."""
    if version not in (1, 2):
        raise UserError(f"device tokenizer version {version!r} does not exist; use 1 or 2.")
    spec = _spec_v1(tokenizer)
    return spec if version == 1 else encode_v2(spec)


def _spec_v1(tokenizer) -> dict:
    backend_tok = getattr(tokenizer, "backend_tokenizer", None)
    if backend_tok is None:
        raise UserError("the checkpoint's tokenizer has no tokenizer.json backend; save it with a fast tokenizer.")
    backend = json.loads(backend_tok.to_str())
    added = []
    for token in backend.get("added_tokens", []):
        if token.get("lstrip") or token.get("rstrip") or token.get("single_word") or token.get("normalized"):
            raise _unsupported("an added token with strip/word/normalized flags", token)
        added.append({"id": token["id"], "content": token["content"], "special": bool(token.get("special"))})
    model = _model(backend["model"])
    special = {"pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
               "unk_id": model["unk_id"], "cls_id": tokenizer.cls_token_id, "sep_id": tokenizer.sep_token_id,
               "mask_id": getattr(tokenizer, "mask_token_id", None)}
    return {
        "format": FORMAT,
        "version": 1,
        "type": model["type"],
        "special": special,
        "template": _template(backend.get("post_processor")),
        "added_tokens": added,
        "split_special_tokens": bool(getattr(tokenizer, "split_special_tokens", False)),
        "normalizer": _normalizer_steps(backend.get("normalizer")),
        "pre_tokenizer": _pre_tokenizer_steps(backend.get("pre_tokenizer")),
        "model": model,
    }


# ---------------------------------------------------------------------------------------------
# Version 2: the same content, smaller under zlib


def _f32_bits(x: float) -> int:
    """int32 bit pattern of float32(x), rounded to nearest (OverflowError beyond float32's range)."""
    return struct.unpack("<i", struct.pack("<f", x))[0]


def _f64_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def encode_scores(scores, pieces=None) -> dict:
    """Exact doubles as float32 bit-pattern deltas plus a correction in double ulps.

    With ``b_i`` = int32 bits of float32(s_i) and ``u_i`` = int64 bits(s_i) - int64
    bits(double(float32(s_i))): ``f32 = [b_0, b_1 - b_0, b_2 - b_1, ...]``, ``ulp = [u_0, u_1, ...]``.
    Decoding: ``b_i`` = cumulative sum, ``s_i`` = the double whose int64 bits are
    bits(double(float from bits b_i)) + u_i. Scores sorted descending give small positive deltas
    (negative floats' int32 patterns grow with magnitude); scores printed from float32 have u_i in
    {-1, 0, 1}. Every number stays within +-2**53 so JavaScript parses it exactly.
    """
    f32, ulp, previous = [], [], 0
    for i, s in enumerate(scores):
        name = f"piece {pieces[i]!r}" if pieces is not None else f"piece {i}"
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
            raise UserError(f"the Unigram score of {name} is {s!r}, not a finite number; fix the tokenizer's scores.")
        s = float(s)
        try:
            bits = _f32_bits(s)
        except OverflowError:
            bits = None
        if bits is not None:
            u = _f64_bits(s) - _f64_bits(struct.unpack("<f", struct.pack("<i", bits))[0])
        if bits is None or abs(u) > _SAFE_INT:
            raise UserError(f"the Unigram score {s!r} of {name} is outside float32's range (magnitude 1e-38 to "
                            "3.4e38, or 0), which device_tokenizer.json cannot store exactly; fix the tokenizer's "
                            "scores (they are log-probabilities).")
        f32.append(bits - previous)
        ulp.append(u)
        previous = bits
    return {"encoding": SCORES_ENCODING, "f32": f32, "ulp": ulp}


def flat_ranges(ranges) -> list[int]:
    """``[[a0, z0], [a1, z1], ...]`` -> ``[a0, z0 - a0, a1 - z0, z1 - a1, ...]``: each start relative
    to the previous range's end (0 before the first), each end relative to its start. Decoding:
    ``end = 0; for (d, n) in pairs: a = end + d; end = a + n; emit [a, end]``."""
    out, end = [], 0
    for a, z, *_ in ranges:
        out += [a - end, z - a]
        end = z
    return out


def valued_ranges(ranges) -> dict[str, list[int]]:
    """``[[a, z, value], ...]`` -> ``{value: flat_ranges(the ranges with that value)}``; the reader
    merges the lists and sorts by start."""
    by_value: dict[str, list] = {}
    for a, z, value in ranges:
        by_value.setdefault(value, []).append([a, z])
    return {value: flat_ranges(rs) for value, rs in by_value.items()}


def encode_charsmap(mapping: dict[str, str]) -> dict:
    """Precompiled ``map`` -> ``{"codepoints": deltas, "replacements": [...], "other": {...}}``.

    Single-codepoint keys sorted by codepoint ``c_0 < c_1 < ...`` become ``[c_0, c_1 - c_0, ...]``
    with their replacements in the same order; longer keys stay a plain ``other`` object."""
    single = sorted((k for k in mapping if len(k) == 1), key=ord)
    codepoints, previous = [], 0
    for k in single:
        codepoints.append(ord(k) - previous)
        previous = ord(k)
    return {"codepoints": codepoints, "replacements": [mapping[k] for k in single],
            "other": {k: v for k, v in mapping.items() if len(k) != 1}}


def encode_v2(spec: dict) -> dict:
    """A version-1 spec in version 2 (``export/BUNDLE.md``): unigram ``pieces`` become a list of
    strings with ``scores`` from ``encode_scores``; every range list ``flat_ranges`` (valued ones
    ``valued_ranges``); the precompiled ``map`` and the codepoint map's ``map`` (hex keys)
    ``encode_charsmap``. Everything else is kept."""
    out = dict(spec, version=2)
    normalizers = []
    for step in spec["normalizer"]:
        step = dict(step)
        if step["type"] == "codepoint_map":
            for key in ("remove", "space", "pad"):
                step[key] = flat_ranges(step.get(key, []))
            step["map"] = encode_charsmap({chr(int(k, 16)): v for k, v in step.get("map", {}).items()})
        elif step["type"] == "precompiled":
            g = step["graphemes"]
            step["map"] = encode_charsmap(step["map"])
            step["graphemes"] = {**g, "gcb": valued_ranges(g["gcb"]), "incb": valued_ranges(g.get("incb", [])),
                                 "extended_pictographic": flat_ranges(g["extended_pictographic"])}
        normalizers.append(step)
    pre_tokenizers = []
    for step in spec["pre_tokenizer"]:
        step = dict(step)
        if step["type"] == "bert":
            step["whitespace"], step["punctuation"] = flat_ranges(step["whitespace"]), flat_ranges(step["punctuation"])
        elif step["type"] == "isolate":
            step["ranges"] = flat_ranges(step["ranges"])
        pre_tokenizers.append(step)
    model = dict(spec["model"])
    if model["type"] == "unigram":
        pieces = [p for p, _ in model["pieces"]]
        model["scores"] = encode_scores([s for _, s in model["pieces"]], pieces)
        model["pieces"] = pieces
    out.update(normalizer=normalizers, pre_tokenizer=pre_tokenizers, model=model)
    return out
