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


def _task_result(results, task, acc, recipe="recipes/clue_e5_task.yaml", smoke=False, exits=True):
    """A per-task result as `clue.py --tasks TASK` writes it (only the keys --merge reads)."""
    accuracy = {key: {task: value} for key, value in acc.items()}
    shipped = "task_pruned"
    result = {"command": f"python benchmarks/clue.py --tasks {task}", "date": "2026-12-01", "recipe": recipe,
              "smoke": smoke, "accuracy": accuracy,
              "checks": clue.target_checks([task], accuracy, {task: shipped}),
              "task_distillation": {task: {"shipped_from": shipped}},
              "early_exit": ({task: {"per_exit": [{"exit_layer": 1, "accuracy": 0.25}, {"exit_layer": 2, "accuracy": 0.5}],
                                     "best": {"mode": "patience", "patience": 2, "speedup_vs_full": 1.5}}}
                             if exits else {}),
              "versions": {"torch": "2.13.0+cpu"}, "wall_seconds_this_invocation": 100.0}
    write_json(results / f"clue_e5_task_{task}.json", result)
    return result


ACC = {"teacher": 0.5, "baseline": 0.3, "dense": 0.44, "dense_task": 0.48, "pruned": 0.4, "pruned_task": 0.45,
       "task_pruned": 0.47, "bundle": 0.466}


def test_target_checks_are_the_issue_ratios():
    acc = {key: {"tnews": value} for key, value in ACC.items()}
    checks = {c["ratio"]: c for c in clue.target_checks(["tnews"], acc, {"tnews": "task_pruned"})}
    assert checks["task_distilled_over_teacher"]["value"] == 0.96 and checks["task_distilled_over_teacher"]["pass"]
    assert checks["pruned_over_dense"]["value"] == round(0.47 / 0.48, 4) == 0.9792 and checks["pruned_over_dense"]["pass"]
    assert checks["pruned_in_distillation_over_dense"]["value"] == 0.9375
    assert not checks["pruned_in_distillation_over_dense"]["pass"]
    assert checks["bundle_over_checkpoint"]["value"] == round(0.466 / 0.47, 4) == 0.9915
    assert not checks["bundle_over_checkpoint"]["pass"]
    assert checks["teacher_over_published_floor"]["value"] == round(0.5 / 0.53, 4) and not checks[
        "teacher_over_published_floor"]["pass"]
    # a missing side leaves the ratio out instead of dividing by nothing
    acc["teacher"]["tnews"] = None
    names = [c["ratio"] for c in clue.target_checks(["tnews"], acc, {"tnews": "task_pruned"})]
    assert "task_distilled_over_teacher" not in names and "teacher_over_published_floor" not in names


def test_merge_assembles_the_per_task_results(tmp_path):
    _task_result(tmp_path, "tnews", ACC)
    _task_result(tmp_path, "csl", {**ACC, "teacher": 0.8, "dense_task": 0.62}, exits=False)
    result, md = clue.merge_task_results("clue_e5_task", "tnews, csl", tmp_path)
    assert result["accuracy"]["teacher"] == {"tnews": 0.5, "csl": 0.8}
    assert result["merged_from"] == {"tnews": "clue_e5_task_tnews.json", "csl": "clue_e5_task_csl.json"}
    assert [c["task"] for c in result["checks"]].count("csl") == 6 and len(result["checks"]) == 12
    assert "| model | TNEWS | CSL | |" in md and "| teacher, fine-tuned | 50.00 | 80.00 | the task's run (below) |" in md
    assert "| task_distilled_over_teacher | csl | 0.775 | ≥ 0.920 | MISS |" in md
    assert "| tnews | 2026-12-01 | `python benchmarks/clue.py --tasks tnews` | 100 s |" in md
    assert "| tnews | 25.0, 50.0 | patience 2 | 1.5× |" in md and "| csl | late-interaction students: one exit" in md
    assert result["command"] == "python benchmarks/clue.py --merge tnews,csl"


def test_merge_refuses_missing_smoke_and_mixed_results(tmp_path):
    _task_result(tmp_path, "tnews", ACC)
    with pytest.raises(UserError, match=r"--merge needs .*clue_e5_task_iflytek.json, which does not exist; run "
                                        r"`python benchmarks/clue.py --tasks iflytek` first"):
        clue.merge_task_results("clue_e5_task", "tnews,iflytek", tmp_path)
    _task_result(tmp_path, "iflytek", ACC, smoke=True)
    with pytest.raises(UserError, match=r"is a --smoke result"):
        clue.merge_task_results("clue_e5_task", "tnews,iflytek", tmp_path)
    _task_result(tmp_path, "iflytek", ACC, recipe="recipes/clue_e5.yaml")
    with pytest.raises(UserError, match=r"different recipes \(recipes/clue_e5.yaml, recipes/clue_e5_task.yaml\)"):
        clue.merge_task_results("clue_e5_task", "tnews,iflytek", tmp_path)
    write_json(tmp_path / "clue_e5_task_csl.json", read_json(tmp_path / "clue_e5_task_tnews.json"))
    with pytest.raises(UserError, match=r"has no rows for task 'csl'"):
        clue.merge_task_results("clue_e5_task", "csl", tmp_path)
    with pytest.raises(UserError, match=r"--merge takes a comma-separated list of tasks"):
        clue.merge_task_results("clue_e5_task", " , ", tmp_path)


def test_merge_cli_refuses_training_options(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "clue.py"), "--merge", "tnews", "--tasks", "tnews"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: --merge only assembles finished per-task results; drop --tasks, --smoke, "
                                   "--teacher-run and --force.")
