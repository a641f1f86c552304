"""Unlabelled corpora for distillation: reading, tokenizing, deterministic resumable batching.

A corpus entry is a path to plain text (one example per line) or JSON lines (``.json``/``.jsonl``,
one object per line, the text in ``text_field``), ``pkg://PACKAGE/relative/path`` for data
that ships inside an installed Python package, or ``task://TASK/SPLIT`` for the texts of one split of
a built-in task (``task://sentiment/train``: the quickstart distils and trims its vocabulary on the
reviews it trains on, never on the dev and test reviews it is measured on).
Lines are split on "\\n" only: CLUE sentences contain U+2028, which ``str.splitlines`` breaks on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edgekit.errors import UserError


def resolve_path(spec: str) -> Path:
    if spec.startswith("pkg://"):
        import importlib.util

        package, _, rel = spec[len("pkg://"):].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise UserError(f"corpus '{spec}' names the Python package '{package}', which is not installed; "
                            f"run `pip install {package}`.")
        return Path(list(found.submodule_search_locations)[0]) / rel
    return Path(spec)


def read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"corpus file '{path}' is not UTF-8 text; convert it to UTF-8.") from None
    return text.split("\n")


def read_corpus(specs, text_field: str = "text", max_lines: int | None = None) -> list[str]:
    """All non-empty texts of the given files, in order.

    Plain text files give one text per line; ``.json``/``.jsonl`` files one JSON object per line,
    whose text is ``text_field`` (a comma-separated list takes the first field a line has, so
    ``sentence,abst`` reads TNEWS/IFLYTEK sentences and CSL abstracts alike).
    """
    if isinstance(specs, (str, Path)):
        specs = [specs]
    if not specs:
        raise UserError("no corpus given; pass --corpus FILE (plain text or JSON lines), more than once for several files.")
    fields = [f.strip() for f in text_field.split(",") if f.strip()] or ["text"]
    texts: list[str] = []
    for spec in specs:
        if str(spec).startswith("task://"):
            texts += _task_texts(str(spec))
            if max_lines and len(texts) >= max_lines:
                return texts[:max_lines]
            continue
        path = resolve_path(str(spec))
        if not path.is_file():
            raise UserError(f"corpus file '{spec}' does not exist; check the path.")
        is_json = path.suffix in (".json", ".jsonl")
        for lineno, line in enumerate(read_lines(path), 1):
            if not line.strip():
                continue
            if is_json:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{path}:{lineno} is not valid JSON; each line of a .json/.jsonl corpus must be one JSON object.") from None
                field = next((f for f in fields if isinstance(obj, dict) and f in obj), None)
                if field is None:
                    raise UserError(f"{path}:{lineno} has no field '{text_field}'; pass --text-field with the name of "
                                    "the text field (several, comma-separated, take the first one a line has).")
                line = str(obj[field])
                if not line.strip():
                    continue
            texts.append(line.strip())
            if max_lines and len(texts) >= max_lines:
                return texts
    if not texts:
        raise UserError(f"the corpus {', '.join(map(str, specs))} has no text lines; pass a non-empty file.")
    return texts


def _task_texts(spec: str) -> list[str]:
    """The texts of ``task://TASK/SPLIT`` (the task module reads data; this one only batches it)."""
    from edgekit.tasks import split_texts

    name, _, split = spec[len("task://"):].partition("/")
    if not name or not split:
        raise UserError(f"corpus '{spec}' is not of the form task://TASK/SPLIT; write e.g. task://sentiment/train.")
    return [t.strip() for t in split_texts(name, split) if t.strip()]


class TokenizedCorpus:
    """Token ids of every text (or text pair), with the tokenizer's special tokens, truncated to ``max_length``.

    ``labels`` (class ids) make it a classification set; ``collate`` then returns them too.
    """

    def __init__(self, tokenizer, texts, max_length: int, pairs=None, labels=None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.ids: list[list[int]] = []
        self.types: list[list[int]] | None = [] if pairs is not None else None
        self.labels = list(labels) if labels is not None else None
        for start in range(0, len(texts), 2048):
            chunk = list(texts[start:start + 2048])
            if pairs is None:
                enc = tokenizer(chunk, truncation=True, max_length=max_length)
            else:
                enc = tokenizer(chunk, list(pairs[start:start + 2048]), truncation="longest_first",
                                max_length=max_length, return_token_type_ids=True)
                self.types.extend(enc["token_type_ids"])
            self.ids.extend(enc["input_ids"])

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, indices, id_map: torch.Tensor | None = None) -> dict:
        """Pad a batch. ``id_map`` (teacher id -> student id) adds ``student_input_ids`` for the same tokens."""
        rows = [self.ids[i] for i in indices]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.types is not None:
            types = torch.zeros_like(ids)
            for r, i in enumerate(indices):
                types[r, : len(self.types[i])] = torch.tensor(self.types[i])
            batch["token_type_ids"] = types
        if self.labels is not None:
            batch["labels"] = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        if id_map is not None:
            batch["student_input_ids"] = id_map[ids]
        return batch


class ResumableBatches:
    """Deterministic batches: a seeded permutation per epoch, each global batch split across ranks.

    The position (epoch, batch in epoch) is part of the training state, so a resumed run sees
    exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_items < batch_size * world_size:
            raise UserError(f"the corpus has {num_items} examples, fewer than one global batch "
                            f"({batch_size} x {world_size} processes); use a larger corpus or a smaller train.batch_size.")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = num_items // self.global_batch
        self.epoch = 0
        self.position = 0
        self._perm = None

    def _permutation(self):
        if self._perm is None or self._perm[0] != self.epoch:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            self._perm = (self.epoch, torch.randperm(self.num_items, generator=g).tolist())
        return self._perm[1]

    def next(self) -> list[int]:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        perm = self._permutation()
        start = self.position * self.global_batch + self.rank * self.batch_size
        self.position += 1
        return perm[start:start + self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
