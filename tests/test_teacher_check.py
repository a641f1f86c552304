"""benchmarks/teacher_check.py: the teacher check of issue 12 rendered from run directories (no training)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import ROOT, load_benchmark
from edgekit.errors import UserError

tc = load_benchmark("teacher_check")


def fake_config(task="csl", max_steps=310, epochs=5.0, max_eval=None, data_dir="../shared/data/clue/csl"):
    return {"model": "e5-small",
            "task": {"name": task, "data_dir": data_dir, "max_length": 256 if task == "csl" else 128,
                     "max_eval_examples": max_eval},
            "finetune": {"eval_every": 31, "freeze_embeddings": False, "pooling": "auto"},
            "train": {"max_steps": max_steps, "batch_size": 32, "lr": 5e-5, "warmup_ratio": 0.1, "epochs": epochs}}


def write_run(directory, evals, config=None, results=None, extra_lines=()):
    """A run directory as `edgekit finetune` leaves it: config.json, versions.json, metrics.jsonl,
    and results.json when finished. ``evals``: (step, accuracy) pairs."""
    config = config or fake_config()
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"command": "edgekit finetune --task csl", "config": config}))
    (directory / "versions.json").write_text(json.dumps({"torch": "2.13.0+cpu", "torch_threads": 1, "cuda": None}))
    lines = []
    for step, acc in evals:
        lines.append(json.dumps({"step": step - 1, "loss": 0.5, "lr": 1e-5 * step}))
        lines.append(json.dumps({"step": step, "eval_accuracy": acc, "eval_accuracy_per_exit": [acc]}))
    (directory / "metrics.jsonl").write_text("\n".join([*lines, *extra_lines]) + "\n")
    if results is not None:
        (directory / "results.json").write_text(json.dumps(results))
    return directory


def finished_results(best_step, best_acc, steps=310):
    return {"stage": "finetune", "task": "csl", "steps": steps, "train_examples": 2002, "dev_examples": 998,
            "pooling": "mean", "best_step": best_step, "dev_accuracy": best_acc, "seconds": 620.0,
            "schedule": {"max_steps": steps, "epochs": 5.0}}


def test_finished_run_best_final_and_pass(tmp_path):
    evals = [(62, 0.56), (124, 0.7615), (310, 0.7485)]
    run = write_run(tmp_path / "csl", evals, results=finished_results(124, 0.7615))
    s = tc.summarize(tc.read_run(run))
    assert s["finished"] and s["status"] == "finished"
    assert s["best"] == {"step": 124, "accuracy": 0.7615} and s["final"] == 0.7485
    assert s["verdict"] == "PASS" and s["ratio"] == pytest.approx(0.7615 / 0.75, abs=1e-4)
    # 2,002 examples / 32 = 62 batches per epoch
    assert [e["epoch"] for e in s["evals"]] == [1.0, 2.0, 5.0]
    assert s["settings"]["epochs"] == 5.0 and s["settings"]["pooling"] == "mean"
    md = tc.render([s], "python benchmarks/teacher_check.py --report-only", "2026-12-01", "test")
    assert "| CSL | finished | 76.15 | 74.85 |  | 75.00 | 1.015 | PASS |" in md
    assert "| 124 | 2 | 1.24e-03 | **76.15** |" in md
    assert "Time: 620 s (≈ 2.0 s per step)" in md
    assert "| TinyBERT-4 | 75.1 | CLUE leaderboard |" in md and tc.DATA_NOTE in md


def test_below_target_is_a_miss(tmp_path):
    run = write_run(tmp_path / "csl", [(124, 0.7154)], config=fake_config(max_steps=124, epochs=2.0),
                    results={**finished_results(124, 0.7154, steps=124), "schedule": {"max_steps": 124, "epochs": 2.0}})
    s = tc.summarize(tc.read_run(run, "CSL, 2 epochs (earlier run)"))
    assert s["verdict"] == "MISS" and s["ratio"] == pytest.approx(0.9539, abs=1e-4)
    md = tc.render([s], "cmd", "d", "m")
    assert "| CSL, 2 epochs (earlier run) | finished | 71.54 | 71.54 |  | 75.00 | 0.954 | MISS |" in md


def test_unfinished_run_is_in_progress(tmp_path):
    run = write_run(tmp_path / "tnews", [(200, 0.3905), (1000, 0.5425)],
                    config=fake_config("tnews", max_steps=5001, epochs=None, max_eval=2000),
                    extra_lines=[json.dumps({"step": 1090, "loss": 1.4, "lr": 4.3e-5}), '{"step": 11'])
    s = tc.summarize(tc.read_run(run), epochs_default=lambda task: 3)
    assert s["status"] == "in progress, step 1090 of 5001" and s["verdict"] == "not finished"
    assert s["best"] == {"step": 1000, "accuracy": 0.5425} and s["final"] is None
    assert s["evals"][0]["epoch"] == pytest.approx(200 / (5001 / 3), abs=0.01)
    md = tc.render([s], "cmd", "d", "m")
    assert "| TNEWS | in progress, step 1090 of 5001 | 54.25 |  |  | 53.00 | 1.024 | not finished |" in md
    assert "dev accuracy (first 2,000 dev examples)" in md and "not known until the run finishes" in md
    assert "| ALBERT-zh-tiny (4M) | 53.4 | CLUE paper |" in md  # CSL's "on test" is no TNEWS caveat


def test_the_whole_dev_evaluation_is_what_the_verdict_reads(tmp_path):
    """A run that picked its checkpoint on the first 2,000 dev examples passes there (54.25) but is judged on
    the whole split when `edgekit eval` measured it (52.10 < 53: MISS)."""
    config = fake_config("tnews", max_steps=5001, epochs=3.0, max_eval=2000)
    results = {**finished_results(5001, 0.5425, steps=5001), "task": "tnews", "train_examples": 53360}
    run = write_run(tmp_path / "tnews", [(2500, 0.53), (5001, 0.5425)], config=config, results=results)
    assert tc.summarize(tc.read_run(run))["verdict"] == "PASS"
    (run / tc.WHOLE_DEV).write_text(json.dumps({"accuracy": 0.521, "examples": 10000, "split": "dev"}))
    s = tc.summarize(tc.read_run(run))
    assert s["whole_dev"] == {"accuracy": 0.521, "examples": 10000}
    assert s["verdict"] == "MISS" and s["ratio"] == pytest.approx(0.521 / 0.53, abs=1e-4)
    md = tc.render([s], "cmd", "d", "m")
    assert "| TNEWS | finished | 54.25 | 54.25 | 52.10 | 53.00 | 0.983 | MISS |" in md
    assert "On the whole dev split (10,000 examples): 52.10." in md


def test_rows_copied_from_the_committed_report(tmp_path):
    """--from-report: a row whose run directory is on another machine comes from the earlier JSON, marked."""
    first = tmp_path / "results"
    write_run(tmp_path / "teacher-csl", [(124, 0.7615), (310, 0.7485)], results=finished_results(124, 0.7615))
    tc.main(["--report-only", "--tasks", "csl", "--out-root", str(tmp_path), "--results-dir", str(first)])
    import shutil

    shutil.rmtree(tmp_path / "teacher-csl")  # a new machine: only the committed report is left
    write_run(tmp_path / "teacher-tnews", [(200, 0.39)], config=fake_config("tnews", max_steps=5001, max_eval=2000))
    result = tc.main(["--report-only", "--tasks", "csl,tnews", "--out-root", str(tmp_path), "--results-dir",
                      str(first), "--from-report", "csl"])
    csl, tnews = result["runs"]
    assert csl["best"]["accuracy"] == 0.7615 and csl["from_report"] and csl["verdict"] == "PASS"
    assert tnews["task"] == "tnews" and "from_report" not in tnews
    md = (first / "teacher_check.md").read_text()
    assert f"CSL: copied from the report of {csl['from_report']} (`--from-report`)" in md
    with pytest.raises(UserError, match=r"--from-report iflytek: the report .* has no such row \(it has: CSL, TNEWS\)"):
        tc.main(["--report-only", "--tasks", "csl", "--out-root", str(tmp_path), "--results-dir", str(first),
                 "--from-report", "iflytek"])
    with pytest.raises(UserError, match="add --report-only"):
        tc.main(["--tasks", "csl", "--results-dir", str(first), "--from-report", "csl"])
    with pytest.raises(UserError, match="which does not exist"):
        tc.main(["--report-only", "--tasks", "csl", "--results-dir", str(tmp_path / "none"), "--from-report", "csl"])


def test_restarted_history_keeps_the_later_records():
    records = [{"step": 31, "eval_accuracy": 0.5}, {"step": 62, "eval_accuracy": 0.6}, {"step": 70},
               {"step": 31, "eval_accuracy": 0.55}, {"step": 40}]
    assert tc.clean_metrics(records) == [{"step": 31, "eval_accuracy": 0.55}, {"step": 40}]


def test_config_differences(monkeypatch):
    recorded = fake_config(max_steps=310, epochs=None)
    planned = fake_config(max_steps=None, epochs=None, data_dir=str((ROOT / "../shared/data/clue/csl")))
    monkeypatch.chdir(ROOT)
    assert tc.config_differences(recorded, planned) == []  # steps filled in at start; the same data, spelled absolute
    other = fake_config(max_steps=None, epochs=None, max_eval=2000)
    assert tc.config_differences(recorded, other) == ["task.max_eval_examples: unset there, 2000 here"]


def test_run_dir_rules(tmp_path):
    planned = fake_config(max_steps=None, epochs=None)
    assert tc.check_resumable(tmp_path / "new", planned, "csl") == "new"
    live = write_run(tmp_path / "live", [(31, 0.5)], config=fake_config(epochs=None))
    with pytest.raises(UserError, match=r"was written \d+ s ago, so a process is probably still training it"):
        tc.check_resumable(live, planned, "csl")
    assert tc.check_resumable(live, planned, "csl", now=time.time() + 3600) == "resume"
    assert tc.check_resumable(live, planned, "csl", assume_stopped=True) == "resume"
    two = write_run(tmp_path / "two", [(124, 0.7)], config=fake_config(max_steps=124, epochs=2.0),
                    results=finished_results(124, 0.7, 124))
    with pytest.raises(UserError, match=r"started with other settings \(train\.epochs: 2\.0 there, unset here\)"):
        tc.check_resumable(two, planned, "csl")
    done = write_run(tmp_path / "done", [(310, 0.76)], config=fake_config(epochs=None),
                     results=finished_results(310, 0.76))
    assert tc.check_resumable(done, planned, "csl") == "finished"


def test_report_only_writes_md_and_json(tmp_path):
    write_run(tmp_path / "teacher-csl", [(124, 0.7615), (310, 0.7485)], results=finished_results(124, 0.7615))
    out = tmp_path / "results"
    result = tc.main(["--report-only", "--tasks", "csl", "--out-root", str(tmp_path), "--results-dir", str(out)])
    assert [r["verdict"] for r in result["runs"]] == ["PASS"]
    saved = json.loads((out / "teacher_check.json").read_text())
    assert saved["runs"][0]["best"]["accuracy"] == 0.7615 and saved["targets"] == {"tnews": 0.53, "csl": 0.75}
    assert "--report-only --tasks csl" in (out / "teacher_check.md").read_text()


def test_missing_run_dir_is_one_sentence(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "teacher_check.py"), "--report-only",
                           "--tasks", "csl", "--run", f"csl={tmp_path / 'nope'}", "--results-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"error: run directory '{tmp_path / 'nope'}' does not exist; pass --run TASK=DIR" in proc.stderr
    assert not (tmp_path / "teacher_check.md").exists()


def test_flag_pairs_are_checked(tmp_path):
    with pytest.raises(UserError, match=r"--extra takes NAME=DIR, got 'runs/teacher-csl'"):
        tc.main(["--report-only", "--extra", "runs/teacher-csl", "--results-dir", str(tmp_path)])
    with pytest.raises(UserError, match=r"--run names task 'iflytek', which --tasks does not include \(csl, tnews\)"):
        tc.main(["--report-only", "--run", "iflytek=runs/x", "--results-dir", str(tmp_path)])


def test_trains_then_skips_a_finished_run(tmp_path, tiny_teacher, monkeypatch, capsys):
    """The training path end to end on a tiny teacher, a few steps of TNEWS; the second call reads it."""
    from conftest import DATA

    monkeypatch.setattr(tc, "MODEL", str(tiny_teacher))
    sets = ["task.max_train_examples=64", "task.max_eval_examples=32", "train.max_steps=4", "task.max_length=32"]
    run = tmp_path / "teacher-tnews"
    tc.train_teacher("tnews", run, str(DATA / "clue"), sets, assume_stopped=False)
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["command"].startswith(f"edgekit finetune --model {tiny_teacher} --task tnews --data-dir ")
    assert "--lr 5e-5 --eval-every 200 --set task.max_eval_examples=2000 --set task.max_train_examples=64" \
        in recorded["command"]
    assert recorded["config"]["task"]["max_eval_examples"] == 32  # the caller's --set wins over the task's
    s = tc.summarize(tc.read_run(run))
    assert s["finished"] and s["step"] == 4 and [e["step"] for e in s["evals"]] == [4]
    tc.train_teacher("tnews", run, str(DATA / "clue"), sets, assume_stopped=False)
    assert "finished earlier; read, not trained" in capsys.readouterr().out


def test_report_only_says_when_a_run_has_other_settings(tmp_path):
    from edgekit.config import to_dict

    config = to_dict(tc.teacher_config("csl", "../shared/data/clue/csl"))  # the check's run, but 2 epochs
    config["train"].update(epochs=2.0, max_steps=124)
    write_run(tmp_path / "teacher-csl", [(124, 0.7154)], config=config,
              results={**finished_results(124, 0.7154, 124), "schedule": {"max_steps": 124, "epochs": 2.0}})
    result = tc.main(["--report-only", "--tasks", "csl", "--out-root", str(tmp_path),
                      "--results-dir", str(tmp_path / "results")])
    assert result["runs"][0]["differs"] == ["train.epochs: 2.0 there, unset here"]
    assert "CSL: read from a run made with other settings than this check's (" in \
        (tmp_path / "results" / "teacher_check.md").read_text()
