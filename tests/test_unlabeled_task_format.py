"""``finetune.unlabeled_text_field: task``: unlabelled in-domain examples of a pair task (CSL's keywords +
abstract) read exactly as the task reads its labelled ones, and the one-field read refused for pair tasks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from conftest import DATA
from edgekit.errors import UserError
from edgekit.finetune.task_distill import unlabeled_texts
from edgekit.tasks import PAIR_SEPARATOR, load_task, read_unlabeled

CSL_LINES = [
    {"id": 1, "abst": "该文提出分区域FFT波束形成算法.", "keyword": ["水声学", "FFT", "波束形成"], "label": "1"},
    {"id": 2, "abst": "概述了灾后重建的规划设计过程.", "keyword": ["重建", "水磨"], "label": "0"},
]


def _write(path, rows, drop_label):
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if not (drop_label and k == "label")},
                                       ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _ft(files, field="task", limit=None):
    return SimpleNamespace(unlabeled=[str(f) for f in files], unlabeled_text_field=field, max_unlabeled=limit)


def test_unlabelled_pairs_are_built_as_the_task_builds_examples(tmp_path):
    data = tmp_path / "csl"
    data.mkdir()
    _write(data / "train.json", CSL_LINES, drop_label=False)
    _write(data / "dev.json", CSL_LINES, drop_label=False)
    unlabelled = _write(tmp_path / "test.json", CSL_LINES, drop_label=True)
    task = load_task("csl", data)
    texts = read_unlabeled("csl", [unlabelled])
    assert texts == task.dev.texts
    assert texts[0] == f"水声学，FFT，波束形成{PAIR_SEPARATOR}该文提出分区域FFT波束形成算法."
    cfg = SimpleNamespace(name="csl", text_field=None, text_pair_field=None)
    assert unlabeled_texts(_ft([unlabelled, unlabelled], limit=3), cfg, pair_task=True) == texts + texts[:1]


def test_one_field_per_line_is_refused_for_a_pair_task(tmp_path):
    unlabelled = _write(tmp_path / "test.json", CSL_LINES, drop_label=True)
    cfg = SimpleNamespace(name="csl", text_field=None, text_pair_field=None)
    with pytest.raises(UserError, match=r"task 'csl' joins two fields per example, but finetune.unlabeled is read one "
                                        r"field per line \('sentence,text,abst'\); set finetune.unlabeled_text_field: "
                                        r"task"):
        unlabeled_texts(_ft([unlabelled], field="sentence,text,abst"), cfg, pair_task=True)
    # a single-text task still reads one field per line
    assert unlabeled_texts(_ft([unlabelled], field="abst"), cfg, pair_task=False) == [r["abst"] for r in CSL_LINES]
    with pytest.raises(UserError, match=r"unlabelled file '.*missing.json' does not exist"):
        read_unlabeled("csl", [tmp_path / "missing.json"])
    with pytest.raises(UserError, match=r"task 'sentiment' has no file format to read unlabelled examples with"):
        read_unlabeled("sentiment", [unlabelled])


def test_clue_csl_test_split_reads_as_unlabelled_pairs():
    path = DATA / "clue" / "csl" / "test.json"
    if not path.is_file():
        pytest.skip("../shared/data/clue is not beside this checkout")
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    texts = read_unlabeled("csl", [path])
    assert len(texts) == len(lines)
    assert texts[0] == "，".join(lines[0]["keyword"]) + PAIR_SEPARATOR + lines[0]["abst"]
