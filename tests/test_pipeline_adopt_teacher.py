"""``pipeline.tasks[].teacher_run``: the teacher row adopts a finished ``edgekit finetune`` run instead of
fine-tuning the teacher again (a symlink, no copy, the run never written), and refuses runs that are not it."""

import json
import os
import shutil

import pytest

from conftest import TINY_STUDENT
from edgekit.errors import UserError

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: threads only contend

TASK = {"name": "jsonl", "text_field": "review", "label_field": "y", "max_length": 24}


@pytest.fixture(scope="module")
def teacher_run(tiny_teacher, separable, tmp_path_factory):
    """A finished tiny `edgekit finetune` run of the tiny teacher on the separable task."""
    from edgekit.finetune import finetune, load_finetune_config

    out = tmp_path_factory.mktemp("teacher-run") / "ft"
    finetune(load_finetune_config(None, {
        "model": str(tiny_teacher), "task": {**TASK, "data_dir": str(separable)},
        "finetune": {"eval_every": 6}, "train": {"max_steps": 6, "batch_size": 16, "lr": 3e-3, "save_every": 100}}),
        out, command="edgekit finetune (test)")
    return out


def recipe(teacher, corpus, data, run) -> dict:
    train = {"batch_size": 8, "save_every": 100, "log_every": 2, "warmup_ratio": 0.0, "lr": 1e-3}
    return {
        "pipeline": {"teacher": str(teacher), "references": ["teacher"], "prune": False,
                     "tasks": [{**TASK, "data_dir": str(data), "teacher_run": str(run)}]},
        "distill": {"student": dict(TINY_STUDENT), "vocab": {"trim": "true"},
                    "data": {"corpus": [str(corpus)], "max_length": 24}, "train": {**train, "max_steps": 2}},
        "finetune": {"finetune": {"eval_every": 2}, "train": {**train, "max_steps": 2}},
        "teacher_finetune": {"train": {"max_steps": 1000}},  # would take minutes if it ran
        "export": {"format": "onnx", "int8": "none", "pack": False, "parity_examples": 8, "phone": "none"},
        "eval": {"max_examples": None},
    }


def snapshot(run) -> dict:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))}


def test_the_teacher_row_adopts_a_finished_run(tiny_teacher, tiny_corpus, separable, teacher_run, tmp_path, capsys):
    from edgekit.finetune.logit_cache import teacher_logits
    from edgekit.pipeline import load_pipeline_config, run_pipeline

    run = tmp_path / "teacher-run"  # a copy: this test re-runs it
    shutil.copytree(teacher_run, run)
    before = snapshot(run)
    adopted = json.loads((run / "results.json").read_text())
    out, lines = tmp_path / "out", []
    report = run_pipeline(load_pipeline_config(None, recipe(tiny_teacher, tiny_corpus, separable, run)), out,
                          echo=lines.append)

    assert f"adopt the finished teacher run {run.resolve()} -> {out / 'reference/teacher/jsonl'}" in "\n".join(lines)
    d = out / "reference" / "teacher" / "jsonl"
    assert (d / "model").is_symlink() and os.readlink(d / "model") == str((run / "model").resolve())
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == [
        "config.json", "model", "pipeline_stage_config.json", "results.json", "stage.json", "versions.json"]
    results = json.loads((d / "results.json").read_text())
    assert results["adopted_from"] == str(run.resolve()) and results["steps"] == adopted["steps"] == 6
    assert json.loads((d / "config.json").read_text())["adopted_from"] == str(run.resolve())
    # the eval row reads the model through the link: the run's dev accuracy (same 40 dev texts, length 24)
    assert report["accuracy"]["teacher"]["jsonl"] == pytest.approx(adopted["dev_accuracy"], abs=1e-6)
    assert snapshot(run) == before

    # task distillation (clue.py: finetune.teacher_run = OUT/reference/teacher/<task>) reads it too
    capsys.readouterr()
    logits, info = teacher_logits(d, ["好极了今天", "糟透了"], ["neg", "pos"], 24, tmp_path / "cache")
    assert logits.shape == (2, 2) and info["teacher"] == str(d / "model")
    err = capsys.readouterr().err  # the teacher pass shows progress (edgekit/progress.py)
    assert "teacher logits: 100%" in err and "2/2" in err

    # the run is trained again: its results change, so the row is refused until --force redoes it
    (run / "results.json").write_text(json.dumps({**adopted, "dev_accuracy": 0.5}), encoding="utf-8")
    cfg = load_pipeline_config(None, recipe(tiny_teacher, tiny_corpus, separable, run))
    with pytest.raises(UserError, match=r"stage 'reference/teacher/jsonl' .* cannot be reused: the teacher run it "
                                        r"adopts changed \(adopt.results_sha256\); pass --force"):
        run_pipeline(cfg, out, echo=lambda s: None)
    forced = run_pipeline(cfg, out, force=True, echo=lambda s: None)
    status = {s["stage"]: s["status"] for s in forced["stages"]}
    assert status["reference/teacher/jsonl"] == status["eval/teacher/jsonl"] == "ran"
    assert status["distill"] == status["finetune/jsonl"] == "skipped (finished earlier)"
    assert json.loads((d / "results.json").read_text())["dev_accuracy"] == 0.5
    assert (run / "model" / "model.safetensors").is_file()  # redoing the row removed the link, not the model


def test_the_fingerprint_follows_the_adopted_run(tiny_teacher, tiny_corpus, separable, teacher_run, tmp_path):
    from edgekit.pipeline import load_pipeline_config
    from edgekit.pipeline.plan import fingerprint, plan

    run = tmp_path / "run"
    shutil.copytree(teacher_run, run)

    def adopt_stage(path):
        stages = plan(load_pipeline_config(None, recipe(tiny_teacher, tiny_corpus, separable, path)), tmp_path / "o")
        stage = next(s for s in stages if s.name == "reference/teacher/jsonl")
        assert stage.kind == "adopt" and stage.inputs == []
        return stage

    first = adopt_stage(run)
    assert adopt_stage(run).config == first.config and fingerprint(first, {}) == fingerprint(adopt_stage(run), {})
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "best_step": 3}), encoding="utf-8")
    assert fingerprint(adopt_stage(run), {}) != fingerprint(first, {})
    moved = tmp_path / "moved"
    shutil.copytree(teacher_run, moved)
    assert adopt_stage(moved).config["adopt"]["run"] == str(moved.resolve()) != first.config["adopt"]["run"]


def _damage(kind, run, tmp_path):
    """A teacher_run that is not a finished run of the tiny teacher on task jsonl; the expected sentence."""
    if kind == "missing":
        return tmp_path / "nowhere", r"teacher_run '.*nowhere' does not exist; pass the --out directory of a " \
                                     r"finished `edgekit finetune --model .* --task jsonl` run\."
    if kind == "checkpoint":
        return run / "model", r"is a checkpoint directory, not the run directory that wrote it; pass the --out"
    copy = tmp_path / kind
    shutil.copytree(run, copy)
    if kind == "unfinished":
        (copy / "results.json").unlink()
        return copy, r"is a run directory whose run has not finished \(it has no results.json\); finish it with " \
                     r"--resume"
    config = json.loads((copy / "config.json").read_text())
    if kind == "task":
        config["config"]["task"]["name"] = "tnews"
        message = r"fine-tuned on task 'tnews', not 'jsonl'; pass .* \(or name it under task tnews\)\."
    else:
        config["config"]["model"] = "e5-small"
        (copy / "model" / "edgekit.json").write_text(json.dumps({"finetuned_from": "/elsewhere/e5-small"}))
        message = r"fine-tuned the model 'e5-small', but the pipeline's teacher is '.*bert-tiny'; pass .* " \
                  r"\(or set pipeline.teacher: e5-small\)\."
    (copy / "config.json").write_text(json.dumps(config))
    return copy, message


@pytest.mark.parametrize("kind", ["missing", "checkpoint", "unfinished", "task", "teacher"])
def test_refuses_what_is_not_a_finished_run_of_the_teacher_on_the_task(kind, tiny_teacher, tiny_corpus, separable,
                                                                       teacher_run, tmp_path):
    from edgekit.pipeline import load_pipeline_config, run_pipeline

    before = snapshot(teacher_run)
    run, message = _damage(kind, teacher_run, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message):
        run_pipeline(load_pipeline_config(None, recipe(tiny_teacher, tiny_corpus, separable, run)), out,
                     echo=lambda s: None)
    assert not (out / "distill").exists() and not (out / "reference").exists()  # refused before anything ran
    assert snapshot(teacher_run) == before


def test_teacher_run_needs_the_teacher_row(tiny_teacher, tiny_corpus, separable, teacher_run):
    from edgekit.pipeline import load_pipeline_config

    bad = recipe(tiny_teacher, tiny_corpus, separable, teacher_run)
    bad["pipeline"]["references"] = []
    with pytest.raises(UserError, match=r"pipeline task jsonl has a teacher_run but pipeline.references has no "
                                        r"teacher row to adopt it into; add teacher to pipeline.references"):
        load_pipeline_config(None, bad)


def test_clue_benchmark_teacher_run_option():
    from conftest import ROOT, load_benchmark
    from edgekit.pipeline import load_pipeline_config

    clue = load_benchmark("clue")
    cfg = load_pipeline_config(ROOT / "recipes" / "clue_e5_task.yaml")
    over = clue.teacher_run_overrides(cfg, ["csl=runs/teacher-csl5", "tnews=/abs/teacher-tnews"])
    tasks = load_pipeline_config(ROOT / "recipes" / "clue_e5_task.yaml", over).pipeline.tasks
    assert [(t.name, t.teacher_run) for t in tasks] == [
        ("tnews", "/abs/teacher-tnews"), ("iflytek", None), ("csl", "runs/teacher-csl5")]
    assert tasks[2].provenance == "benchmarks/clue_provenance.md"  # the rest of each entry is kept
    with pytest.raises(UserError, match=r"--teacher-run takes TASK=PATH, got 'csl'"):
        clue.teacher_run_overrides(cfg, ["csl"])
    with pytest.raises(UserError, match=r"--teacher-run names task 'afqmc', which the recipe does not run "
                                        r"\(tnews, iflytek, csl\)"):
        clue.teacher_run_overrides(cfg, ["afqmc=runs/x"])
