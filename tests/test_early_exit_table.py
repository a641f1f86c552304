"""benchmarks/early_exit.py accuracy: the per-exit and dynamic-exit table of a fine-tuned student (clue.py's
stage 3). Its batches are sorted by length, so its labels must follow the same order: checked against
`edgekit eval`, which batches in file order."""
import argparse
import json
import shutil

import pytest

from conftest import load_benchmark


def test_per_exit_accuracy_matches_evaluate_and_the_table_records_its_command(tiny_classifier, tmp_path):
    from edgekit.eval import evaluate

    model = tmp_path / "clf"
    shutil.copytree(tiny_classifier, model)
    config = json.loads((model / "config.json").read_text())
    config["id2label"] = {"0": "neg", "1": "pos", "2": "other"}  # the sentiment task's labels (3 logits)
    config["label2id"] = {"neg": 0, "pos": 1, "other": 2}
    (model / "config.json").write_text(json.dumps(config))

    early_exit = load_benchmark("early_exit")
    args = argparse.Namespace(model=str(model), task="sentiment", data_dir=None, max_length=32, limit=64,
                              name="table", out_dir=str(tmp_path / "out"), command="python benchmarks/clue.py --smoke")
    table = early_exit.accuracy(args)
    reference = evaluate(model, "sentiment", max_examples=64, max_length=32)
    assert [r["exit_layer"] for r in table["per_exit"]] == [1, 2, 3, 4]
    assert [r["accuracy"] for r in table["per_exit"]] == pytest.approx(reference["accuracy_per_exit"], abs=1e-6)
    assert len({r["accuracy"] for r in table["per_exit"]}) > 1  # the exits differ, so the check has teeth
    assert len(table["dynamic"]) == 10 and all(d["speedup_vs_full"] > 0 for d in table["dynamic"])
    # entropy thresholds are shares of ln C (3 logits): 0.05 ln 3 = 0.0549 ... 0.5 ln 3 = 0.5493
    assert [d["entropy_threshold"] for d in table["dynamic"] if d["mode"] == "entropy"] == pytest.approx(
        [0.0549, 0.1099, 0.2197, 0.3296, 0.4394, 0.5493], abs=1e-4)
    md = (tmp_path / "out" / "table.md").read_text()
    assert md.startswith("Command: `python benchmarks/clue.py --smoke`") and "one timed pass per row" in md and "median of 3" in md and "(0.50 ln C)" in md
    assert (tmp_path / "out" / "table.png").stat().st_size > 1000
    assert len(table["full_depth_seconds"]) == 3 and all(x > 0 for x in table["full_depth_seconds"])
    assert json.loads((tmp_path / "out" / "table.json").read_text())["command"] == "python benchmarks/clue.py --smoke"
