"""Held-out numbers and data: the sentiment splits, corpus specs, provenance, generic data files, and
three small slips (the pruning schedule's start, patience 0, eval --split)."""

import json
import re

import numpy as np
import pytest

from conftest import ROOT, DATA
from edgekit.errors import UserError
from edgekit.tasks import load_split, load_task


# --------------------------------------------------------------------------------------------
# The sentiment task: one split into train / dev / test


def test_sentiment_splits_are_disjoint_complete_and_stable():
    from edgekit import tasks

    first = load_task("sentiment")
    tasks._sentiment_rows.cache_clear()
    again = load_task("sentiment")
    for name in ("train", "dev", "test"):
        assert getattr(first, name).texts == getattr(again, name).texts
        assert getattr(first, name).labels == getattr(again, name).labels
    train, dev, test = (set(s.texts) for s in (first.train, first.dev, first.test))
    assert not train & dev and not train & test and not dev & test
    # 17,457 unique reviews less the 47 filed under both labels, 10% dev, 10% test
    assert (len(first.train), len(first.dev), len(first.test)) == (13891, 1736, 1736)
    assert len(train) == len(first.train) and len(dev) == len(first.dev) and len(test) == len(first.test)
    assert set(first.test.labels) == {0, 1} and "80/10/10" in first.note


def test_quickstart_recipe_never_reads_a_dev_or_test_review():
    """Distillation, vocabulary trimming (the distill corpus) and pruning (the student's corpus)."""
    from edgekit.data import read_corpus
    from edgekit.distill import load_distill_config
    from edgekit.pipeline import load_pipeline_config
    from edgekit.prune import load_prune_config

    recipe = ROOT / "recipes" / "quickstart.yaml"
    task = load_task("sentiment")
    held_out = set(task.dev.texts) | set(task.test.texts)
    distill_cfg = load_distill_config(recipe)
    corpus = read_corpus(distill_cfg.data.corpus, distill_cfg.data.text_field)
    assert len(corpus) == len(task.train) and not set(corpus) & held_out
    assert not load_prune_config(recipe).data.corpus  # prune reads the student's (distill) corpus
    cfg = load_pipeline_config(recipe)
    assert [t.name for t in cfg.pipeline.tasks] == ["sentiment"]


@pytest.mark.parametrize("spec, message", [
    ("task://tnews/train", r"names a task without built-in data; pass the task's file"),
    ("task://sentiment/validation", r"task 'sentiment' has no split 'validation'; choose one of train, dev, test"),
    ("task://sentiment", r"is not of the form task://TASK/SPLIT"),
])
def test_task_corpus_spec_errors(spec, message):
    from edgekit.data import read_corpus

    with pytest.raises(UserError, match=message):
        read_corpus([spec])


def test_task_corpus_spec_honours_max_lines():
    from edgekit.data import read_corpus

    assert read_corpus(["task://sentiment/train"], max_lines=5) == load_task("sentiment").train.texts[:5]


# --------------------------------------------------------------------------------------------
# eval --split: the split evaluated is the split recorded


def _capture_eval(monkeypatch):
    import importlib

    module = importlib.import_module("edgekit.eval.evaluate")  # the package re-exports the function's name

    seen = {}

    def fake(path, texts, batch_size, max_length):
        seen["texts"] = list(texts)
        return np.zeros((2, len(texts)), dtype=int), ["neg", "pos"], [1, 2], 0.1, None

    monkeypatch.setattr(module, "_eval_checkpoint", fake)
    return module.evaluate, seen


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_eval_split_reads_the_split_it_records(monkeypatch, tmp_path, split):
    evaluate, seen = _capture_eval(monkeypatch)
    result = evaluate(tmp_path, "sentiment", split=split, max_examples=50)
    data = getattr(load_task("sentiment"), split)
    assert seen["texts"] == data.texts[:50]
    assert result["split"] == split and result["examples"] == 50
    assert result["accuracy"] == pytest.approx(np.mean(np.array(data.labels[:50]) == 0))


def test_eval_refuses_a_split_the_task_does_not_have(monkeypatch, tmp_path):
    evaluate, _ = _capture_eval(monkeypatch)
    with pytest.raises(UserError, match=r"task 'sentiment' has no split 'validation'; choose one of train, dev, test"):
        evaluate(tmp_path, "sentiment", split="validation")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"t": "a", "label": "x"}\n', encoding="utf-8")
    (tmp_path / "data" / "dev.jsonl").write_text('{"t": "b", "label": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"data file '.*test.json' does not exist"):
        evaluate(tmp_path, "jsonl", tmp_path / "data", split="test", text_field="t")


def test_file_task_test_split(tmp_path):
    for name, rows in (("train", [("a", "x"), ("b", "y")]), ("dev", [("c", "x")]), ("held", [("d", "y"), ("e", "x")])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"t": t, "label": y}) + "\n" for t, y in rows),
                                                encoding="utf-8")
    assert load_task("jsonl", tmp_path, "t").test is None
    task = load_task("jsonl", tmp_path, "t", test_file="held")
    assert task.test.texts == ["d", "e"] and task.test.labels == [1, 0]
    _, split = load_split("jsonl", "test", tmp_path, "t", test_file="held")
    assert split.texts == ["d", "e"]
    with pytest.raises(UserError, match=r"task 'jsonl' has no test split"):
        load_task("jsonl", tmp_path, "t").split("test")


def test_pipeline_evaluates_test_when_the_task_has_one(tmp_path):
    from edgekit.pipeline import load_pipeline_config
    from edgekit.pipeline.plan import plan
    from edgekit.pipeline.report import _split_words

    for name in ("train", "dev", "test"):
        (tmp_path / f"{name}.jsonl").write_text('{"t": "a", "label": "x"}\n{"t": "b", "label": "y"}\n', "utf-8")
    recipe = {"pipeline": {"teacher": "e5-small", "prune": False,
                           "tasks": [{"name": "sentiment"},
                                     {"name": "jsonl", "data_dir": str(tmp_path), "text_field": "t"},
                                     {"name": "json", "data_dir": str(tmp_path), "text_field": "t",
                                      "test_file": "test"}]}}
    stages = plan(load_pipeline_config(None, recipe), tmp_path / "run")
    splits = {s.name: s.job["split"] for s in stages if s.kind == "eval"}
    assert splits == {"eval/dense/sentiment": "test", "eval/bundle/sentiment": "test",
                      "eval/dense/jsonl": "dev", "eval/bundle/jsonl": "dev",
                      "eval/dense/json": "test", "eval/bundle/json": "test"}
    assert all(s.config["split"] == s.job["split"] for s in stages if s.kind == "eval")  # part of the fingerprint
    assert _split_words({"sentiment": "test"}) == "test"
    assert _split_words({"sentiment": "test", "tnews": "dev"}) == "sentiment: test, tnews: dev"


# --------------------------------------------------------------------------------------------
# Provenance lives beside the data


def _tiny_set(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.json").write_text('{"sentence": "甲", "label": "1"}\n{"sentence": "乙", "label": "0"}\n', "utf-8")
    (d / "dev.json").write_text('{"sentence": "丙", "label": "1"}\n', "utf-8")
    return d


def test_provenance_is_read_from_the_data_directory(tmp_path):
    d = _tiny_set(tmp_path / "afqmc")
    (d / "train.json").write_text('{"sentence1": "甲", "sentence2": "乙", "label": "1"}\n', "utf-8")
    (d / "dev.json").write_text('{"sentence1": "丙", "sentence2": "丁", "label": "0"}\n', "utf-8")
    assert load_task("afqmc", d).note == ""  # no file: nothing claimed
    (d / "PROVENANCE.md").write_text("# Our AFQMC\nTrain is a 1k sample\nof the official train.\n\nDetails: none.\n",
                                     encoding="utf-8")
    assert load_task("afqmc", d).note == "Our AFQMC Train is a 1k sample of the official train."
    other = tmp_path / "note.md"
    other.write_text("Re-labelled by hand.\n", encoding="utf-8")
    assert load_task("afqmc", d, provenance=other).note == "Re-labelled by hand."
    with pytest.raises(UserError, match=r"provenance file '.*missing.md' does not exist"):
        load_task("afqmc", d, provenance=tmp_path / "missing.md")


def test_clue_caveat_comes_from_the_benchmark_not_the_library():
    library = [p for p in (ROOT / "edgekit").rglob("*.py") if "shared/data" in p.read_text(encoding="utf-8")
               or "../shared" in p.read_text(encoding="utf-8")]
    assert library == []
    iflytek = load_task("iflytek", DATA / "clue" / "iflytek")
    assert iflytek.note == ""
    from edgekit.pipeline import load_pipeline_config
    from edgekit.pipeline.config import task_config

    cfg = load_pipeline_config(ROOT / "recipes" / "clue_e5.yaml")
    notes = {}
    for entry in cfg.pipeline.tasks:
        t = task_config(cfg, entry, "-").task
        notes[entry.name] = t.provenance
    assert notes["tnews"] is None and notes["iflytek"] == notes["csl"] == "benchmarks/clue_provenance.md"
    note = load_task("iflytek", DATA / "clue" / "iflytek", provenance=ROOT / notes["iflytek"]).note
    assert "not the official train sets" in note and "\n" not in note


# --------------------------------------------------------------------------------------------
# Generic data: JSON lines, one JSON array, CSV


ROWS = [{"review": "好极了", "stars": "5"}, {"review": "糟透了", "stars": "1"}, {"review": "还行，吧", "stars": "10"}]


def _write(d, fmt, rows, name):
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif fmt == "json":
        text = json.dumps(rows, ensure_ascii=False, indent=1)
    else:
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        text = buf.getvalue()
    path = d / f"{name}.{'csv' if fmt == 'csv' else 'json' if fmt == 'json' else 'jsonl'}"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_generic_formats_load_the_same_task(tmp_path, fmt):
    _write(tmp_path, fmt, ROWS, "train")
    _write(tmp_path, fmt, ROWS[:2], "dev")
    task = load_task(fmt, tmp_path, text_field="review", label_field="stars")
    assert task.labels == ["1", "5", "10"]  # integer labels in numeric order
    assert task.train.texts == ["好极了", "糟透了", "还行，吧"] and task.train.labels == [1, 0, 2]
    assert task.dev.labels == [1, 0]


def test_a_json_array_loads_under_task_jsonl_too(tmp_path):
    _write(tmp_path, "json", ROWS, "train")
    _write(tmp_path, "json", ROWS, "dev")
    assert load_task("jsonl", tmp_path, text_field="review", label_field="stars").train.texts[2] == "还行，吧"


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
@pytest.mark.parametrize("case, message", [
    ("missing field", r"train\.\w+(:\d+| item 0) has no field 'stars' \(it has: review\); pass --text-field"),
    ("empty", r"data file '.*train\.\w+' is empty"),
    ("not utf-8", r"data file '.*train\.\w+' is not UTF-8 text \(bad byte at offset \d+\); convert it to UTF-8"),
])
def test_generic_format_errors(tmp_path, fmt, case, message):
    _write(tmp_path, fmt, ROWS, "dev")
    path = _write(tmp_path, fmt, [{"review": r["review"]} for r in ROWS], "train")
    if case == "empty":
        path.write_text("\n  \n", encoding="utf-8")
    elif case == "not utf-8":
        path.write_bytes(path.read_text(encoding="utf-8").encode("gbk"))
    with pytest.raises(UserError, match=message):
        load_task(fmt, tmp_path, text_field="review", label_field="stars")


def cli_error(capsys, *args) -> str:
    """The one ``error:`` line of ``edgekit ARGS`` run in this process (exit 2, no traceback)."""
    from edgekit.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    lines = [line for line in err.strip().split("\n") if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_generic_format_errors_on_the_command_line(tmp_path, capsys):
    _write(tmp_path, "json", ROWS, "train")
    (tmp_path / "dev.json").write_bytes("[{\"review\": \"坏\", \"stars\": \"1\"}]".encode("gbk"))
    line = cli_error(capsys, "eval", tmp_path, "--task", "json", "--data-dir", tmp_path, "--text-field", "review",
                     "--label-field", "stars")
    assert re.search(r"dev.json' is not UTF-8 text", line), line


def test_bad_json_array_and_csv_rows(tmp_path):
    (tmp_path / "train.json").write_text('[{"review": "a", "label": "x"}, 3]', encoding="utf-8")
    (tmp_path / "dev.json").write_text('[{"review": "a", "label": "x"}', encoding="utf-8")
    with pytest.raises(UserError, match=r"train.json item 1 is not a JSON object"):
        load_task("json", tmp_path, text_field="review")
    (tmp_path / "train.json").write_text('[{"review": "a", "label": "x"}]', encoding="utf-8")
    with pytest.raises(UserError, match=r"dev.json:1 is not valid JSON .*one JSON array of objects"):
        load_task("json", tmp_path, text_field="review")
    (tmp_path / "train.csv").write_text("review,label\na,x\nb\n", encoding="utf-8")
    (tmp_path / "dev.csv").write_text("review,label\na,x\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"train.csv:3 has no field 'label'"):
        load_task("csv", tmp_path, text_field="review")


# --------------------------------------------------------------------------------------------
# Small slips


def test_pruning_callback_applies_initial_sparsity_before_the_first_step():
    import torch

    from edgekit.prune import MagnitudePruner
    from edgekit.prune.config import PruneSection
    from edgekit.prune.stage import PruningCallback

    lin = torch.nn.Linear(5, 2, bias=False)  # 10 weights, distinct magnitudes 1..10
    with torch.no_grad():
        lin.weight.copy_(torch.arange(1.0, 11.0).view(2, 5))
    pruner = MagnitudePruner()
    pruner.prepare(lin)
    cb = PruningCallback(pruner, PruneSection(sparsity=0.8, initial_sparsity=0.5, begin_step=10, frequency=10), 100)
    cb.start(0)
    # s_t = s_i = 0.5 before begin_step: round(0.5 * 10) = 5 zeros, the five smallest
    assert pruner.sparsity == 0.5
    assert lin.weight.flatten().tolist() == [0, 0, 0, 0, 0, 6, 7, 8, 9, 10]
    cb.start(0)  # a resumed callback already at its target changes nothing
    assert pruner.sparsity == 0.5 and int((lin.weight == 0).sum()) == 5


def test_patience_zero_is_refused_with_one_sentence(tiny_classifier):
    from edgekit.early_exit import predict_texts

    message = r"patience must be an integer of at least 1, got 0; .*use --exit-layer 1"
    with pytest.raises(UserError, match=message):
        predict_texts(tiny_classifier, ["今天好"], patience=0)
    assert len(predict_texts(tiny_classifier, ["今天好"], patience=1)) == 1


def test_patience_zero_on_the_command_line(tiny_classifier, capsys):
    line = cli_error(capsys, "predict", tiny_classifier, "今天好", "--patience", "0")
    assert re.search(r"patience must be an integer of at least 1, got 0", line), line
