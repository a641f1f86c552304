"""A fine-tuned teacher's logits on a task's texts, computed once and cached on disk.

The cache key is sha256 of the teacher (its weight files and config.json, which holds the head's
pooling) and of the teacher's token ids of every text (so the text, its order, the tokenizer and
max_length are all in it). A second student distilled from the same teacher on the same texts reads
the file and runs no teacher forward. Files are safetensors (``logits``: float32 (N, C), the
teacher's class order mapped to the task's), written atomically; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from edgekit.errors import UserError
from edgekit.progress import batch_starts

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "config.json")


def default_cache_dir() -> Path:
    from edgekit.checkpoint import edgekit_home

    return edgekit_home() / "teacher-logits"


def teacher_sha256(model_dir) -> str:
    """sha256 over the teacher's weight files and config.json (names and bytes, in a fixed order)."""
    h = hashlib.sha256()
    for name in WEIGHT_FILES:
        p = Path(model_dir) / name
        if p.is_file():
            h.update(name.encode() + b"\0")
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def token_sha256(ids: list[list[int]]) -> str:
    """sha256 of a tokenized text list: every sequence's length and ids as little-endian int32."""
    h = hashlib.sha256()
    for row in ids:
        h.update(np.asarray([len(row), *row], dtype="<i4").tobytes())
    return h.hexdigest()


def load_teacher(run_or_dir):
    """(classifier in eval mode, tokenizer, checkpoint dir, its label names) of a fine-tuned teacher:
    an `edgekit finetune` run directory or the classifier checkpoint itself."""
    from edgekit.checkpoint import check_model_dir, load_config_of, load_tokenizer

    path = check_model_dir(run_or_dir, role="teacher")
    config = load_config_of(path)
    if not any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or [])):
        raise UserError(f"teacher '{run_or_dir}' is not a fine-tuned classifier; fine-tune it on the task first "
                        "(`edgekit finetune --model TEACHER --task ...`) and pass that run directory.")
    if config.model_type == "albert":
        from edgekit.early_exit import EarlyExitClassifier

        model = EarlyExitClassifier.from_pretrained(path)
    else:
        from edgekit.finetune.pooling import load_sequence_classifier

        model = load_sequence_classifier(path)
    labels = [str(config.id2label[i]) for i in range(len(config.id2label))]
    return model.eval(), load_tokenizer(path), path, labels


def label_order(teacher_labels: list[str], task_labels: list[str], teacher: str) -> list[int]:
    """For each task class, the teacher's class index of the same label name."""
    if sorted(teacher_labels) != sorted(task_labels):
        raise UserError(f"teacher '{teacher}' was fine-tuned on labels ({', '.join(teacher_labels[:6])}"
                        f"{', ...' if len(teacher_labels) > 6 else ''}) that are not this task's "
                        f"({', '.join(task_labels[:6])}{', ...' if len(task_labels) > 6 else ''}); "
                        "pass a teacher fine-tuned on the same task.")
    where = {name: i for i, name in enumerate(teacher_labels)}
    return [where[name] for name in task_labels]


@torch.no_grad()
def compute_teacher_logits(model, data, batch_size: int = 64) -> torch.Tensor:
    """(N, C) logits of the teacher's last layer on every example of ``data`` (a ``TokenizedCorpus``),
    batched by length so little time goes to padding."""
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))
    out = None
    for start in batch_starts(len(order), batch_size, "teacher logits"):
        idx = order[start:start + batch_size]
        batch = data.collate(idx)
        kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        logits = model(**kw).logits
        logits = logits[-1] if logits.dim() == 3 else logits  # an early-exit teacher: its last exit
        if out is None:
            out = torch.empty(len(data), logits.shape[-1])
        out[idx] = logits.float().cpu()
    return out


def teacher_logits(teacher_run, texts: list[str], task_labels: list[str], max_length: int,
                   cache_dir=None, batch_size: int = 64) -> tuple[torch.Tensor, dict]:
    """(N, C) teacher logits of ``texts`` in the task's class order, and where they came from.

    Read from ``cache_dir`` when a file with this teacher's and these texts' key exists; computed
    (and cached) otherwise."""
    from safetensors.torch import load_file, save_file

    from edgekit.checkpoint import check_model_dir, load_config_of, load_tokenizer
    from edgekit.data import TokenizedCorpus
    from edgekit.io import atomic_file

    path = check_model_dir(teacher_run, role="teacher")
    config = load_config_of(path)
    teacher_labels = [str(config.id2label[i]) for i in range(len(config.id2label))]
    order = label_order(teacher_labels, task_labels, str(teacher_run))  # checked before any compute
    tokenizer = load_tokenizer(path)
    data = TokenizedCorpus(tokenizer, texts, max_length)
    labels_key = json.dumps(task_labels, ensure_ascii=False)
    key = hashlib.sha256(f"{teacher_sha256(path)}:{token_sha256(data.ids)}:{labels_key}".encode()).hexdigest()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    file = cache / f"{key[:32]}.safetensors"
    info = {"teacher": str(path), "key": key, "file": str(file), "examples": len(texts)}
    if file.is_file():
        try:
            logits = load_file(str(file))["logits"]
        except Exception:  # noqa: BLE001 (a damaged cache entry is recomputed, never trusted)
            logits = None
        if logits is not None and logits.shape == (len(texts), len(task_labels)):
            return logits, {**info, "cached": True}
    model = load_teacher(path)[0]
    logits = compute_teacher_logits(model, data, batch_size)[:, order].contiguous()
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_file(file) as tmp:
        save_file({"logits": logits}, str(tmp),
                  metadata={"teacher": str(path), "labels": labels_key,
                            "max_length": str(max_length)})
    return logits, {**info, "cached": False}
