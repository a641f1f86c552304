"""``edgekit run``: the whole M6-Edge pipeline from one recipe, resumable stage by stage.

teacher (built-in name or directory) → distill → prune with early exit → fine-tune per task →
int8 export (quantize + bundle) → eval of the exported bundles → compare → report.

A pipeline recipe has a ``pipeline:`` section and one section per stage holding exactly what that
stage's own command reads (``distill:`` is an ``edgekit distill`` recipe, ``prune:`` an
``edgekit prune`` recipe, ``finetune:`` an ``edgekit finetune`` recipe without model and task), so
``edgekit distill --recipe PIPELINE.yaml`` runs the distill stage alone. Optional reference rows
for the comparison (``pipeline.references``): the teacher fine-tuned per task (upper reference),
the dense distilled student, and an ALBERT student of the same shape fine-tuned without
distillation (what distillation buys).

Every stage writes into its own directory under the run directory and marks it finished with
``stage.json`` (a fingerprint of the stage's config and of the stages it reads). Re-running the
same command skips finished stages and resumes an interrupted one from its last checkpoint; a
stage whose recipe or inputs changed is refused unless ``--force`` asks to redo it.

Python API::

    from edgekit.pipeline import load_pipeline_config, run_pipeline
    report = run_pipeline(load_pipeline_config("recipes/quickstart.yaml"), "runs/quickstart")
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from edgekit.config import from_dict, load_config, merge, read_recipe, stage_section, to_dict
from edgekit.errors import UserError
from edgekit.io import RunDir, read_json, write_json

STAGE_FILE = "stage.json"
REFERENCES = ("teacher", "dense", "baseline")
ROW_NAMES = {
    "teacher": "teacher, fine-tuned",
    "baseline": "student, no distillation",
    "dense": "student, distilled (dense)",
    "pruned": "student, distilled + pruned",
    "bundle": "bundle",  # completed with format and precision
}


@dataclass
class TaskEntry:
    """One task of the pipeline; unset fields fall back to the ``finetune:`` section."""
    name: str = "sentiment"
    data_dir: str | None = None
    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None
    max_length: int | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    max_steps: int | None = None
    teacher_max_steps: int | None = None   # the teacher row's steps (default: max_steps)
    eval_every: int | None = None


@dataclass
class PipelineSection:
    teacher: str | None = "e5-small"   # a checkpoint directory or a built-in teacher name
    out: str | None = None             # default run directory (the CLI's --out wins)
    tasks: list[TaskEntry] = field(default_factory=lambda: [TaskEntry()])
    data_dir: str | None = None        # parent of per-task data directories (DATA_DIR/<task>)
    prune: bool = True                 # False: ship the dense distilled student
    references: list[Literal["teacher", "dense", "baseline"]] = field(default_factory=list)


@dataclass
class ExportSection:
    format: Literal["onnx", "tflite"] = "onnx"
    int8: Literal["none", "dynamic", "static"] = "dynamic"
    exit_layer: int | None = None      # None: the per-layer bundle serving every exit
    max_length: int | None = None      # default: the task's max_length
    pack: bool = True
    pack_codec: Literal["xz", "zlib"] = "xz"
    calibration_examples: int = 256    # train texts used for static int8 ranges
    parity_examples: int = 64          # dev texts the export's parity check runs
    min_agreement: float | None = None # argmax agreement with PyTorch every exit must reach (default 0.99);
                                       # barely trained heads (smoke runs) have near-tied logits that flip


@dataclass
class EvalSection:
    batch_size: int = 32
    max_examples: int | None = None    # default: the whole dev split (finetune's max_eval_examples only
                                       # limits the evaluations that pick the best checkpoint)
    threads: int | None = None


@dataclass
class PipelineConfig:
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    distill: dict = field(default_factory=dict)            # an `edgekit distill` recipe
    prune: dict = field(default_factory=dict)              # an `edgekit prune` recipe (model is filled in)
    finetune: dict = field(default_factory=dict)           # an `edgekit finetune` recipe (model, task filled in)
    teacher_finetune: dict = field(default_factory=dict)   # merged over finetune: for the teacher reference
    export: ExportSection = field(default_factory=ExportSection)
    eval: EvalSection = field(default_factory=EvalSection)


def _normalise(data: dict) -> dict:
    """Task entries may be written as bare names: ``tasks: [tnews, csl]``."""
    p = data.get("pipeline")
    if isinstance(p, dict) and isinstance(p.get("tasks"), (list, str)):
        tasks = p["tasks"].split(",") if isinstance(p["tasks"], str) else p["tasks"]
        p = {**p, "tasks": [{"name": t} if isinstance(t, str) else t for t in tasks]}
        data = {**data, "pipeline": p}
    return data


def load_pipeline_config(recipe=None, overrides: dict | None = None) -> PipelineConfig:
    data = read_recipe(recipe) if recipe else {}
    if recipe and "pipeline" not in data:
        raise UserError(f"recipe '{recipe}' has no pipeline: section; `edgekit run` needs a pipeline recipe such as "
                        "recipes/quickstart.yaml (stage recipes run with their own command, e.g. edgekit distill).")
    cfg = from_dict(PipelineConfig, _normalise(merge(data, overrides or {})))
    if not cfg.pipeline.tasks:
        raise UserError("pipeline.tasks is empty; name at least one task, e.g. tasks: [sentiment].")
    names = [t.name for t in cfg.pipeline.tasks]
    if len(set(names)) != len(names):
        raise UserError(f"pipeline.tasks names a task twice ({', '.join(names)}); list each task once.")
    return cfg


# --------------------------------------------------------------------------------------------
# Stages


@dataclass
class Stage:
    name: str                         # e.g. "finetune/tnews"
    directory: Path
    config: dict                      # what the stage's fingerprint covers (with its inputs)
    run: Callable[[bool], dict]       # run(resume) -> results
    inputs: list[str] = field(default_factory=list)  # names of stages it reads
    describe: str = ""


def _fingerprint(config: dict, inputs: list[str], finished: dict[str, dict]) -> str:
    """sha256 of the stage's config and the fingerprints and finishing times of the stages it reads."""
    payload = {"config": config, "inputs": {n: [finished[n]["fingerprint"], finished[n]["finished_at"]]
                                            for n in inputs}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _changed_keys(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _changed_keys(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [prefix or "(value)"]


class Pipeline:
    def __init__(self, cfg: PipelineConfig, out, force: bool = False, command: str | None = None,
                 echo: Callable[[str], None] = print):
        self.cfg, self.out, self.force, self.echo = cfg, Path(out), force, echo
        self.command = command or " ".join(sys.argv)
        self.finished: dict[str, dict] = {}
        self.log: list[dict] = []

    # ---- the plan -----------------------------------------------------------------------
    def task_config(self, entry: TaskEntry, model: str, reference: str | None = None):
        """The FinetuneConfig of one task, validated (raises before anything runs)."""
        from edgekit.finetune import FinetuneConfig

        base = dict(self.cfg.finetune)
        if reference == "teacher":
            base = merge(base, self.cfg.teacher_finetune)
        task = {k: v for k, v in to_dict(entry).items()
                if k not in ("max_steps", "teacher_max_steps", "eval_every") and v is not None}
        if "data_dir" not in task and self.cfg.pipeline.data_dir:
            task["data_dir"] = str(Path(self.cfg.pipeline.data_dir) / entry.name)
        over = {"model": model, "task": task}
        steps = entry.teacher_max_steps if reference == "teacher" and entry.teacher_max_steps else entry.max_steps
        if steps is not None:
            over["train"] = {"max_steps": steps}
        if entry.eval_every is not None:
            over["finetune"] = {"eval_every": entry.eval_every}
        return load_config(FinetuneConfig, None, merge(base, over))

    def plan(self) -> list[Stage]:
        from edgekit.checkpoint import resolve_teacher
        from edgekit.distill import DistillConfig, distill
        from edgekit.finetune import finetune
        from edgekit.prune.stage import PruneConfig, prune

        cfg, out = self.cfg, self.out
        teacher_spec = cfg.pipeline.teacher
        if teacher_spec is None:
            raise UserError("no teacher given; pass --teacher DIR (a Hugging Face encoder checkpoint) or --teacher e5-small.")
        stages: list[Stage] = []

        distill_cfg = load_config(DistillConfig, None, stage_section({"pipeline": to_dict(cfg.pipeline),
                                                                     "distill": cfg.distill}, "distill"))
        distill_cfg.student.validate()
        distill_cfg.train.validate()

        def run_distill(resume):
            distill_cfg.teacher.path = str(resolve_teacher(teacher_spec))
            return distill(distill_cfg, out / "distill", resume=resume, command=self.command)

        stages.append(Stage("distill", out / "distill", {"teacher": teacher_spec, **to_dict(distill_cfg)}, run_distill,
                            describe=f"MiniLM relation distillation of {teacher_spec}"))
        dense = out / "distill" / "student"
        shipped, shipped_stage = dense, "distill"
        if cfg.pipeline.prune:
            prune_section = merge(stage_section({"pipeline": to_dict(cfg.pipeline), "prune": cfg.prune}, "prune"),
                                  {"model": str(dense)})
            prune_cfg = load_config(PruneConfig, None, prune_section)
            prune_cfg.train.validate()
            from edgekit.prune.stage import _validate

            _validate(prune_cfg)

            def run_prune(resume):
                prune_cfg.teacher.path = str(resolve_teacher(prune_cfg.teacher.path or teacher_spec))
                return prune(prune_cfg, out / "prune", resume=resume, command=self.command)

            stages.append(Stage("prune", out / "prune", {"teacher": teacher_spec, **to_dict(prune_cfg)}, run_prune,
                                ["distill"], f"gradual magnitude pruning to {prune_cfg.prune.sparsity:.0%}"))
            shipped, shipped_stage = out / "prune" / "student", "prune"
        refs = list(dict.fromkeys(cfg.pipeline.references))
        if "baseline" in refs:
            stages.append(Stage("baseline", out / "baseline", to_dict(distill_cfg.student),
                                lambda resume: self._baseline(distill_cfg), ["distill"],
                                "ALBERT student of the same shape, randomly initialised (no distillation)"))

        def finetune_stage(name, model, reference, inputs, entry, describe):
            ft = self.task_config(entry, str(model), reference)
            ft.train.validate()
            directory = out / name

            def run(resume, ft=ft):
                if reference == "teacher":
                    ft.model = str(resolve_teacher(teacher_spec))
                return finetune(ft, directory, resume=resume, command=self.command)

            return Stage(name, directory, {"teacher": teacher_spec if reference == "teacher" else None, **to_dict(ft)},
                         run, inputs, describe)

        from edgekit.tasks import load_task

        for entry in cfg.pipeline.tasks:
            t = entry.name
            task = self.task_config(entry, "-").task  # the task's data must load before hours of distillation
            load_task(task.name, task.data_dir, task.text_field, task.text_pair_field, task.label_field)
            stages.append(finetune_stage(f"finetune/{t}", shipped, None, [shipped_stage], entry,
                                         f"fine-tune the {'pruned' if cfg.pipeline.prune else 'distilled'} student"))
            if "dense" in refs and cfg.pipeline.prune:
                stages.append(finetune_stage(f"reference/dense/{t}", dense, "dense", ["distill"], entry,
                                             "fine-tune the dense distilled student (reference)"))
            if "baseline" in refs:
                stages.append(finetune_stage(f"reference/baseline/{t}", out / "baseline" / "student", "baseline",
                                             ["baseline"], entry, "fine-tune the undistilled student (reference)"))
            if "teacher" in refs:
                stages.append(finetune_stage(f"reference/teacher/{t}", teacher_spec, "teacher", [], entry,
                                             "fine-tune the teacher (upper reference)"))
            stages.append(self._export_stage(entry))
            for row, source in self._rows(entry):
                stages.append(self._eval_stage(entry, row, source))
        return stages

    def _rows(self, entry: TaskEntry) -> list[tuple[str, str]]:
        """(row key, stage whose model it evaluates), in the order of the table."""
        t, refs = entry.name, self.cfg.pipeline.references
        rows = []
        if "teacher" in refs:
            rows.append(("teacher", f"reference/teacher/{t}"))
        if "baseline" in refs:
            rows.append(("baseline", f"reference/baseline/{t}"))
        if "dense" in refs and self.cfg.pipeline.prune:
            rows.append(("dense", f"reference/dense/{t}"))
        rows.append(("pruned" if self.cfg.pipeline.prune else "dense", f"finetune/{t}"))
        rows.append(("bundle", f"export/{t}"))
        return rows

    def _export_stage(self, entry: TaskEntry) -> Stage:
        from edgekit.export import export_model, packed_path
        from edgekit.tasks import load_task

        e = self.cfg.export
        directory = self.out / "export" / entry.name
        model_dir = self.out / f"finetune/{entry.name}" / "model"
        ft = self.task_config(entry, str(model_dir))
        max_length = e.max_length or ft.task.max_length
        int8 = {"none": False, "dynamic": "dynamic", "static": "static"}[e.int8]

        def run(resume):
            t = ft.task
            task = load_task(t.name, t.data_dir, t.text_field, t.text_pair_field, t.label_field)
            calibration = task.train.texts[:e.calibration_examples] if int8 == "static" else None
            start = time.perf_counter()
            export_model(model_dir, directory / "bundle", format=e.format, int8=int8, exit_layer=e.exit_layer,
                         max_length=max_length, sample_texts=task.dev.texts[:e.parity_examples],
                         calibration_texts=calibration, pack=e.pack, pack_codec=e.pack_codec,
                         min_agreement=e.min_agreement)
            manifest = read_json(directory / "bundle" / "manifest.json")
            packed = packed_path(directory / "bundle")
            results = {"stage": "export", "bundle": str(directory / "bundle"),
                       "packed": str(packed) if e.pack else None,
                       "packed_bytes": packed.stat().st_size if e.pack else None,
                       "format": manifest["format"], "precision": manifest["precision"], "layout": manifest["layout"],
                       "sizes": manifest["sizes"], "parity": manifest["parity"],
                       "seconds": round(time.perf_counter() - start, 1)}
            RunDir(directory, self.command).write_config({"model": str(model_dir), "export": to_dict(e),
                                                           "max_length": max_length})
            write_json(directory / "results.json", results)
            return results

        return Stage(f"export/{entry.name}", directory, {"export": to_dict(e), "max_length": max_length}, run,
                     [f"finetune/{entry.name}"], f"{e.format} {'fp32' if not int8 else 'int8 ' + int8} bundle")

    def _eval_stage(self, entry: TaskEntry, row: str, source: str) -> Stage:
        from edgekit.evaluate import evaluate

        e = self.cfg.eval
        directory = self.out / "eval" / row / entry.name
        ft = self.task_config(entry, "-")
        path = self.out / source / ("bundle" if source.startswith("export/") else "model")
        name = ROW_NAMES[row]
        if row == "bundle":
            x = self.cfg.export
            name = f"bundle: {x.format} {'fp32' if x.int8 == 'none' else 'int8'}"

        def run(resume):
            t = ft.task
            result = evaluate(path, t.name, t.data_dir, "dev", t.text_field, t.text_pair_field, t.label_field,
                              e.batch_size, e.max_examples, max_length=None if row == "bundle" else t.max_length,
                              threads=e.threads)
            result["name"] = name
            result["row"] = row
            write_json(directory / "eval.json", result)
            write_json(directory / "results.json", result)
            return result

        return Stage(f"eval/{row}/{entry.name}", directory, {"eval": to_dict(e), "row": row}, run, [source],
                     f"accuracy of {name} on {entry.name} dev")

    def _baseline(self, distill_cfg) -> dict:
        """The same student shape and vocabulary as the distilled one, randomly initialised."""
        from edgekit.checkpoint import load_tokenizer, read_meta, save_model_dir
        from edgekit.student import build_student, count_parameters

        dense = self.out / "distill" / "student"
        tok = load_tokenizer(dense)
        meta = read_meta(dense)
        vocab_map = read_json(dense / "vocab_map.json")
        specials = {k: getattr(tok, k) for k in ("bos_token_id", "eos_token_id")}
        student = build_student(distill_cfg.student, len(vocab_map["teacher_ids"]), pad_token_id=tok.pad_token_id or 0,
                                seed=distill_cfg.train.seed, **specials)
        directory = self.out / "baseline"
        RunDir(directory, self.command).write_config({"student": to_dict(distill_cfg.student)})
        save_model_dir(student, directory / "student", tok,
                       {"kind": "student", "stage": "init", "student": meta.get("student"), "vocab": meta.get("vocab"),
                        "note": "random initialisation, no distillation (reference)"},
                       extra_json={"vocab_map.json": vocab_map})
        params, nonzero = count_parameters(student)
        results = {"stage": "baseline", "student_dir": str(directory / "student"), "parameters": params}
        write_json(directory / "results.json", results)
        return results

    # ---- running ------------------------------------------------------------------------
    def _state(self, stage: Stage, fingerprint: str) -> str:
        """'done', 'resume' (unfinished, same config), 'new'; raises on a changed stage unless --force."""
        marker = stage.directory / STAGE_FILE
        if marker.is_file():
            done = read_json(marker)
            if done.get("fingerprint") == fingerprint:
                return "done"
            why = _changed_keys(done.get("config", {}), stage.config)
            reason = (f"its recipe changed ({', '.join(why[:4])})" if why else
                      f"a stage it reads ({', '.join(stage.inputs)}) was redone")
        elif stage.directory.exists() and any(stage.directory.iterdir()):
            previous = stage.directory / "pipeline_stage_config.json"
            if previous.is_file() and read_json(previous).get("fingerprint") == fingerprint:
                return "resume"
            why = _changed_keys(read_json(previous).get("config", {}), stage.config) if previous.is_file() else []
            reason = (f"it was started with a different recipe ({', '.join(why[:4])})" if why else
                      "it was started with different inputs or by another edgekit version" if previous.is_file() else
                      "it was not started by this pipeline")
        else:
            return "new"
        if not self.force:
            raise UserError(f"stage '{stage.name}' in '{stage.directory}' cannot be reused: {reason}; pass --force to "
                            f"redo it (and what depends on it), or choose another --out.")
        shutil.rmtree(stage.directory)
        return "new"

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        stages = self.plan()
        run = RunDir(self.out, self.command)
        run.write_config(to_dict(self.cfg))
        started = time.perf_counter()
        for i, stage in enumerate(stages, 1):
            fingerprint = _fingerprint(stage.config, stage.inputs, self.finished)
            state = self._state(stage, fingerprint)
            head = f"[{i}/{len(stages)}] {stage.name}"
            if state == "done":
                self.finished[stage.name] = read_json(stage.directory / STAGE_FILE)
                self.log.append({"stage": stage.name, "status": "skipped (finished earlier)",
                                 "seconds": self.finished[stage.name].get("seconds")})
                self.echo(f"{head}: finished earlier, skipped")
                continue
            self.echo(f"{head}: {stage.describe} -> {stage.directory}" + ("  (resuming)" if state == "resume" else ""))
            stage.directory.mkdir(parents=True, exist_ok=True)
            write_json(stage.directory / "pipeline_stage_config.json", {"fingerprint": fingerprint, "config": stage.config})
            t0 = time.perf_counter()
            result = stage.run(state == "resume")
            if result.get("interrupted"):
                raise KeyboardInterrupt
            seconds = round(time.perf_counter() - t0, 1)
            marker = {"stage": stage.name, "fingerprint": fingerprint, "config": stage.config,
                      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds}
            write_json(stage.directory / STAGE_FILE, marker)
            self.finished[stage.name] = marker
            self.log.append({"stage": stage.name, "status": "ran", "seconds": seconds})
        report = self.report(round(time.perf_counter() - started, 1))
        run.write_results(report)
        return report

    # ---- the report ---------------------------------------------------------------------
    def report(self, seconds: float) -> dict:
        from edgekit.compare import compare

        order = ["teacher", "baseline", "dense", "pruned", "bundle"]
        files = sorted(self.out.glob("eval/*/*/eval.json"), key=lambda f: (order.index(f.parent.parent.name)
                                                                            if f.parent.parent.name in order else 9, f))
        summary = compare(files, self.out / "compare")
        tasks = [t.name for t in self.cfg.pipeline.tasks]
        acc = {}
        for f in files:
            r = read_json(f)
            acc.setdefault(r["row"], {})[r["task"]] = r["accuracy"]
        ratios = _ratios(acc, tasks)
        bundles = {t: read_json(self.out / "export" / t / "results.json") for t in tasks}
        report = {"run_dir": str(self.out), "teacher": self.cfg.pipeline.teacher, "tasks": tasks,
                  "stages": self.log, "seconds_this_run": seconds, "accuracy": acc, "ratios": ratios,
                  "bundles": {t: {k: b[k] for k in ("bundle", "packed", "packed_bytes", "format", "precision",
                                                      "layout", "sizes")} for t, b in bundles.items()},
                  "table": summary["markdown"]}
        write_json(self.out / "report.json", report)
        (self.out / "report.md").write_text(_report_markdown(report), encoding="utf-8")
        return report


def _ratios(acc: dict, tasks: list[str]) -> dict:
    """Per-task accuracy ratios of M6-Rec Table 7's reading: pruned/dense, student/teacher, bundle/checkpoint."""
    shipped = "pruned" if "pruned" in acc else "dense"
    pairs = {"pruned_over_dense": ("pruned", "dense"), "dense_over_teacher": ("dense", "teacher"),
             "pruned_over_teacher": ("pruned", "teacher"), "bundle_over_checkpoint": ("bundle", shipped),
             "distilled_over_baseline": ("dense", "baseline")}
    out = {}
    for key, (a, b) in pairs.items():
        values = {t: round(acc[a][t] / acc[b][t], 4) for t in tasks
                  if t in acc.get(a, {}) and acc.get(b, {}).get(t)}
        if values:
            out[key] = values
    return out


def _report_markdown(report: dict) -> str:
    lines = [f"# edgekit run: {report['run_dir']}", "", f"Teacher: `{report['teacher']}`; tasks: "
             f"{', '.join(report['tasks'])}.", "", "## Accuracy (dev) and size", "", report["table"], ""]
    if report["ratios"]:
        lines += ["## Ratios", "", "| ratio | " + " | ".join(report["tasks"]) + " |",
                  "|---|" + "---|" * len(report["tasks"])]
        for key, values in report["ratios"].items():
            lines.append(f"| {key} | " + " | ".join(f"{values[t]:.3f}" if t in values else "" for t in report["tasks"])
                         + " |")
        lines.append("")
    lines += ["## Bundles for the phone app", ""]
    for t, b in report["bundles"].items():
        packed = f"; packed download `{b['packed']}` ({b['packed_bytes']:,} bytes)" if b.get("packed") else ""
        lines.append(f"- {t}: `{b['bundle']}` ({b['format']} {b['precision']} {b['layout']}, "
                     f"{b['sizes']['dense_bytes']:,} bytes{packed})")
    lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds'] if s['seconds'] is not None else ''} |"
              for s in report["stages"]]
    return "\n".join(lines) + "\n"


def run_pipeline(cfg: PipelineConfig, out=None, force: bool = False, command: str | None = None,
                 echo: Callable[[str], None] = print) -> dict:
    """Run every stage of ``cfg`` into ``out`` (default: ``pipeline.out``), skipping finished ones."""
    out = out or cfg.pipeline.out
    if out is None:
        raise UserError("no run directory given; pass --out RUN or set pipeline.out in the recipe.")
    return Pipeline(cfg, out, force=force, command=command, echo=echo).run()
