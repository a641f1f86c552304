"""The device tokenizer: ``device_tokenizer.json`` executed in plain Python.

This file is the executable specification the phone app (Java) and the browser demo (JS) port
line by line; ``export/BUNDLE.md`` describes the same steps in prose. Everything that depends on
Unicode tables (which characters a normalizer removes, lowercases or pads, which are
punctuation, grapheme cluster properties) is data inside the JSON file, extracted from the
checkpoint's Hugging Face tokenizer at export time, so a port needs no Unicode library and gives
the same ids on every platform.

Pipeline for one text (``Tokenizer.encode``)::

    split out added tokens  ->  for each remaining segment:  normalize -> pre-tokenize -> model
    ->  truncate to max_length - (number of template ids)  ->  template prefix + ids + suffix

Two models: ``wordpiece`` (BERT: greedy longest match with a ``##`` continuation prefix) and
``unigram`` (SentencePiece: Viterbi over piece log-probabilities, runs of unknown characters fused
into one unknown id).
"""

from __future__ import annotations

import bisect
import json
import re
import struct
from pathlib import Path

from .errors import BundleError

FORMAT = "edgekit-device-tokenizer"
VERSION = 2  # the newest version; 1 is read too
VERSIONS = (1, 2)
UNK_PENALTY = 10.0  # SentencePiece / tokenizers: an unknown character scores min_score - 10


# ---------------------------------------------------------------------------------------------
# Version 2 -> version 1 (export/BUNDLE.md, "Version 2")


def expand_v2(spec: dict) -> dict:
    """The version-1 structure of a version-2 spec, exactly (the writer is
    ``edgekit.export.device_tokenizer.encode_v2``).

    Ranges ``[d0, n0, d1, n1, ...]``: ``end = 0``, then per pair ``a = end + d``, ``end = a + n`` gives
    ``[a, end]``; valued ranges ``{value: flat}`` are merged and sorted. Scores: ``bits`` = cumulative
    sum of ``f32``, score = the double with int64 bits(double(float32 from int32 bits)) + ``ulp``.
    Character maps (precompiled ``map``; codepoint map ``map``, whose keys are then written in hex):
    ``codepoints`` cumulative sums are the keys of ``replacements``, plus ``other``.
    """
    def ranges(flat):
        if len(flat) % 2:
            raise ValueError("a range list has an odd length")
        out, end = [], 0
        for i in range(0, len(flat), 2):
            a = end + int(flat[i])
            end = a + int(flat[i + 1])
            out.append([a, end])
        return out

    def valued(by_value):
        return sorted([a, z, value] for value, flat in by_value.items() for a, z in ranges(flat))

    def scores(encoded, count):
        if encoded.get("encoding") != "f32-delta+f64-ulp" or not len(encoded["f32"]) == len(encoded["ulp"]) == count:
            raise BundleError("device tokenizer version 2 has scores in an unknown encoding or of the wrong length; "
                              "re-export the bundle.")
        out, bits = [], 0
        for delta, ulp in zip(encoded["f32"], encoded["ulp"]):
            bits += delta
            f = struct.unpack("<f", struct.pack("<i", bits))[0]
            out.append(struct.unpack("<d", struct.pack("<q", struct.unpack("<q", struct.pack("<d", f))[0] + ulp))[0])
        return out

    def charmap(m):
        keys, cp = [], 0
        for delta in m["codepoints"]:
            cp += delta
            keys.append(chr(cp))
        return {**dict(zip(keys, m["replacements"], strict=True)), **m.get("other", {})}

    try:
        normalizers = []
        for step in spec["normalizer"]:
            step = dict(step)
            if step["type"] == "codepoint_map":
                for key in ("remove", "space", "pad"):
                    step[key] = ranges(step.get(key, []))
                step["map"] = {f"{ord(k):X}": v for k, v in charmap(step["map"]).items()}
            elif step["type"] == "precompiled":
                g = step["graphemes"]
                step["map"] = charmap(step["map"])
                step["graphemes"] = {**g, "gcb": valued(g["gcb"]), "incb": valued(g.get("incb", {})),
                                     "extended_pictographic": ranges(g["extended_pictographic"])}
            normalizers.append(step)
        pre_tokenizers = []
        for step in spec["pre_tokenizer"]:
            step = dict(step)
            if step["type"] == "bert":
                step["whitespace"], step["punctuation"] = ranges(step["whitespace"]), ranges(step["punctuation"])
            elif step["type"] == "isolate":
                step["ranges"] = ranges(step["ranges"])
            pre_tokenizers.append(step)
        model = dict(spec["model"])
        if model["type"] == "unigram":
            encoded = model.pop("scores")
            model["pieces"] = [[p, s] for p, s in zip(model["pieces"], scores(encoded, len(model["pieces"])))]
    except (TypeError, ValueError, AttributeError, OverflowError, struct.error) as e:
        raise BundleError(f"device tokenizer version 2 is malformed ({e}); re-export the bundle.") from None
    return {**spec, "version": 1, "normalizer": normalizers, "pre_tokenizer": pre_tokenizers, "model": model}


# ---------------------------------------------------------------------------------------------
# Codepoint range tables: [[first, last], ...] sorted, inclusive; or [[first, last, value], ...]


class RangeSet:
    """Membership in sorted inclusive codepoint ranges."""

    def __init__(self, ranges):
        self.starts = [int(r[0]) for r in ranges]
        self.ends = [int(r[1]) for r in ranges]
        self.values = [r[2] if len(r) > 2 else True for r in ranges]

    def get(self, cp: int, default=None):
        i = bisect.bisect_right(self.starts, cp) - 1
        if i >= 0 and cp <= self.ends[i]:
            return self.values[i]
        return default

    def __contains__(self, cp: int) -> bool:
        return self.get(cp) is not None


# ---------------------------------------------------------------------------------------------
# Grapheme clusters (UAX #29 extended grapheme clusters; the Precompiled normalizer needs them)


class Graphemes:
    """Splits text into extended grapheme clusters with the property tables of the JSON file.

    ``gcb``: Grapheme_Cluster_Break ranges (CR, LF, Control, Extend, ZWJ, Regional_Indicator,
    Prepend, SpacingMark, L, V, T, LV, LVT; everything else is Other); ``extended_pictographic``:
    ranges; ``incb``: Indic_Conjunct_Break ranges (Consonant, Linker, Extend).
    """

    def __init__(self, spec: dict):
        self.gcb = RangeSet(spec["gcb"])
        self.pict = RangeSet(spec["extended_pictographic"])
        self.incb = RangeSet(spec.get("incb", []))

    def split(self, text: str) -> list[str]:
        if not text:
            return []
        clusters, start = [], 0
        props = [self.gcb.get(ord(c), "Other") for c in text]
        ri_run = 0            # regional indicators in a row ending at i-1 (GB12/13)
        emoji_zwj = False     # i-1 is ZWJ preceded by ExtPict Extend* (GB11)
        pict_ext = False      # ExtPict Extend* ends at i-1
        incb_state = 0        # 0 none, 1 Consonant [Extend|Linker]* seen, 2 ... with a Linker (GB9c)
        for i in range(len(text)):
            cp = ord(text[i])
            p = props[i]
            if i > 0 and self._is_break(props[i - 1], p, cp, ri_run, emoji_zwj, incb_state):
                clusters.append(text[start:i])
                start = i
            # update state with character i
            ri_run = ri_run + 1 if p == "Regional_Indicator" else 0
            emoji_zwj = p == "ZWJ" and pict_ext
            if cp in self.pict:
                pict_ext = True
            elif p != "Extend":
                pict_ext = False
            incb = self.incb.get(cp)
            if incb == "Consonant":
                incb_state = 1
            elif incb == "Linker" and incb_state:
                incb_state = 2
            elif incb == "Extend" and incb_state:
                pass
            else:
                incb_state = 0
        clusters.append(text[start:])
        return clusters

    def _is_break(self, prev: str, cur: str, cp: int, ri_run: int, emoji_zwj: bool, incb_state: int) -> bool:
        if prev == "CR" and cur == "LF":                                   # GB3
            return False
        if prev in ("Control", "CR", "LF") or cur in ("Control", "CR", "LF"):  # GB4, GB5
            return True
        if prev == "L" and cur in ("L", "V", "LV", "LVT"):                  # GB6
            return False
        if prev in ("LV", "V") and cur in ("V", "T"):                       # GB7
            return False
        if prev in ("LVT", "T") and cur == "T":                             # GB8
            return False
        if cur in ("Extend", "ZWJ", "SpacingMark") or prev == "Prepend":    # GB9, GB9a, GB9b
            return False
        if incb_state == 2 and self.incb.get(cp) == "Consonant":            # GB9c
            return False
        if emoji_zwj and cp in self.pict:                                   # GB11
            return False
        if prev == "Regional_Indicator" and cur == "Regional_Indicator" and ri_run % 2 == 1:  # GB12, GB13
            return False
        return True                                                         # GB999


# ---------------------------------------------------------------------------------------------
# Normalizers


class CodepointMap:
    """Per-codepoint rewriting (BERT's normalizer): each character independently becomes a string.

    ``remove``: ranges deleted; ``space``: ranges that become " "; ``pad``: ranges that become
    " c " (CJK characters); ``map``: {"<hex codepoint>": replacement} for the rest (lowercasing,
    accent stripping). Unlisted characters are kept.
    """

    def __init__(self, spec: dict):
        self.remove = RangeSet(spec.get("remove", []))
        self.space = RangeSet(spec.get("space", []))
        self.pad = RangeSet(spec.get("pad", []))
        self.map = {int(k, 16): v for k, v in spec.get("map", {}).items()}

    def __call__(self, text: str) -> str:
        out = []
        for c in text:
            cp = ord(c)
            if cp in self.map:
                out.append(self.map[cp])
            elif cp in self.remove:
                continue
            elif cp in self.space:
                out.append(" ")
            elif cp in self.pad:
                out.append(" " + c + " ")
            else:
                out.append(c)
        return "".join(out)


class Precompiled:
    """SentencePiece's precompiled charsmap, as ``tokenizers.normalizers.Precompiled`` applies it.

    The text is cut into grapheme clusters. A cluster shorter than 6 UTF-8 bytes whose beginning
    matches a key of ``map`` is replaced WHOLE by the replacement of the SHORTEST matching key
    (characters after the key are dropped: SentencePiece's behaviour, kept for exact ids).
    Otherwise each character is looked up alone and replaced if it is a key.
    """

    def __init__(self, spec: dict):
        self.map = dict(spec["map"])
        self.max_key = max((len(k) for k in self.map), default=0)
        self.graphemes = Graphemes(spec["graphemes"])

    def _shortest_prefix(self, chunk: str):
        for n in range(1, min(len(chunk), self.max_key) + 1):
            hit = self.map.get(chunk[:n])
            if hit is not None:
                return hit
        return None

    def __call__(self, text: str) -> str:
        out = []
        for cluster in self.graphemes.split(text):
            if len(cluster.encode("utf-8")) < 6:
                hit = self._shortest_prefix(cluster)
                if hit is not None:
                    out.append(hit)
                    continue
            for c in cluster:
                hit = self.map.get(c)
                out.append(c if hit is None else hit)
        return "".join(out)


class Replace:
    """Regular-expression replacement (e.g. runs of 2+ spaces -> one space)."""

    def __init__(self, spec: dict):
        self.pattern = re.compile(spec["regex"]) if "regex" in spec else re.compile(re.escape(spec["string"]))
        self.content = spec["content"]

    def __call__(self, text: str) -> str:
        return self.pattern.sub(lambda _: self.content, text)


_NORMALIZERS = {"codepoint_map": CodepointMap, "precompiled": Precompiled, "replace": Replace}


# ---------------------------------------------------------------------------------------------
# Pre-tokenizers: list[str] -> list[str]


def _split_words(words: list[str], drop, isolate) -> list[str]:
    """Split each word at characters in ``drop`` (removed) and around characters in ``isolate``
    (each kept as a word of its own); empty pieces are not emitted."""
    out = []
    for word in words:
        current = []
        for c in word:
            cp = ord(c)
            if drop is not None and cp in drop:
                if current:
                    out.append("".join(current))
                    current = []
            elif cp in isolate:
                if current:
                    out.append("".join(current))
                    current = []
                out.append(c)
            else:
                current.append(c)
        if current:
            out.append("".join(current))
    return out


class BertSplit:
    """BERT's pre-tokenizer: ``whitespace`` characters separate words and are dropped;
    ``punctuation`` characters become words of their own."""

    def __init__(self, spec: dict):
        self.whitespace = RangeSet(spec["whitespace"])
        self.punctuation = RangeSet(spec["punctuation"])

    def __call__(self, words: list[str]) -> list[str]:
        return _split_words(words, drop=self.whitespace, isolate=self.punctuation)


class Metaspace:
    """SentencePiece's space handling: every " " becomes ``replacement`` (U+2581), and a
    non-empty word that does not start with it gets one prepended (``prepend_scheme`` always)."""

    def __init__(self, spec: dict):
        self.replacement = spec["replacement"]
        self.prepend = spec.get("prepend_scheme", "always")
        if self.prepend not in ("always", "never"):
            raise BundleError(f"device tokenizer: Metaspace prepend_scheme {self.prepend!r} is not supported.")
        if spec.get("split", False):
            raise BundleError("device tokenizer: Metaspace with split=true is not supported.")

    def __call__(self, words: list[str]) -> list[str]:
        out = []
        for word in words:
            word = word.replace(" ", self.replacement)
            if word and self.prepend == "always" and not word.startswith(self.replacement):
                word = self.replacement + word
            out.append(word)
        return out


class Isolate:
    """Every character in ``ranges`` becomes a word of its own."""

    def __init__(self, spec: dict):
        self.ranges = RangeSet(spec["ranges"])

    def __call__(self, words: list[str]) -> list[str]:
        return _split_words(words, drop=None, isolate=self.ranges)


_PRE_TOKENIZERS = {"bert": BertSplit, "metaspace": Metaspace, "isolate": Isolate}


# ---------------------------------------------------------------------------------------------
# Models: one word -> ids


class WordPiece:
    """Greedy longest-match-first; a word with no full segmentation (or longer than
    ``max_input_chars_per_word`` characters) becomes the single unknown id."""

    def __init__(self, spec: dict):
        self.vocab = {piece: i for i, piece in enumerate(spec["vocab"])}
        self.unk_id = int(spec["unk_id"])
        self.prefix = spec.get("continuing_subword_prefix", "##")
        self.max_chars = int(spec.get("max_input_chars_per_word", 100))

    def __call__(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                found = self.vocab.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids


class Unigram:
    """Viterbi segmentation maximizing the sum of piece scores (log-probabilities).

    At each character position every piece that starts there is a candidate, shortest first; a
    candidate replaces the best path to its end only if strictly better (so ties keep the
    shorter, earlier piece). If no piece covers exactly the one character at a position, the
    unknown id is a candidate for it with score ``min(scores) - 10``. Reading the best path back,
    consecutive unknown characters are fused and looked up as one string (usually the unknown id).
    """

    def __init__(self, spec: dict):
        pieces = spec["pieces"]
        self.vocab = {}
        for i, (piece, _score) in enumerate(pieces):
            self.vocab.setdefault(piece, i)
        self.scores = [float(s) for _, s in pieces]
        self.unk_id = int(spec["unk_id"])
        self.fuse_unk = bool(spec.get("fuse_unk", True))
        self.max_len = max((len(p) for p, _ in pieces), default=1)
        self.unk_score = min(self.scores, default=0.0) - UNK_PENALTY

    def __call__(self, word: str) -> list[int]:
        n = len(word)
        if n == 0:
            return []
        best = [None] * (n + 1)   # best[end] = (score, start, id)
        best[0] = (0.0, -1, -1)
        for start in range(n):
            here = best[start][0]
            single = False
            for length in range(1, min(self.max_len, n - start) + 1):
                piece_id = self.vocab.get(word[start:start + length])
                if piece_id is None:
                    continue
                candidate = here + self.scores[piece_id]
                end = start + length
                if best[end] is None or candidate > best[end][0]:
                    best[end] = (candidate, start, piece_id)
                if length == 1:
                    single = True
            if not single:
                candidate = here + self.unk_score
                if best[start + 1] is None or candidate > best[start + 1][0]:
                    best[start + 1] = (candidate, start, self.unk_id)
        pieces = []               # (text, id), read backwards
        end = n
        unk_run = []
        while end > 0:
            _, start, piece_id = best[end]
            if self.fuse_unk and piece_id == self.unk_id:
                unk_run.append(word[start:end])
            else:
                if unk_run:
                    pieces.append("".join(reversed(unk_run)))
                    unk_run = []
                pieces.append(word[start:end])
            end = start
        if unk_run:
            pieces.append("".join(reversed(unk_run)))
        return [self.vocab.get(text, self.unk_id) for text in reversed(pieces)]


_MODELS = {"wordpiece": WordPiece, "unigram": Unigram}


# ---------------------------------------------------------------------------------------------
# The tokenizer


class Tokenizer:
    """Text -> token ids exactly as the checkpoint's Hugging Face tokenizer gives them."""

    def __init__(self, spec: dict):
        if spec.get("format") != FORMAT or spec.get("version") not in VERSIONS:
            raise BundleError(f"device tokenizer has format {spec.get('format')!r} version {spec.get('version')!r}; "
                              f"this runtime reads {FORMAT!r} versions 1 and 2.")
        try:
            if spec["version"] == 2:
                spec = expand_v2(spec)
            self.spec = spec  # always the version-1 structure
            self.type = spec["type"]
            self.normalizers = [_NORMALIZERS[step["type"]](step) for step in spec["normalizer"]]
            self.pre_tokenizers = [_PRE_TOKENIZERS[step["type"]](step) for step in spec["pre_tokenizer"]]
            self.model = _MODELS[spec["model"]["type"]](spec["model"])
            special = spec["special"]
            self.pad_id = int(special["pad_id"])
            self.unk_id = int(special["unk_id"])
            self.prefix = [int(i) for i in spec["template"]["prefix"]]
            self.suffix = [int(i) for i in spec["template"]["suffix"]]
            split = bool(spec.get("split_special_tokens", False))
            # Added tokens are matched in the raw text, except special ones when split_special_tokens.
            self.added = sorted(((t["content"], int(t["id"])) for t in spec.get("added_tokens", [])
                                 if t["content"] and not (split and t.get("special", True))),
                                key=lambda t: -len(t[0]))
        except KeyError as e:
            raise BundleError(f"device tokenizer is missing or has an unknown entry {e}; re-export the bundle.") from None

    @classmethod
    def from_file(cls, path) -> Tokenizer:
        try:
            return cls(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise BundleError(f"cannot read the device tokenizer '{path}' ({e}).") from None

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.suffix)

    def _split_added(self, text: str) -> list[tuple[str, int | None]]:
        """Leftmost-longest matches of added tokens: [(segment, None) | (token, id)]."""
        if not self.added:
            return [(text, None)]
        out, start, i = [], 0, 0
        while i < len(text):
            for content, token_id in self.added:  # longest first
                if text.startswith(content, i):
                    if start < i:
                        out.append((text[start:i], None))
                    out.append((content, token_id))
                    i += len(content)
                    start = i
                    break
            else:
                i += 1
        if start < len(text):
            out.append((text[start:], None))
        return out

    def tokenize_ids(self, text: str) -> list[int]:
        """Ids of ``text`` without the template's special ids and without truncation."""
        ids = []
        for segment, token_id in self._split_added(text):
            if token_id is not None:
                ids.append(token_id)
                continue
            for normalize in self.normalizers:
                segment = normalize(segment)
            words = [segment]
            for pre_tokenize in self.pre_tokenizers:
                words = pre_tokenize(words)
            for word in words:
                ids.extend(self.model(word))
        return ids

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Template ids around the text's ids, the text's ids cut so the total fits ``max_length``."""
        ids = self.tokenize_ids(text)
        if max_length is not None:
            ids = ids[:max(0, max_length - self.num_special)]
        return self.prefix + ids + self.suffix

    def encode_batch(self, texts, max_length: int | None = None, pad_to: int | None = None):
        """(input_ids, attention_mask) as int64 arrays (B, T), padded on the right with ``pad_id``
        to the longest text (or to ``pad_to``)."""
        import numpy as np

        rows = [self.encode(t, max_length) for t in texts]
        length = pad_to if pad_to is not None else max((len(r) for r in rows), default=0)
        ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return ids, mask
