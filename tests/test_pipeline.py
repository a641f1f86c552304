"""``edgekit run``: the whole pipeline on a tiny recipe, skipping finished stages, resuming, refusing stale ones."""

import json
import random

import pytest

from conftest import ROOT, TINY_STUDENT
from edgekit.errors import UserError
from test_cli_errors import assert_clean_error, run_cli


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """A separable two-class task in JSON lines (a keyword decides the label)."""
    d = tmp_path_factory.mktemp("reviews")
    rng = random.Random(1)
    rows = []
    for i in range(200):
        label = i % 2
        filler = "".join(rng.choice("今天我们去买东西看电影吃饭") for _ in range(rng.randint(2, 8)))
        rows.append({"text": f"{filler}{'好极了' if label else '糟透了'}{filler}", "y": "pos" if label else "neg"})
    (d / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:160]), "utf-8")
    (d / "dev.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[160:]), "utf-8")
    return d


def tiny_recipe(teacher, corpus, reviews, references=("teacher", "dense", "baseline")) -> dict:
    train = {"batch_size": 8, "save_every": 4, "log_every": 2, "warmup_ratio": 0.0}
    return {
        "pipeline": {"teacher": str(teacher), "references": list(references),
                     "tasks": [{"name": "jsonl", "data_dir": str(reviews), "text_field": "text", "label_field": "y",
                                "max_length": 24, "teacher_max_steps": 10}]},
        "distill": {"student": dict(TINY_STUDENT), "vocab": {"trim": "true"},
                    "data": {"corpus": [str(corpus)], "max_length": 32},
                    "train": {**train, "max_steps": 8, "lr": 1e-3}},
        "prune": {"data": {"max_length": 32}, "prune": {"sparsity": 0.8, "frequency": 2},
                  "train": {**train, "max_steps": 8, "lr": 1e-3}},
        "finetune": {"finetune": {"eval_every": 10}, "train": {**train, "max_steps": 20, "lr": 3e-3}},
        "teacher_finetune": {"train": {"lr": 1e-3}},
        # phone: none keeps the reruns here cheap; the CLI test below makes the TFLite phone bundle
        "export": {"format": "onnx", "int8": "dynamic", "pack": True, "parity_examples": 16, "phone": "none"},
    }


def test_pipeline_runs_skips_and_refuses_stale_stages(tiny_teacher, tiny_corpus, reviews, tmp_path):
    from edgekit.pipeline import load_pipeline_config, run_pipeline

    out = tmp_path / "run"
    recipe = tiny_recipe(tiny_teacher, tiny_corpus, reviews)
    report = run_pipeline(load_pipeline_config(None, recipe), out, echo=lambda s: None)

    ran = [s["stage"] for s in report["stages"] if s["status"] == "ran"]
    assert ran[:3] == ["distill", "prune", "baseline"]
    assert {"finetune/jsonl", "reference/dense/jsonl", "reference/baseline/jsonl", "reference/teacher/jsonl",
            "export/jsonl", "eval/bundle/jsonl"} <= set(ran)
    assert set(report["accuracy"]) == {"teacher", "baseline", "dense", "pruned", "bundle"}
    for row in report["accuracy"].values():
        assert 0.0 <= row["jsonl"] <= 1.0
    # the bundle is what the pruned checkpoint is, within int8 tolerance (40 dev examples: at most 2 flips)
    assert abs(report["accuracy"]["bundle"]["jsonl"] - report["accuracy"]["pruned"]["jsonl"]) <= 2 / 40 + 1e-9
    assert report["ratios"]["bundle_over_checkpoint"]["jsonl"] == pytest.approx(
        report["accuracy"]["bundle"]["jsonl"] / report["accuracy"]["pruned"]["jsonl"], abs=1e-4)

    tensors = json.loads((out / "prune" / "sparsity.json").read_text())["tensors"]
    pruned = [t["sparsity"] for t in tensors if t["pruned"]]
    assert len(pruned) >= 6 and all(abs(s - 0.8) <= 0.0125 for s in pruned), pruned  # 16-weight tensors: 13/16
    finetuned = json.loads((out / "finetune" / "jsonl" / "results.json").read_text())
    assert finetuned["sparsity_kept"] == pytest.approx(0.8, abs=0.01)  # fine-tuning keeps the pruned zeros
    from safetensors.torch import load_file

    weights = load_file(out / "finetune" / "jsonl" / "model" / "model.safetensors")
    ffn = next(w for n, w in weights.items() if n.endswith("albert_layers.0.ffn.weight"))
    assert float((ffn == 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    assert json.loads((out / "reference" / "dense" / "jsonl" / "results.json").read_text())["sparsity_kept"] is None
    from edgekit_device import load_bundle

    bundle = load_bundle(report["bundles"]["jsonl"]["bundle"])
    assert bundle.manifest["precision"] == "int8" and bundle.manifest["layout"] == "per-layer"
    assert (out / "export" / "jsonl" / "bundle.edgepack").stat().st_size == report["bundles"]["jsonl"]["packed_bytes"]
    md = (out / "report.md").read_text()
    for name in ("teacher, fine-tuned", "student, no distillation", "student, distilled (dense)",
                 "student, distilled + pruned", "bundle: onnx int8", "bundle_over_checkpoint"):
        assert name in md
    assert (out / "compare" / "accuracy_vs_size.png").read_bytes()[:4] == b"\x89PNG"
    for d in ("distill", "prune", "finetune/jsonl", "export/jsonl"):
        assert json.loads((out / d / "stage.json").read_text())["stage"] == d
        assert (out / d / "config.json").is_file() and (out / d / "versions.json").is_file()
    assert json.loads((out / "results.json").read_text())["tasks"] == ["jsonl"]

    again = run_pipeline(load_pipeline_config(None, recipe), out, echo=lambda s: None)
    assert {s["status"] for s in again["stages"]} == {"skipped (finished earlier)"}
    assert again["accuracy"] == report["accuracy"]

    changed = json.loads(json.dumps(recipe))
    changed["finetune"]["train"]["max_steps"] = 12
    with pytest.raises(UserError, match=r"stage 'finetune/jsonl' .* its recipe changed \(train.max_steps\); "
                                        r"pass --force"):
        run_pipeline(load_pipeline_config(None, changed), out, echo=lambda s: None)
    forced = run_pipeline(load_pipeline_config(None, changed), out, force=True, echo=lambda s: None)
    status = {s["stage"]: s["status"] for s in forced["stages"]}
    assert status["distill"] == status["prune"] == "skipped (finished earlier)"
    for redone in ("finetune/jsonl", "reference/dense/jsonl", "export/jsonl", "eval/bundle/jsonl", "eval/pruned/jsonl"):
        assert status[redone] == "ran", redone
    # the teacher row runs its own teacher_max_steps, so its recipe did not change: kept
    assert status["reference/teacher/jsonl"] == status["eval/teacher/jsonl"] == "skipped (finished earlier)"
    assert json.loads((out / "reference" / "teacher" / "jsonl" / "results.json").read_text())["steps"] == 10
    assert json.loads((out / "finetune" / "jsonl" / "results.json").read_text())["steps"] == 12


def test_interrupted_pipeline_resumes_the_stage(tiny_teacher, tiny_corpus, reviews, tmp_path, monkeypatch):
    import edgekit.distill as distill_module
    from edgekit.pipeline import load_pipeline_config, run_pipeline

    real = distill_module.distill
    monkeypatch.setattr(distill_module, "distill", lambda cfg, out, resume=False, command=None:
                        real(cfg, out, resume=resume, stop_after_step=4, command=command))
    recipe = tiny_recipe(tiny_teacher, tiny_corpus, reviews, references=())
    recipe["pipeline"]["prune"] = False
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_pipeline_config(None, recipe), out, echo=lambda s: None)
    assert not (out / "distill" / "stage.json").exists() and not (out / "distill" / "model").exists()
    assert (out / "distill" / "checkpoints").is_dir()
    monkeypatch.setattr(distill_module, "distill", real)
    lines = []
    report = run_pipeline(load_pipeline_config(None, recipe), out, echo=lines.append)
    assert any("distill" in line and "(resuming)" in line for line in lines)
    assert json.loads((out / "distill" / "results.json").read_text())["steps"] == 8
    assert set(report["accuracy"]) == {"dense", "bundle"}
    assert "pruned_over_dense" not in report["ratios"] and "bundle_over_checkpoint" in report["ratios"]


def test_set_pipeline_tasks_selects_the_recipes_entries_with_their_keys():
    """`edgekit run recipes/clue_e5_task.yaml --set pipeline.tasks=csl` runs the recipe's CSL entry (late
    interaction, provenance), not a bare CSL with defaults; a task the recipe lacks is a bare entry."""
    from edgekit.config import parse_overrides
    from edgekit.pipeline import load_pipeline_config

    recipe = ROOT / "recipes" / "clue_e5_task.yaml"
    (csl,) = load_pipeline_config(recipe, parse_overrides(["pipeline.tasks=csl"])).pipeline.tasks
    assert (csl.name, csl.late_layers, csl.provenance) == ("csl", 3, "benchmarks/clue_provenance.md")
    tasks = load_pipeline_config(recipe, parse_overrides(["pipeline.tasks=afqmc,iflytek"])).pipeline.tasks
    assert [(t.name, t.late_layers, t.provenance) for t in tasks] == [
        ("afqmc", None, None), ("iflytek", None, "benchmarks/clue_provenance.md")]
    given = load_pipeline_config(recipe, {"pipeline": {"tasks": [{"name": "csl"}]}}).pipeline.tasks
    assert given[0].late_layers is None  # an entry written out in full is taken as written


def test_stage_commands_read_their_section_of_a_pipeline_recipe():
    from edgekit.distill import load_distill_config
    from edgekit.finetune import load_finetune_config
    from edgekit.pipeline import load_pipeline_config
    from edgekit.prune import load_prune_config

    recipe = ROOT / "recipes" / "quickstart.yaml"
    d = load_distill_config(recipe)
    assert d.teacher.path == "e5-small" and d.student.hidden_size == 384 and d.train.max_steps == 200
    p = load_prune_config(recipe)
    assert p.prune.sparsity == 0.8 and p.teacher.path == "e5-small" and p.train.max_steps == 100
    assert load_finetune_config(recipe).task.max_length == 64
    clue = load_pipeline_config(ROOT / "recipes" / "clue_e5.yaml")
    assert [t.name for t in clue.pipeline.tasks] == ["tnews", "iflytek", "csl"]
    assert set(clue.pipeline.references) == {"teacher", "dense", "baseline"}
    m6 = load_pipeline_config(ROOT / "recipes" / "m6_edge.yaml")
    assert load_distill_config(ROOT / "recipes" / "m6_edge.yaml").student.num_layers == 24
    assert m6.pipeline.teacher is None


def test_read_corpus_takes_the_first_field_a_line_has(tmp_path):
    from edgekit.data import read_corpus

    f = tmp_path / "mixed.json"
    f.write_text('{"sentence": "标题"}\n{"abst": "摘要", "id": 1}\n', encoding="utf-8")
    assert read_corpus([f], "sentence,abst") == ["标题", "摘要"]
    with pytest.raises(UserError, match=r"mixed.json:2 has no field 'sentence'"):
        read_corpus([f], "sentence")


@pytest.mark.parametrize("body, args, message", [
    ("teacher:\n  path: x\n", [], r"has no pipeline: section; `edgekit run` needs a pipeline recipe"),
    ("pipeline:\n  tasks: []\n", [], r"pipeline.tasks is empty"),
    ("pipeline:\n  stages: 3\n", [], r"unknown recipe key 'pipeline.stages'"),
    ("pipeline:\n  teacher: null\n", ["--out", "OUT"], r"no teacher given; pass --teacher DIR"),
    ("pipeline:\n  tasks: [tnews]\n", [], r"no run directory given; pass --out RUN"),
    ("pipeline:\n  tasks: [tnews, tnews]\n", [], r"names a task twice"),
    ("pipeline:\n  tasks: [{name: csl, late_layers: 6}]\ndistill:\n  student: {num_layers: 6}\n", ["--out", "OUT"],
     r"pipeline.tasks: csl's late_layers must be an integer from 1 to 5 \(the student has 6 layers"),
    ("pipeline:\n  tasks: [{name: csl, late_layers: 0}]\n", ["--out", "OUT"],
     r"csl's late_layers must be an integer from 1 to 23"),
])
def test_run_bad_recipes(tmp_path, body, args, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(body, encoding="utf-8")
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    assert_clean_error(run_cli("run", recipe, *args), message)


def test_run_refuses_a_task_without_data(tmp_path, tiny_teacher, tiny_corpus, reviews):
    from edgekit.pipeline import load_pipeline_config, run_pipeline

    recipe = tiny_recipe(tiny_teacher, tiny_corpus, reviews, references=())
    recipe["pipeline"]["tasks"] = [{"name": "tnews", "data_dir": str(tmp_path / "missing")}]
    recipe["distill"]["train"]["max_steps"] = 2
    recipe["prune"]["train"]["max_steps"] = 2
    with pytest.raises(UserError, match=r"data directory '.*missing' does not exist"):
        run_pipeline(load_pipeline_config(None, recipe), tmp_path / "run", echo=lambda s: None)


def test_edgekit_run_command_prints_the_table_and_the_bundle(tiny_teacher, tiny_corpus, reviews, tmp_path):
    import yaml

    recipe = tiny_recipe(tiny_teacher, tiny_corpus, reviews, references=())
    recipe["export"]["phone"] = "tflite"  # the default
    recipe["pipeline"]["out"] = str(tmp_path / "run")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    first = run_cli("run", path, "--set", "finetune.train.max_steps=8")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "[1/7] distill: MiniLM relation distillation" in first.stdout
    assert "| student, distilled + pruned | pytorch fp32 |" in first.stdout
    assert f"bundle (jsonl, onnx int8, evaluated above): {tmp_path / 'run' / 'export' / 'jsonl' / 'bundle'}" in first.stdout
    # The phone app's bundle: TFLite (what android_demo runs) with a zlib pack (what its core decodes).
    phone = tmp_path / "run" / "phone" / "jsonl"
    assert f"bundle for the phone app (jsonl): {phone / 'bundle'}  (download: {phone / 'bundle.edgepack'}" in first.stdout
    assert json.loads((phone / "bundle" / "manifest.json").read_text())["format"] == "tflite"
    assert b'"codec":"zlib"' in (phone / "bundle.edgepack").read_bytes()[:4096]
    checkpoint = tmp_path / "run" / "finetune" / "jsonl" / "model"
    assert f"fine-tuned checkpoint (jsonl): {checkpoint}" in first.stdout
    assert f"- jsonl: checkpoint `{checkpoint}`; bundle `" in (tmp_path / "run" / "report.md").read_text()
    second = run_cli("run", path, "--set", "finetune.train.max_steps=8")
    assert second.returncode == 0 and second.stdout.count("finished earlier, skipped") == 7
    third = run_cli("run", path)  # the recipe's 20 steps differ from the 8 the finished stage ran
    assert_clean_error(third, r"stage 'finetune/jsonl' .* cannot be reused: its recipe changed \(train.max_steps\)")


def test_a_task_whose_students_are_late_interaction_models(tiny_teacher, tiny_corpus, reviews, tmp_path):
    """``pipeline.tasks[].late_layers``: the student rows fine-tune and export as late-interaction models
    (two graphs, packed, checked on the dev examples' segments; no phone bundle); the teacher row stays a
    whole-text model."""
    from edgekit.pipeline import load_pipeline_config, run_pipeline
    from edgekit_device import load_bundle

    recipe = tiny_recipe(tiny_teacher, tiny_corpus, reviews, references=("teacher", "dense"))
    recipe["pipeline"]["tasks"][0]["late_layers"] = 1
    recipe["export"]["phone"] = "tflite"  # asked for, but the app runs whole texts: no phone stage for this task
    recipe["export"]["pack_codec"] = "zlib"
    out = tmp_path / "run"
    report = run_pipeline(load_pipeline_config(None, recipe), out, echo=lambda s: None)
    stages = {s["stage"] for s in report["stages"]}
    assert "phone/jsonl" not in stages and {"export/jsonl", "eval/bundle/jsonl"} <= stages
    for row in ("finetune/jsonl", "reference/dense/jsonl"):
        assert json.loads((out / row / "results.json").read_text())["late_interaction"], row
    assert not json.loads((out / "reference/teacher/jsonl/results.json").read_text())["late_interaction"]
    bundle = load_bundle(out / "export" / "jsonl" / "bundle")
    assert bundle.manifest["layout"] == "late-interaction" and bundle.manifest["precision"] == "int8"
    assert recipe["export"]["pack"] is True
    packed = out / "export" / "jsonl" / "bundle.edgepack"
    assert report["bundles"]["jsonl"]["packed_bytes"] == packed.stat().st_size > 0
    parity = bundle.manifest["parity"]
    assert parity["inputs"] == "examples of the jsonl dev split" and parity["source"] == "requests"
    assert "  - no phone bundle (a late-interaction task; the app runs whole texts)" in \
        (out / "report.md").read_text()
    n = recipe["export"]["parity_examples"]  # the first n dev examples, each as its segments
    assert parity["samples"] == n and parity["segments"] >= n
    # the bundle is evaluated as the checkpoint is, on segments: within int8 tolerance (40 dev examples)
    assert abs(report["accuracy"]["bundle"]["jsonl"] - report["accuracy"]["pruned"]["jsonl"]) <= 2 / 40 + 1e-9
