"""Tasks, fine-tuning with the early-exit loss, and prediction at fixed and dynamic exits."""

import json

import pytest

from conftest import DATA, ROOT, make_tiny_albert
from edgekit.errors import UserError
from edgekit.tasks import load_task
from test_cli_errors import assert_clean_error, run_cli


def test_clue_loaders_on_real_lines():
    tnews = load_task("tnews", DATA / "clue" / "tnews")
    assert tnews.num_labels == 15 and len(tnews.train) == 53360 and len(tnews.dev) == 10000
    assert set(tnews.dev.labels) == set(range(15))
    assert tnews.labels[0] == "100" and tnews.descriptions[0] == "news_story"
    iflytek = load_task("iflytek", DATA / "clue" / "iflytek", provenance=ROOT / "benchmarks" / "clue_provenance.md")
    assert iflytek.num_labels == 119 and len(iflytek.dev) == 2599 and "not the official" in iflytek.note
    csl = load_task("csl", DATA / "clue" / "csl")
    assert csl.num_labels == 2 and len(csl.train) == 2002 and len(csl.dev) == 998
    assert csl.train.pairs is not None and len(csl.train.pairs[0]) > 100
    keywords, abstract = csl.train.texts[0].split("。", 1)
    assert "，" in keywords and abstract == csl.train.pairs[0]  # keywords joined, then the abstract


@pytest.fixture(scope="module")
def tiny_albert(tmp_path_factory):
    return make_tiny_albert(tmp_path_factory.mktemp("albert") / "student", num_layers=3)


def test_finetune_rises_above_chance_and_predicts_per_exit(tiny_albert, separable, tmp_path, capsys):
    from edgekit.finetune import finetune, load_finetune_config

    cfg = load_finetune_config(None, {
        "model": str(tiny_albert),
        "task": {"name": "jsonl", "data_dir": str(separable), "text_field": "review", "label_field": "y", "max_length": 32},
        "finetune": {"eval_every": 20},
        "train": {"max_steps": 60, "batch_size": 16, "lr": 3e-3, "save_every": 30, "log_every": 10, "warmup_ratio": 0.0},
    })
    result = finetune(cfg, tmp_path / "ft")
    assert result["early_exit"] is True and len(result["dev_accuracy_per_exit"]) == 3
    assert result["dev_accuracy"] >= 0.9, result["history"]
    model_dir = tmp_path / "ft" / "model"
    meta = json.loads((model_dir / "edgekit.json").read_text())
    assert meta["labels"] == ["neg", "pos"] and meta["stage"] == "finetune"

    from edgekit.eval import evaluate

    capsys.readouterr()
    ev = evaluate(model_dir, "jsonl", separable, text_field="review", label_field="y")
    assert ev["examples"] == 40 and len(ev["accuracy_per_exit"]) == 3
    err = capsys.readouterr().err  # progress, counted in examples (edgekit/progress.py)
    assert "eval checkpoint: 100%" in err and "40/40" in err
    assert ev["accuracy_per_exit"] == pytest.approx(result["dev_accuracy_per_exit"], abs=1e-6)

    from edgekit.export import export_model

    for int8, tolerance in ((False, 1 / 40), ("dynamic", 2 / 40)):  # fp32: at most one tie flips; int8: two
        bundle = export_model(model_dir, tmp_path / f"bundle-{int8}", int8=int8, max_length=32)
        eb = evaluate(bundle, "jsonl", separable, text_field="review", label_field="y")
        assert "eval bundle: 100%" in capsys.readouterr().err
        assert eb["kind"].startswith("bundle (onnx") and eb["exit_layers"] == [1, 2, 3] and eb["examples"] == 40
        for a, b in zip(eb["accuracy_per_exit"], ev["accuracy_per_exit"]):
            assert abs(a - b) <= tolerance + 1e-9, (int8, eb["accuracy_per_exit"], ev["accuracy_per_exit"])

    from edgekit.eval import compare
    from edgekit.io import write_json

    write_json(tmp_path / "evals" / "eval_student.json", {**ev, "name": "tiny-student"})
    summary = compare([tmp_path / "evals"], tmp_path / "cmp")
    assert summary["tasks"] == ["jsonl"] and summary["rows"][0]["model"] == "tiny-student"
    assert f"{100 * ev['accuracy']:.2f}" in (tmp_path / "cmp" / "compare.md").read_text()
    assert (tmp_path / "cmp" / "compare.csv").read_text().startswith("model,format,parameters")
    assert (tmp_path / "cmp" / "accuracy_vs_size.png").read_bytes()[:4] == b"\x89PNG"

    from edgekit.early_exit import predict_texts

    rows = predict_texts(model_dir, ["今天好极了", "今天糟透了"], exit_layer=3)
    assert [r["label"] for r in rows] == ["pos", "neg"] and all(r["exit_layer"] == 3 for r in rows)
    dyn = predict_texts(model_dir, ["今天好极了", "吃饭糟透了看电影"], patience=1)
    assert all(2 <= r["exit_layer"] <= 3 for r in dyn)
    proc = run_cli("predict", model_dir, "看电影好极了", "--exit-layer", "9")
    assert_clean_error(proc, r"exit_layer must be a layer between 1 and the model's depth 3")


@pytest.mark.parametrize("args, message", [
    (["--task", "nosuch", "--data-dir", "."], r"unknown task 'nosuch'; choose one of"),
    (["--task", "tnews", "--data-dir", "/nonexistent/dir"], r"data directory '/nonexistent/dir' does not exist"),
])
def test_finetune_bad_input(tiny_albert, tmp_path, args, message):
    assert_clean_error(run_cli("finetune", "--model", tiny_albert, "--out", tmp_path / "ft", *args), message)


def test_bad_lines_and_labels(tmp_path):
    (tmp_path / "train.json").write_text('{"sentence": "a", "label": "100"}\nnot json\n', encoding="utf-8")
    (tmp_path / "dev.json").write_text('{"sentence": "a", "label": "100"}\n', encoding="utf-8")
    (tmp_path / "labels.json").write_text('{"label": "100", "label_desc": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"train.json:2 is not valid JSON"):
        load_task("tnews", tmp_path)
    (tmp_path / "train.json").write_text('{"sentence": "a", "label": "999"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"train.json:1 has label '999', which is not in the task's label set"):
        load_task("tnews", tmp_path)
    (tmp_path / "train.json").write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"train.json' is empty; it needs one example per line"):
        load_task("tnews", tmp_path)
    (tmp_path / "train.json").write_text("[]\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"has no examples; an empty split"):
        load_task("tnews", tmp_path)


def test_cluewsc_marks_both_spans(tmp_path):
    line = {"target": {"span2_index": 11, "span1_index": 3, "span1_text": "小明", "span2_text": "他"},
            "idx": 0, "label": "true", "text": "老师说小明很聪明，后来他考上了大学。"}
    bad = {**line, "target": {**line["target"], "span2_index": 2}}
    (tmp_path / "train.json").write_text(json.dumps(line, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "dev.json").write_text(json.dumps({**line, "label": "false"}, ensure_ascii=False) + "\n", encoding="utf-8")
    task = load_task("cluewsc", tmp_path)
    assert task.labels == ["false", "true"] and task.train.labels == [1] and task.dev.labels == [0]
    assert task.train.texts == ["老师说_小明_很聪明，后来[他]考上了大学。"]
    (tmp_path / "dev.json").write_text(json.dumps(bad, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"dev.json:1 is malformed \(span2_text '他' is not at span2_index 2\)"):
        load_task("cluewsc", tmp_path)


def test_finetune_accepts_the_builtin_teacher_by_name(tiny_teacher, separable, tmp_path, monkeypatch):
    """`edgekit finetune --model e5-small` fine-tunes the built-in teacher, as `tune --model` and
    `distill --teacher` accept it (here the name resolves to a tiny BERT so the test stays cheap)."""
    import edgekit.checkpoint as checkpoint
    from edgekit.finetune import finetune, load_finetune_config

    asked = []
    monkeypatch.setattr(checkpoint, "resolve_teacher", lambda name: asked.append(name) or tiny_teacher)
    cfg = load_finetune_config(None, {
        "model": "e5-small",
        "task": {"name": "jsonl", "data_dir": str(separable), "text_field": "review", "label_field": "y", "max_length": 16},
        "train": {"max_steps": 2, "batch_size": 8, "save_every": 2, "log_every": 1},
    })
    result = finetune(cfg, tmp_path / "run")
    assert asked == ["e5-small"] and result["steps"] == 2
    assert (tmp_path / "run" / "model" / "config.json").is_file()
