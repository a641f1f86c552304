"""--resume continues a run only with the settings it was started with (``edgekit.io.check_resume_config``).

A fine-tuning run is started through the CLI and stopped after its step-2 checkpoint (the trainer's
``stop_after_step``, as an interruption would); each test resumes a copy of it. Its max_steps
(1 epoch of 200 examples at batch 32: 6) and lr (the small-model default 1e-4) are filled in by the
stage, so an identical command only matches if the EFFECTIVE configs are compared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import make_tiny_albert, tiny_distill_overrides, write_separable_task
from edgekit.errors import UserError
from edgekit.io import RESUME_MAY_CHANGE, changed_keys, check_resume_config


def run_cli(capsys, *args) -> tuple[int, str, str]:
    from edgekit.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, single_torch_thread):
    """(the CLI arguments, a finetune run directory stopped after its step-2 checkpoint, a second task's data)."""
    import edgekit.train

    root = tmp_path_factory.mktemp("resume_config")
    args = ["finetune", "--model", make_tiny_albert(root / "albert"), "--task", "jsonl",
            "--data-dir", write_separable_task(root / "task"), "--text-field", "review", "--label-field", "y",
            "--epochs", "1", "--batch-size", "32", "--eval-every", "3", "--set", "train.save_every=2",
            "--set", "task.max_length=32"]
    real_train = edgekit.train.Trainer.train
    mp = pytest.MonkeyPatch()
    mp.setattr(edgekit.train.Trainer, "train", lambda self, stop_after_step=None: real_train(self, 2))
    from edgekit.cli import main

    try:
        main([str(a) for a in [*args, "--out", root / "run"]])
    except SystemExit as e:
        assert e.code in (0, None)
    finally:
        mp.undo()
    assert (root / "run" / "checkpoints" / "step-0000002").is_dir() and not (root / "run" / "results.json").exists()
    return args, root / "run", write_separable_task(root / "other-task", seed=1)


def copy_of(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def snapshot(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_with_the_same_command_continues_and_compares_effective_values(stopped_run, tmp_path, capsys):
    args, run, _ = stopped_run
    out = copy_of(run, tmp_path)
    recorded = json.loads((out / "config.json").read_text())["config"]
    assert recorded["train"]["max_steps"] == 6 and recorded["train"]["lr"] == 1e-4  # filled in by the stage
    code, _, err = run_cli(capsys, *args, "--out", out, "--resume")
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["steps"] == 6
    assert json.loads((out / "config.json").read_text())["config"] == recorded


@pytest.mark.parametrize("change, named", [
    (["--lr", "3e-4"], "train.lr 0.0001 -> 0.0003"),
    (["--max-steps", "9"], "train.max_steps 6 -> 9"),
    (["--set", "task.max_eval_examples=20"], "task.max_eval_examples null -> 20"),
    ("other-task", "task.data_dir"),
])
def test_resume_with_other_settings_is_refused_writing_nothing(stopped_run, tmp_path, capsys, change, named):
    args, run, other_task = stopped_run
    out = copy_of(run, tmp_path)
    if change == "other-task":
        args = [str(other_task) if a == args[args.index("--data-dir") + 1] else a for a in args]
        change = []
    before = snapshot(out)
    code, _, err = run_cli(capsys, *args, *change, "--out", out, "--resume")
    assert code == 2
    assert "Traceback" not in err and err.count("error:") == 1
    err = err.strip().splitlines()[-1]  # after the model loader's progress bar
    assert err.startswith(f"error: cannot resume '{out}' with other settings than it was started with (")
    assert named in err and err.endswith("pass the same settings, or start a new run with another --out or with "
                                         "--overwrite.")
    assert snapshot(out) == before  # config.json, metrics, checkpoints: untouched


def test_a_bookkeeping_change_is_accepted_and_recorded(stopped_run, tmp_path, capsys):
    args, run, _ = stopped_run
    out = copy_of(run, tmp_path)
    args = [a if a != "3" else "2" for a in args]  # --eval-every 3 -> 2
    code, _, err = run_cli(capsys, *args, "--set", "train.log_every=1", "--out", out, "--resume")
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["train"]["log_every"] == 1 and config["finetune"]["eval_every"] == 2
    assert json.loads((out / "results.json").read_text())["steps"] == 6


def test_distill_resume_refuses_another_learning_rate(tiny_teacher, tiny_corpus, tmp_path, single_torch_thread):
    from edgekit.distill import distill, load_distill_config

    def cfg(**train):
        return load_distill_config(None, tiny_distill_overrides(tiny_teacher, tiny_corpus, max_steps=4, save_every=2,
                                                                **train))

    out = tmp_path / "distill"
    assert distill(cfg(), out, stop_after_step=2)["interrupted"]
    before = snapshot(out)
    with pytest.raises(UserError, match=r"\(train\.lr 0\.001 -> 0\.002\)"):
        distill(cfg(lr=2e-3), out, resume=True)
    assert snapshot(out) == before


def write_record(run: Path, config: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"command": "edgekit x", "config": config}))


def test_check_resume_config_by_hand(tmp_path):
    old = {"train": {"lr": 1e-4, "log_every": 10, "seed": 1, "batch_size": 8, "max_steps": 6, "epochs": None},
           "task": {"name": "tnews"}, "model": "a"}
    assert changed_keys(old, {**old, "model": "b", "extra": 1}) == ["extra", "model"]
    write_record(tmp_path, old)
    check_resume_config(tmp_path, old)
    check_resume_config(tmp_path, {**old, "train": {**old["train"], "log_every": 1}})  # bookkeeping
    check_resume_config(tmp_path, {**old, "new_section": {"x": 1}, "task": {"name": "tnews", "new_key": 2}})
    new = {"train": {"lr": 2e-4, "log_every": 10, "seed": 2, "batch_size": 16, "max_steps": 7, "epochs": 3},
           "task": {"name": "csl"}, "model": "a"}
    with pytest.raises(UserError) as e:
        check_resume_config(tmp_path, new)
    assert "(task.name \"tnews\" -> \"csl\", train.batch_size 8 -> 16, train.epochs null -> 3, " \
           "train.lr 0.0001 -> 0.0002 and 2 more)" in str(e.value)
    check_resume_config(tmp_path / "missing", new)  # nothing recorded: nothing to compare
    (tmp_path / "config.json").write_text("{torn")
    check_resume_config(tmp_path, new)
    assert {"train.log_every", "train.save_every", "train.keep_checkpoints"} <= RESUME_MAY_CHANGE
    assert not {"train.lr", "train.max_steps", "train.precision", "task.max_eval_examples"} & RESUME_MAY_CHANGE
