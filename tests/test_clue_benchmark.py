"""benchmarks/clue.py's own bookkeeping: a task subset, and its stage-2 rows as pipeline stages that
a changed teacher (or any stage they read) refuses instead of silently reusing."""

from __future__ import annotations

import pytest

from conftest import ROOT, load_benchmark
from edgekit.errors import UserError
from edgekit.io import read_json, write_json
from edgekit.pipeline import load_pipeline_config
from edgekit.pipeline.plan import Stage

clue = load_benchmark("clue")
RECIPE = ROOT / "recipes" / "clue_e5_task.yaml"


def test_task_subset_keeps_the_recipe_entries():
    cfg = load_pipeline_config(RECIPE)
    over = clue.task_subset_overrides(cfg, "csl,tnews")
    tasks = load_pipeline_config(RECIPE, over).pipeline.tasks
    assert [t.name for t in tasks] == ["tnews", "csl"]  # the recipe's order, not the option's
    assert tasks[1].provenance == "benchmarks/clue_provenance.md"
    with pytest.raises(UserError, match=r"--tasks names 'afqmc', which the recipe does not run "
                                        r"\(tnews, iflytek, csl\); give a comma-separated subset"):
        clue.task_subset_overrides(cfg, "csl,afqmc")
    with pytest.raises(UserError, match=r"--tasks names ',', which the recipe does not run"):
        clue.task_subset_overrides(cfg, ",")


def _upstream(out, name, fingerprint):
    write_json(out / name / "stage.json", {"stage": name, "fingerprint": fingerprint, "config": {},
                                           "finished_at": "2026-12-01T00:00:00+0000", "seconds": 1.0})


def test_rows_are_stages_refused_when_the_teacher_changes(tmp_path):
    out = tmp_path / "run"
    _upstream(out, "distill", "aaaa")
    _upstream(out, "reference/teacher/csl", "t1")
    calls = []

    def body(resume):
        calls.append(resume)
        write_json(out / "task-distill/dense_task/csl" / "eval.json", {"accuracy": 0.5 + len(calls)})

    name = "task-distill/dense_task/csl"
    args = (out, Stage(name, "finetune", out / name, {"lr": 1e-4}, ["distill", "reference/teacher/csl"]))
    first = clue._stage(*args, force=False, echo=lambda m: None, run=body)
    assert calls == [False] and first["stage"] == "task-distill/dense_task/csl"
    again = clue._stage(*args, force=False, echo=lambda m: None, run=body)
    assert calls == [False] and again["fingerprint"] == first["fingerprint"]  # skipped
    _upstream(out, "reference/teacher/csl", "t2")  # the teacher was re-run or another run adopted
    with pytest.raises(UserError, match=r"stage 'task-distill/dense_task/csl' .* cannot be reused: a stage it reads "
                                        r"\(distill, reference/teacher/csl\) was redone; pass --force"):
        clue._stage(*args, force=False, echo=lambda m: None, run=body)
    redone = clue._stage(*args, force=True, echo=lambda m: None, run=body)
    assert calls == [False, False] and redone["fingerprint"] != first["fingerprint"]
    assert read_json(out / "task-distill/dense_task/csl" / "eval.json") == {"accuracy": 2.5}
    # a changed fine-tuning config is refused by name
    with pytest.raises(UserError, match=r"its recipe changed \(lr\)"):
        clue._stage(out, Stage(name, "finetune", out / name, {"lr": 2e-4}, ["distill", "reference/teacher/csl"]),
                    force=False, echo=lambda m: None, run=body)


def test_an_interrupted_row_resumes(tmp_path):
    out = tmp_path / "run"
    _upstream(out, "prune", "p")

    def killed(resume):
        raise KeyboardInterrupt

    name = "task-distill/pruned_task/tnews"
    args = (out, Stage(name, "finetune", out / name, {"lr": 1e-4}, ["prune"]))
    with pytest.raises(KeyboardInterrupt):
        clue._stage(*args, force=False, echo=lambda m: None, run=killed)
    seen = []
    clue._stage(*args, force=False, echo=lambda m: None, run=seen.append)
    assert seen == [True]
    assert (out / "task-distill/pruned_task/tnews" / "stage.json").is_file()


def test_export_accuracy_aware_in_a_recipe():
    """``export.accuracy_aware`` reaches the ONNX bundle's fingerprint, not the phone's TFLite one; a wrong
    value or format is refused while planning."""
    from edgekit.pipeline.plan import export_stage

    cfg = load_pipeline_config(RECIPE)
    assert cfg.export.accuracy_aware == 0.99
    entry = cfg.pipeline.tasks[0]
    onnx = export_stage(cfg, ROOT / "runs" / "x", entry)
    phone = export_stage(cfg, ROOT / "runs" / "x", entry, phone=True)
    assert onnx.config["export"]["accuracy_aware"] == 0.99
    assert "accuracy_aware" not in phone.config["export"]
    plain = load_pipeline_config(RECIPE, {"export": {"accuracy_aware": None}})
    assert "accuracy_aware" not in export_stage(plain, ROOT / "runs" / "x", entry).config["export"]
    with pytest.raises(UserError, match=r"export.accuracy_aware must be a share between 0 and 1 \(e.g. 0.99\), "
                                        r"got 1.5"):
        load_pipeline_config(RECIPE, {"export": {"accuracy_aware": 1.5}})
    with pytest.raises(UserError, match=r"export.accuracy_aware applies to dynamic int8 ONNX bundles"):
        load_pipeline_config(RECIPE, {"export": {"format": "tflite"}})


def test_the_shipped_rows_export_is_the_pipelines_export_stage(tmp_path):
    """Stage 2's bundle is ``edgekit run``'s export stage pointed at the shipped row: same config (and so
    the same int8 settings, calibration and accuracy-aware share), input the shipped row's stage."""
    from edgekit.pipeline.plan import export_stage

    cfg = load_pipeline_config(RECIPE)
    entry = cfg.pipeline.tasks[2]
    plain = export_stage(cfg, tmp_path, entry)
    shipped = export_stage(cfg, tmp_path, entry, source="task-distill/task_pruned/csl", name="task-distill/export/csl")
    assert shipped.config == plain.config
    assert shipped.inputs == ["task-distill/task_pruned/csl"] and plain.inputs == ["finetune/csl"]
    assert shipped.directory == tmp_path / "task-distill/export/csl"
    assert shipped.job["model_dir"] == tmp_path / "task-distill/task_pruned/csl/model"


def test_late_interaction_tasks_have_no_early_exit_table_and_no_phone_bundle(tmp_path):
    """A task with ``late_layers`` (its students have one exit, above the segment layers) gets no early-exit
    table, and the other tasks still do (the table is read from the results dir when its source is unchanged)."""
    from edgekit.pipeline.config import TaskEntry, task_config
    from edgekit.pipeline.plan import phone_stage_name

    cfg = load_pipeline_config(RECIPE, {"pipeline": {"tasks": [{"name": "tnews"}, {"name": "csl", "late_layers": 3}]}})
    write_json(tmp_path / "e_early_exit_tnews.json", {"source_fingerprint": "fp-tnews", "per_exit": [], "best": None})
    rows = {"tnews": {"shipped_fingerprint": "fp-tnews"}, "csl": {"shipped_fingerprint": "fp-csl"}}
    tables = clue.early_exit_tables(cfg, tmp_path / "run", rows, tmp_path, "e", None)
    assert list(tables) == ["tnews"] and tables["tnews"]["source_fingerprint"] == "fp-tnews"
    assert phone_stage_name(cfg, "csl") is None and phone_stage_name(cfg, "tnews") == "phone/tnews"
    csl = cfg.pipeline.tasks[1]
    assert isinstance(csl, TaskEntry) and csl.late_layers == 3
    assert task_config(cfg, csl, "m").late_interaction.late_layers == 3               # the student rows
    assert task_config(cfg, csl, "m", reference="teacher").late_interaction.late_layers is None  # not the teacher
