"""Vocabulary trimming: keep only the pieces a corpus uses.

A multilingual teacher's 250k-piece vocabulary would make the student's embedding table alone
32M parameters. The student keeps the teacher's tokenization (relations are token-to-token), so
we keep the pieces that occur in the distillation corpus (plus special and added tokens), renumber
them in the teacher's order, and save a tokenizer for the trimmed vocabulary.

On the corpus itself the trimmed tokenizer gives exactly the teacher's segmentation: a Unigram
model's best (Viterbi) segmentation only used kept pieces, and WordPiece's greedy longest match
only picked kept pieces, so removing unused pieces changes no choice. Text outside the corpus can
fall back to shorter pieces or the unknown token; ``coverage`` measures that on any text.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from edgekit.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass
class TrimResult:
    tokenizer: object                 # the trimmed transformers tokenizer
    kept_ids: list[int]               # teacher id of each new id (new id = position)
    original_size: int
    corpus_tokens: int
    corpus_coverage: float            # fraction of corpus tokens whose piece was kept
    report: dict = field(default_factory=dict)


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    ids.update(t["id"] for t in backend.get("added_tokens", []))
    return ids


def _remap_processor(node, old_to_new, token_to_new):
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "TemplateProcessing":
        for spec in node.get("special_tokens", {}).values():
            spec["ids"] = [token_to_new[t] for t in spec["tokens"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for k in ("sep", "cls"):
            if k in node:
                node[k] = [node[k][0], token_to_new[node[k][0]]]
    elif kind == "Sequence":
        for p in node.get("processors", []):
            _remap_processor(p, old_to_new, token_to_new)


def trim_tokenizer(tokenizer, keep_ids) -> tuple[object, list[int]]:
    """A new fast tokenizer holding only ``keep_ids`` (+ special tokens), and the kept teacher ids."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if not getattr(tokenizer, "is_fast", False):
        raise UserError("vocabulary trimming needs a fast tokenizer (tokenizer.json); save the teacher with one.")
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    kept = sorted(set(int(i) for i in keep_ids) | _special_ids(tokenizer))
    old_to_new = {old: new for new, old in enumerate(kept)}
    if model["type"] == "Unigram":
        vocab = model["vocab"]
        unk = model.get("unk_id")
        if unk is not None and unk not in old_to_new:
            kept = sorted(set(kept) | {unk})
            old_to_new = {old: new for new, old in enumerate(kept)}
        model["vocab"] = [vocab[i] for i in kept]
        if unk is not None:
            model["unk_id"] = old_to_new[unk]
        id_to_token = {i: vocab[i][0] for i in kept}
    elif model["type"] == "WordPiece":
        inv = {i: t for t, i in model["vocab"].items()}
        unk_id = model["vocab"].get(model.get("unk_token"))
        if unk_id is not None and unk_id not in old_to_new:
            kept = sorted(set(kept) | {unk_id})
            old_to_new = {old: new for new, old in enumerate(kept)}
        model["vocab"] = {inv[i]: old_to_new[i] for i in kept}
        id_to_token = {i: inv[i] for i in kept}
    else:
        raise UserError(f"vocabulary trimming supports Unigram and WordPiece tokenizers, not {model['type']}; "
                        "set vocab.trim=false for this teacher.")
    token_to_new = {tok: old_to_new[i] for i, tok in id_to_token.items()}
    for t in backend.get("added_tokens", []):
        t["id"] = old_to_new[t["id"]]
    _remap_processor(backend.get("post_processor"), old_to_new, token_to_new)
    new_backend = Tokenizer.from_str(json.dumps(backend))
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    trimmed = PreTrainedTokenizerFast(tokenizer_object=new_backend, model_max_length=tokenizer.model_max_length,
                                      padding_side=tokenizer.padding_side,
                                      split_special_tokens=getattr(tokenizer, "split_special_tokens", False), **specials)
    return trimmed, kept


def count_pieces(tokenizer, texts, max_length: int | None = None) -> Counter:
    counts: Counter = Counter()
    for start in range(0, len(texts), 1024):
        enc = tokenizer(list(texts[start:start + 1024]), add_special_tokens=False, truncation=max_length is not None,
                        max_length=max_length)
        for ids in enc["input_ids"]:
            counts.update(ids)
    return counts


def trim_vocabulary(tokenizer, texts, min_count: int = 1, max_length: int | None = None) -> TrimResult:
    """Keep the pieces that occur at least ``min_count`` times in ``texts``."""
    if min_count < 1:
        raise UserError(f"vocab.min_count must be at least 1, got {min_count}.")
    counts = count_pieces(tokenizer, texts, max_length)
    total = sum(counts.values())
    if total == 0:
        raise UserError("the corpus produced no tokens, so there is no vocabulary to keep; pass a corpus with text in it.")
    keep = [i for i, c in counts.items() if c >= min_count]
    trimmed, kept = trim_tokenizer(tokenizer, keep)
    keep_set = set(kept)
    covered = sum(c for i, c in counts.items() if i in keep_set)
    report = {
        "original_vocab_size": len(tokenizer),
        "trimmed_vocab_size": len(kept),
        "corpus_tokens": total,
        "distinct_corpus_pieces": len(counts),
        "min_count": min_count,
        "corpus_coverage": covered / total,
    }
    return TrimResult(trimmed, kept, len(tokenizer), total, covered / total, report)


def save_trimmed(result: TrimResult, out, overwrite: bool = False):
    """Write the trimmed tokenizer, ``vocab_map.json`` (new id -> teacher id) and ``report.json`` to
    ``out`` atomically; an existing ``out`` is replaced only if it is an earlier trimmed vocabulary
    and ``overwrite`` (``edgekit.io.atomic_dir``)."""
    from edgekit.io import atomic_dir, write_json

    with atomic_dir(out, VOCAB_KIND, overwrite) as tmp:
        result.tokenizer.save_pretrained(tmp)
        write_json(tmp / "vocab_map.json", {"teacher_ids": result.kept_ids})
        write_json(tmp / "report.json", result.report)
    return out


VOCAB_KIND = "vocabulary"  # the marker kind of `edgekit vocab trim --out`


def teacher_to_student_ids(teacher_vocab_size: int, kept: list[int], unk_id: int | None) -> torch.Tensor:
    """Lookup table teacher id -> student id (pieces the student lacks map to its unknown token)."""
    import torch  # the rest of this module works on tokenizers alone

    id_map = torch.full((teacher_vocab_size,), unk_id or 0, dtype=torch.long)
    id_map[torch.tensor(kept)] = torch.arange(len(kept))
    return id_map


def coverage(tokenizer, texts) -> float:
    """Fraction of tokens of ``texts`` that are not the unknown token."""
    counts = count_pieces(tokenizer, texts)
    total = sum(counts.values())
    unk = counts.get(tokenizer.unk_token_id, 0) if tokenizer.unk_token_id is not None else 0
    return 1.0 - unk / total if total else 1.0
