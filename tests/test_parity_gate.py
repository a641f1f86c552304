"""The export parity gate (``edgekit.export.parity``) can fail: it counts changed predictions.

The math is checked against hand-computed values; a simulation of the issue's case (15-class
logits, noise sd 0.2) fails it; a damaged graph fails the export with one sentence and leaves no
bundle; an int8 bundle of a trained classifier passes on its own dev texts.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_albert, write_separable_task
from edgekit.errors import UserError
from edgekit.export import parity
from edgekit.export.parity import (MIN_AGREEMENT, NEAR_TIE_MARGIN, argmax_agreement, failure_sentence, judge_exit,
                                   logit_bound, logit_differences)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LAYER = "model.albert.encoder.albert_layer_groups.0.albert_layers.0."


# --- the math, by hand ------------------------------------------------------------------------


def test_argmax_agreement_by_hand():
    ref = np.array([[2.0, 0.0, 0.0],      # clear: margin 2
                    [1.0, 0.9995, 0.0],   # a near-tie: margin 5e-4 < 1e-3
                    [1.0, 0.999, 0.0],    # margin exactly 1e-3: not a near-tie (strict <)
                    [0.0, 3.0, 1.0]])     # clear: margin 2
    got = ref.copy()
    a = argmax_agreement(ref, got)
    assert a == {"raw_agreement": 1.0, "near_ties": 0, "agreement": 1.0, "flips": 0}
    got[1] = [0.9, 1.0, 0.0]              # the near-tie flips: excused, and counted
    got[2] = [0.9, 1.0, 0.0]              # margin 1e-3 flips: counts against agreement
    got[3] = [0.0, 1.0, 3.0]              # a clear flip: counts
    a = argmax_agreement(ref, got)
    assert a["flips"] == 3 and a["near_ties"] == 1
    assert a["raw_agreement"] == pytest.approx(1 / 4)
    assert a["agreement"] == pytest.approx(2 / 4)  # raw 1/4 + 1 excused near-tie / 4
    assert NEAR_TIE_MARGIN == 1e-3 and MIN_AGREEMENT == {"fp32": 0.999, "int8": 0.98}


def test_logit_differences_and_bound_by_hand():
    ref = np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 0.0]])
    got = np.array([[1.1, -2.0], [0.5, 0.3], [0.0, 0.05]])  # per-example max |Δ|: 0.1, 0.3, 0.05
    d = logit_differences(ref, got)
    assert d["max_abs_diff"] == pytest.approx(0.3) and d["max_abs_logit"] == 2.0
    # 99th percentile of (0.05, 0.1, 0.3), linear interpolation: 0.1 + 0.98 * (0.3 - 0.1)
    assert d["p99_abs_diff"] == pytest.approx(0.1 + 0.98 * 0.2)
    assert logit_bound({"atol": 1e-4, "rtol": 1e-3}, 2.0) == pytest.approx(1e-4 + 2e-3)
    assert logit_bound(None, 2.0) is None  # int8: reported, not gated


def test_judge_exit_gates_fp32_logits_and_agreement():
    ref = np.tile([1.0, 0.0], (1000, 1))
    entry = judge_exit(ref, ref + 1e-6, "fp32", 0.999)
    assert entry["failed"] is None and entry["raw_agreement"] == 1.0
    entry = judge_exit(ref, ref + [0.0, 0.01], "fp32", 0.999)       # no flip, but 0.01 > 1e-4 + 1e-3 · 1
    assert entry["failed"] == "logits" and entry["logit_bound"] == pytest.approx(1.1e-3)
    got = ref.copy()
    got[:2] = [0.0, 1.0]                                             # 2 flips in 1000: 0.998 < 0.999
    assert judge_exit(ref, got, "int8", 0.999)["failed"] == "agreement"
    assert judge_exit(ref, got, "int8", 0.998)["failed"] is None    # the threshold is inclusive
    assert judge_exit(ref, ref + [0.0, 0.9], "int8", 0.98)["failed"] is None  # int8: no logit bound


# --- the simulation fails -------------------------------------------------------------


def test_noisy_15_class_logits_fail_the_gate():
    """15-class logits moved by Gaussian noise of sd 0.2: about one prediction in eight changes.

    The rule this gate replaced (a flip is a near-tie when its margin is within twice the 90th
    percentile of the per-example |Δlogit|) excused every such flip and reported 100%."""
    rng = np.random.default_rng(0)
    ref = rng.normal(0.0, 1.0, (256, 15))
    got = ref + rng.normal(0.0, 0.2, ref.shape)
    flips = ref.argmax(-1) != got.argmax(-1)
    raw = 1.0 - flips.mean()
    assert 0.8 < raw < 0.92, raw  # the regime (87.5% there)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    old_noise = np.quantile(np.abs(got - ref).max(-1), 0.9)
    assert (flips & (top2[:, 1] - top2[:, 0] > 2 * old_noise)).sum() == 0  # the old rule saw no real flip

    for precision in ("int8", "fp32"):
        entry = judge_exit(ref, got, precision, MIN_AGREEMENT[precision])
        assert entry["raw_agreement"] == pytest.approx(raw)
        assert entry["agreement"] == pytest.approx(raw + entry["near_ties"] / 256) and entry["near_ties"] <= 1
    assert judge_exit(ref, got, "int8", 0.98)["failed"] == "agreement"
    assert judge_exit(ref, got, "fp32", 0.999)["failed"] == "logits"
    entry = {"exit": 3, **judge_exit(ref, got, "int8", 0.98)}
    sentence = failure_sentence([entry], "int8", 0.98, "256 texts of the tnews dev split")
    assert sentence.count(". ") == 0 and sentence.endswith(".")
    assert f"exit 3 predicts the same class on {raw:.1%} of 256 texts of the tnews dev split" in sentence
    assert "below the int8 threshold 98.0%" in sentence and "no bundle was written" in sentence
    assert "--accuracy-aware" in sentence and "--min-agreement" in sentence


# --- real exports -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    """``write_separable_task`` with 100 dev lines: the parity figures below count them."""
    return write_separable_task(tmp_path_factory.mktemp("separable"), dev=100)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, separable):
    """A tiny 3-layer ALBERT student fine-tuned 60 steps on ``separable`` (dev accuracy 1.0)."""
    from edgekit.finetune import finetune, load_finetune_config

    root = tmp_path_factory.mktemp("trained")
    make_tiny_albert(root / "student", num_layers=3)
    cfg = load_finetune_config(None, {
        "model": str(root / "student"),
        "task": {"name": "jsonl", "data_dir": str(separable), "text_field": "review", "label_field": "y",
                 "max_length": 32},
        # random batches (bucket_batches 0): the damage test's figures were measured on this model
        "finetune": {"eval_every": 60, "bucket_batches": 0},
        "train": {"max_steps": 60, "batch_size": 16, "lr": 3e-3, "save_every": 60, "log_every": 20,
                  "warmup_ratio": 0.0},
    })
    result = finetune(cfg, root / "ft")
    assert result["dev_accuracy"] >= 0.95, result
    return root / "ft" / "model"


def run_cli(capsys, *args):
    from edgekit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def task_args(separable):
    return ("--task", "jsonl", "--data-dir", separable, "--text-field", "review", "--label-field", "y",
            "--max-length", "32")


def test_int8_bundle_of_a_trained_model_passes_on_its_dev_texts(trained, separable, tmp_path, capsys):
    out = tmp_path / "bundle"
    code, stdout, stderr = run_cli(capsys, "export", trained, "--out", out, "--int8", *task_args(separable))
    assert code == 0, stderr
    p = json.loads((out / "manifest.json").read_text())["parity"]
    assert p["source"] == "text" and p["samples"] == 100
    assert p["inputs"] == f"texts of the jsonl dev split in {separable}"
    assert p["min_agreement"] == 0.98 and p["tolerance"] is None and p["near_tie_margin"] == 1e-3
    assert [e["exit"] for e in p["per_exit"]] == [1, 2, 3]
    assert p["raw_agreement"] >= 0.98 and p["agreement"] >= p["raw_agreement"]
    assert 0 < p["p99_abs_diff"] <= p["max_abs_diff"] < 0.5  # int8 moves logits, a little
    assert all({"raw_agreement", "near_ties", "max_abs_diff", "p99_abs_diff"} <= e.keys() for e in p["per_exit"])
    assert f"parity on 100 texts of the jsonl dev split in {separable}: argmax agreement" in stdout
    assert "(threshold 98.0%)" in stdout


def damage(monkeypatch, weight: str, factor: float = 3.0):
    """Make the exporter write graphs whose ``weight`` is ``factor`` times the model's."""
    from edgekit.export import graphs

    original = graphs.export_copy

    def damaged(classifier):
        clone = original(classifier)
        with torch.no_grad():
            dict(clone.named_parameters())[weight].mul_(factor)
        return clone

    monkeypatch.setattr(graphs, "export_copy", damaged)


def test_damaged_int8_graph_fails_export_with_one_sentence_and_no_bundle(trained, separable, tmp_path, capsys,
                                                                        monkeypatch):
    damage(monkeypatch, LAYER + "attention.value.weight")
    out = tmp_path / "bundle"
    code, stdout, stderr = run_cli(capsys, "export", trained, "--out", out, "--int8", "--pack", *task_args(separable))
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert ("the exported int8 bundle changes the PyTorch model's predictions: exit " in lines[0]
            and f"of 100 texts of the jsonl dev split in {separable}, below the int8 threshold 98.0%, "
                "so no bundle was written; export with --accuracy-aware" in lines[0]), lines[0]
    raw = float(lines[0].split("predicts the same class on ")[1].split("%")[0])
    assert raw < 90.0  # measured 67.5% on 40 such texts
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor the pack
    # The user can accept it knowingly: the threshold they chose is what the manifest says.
    code, _, stderr = run_cli(capsys, "export", trained, "--out", out, "--int8", "--min-agreement", "0.5",
                              *task_args(separable))
    assert code == 0, stderr
    p = json.loads((out / "manifest.json").read_text())["parity"]
    assert p["min_agreement"] == 0.5 and p["raw_agreement"] == pytest.approx(raw / 100, abs=1e-3)


def test_damaged_fp32_graph_fails_on_its_logits(trained, separable, tmp_path, monkeypatch):
    from edgekit.export import export_model
    from edgekit.tasks import load_task

    dev = load_task("jsonl", separable, "review", label_field="y").dev.texts
    # ffn_output x3 leaves every prediction of this model as it was (measured): only the logit bound sees it
    damage(monkeypatch, LAYER + "ffn_output.weight")
    with pytest.raises(UserError) as info:
        export_model(trained, tmp_path / "bundle", max_length=32, sample_texts=dev, sample_source="dev texts")
    message = str(info.value)
    assert message.startswith("the exported fp32 bundle does not compute what the PyTorch model computes: at exit ")
    assert "on 100 dev texts, beyond the" in message and "that float rounding explains" in message
    assert "no bundle was written; this is a bug in edgekit's exporter" in message and "\n" not in message
    assert not (tmp_path / "bundle").exists()


def test_generated_inputs_are_named_and_export_arguments_checked(trained, separable, tmp_path, capsys):
    from edgekit.export import export_model

    out = export_model(trained, tmp_path / "gen", max_length=32)
    p = json.loads((out / "manifest.json").read_text())["parity"]
    assert (p["source"], p["inputs"], p["samples"], p["min_agreement"]) == ("generated", "generated token sequences",
                                                                            256, 0.999)
    assert p["tolerance"] == {"atol": 1e-4, "rtol": 1e-3} and p["max_abs_diff"] < 1e-4
    for args, pattern in [
        (("--task", "jsonl", "--samples", separable / "dev.jsonl"), "pass either --task"),
        (("--data-dir", separable), "--data-dir names a task's files; add --task NAME"),
        (("--min-agreement", "1.5"), "min_agreement must be between 0 and 1, got 1.5"),
    ]:
        code, _, stderr = run_cli(capsys, "export", trained, "--out", tmp_path / "x", *args)
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and pattern in lines[0] and "Traceback" not in stderr, stderr
    assert not (tmp_path / "x").exists()


def test_pipeline_recipe_checks_the_gate_before_anything_runs():
    from edgekit.pipeline import load_pipeline_config

    assert load_pipeline_config(None, {}).export.parity_examples == 256
    with pytest.raises(UserError, match=r"export.min_agreement must be between 0 and 1, got 1.5"):
        load_pipeline_config(None, {"export": {"min_agreement": 1.5}})


def test_parity_module_states_its_defaults():
    doc = parity.__doc__
    assert "fp32 0.999" in doc and "int8 0.98" in doc and "1e-3" in doc
