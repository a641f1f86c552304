"""SIGKILL in the middle of training, then run the same command again: it continues from the last
checkpoint, ends with exactly the model an uninterrupted run writes, and nothing that looks finished
was ever half-written.

Each stage command runs as a subprocess on the tiny models of ``conftest``; once its first checkpoint
exists the test sleeps a random time (drawn from ``SEED``: the same moments on every run) of up to a
few steps, so the kill lands in a step, in a checkpoint write or between them, and sends SIGKILL
(no handler runs, as on an out-of-memory kill or a power cut). The re-run is the same command in
this process (the CLI's ``main``; ``--resume`` for the stage commands, nothing for ``edgekit run``).

The training loops are deterministic on CPU (seeded data order and dropout, RNG state in the
checkpoint), so the final weights are compared bit for bit with an uninterrupted run's. Both sides
use one torch thread: the reference in this process (``single_torch_thread``), the killed run through
OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT, tiny_distill_overrides
from edgekit_device.outdir import is_temp_name
from test_pipeline import reviews, tiny_recipe  # noqa: F401  (reviews: a fixture)

SEED = 1130


# --- killing -----------------------------------------------------------------------------------

def first_checkpoint(run_dir: Path) -> Path | None:
    done = [p for p in run_dir.glob("checkpoints/step-*") if (p / "trainer_state.pt").exists()]
    return min(done) if done else None


def kill_mid_run(args: list, watch: Path, delay_s: float, log: Path, timeout: float = 120.0) -> None:
    """Start ``edgekit ARGS``, wait for the first checkpoint under ``watch``, sleep ``delay_s``, SIGKILL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *map(str, args)], stdout=err, stderr=err,
                                env=env)
        try:
            deadline = time.monotonic() + timeout
            while first_checkpoint(watch) is None:
                assert proc.poll() is None, f"edgekit exited ({proc.returncode}) before its first checkpoint:\n" + \
                    log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within the timeout"
                time.sleep(0.002)
            time.sleep(delay_s)
            assert proc.poll() is None, f"the run finished within {delay_s:.3f} s of its first checkpoint; " \
                                        "give it more steps so the kill lands mid-run"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def rerun(args: list) -> None:
    """The same command again, through the CLI's entry point in this process."""
    from edgekit.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert e.code in (0, None), f"re-run exited {e.code}"


# --- what a killed run may leave -------------------------------------------------------------

def assert_nothing_half_written(run_dir: Path) -> None:
    """Everything that looks finished is whole: every JSON parses, every checkpoint step has its
    trainer state, step.json and model, every model directory (a ``config.json`` with a
    ``model_type``) has loadable weights, its ``edgekit.json`` and its tokenizer. Temporaries start
    with a dot, so nothing takes them for finished, and are skipped."""
    for path in sorted(run_dir.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(run_dir).parts):
            continue
        if path.is_file() and path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))  # raises on a torn write
            if path.name == "config.json" and isinstance(data, dict) and "model_type" in data:
                model = path.parent
                assert load_file(model / "model.safetensors"), model
                assert (model / "edgekit.json").is_file() and (model / "tokenizer_config.json").is_file(), model
        if path.is_dir() and path.parent.name == "checkpoints":
            assert path.name.startswith("step-"), path
            assert json.loads((path / "step.json").read_text())["step"] == int(path.name.split("-")[1])
            assert zipfile.ZipFile(path / "trainer_state.pt").testzip() is None, path
            assert (path / "model" / "config.json").is_file(), path


def model_of(run_dir: Path) -> Path:
    """The model a finished stage run wrote, as its results.json records it."""
    results = json.loads((run_dir / "results.json").read_text())
    recorded = results.get("model_dir") or results.get("student_dir")
    return run_dir / Path(recorded).name


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ from the uninterrupted run's, e.g. {differ[:3]}"


def train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").split("\n")
    return [r for r in map(json.loads, filter(str.strip, lines)) if "lr" in r]


def assert_same_history(killed: Path, reference: Path) -> None:
    """One record per logged step, no step twice, the same losses as the uninterrupted run."""
    got, want = train_records(killed), train_records(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [r["loss"] for r in got] == [r["loss"] for r in want]


def assert_no_leftovers(run_dir: Path) -> None:
    """A finished run keeps no temporaries of the writes the kill cut short (a half-written
    checkpoint is as large as the model)."""
    left = [str(p.relative_to(run_dir)) for p in run_dir.rglob(".*") if is_temp_name(p.name)]
    assert not left, left


def logged_until(run_dir: Path, step: int) -> list[str]:
    """The metrics.jsonl lines of steps up to ``step``, as written."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").split("\n")
    return [line for line in lines if line.strip() and json.loads(line)["step"] <= step]


def kill_and_resume(args: list, out: Path, window_s: float, rng: random.Random, tmp_path: Path,
                    watch: Path | None = None, resume_flag: tuple = ("--resume",)) -> None:
    """Kill ``edgekit ARGS --out OUT`` a random moment after the first checkpoint in ``watch``
    (default OUT), check what it left, run it again and check that it continued from its last
    checkpoint: the lines it logged up to that step are kept as they were (their tokens_per_s is a
    measured speed: a run that started over would have written other numbers)."""
    watch = watch or out
    kill_mid_run([*args, "--out", out], watch, rng.uniform(0.0, window_s), tmp_path / f"{out.name}.log")
    assert_nothing_half_written(out)
    assert not (out / "results.json").exists(), "a killed run has a results.json"
    last = max(int(p.name.split("-")[1]) for p in watch.glob("checkpoints/step-*") if (p / "trainer_state.pt").exists())
    before = logged_until(watch, last)
    assert before, "nothing was logged before the last checkpoint"
    rerun([*args, "--out", out, *resume_flag])
    assert logged_until(watch, last) == before, "the re-run did not continue from the last checkpoint"
    assert_nothing_half_written(out)
    assert_no_leftovers(out)


def step_seconds(results: dict) -> float:
    return results["seconds"] / results["steps"]


# --- the stages --------------------------------------------------------------------------------

STEPS, SAVE_EVERY = 24, 4


@pytest.fixture()
def rng(request):
    """The kill moments of one test, the same whichever tests run before it."""
    return random.Random(f"{SEED}:{request.node.name}")


@pytest.fixture(scope="module")
def distill_recipe(tiny_teacher, tiny_corpus, tmp_path_factory):
    over = tiny_distill_overrides(tiny_teacher, tiny_corpus, max_steps=STEPS, save_every=SAVE_EVERY)
    over["student"]["dropout"] = 0.1  # the RNG state must be restored too
    path = tmp_path_factory.mktemp("kill") / "distill.yaml"
    path.write_text(yaml.safe_dump(over))
    return path


@pytest.fixture(scope="module")
def distilled(distill_recipe, tmp_path_factory, single_torch_thread):
    """An uninterrupted distill run: the reference, and the student prune and finetune start from."""
    from edgekit.distill import distill, load_distill_config

    out = tmp_path_factory.mktemp("kill") / "distill-reference"
    result = distill(load_distill_config(distill_recipe), out)
    return out, result


@pytest.mark.slow
@pytest.mark.usefixtures("single_torch_thread")
def test_distill_killed_mid_step_resumes_to_the_same_student(distill_recipe, distilled, rng, tmp_path):
    reference, result = distilled
    out = tmp_path / "distill"
    kill_and_resume(["distill", "--recipe", distill_recipe], out, SAVE_EVERY * step_seconds(result), rng, tmp_path)
    assert json.loads((out / "results.json").read_text())["steps"] == STEPS
    assert_same_weights(model_of(out), model_of(reference))
    assert_same_history(out, reference)


@pytest.mark.slow
@pytest.mark.usefixtures("single_torch_thread")
def test_prune_killed_mid_step_resumes_to_the_same_sparse_student(distilled, rng, tmp_path):
    from edgekit.prune import load_prune_config, prune

    recipe = tmp_path / "prune.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(model_of(distilled[0])),
        "prune": {"sparsity": 0.8, "frequency": 2, "end_step": 16},
        "train": {"max_steps": STEPS, "batch_size": 8, "save_every": SAVE_EVERY, "log_every": 1, "lr": 1e-3},
    }))
    reference = tmp_path / "prune-reference"
    result = prune(load_prune_config(recipe), reference)
    out = tmp_path / "prune"
    kill_and_resume(["prune", "--recipe", recipe], out, SAVE_EVERY * step_seconds(result), rng, tmp_path)
    assert_same_weights(model_of(out), model_of(reference))
    assert_same_history(out, reference)
    assert json.loads((out / "sparsity.json").read_text()) == json.loads((reference / "sparsity.json").read_text())


@pytest.mark.slow
@pytest.mark.usefixtures("single_torch_thread")
def test_finetune_killed_mid_step_resumes_to_the_same_classifier(distilled, reviews, rng, tmp_path):  # noqa: F811
    from edgekit.finetune import finetune, load_finetune_config

    recipe = tmp_path / "finetune.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(model_of(distilled[0])),
        "task": {"name": "jsonl", "data_dir": str(reviews), "text_field": "text", "label_field": "y",
                 "max_length": 24},
        # evaluations between checkpoints: the kill may land after a better model went to best/
        "finetune": {"eval_every": 6},
        "train": {"max_steps": STEPS, "batch_size": 8, "save_every": SAVE_EVERY, "log_every": 1, "lr": 3e-3,
                  "warmup_ratio": 0.0},
    }))
    reference = tmp_path / "finetune-reference"
    result = finetune(load_finetune_config(recipe), reference)
    out = tmp_path / "finetune"
    kill_and_resume(["finetune", "--recipe", recipe], out, SAVE_EVERY * step_seconds(result), rng, tmp_path)
    assert_same_weights(model_of(out), model_of(reference))
    assert_same_history(out, reference)
    got, want = (json.loads((d / "results.json").read_text()) for d in (out, reference))
    assert (got["history"], got["best_step"]) == (want["history"], want["best_step"])


@pytest.mark.slow
@pytest.mark.usefixtures("single_torch_thread")
def test_run_killed_in_a_stage_resumes_by_itself(tiny_teacher, tiny_corpus, reviews, rng, tmp_path):  # noqa: F811
    from edgekit.pipeline import load_pipeline_config, run_pipeline

    data = tiny_recipe(tiny_teacher, tiny_corpus, reviews, references=())
    for stage in ("distill", "prune", "finetune"):
        data[stage]["train"].update(max_steps=STEPS if stage != "finetune" else 20, log_every=1)
    data["export"] = {"format": "onnx", "int8": "none", "pack": False, "parity_examples": 8}
    recipe = tmp_path / "run.yaml"
    recipe.write_text(yaml.safe_dump(data))
    reference = tmp_path / "run-reference"
    report = run_pipeline(load_pipeline_config(recipe), reference, echo=lambda s: None)

    stage = rng.choice(["distill", "prune", "finetune/jsonl"])
    result = json.loads((reference / stage / "results.json").read_text())
    out = tmp_path / "run"
    kill_and_resume(["run", recipe], out, SAVE_EVERY * step_seconds(result), rng, tmp_path, watch=out / stage,
                    resume_flag=())
    for d in ("distill", "prune", "finetune/jsonl"):
        assert_same_weights(model_of(out / d), model_of(reference / d))
        assert_same_history(out / d, reference / d)
    again = json.loads((out / "results.json").read_text())
    assert again["accuracy"] == report["accuracy"]


# --- the pieces that make a killed run resumable ----------------------------------------------

def test_resume_drops_a_torn_metrics_line_and_the_steps_after_the_checkpoint(tmp_path):
    from edgekit.io import RunDir

    run = RunDir(tmp_path)
    for step in (1, 2, 3):
        run.log_metrics({"step": step, "loss": 1.0 / step, "lr": 0.1})
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 4, "lo')  # a full disk or a power cut mid-line
    run.truncate_metrics(after_step=2)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().split("\n") if x] == [1, 2]


def test_resume_removes_the_temporaries_of_writes_a_kill_cut_short(tmp_path):
    from edgekit.io import remove_stale_temporaries

    (tmp_path / "checkpoints" / ".step-0000008.tmp-ab12cd34" / "model").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-0000004").mkdir()
    (tmp_path / ".model.old-123-456").mkdir()
    (tmp_path / ".results.json.tmp-x1y2").write_text("{")
    (tmp_path / ".notes.txt").write_text("mine")  # hidden, but not a name edgekit's writes use
    (tmp_path / "keep.tmp-1").write_text("mine")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == [".model.old-123-456", ".results.json.tmp-x1y2", "checkpoints/.step-0000008.tmp-ab12cd34"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.txt", "checkpoints", "keep.tmp-1"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000004"]


@pytest.mark.slow
@pytest.mark.usefixtures("single_torch_thread")
def test_sigterm_checkpoints_the_step_reached_and_the_resumed_run_ends_with_the_same_student(
        tiny_teacher, tiny_corpus, distilled, tmp_path):
    """SIGTERM (a scheduler's stop, ``kill``) is handled as Ctrl+C: the run checkpoints the step it had
    reached, says so in one line and exits 143. Periodic checkpoints are off here (save_every beyond
    the last step), so without the handler there would be no checkpoint at all."""
    over = tiny_distill_overrides(tiny_teacher, tiny_corpus, max_steps=STEPS, save_every=10 * STEPS)
    over["student"]["dropout"] = 0.1
    recipe = tmp_path / "distill.yaml"
    recipe.write_text(yaml.safe_dump(over))
    out, log = tmp_path / "distill", tmp_path / "distill.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "distill", "--recipe", str(recipe),
                                 "--out", str(out)], stdout=err, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 120
            while not ((out / "metrics.jsonl").is_file() and len(train_records(out)) >= 3):
                assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "no third step within the timeout"
                time.sleep(0.002)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text(errors="replace")
    assert proc.returncode == 143, text[-3000:]
    assert "Traceback" not in text
    assert text.rstrip().endswith("terminated (SIGTERM); the last checkpoint is kept, continue with --resume")
    reached = max(r["step"] for r in train_records(out))
    assert reached < STEPS, "the run finished before the signal: give it more steps"
    assert first_checkpoint(out) is not None, "SIGTERM left no checkpoint"
    assert [p.name for p in out.glob("checkpoints/step-*")] == [f"step-{reached:07d}"]
    assert_nothing_half_written(out)
    rerun(["distill", "--recipe", recipe, "--out", out, "--resume"])
    assert [r["step"] for r in train_records(out)] == list(range(1, STEPS + 1))
    assert_same_weights(model_of(out), model_of(distilled[0]))


def test_terminate_as_interrupt_restores_the_default_handler_and_leaves_others_alone():
    from edgekit.train import Terminated, interruption, terminate_as_interrupt

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(Terminated):
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises here
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert interruption(Terminated()) == ("terminated (SIGTERM)", 143)
    assert interruption(KeyboardInterrupt()) == ("interrupted", 130)

    with terminate_as_interrupt(enabled=False):  # the trainer under torchrun: TERM ends the process as before
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def mine(signum, frame):
        pass
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with terminate_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
