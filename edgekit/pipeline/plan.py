"""The planner: which stages a recipe runs, in which directories, and whether each is done, resumed or redone.

Every stage writes into its own directory under the run directory. ``pipeline_stage_config.json``
records what a stage was started with; ``stage.json`` marks it finished with a fingerprint (sha256
of the stage's config and of the fingerprints and finishing times of the stages it reads), so a
finished stage is skipped, an interrupted one resumes, and one whose recipe or inputs changed is
refused unless ``--force`` asks to redo it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgekit.config import load_config, merge, stage_section, to_dict
from edgekit.errors import UserError
from edgekit.io import changed_keys, mark_dir, read_json, remove_own, write_json
from edgekit.pipeline.config import PipelineConfig, TaskEntry, task_config

STAGE_FILE = "stage.json"
STARTED_FILE = "pipeline_stage_config.json"
ROW_NAMES = {
    "teacher": "teacher, fine-tuned",
    "baseline": "student, no distillation",
    "dense": "student, distilled (dense)",
    "pruned": "student, distilled + pruned",
    "bundle": "bundle",  # completed with format and precision
}


@dataclass
class Stage:
    name: str                         # e.g. "finetune/tnews"
    # the entry point that runs it (adopt: the teacher row linked from a finished run, pipeline/adopt.py)
    kind: Literal["distill", "prune", "baseline", "finetune", "adopt", "export", "eval"]
    directory: Path
    config: dict                      # what the stage's fingerprint covers (with its inputs)
    inputs: list[str] = field(default_factory=list)  # names of stages it reads
    describe: str = ""
    # The entry point's arguments, validated while planning so a bad recipe fails before hours of
    # distillation; teachers are named, not resolved, because resolving one may build it.
    job: dict = field(default_factory=dict)


def plan(cfg: PipelineConfig, out: Path) -> list[Stage]:
    """Every stage of ``cfg`` in running order, each recipe validated and each task's data loaded once."""
    from edgekit.distill import DistillConfig
    from edgekit.prune import PruneConfig, validate_prune_config
    from edgekit.tasks import load_task

    teacher_spec = cfg.pipeline.teacher
    if teacher_spec is None:
        raise UserError("no teacher given; pass --teacher DIR (a Hugging Face encoder checkpoint) or --teacher e5-small.")
    stages: list[Stage] = []

    distill_cfg = load_config(DistillConfig, None, stage_section({"pipeline": to_dict(cfg.pipeline),
                                                                 "distill": cfg.distill}, "distill"))
    distill_cfg.student.validate()
    distill_cfg.train.validate()
    stages.append(Stage("distill", "distill", out / "distill", {"teacher": teacher_spec, **to_dict(distill_cfg)},
                        describe=f"MiniLM relation distillation of {teacher_spec}",
                        job={"cfg": distill_cfg, "teacher": teacher_spec}))
    dense = out / "distill" / "model"
    shipped, shipped_stage = dense, "distill"
    if cfg.pipeline.prune:
        prune_section = merge(stage_section({"pipeline": to_dict(cfg.pipeline), "prune": cfg.prune}, "prune"),
                              {"model": str(dense)})
        prune_cfg = load_config(PruneConfig, None, prune_section)
        prune_cfg.train.validate()
        validate_prune_config(prune_cfg)
        stages.append(Stage("prune", "prune", out / "prune", {"teacher": teacher_spec, **to_dict(prune_cfg)},
                            ["distill"], f"gradual magnitude pruning to {prune_cfg.prune.sparsity:.0%}",
                            {"cfg": prune_cfg, "teacher": teacher_spec}))
        shipped, shipped_stage = out / "prune" / "model", "prune"
    refs = list(dict.fromkeys(cfg.pipeline.references))
    if "baseline" in refs:
        stages.append(Stage("baseline", "baseline", out / "baseline", to_dict(distill_cfg.student), ["distill"],
                            "ALBERT student of the same shape, randomly initialised (no distillation)",
                            {"cfg": distill_cfg, "dense": dense}))

    def finetune_stage(name, model, reference, inputs, entry, describe):
        ft = task_config(cfg, entry, str(model), reference)
        ft.train.validate()
        teacher = teacher_spec if reference == "teacher" else None
        return Stage(name, "finetune", out / name, {"teacher": teacher, **to_dict(ft)}, inputs, describe,
                     {"cfg": ft, "teacher": teacher})

    for entry in cfg.pipeline.tasks:
        t = entry.name
        task = task_config(cfg, entry, "-").task  # the task's data must load before hours of distillation
        loaded = load_task(task.name, task.data_dir, task.text_field, task.text_pair_field, task.label_field,
                           test_file=task.test_file, provenance=task.provenance)
        # a task with a test split reports it: dev already chose the best checkpoint
        split = "test" if loaded.test is not None else "dev"
        stages.append(finetune_stage(f"finetune/{t}", shipped, None, [shipped_stage], entry,
                                     f"fine-tune the {'pruned' if cfg.pipeline.prune else 'distilled'} student"))
        if "dense" in refs and cfg.pipeline.prune:
            stages.append(finetune_stage(f"reference/dense/{t}", dense, "dense", ["distill"], entry,
                                         "fine-tune the dense distilled student (reference)"))
        if "baseline" in refs:
            stages.append(finetune_stage(f"reference/baseline/{t}", out / "baseline" / "model", "baseline",
                                         ["baseline"], entry, "fine-tune the undistilled student (reference)"))
        if "teacher" in refs and entry.teacher_run:
            stages.append(_adopt_stage(out, entry, teacher_spec))
        elif "teacher" in refs:
            stages.append(finetune_stage(f"reference/teacher/{t}", teacher_spec, "teacher", [], entry,
                                         "fine-tune the teacher (upper reference)"))
        stages.append(export_stage(cfg, out, entry))
        if phone_stage_name(cfg, t) == f"phone/{t}":
            stages.append(export_stage(cfg, out, entry, phone=True))
        for row, source in rows(cfg, entry):
            stages.append(_eval_stage(cfg, out, entry, row, source, split))
    return stages


def rows(cfg: PipelineConfig, entry: TaskEntry) -> list[tuple[str, str]]:
    """(row key, stage whose model it evaluates), in the order of the table."""
    t, refs = entry.name, cfg.pipeline.references
    out = []
    if "teacher" in refs:
        out.append(("teacher", f"reference/teacher/{t}"))
    if "baseline" in refs:
        out.append(("baseline", f"reference/baseline/{t}"))
    if "dense" in refs and cfg.pipeline.prune:
        out.append(("dense", f"reference/dense/{t}"))
    out.append(("pruned" if cfg.pipeline.prune else "dense", f"finetune/{t}"))
    out.append(("bundle", f"export/{t}"))
    return out


def phone_stage_name(cfg: PipelineConfig, task: str) -> str | None:
    """The stage whose bundle the phone app runs: ``export/<task>`` when that bundle is TFLite,
    else ``phone/<task>`` (a TFLite export of the same model); None for ``export.phone: none`` and for a
    task whose students are late-interaction models (the app runs whole texts)."""
    if cfg.export.phone == "none" or any(e.name == task and e.late_layers is not None for e in cfg.pipeline.tasks):
        return None
    return f"export/{task}" if cfg.export.format == "tflite" else f"phone/{task}"


def _adopt_stage(out: Path, entry: TaskEntry, teacher_spec: str) -> Stage:
    """The teacher row from a finished finetune run (checked now, before hours of distillation); its
    fingerprint holds the run's path and results, so a re-run teacher redoes what reads it."""
    from edgekit.pipeline.adopt import check_teacher_run

    found = check_teacher_run(entry.teacher_run, entry.name, teacher_spec)
    name = f"reference/teacher/{entry.name}"
    return Stage(name, "adopt", out / name,
                 {"teacher": teacher_spec, "adopt": {"run": str(found["run"]),
                                                     "results_sha256": found["results_sha256"]}},
                 [], f"adopt the finished teacher run {found['run']}", found)


def export_stage(cfg: PipelineConfig, out: Path, entry: TaskEntry, phone: bool = False,
                 source: str | None = None, name: str | None = None) -> Stage:
    """The stage that exports the model of stage ``source`` (default ``finetune/<task>``) into ``OUT/name``
    (default ``export/<task>``, or ``phone/<task>`` for the phone app's TFLite bundle)."""
    e = cfg.export
    if phone:  # the app's format, always packed with the codec the app decodes
        e = dataclasses.replace(e, format="tflite", pack=True, pack_codec="zlib")
    if entry.late_layers is not None:  # two graphs (segment encoder, interaction) at the segments' own length;
        # no accuracy-aware tuning for them yet (edgekit export refuses it)
        e = dataclasses.replace(e, accuracy_aware=None, max_length=None)
    source = source or f"finetune/{entry.name}"
    model_dir = out / source / "model"
    ft = task_config(cfg, entry, str(model_dir))
    max_length = None if entry.late_layers is not None else e.max_length or ft.task.max_length
    int8 = {"none": False, "dynamic": "dynamic", "static": "static"}[e.int8]
    name = name or f"{'phone' if phone else 'export'}/{entry.name}"
    return Stage(name, "export", out / name,
                 # without `phone`: choosing whether a phone bundle is made does not redo this one
                 # nor do defaults that export always had: bundles exported before the key existed stay
                 # done (a TFLite int8 table had one scale per row before embedding_scale: those redo)
                 {"export": {k: v for k, v in to_dict(e).items()
                             if k != "phone" and not (k == "embedding_bits" and v == 8)
                             and not (k == "accuracy_aware" and (v is None or e.format != "onnx"))
                             and not (k == "embedding_scale" and v == "table"
                                      and (e.format == "onnx" or e.int8 == "none"))},
                  "max_length": max_length},
                 [source],
                 f"{e.format} {'fp32' if not int8 else 'int8 ' + int8} bundle"
                 + (" for the phone app" if phone_stage_name(cfg, entry.name) == name else ""),
                 {"task": ft.task, "model_dir": model_dir, "export": e, "int8": int8, "max_length": max_length,
                  "late": entry.late_layers is not None})


def _eval_stage(cfg: PipelineConfig, out: Path, entry: TaskEntry, row: str, source: str, split: str = "dev") -> Stage:
    e = cfg.eval
    ft = task_config(cfg, entry, "-")
    path = out / source / ("bundle" if source.startswith("export/") else "model")
    name = ROW_NAMES[row]
    if row == "bundle":
        x = cfg.export
        name = f"bundle: {x.format} {'fp32' if x.int8 == 'none' else 'int8'}"
    return Stage(f"eval/{row}/{entry.name}", "eval", out / "eval" / row / entry.name,
                 {"eval": to_dict(e), "row": row, "split": split},
                 [source], f"accuracy of {name} on {entry.name} {split}",
                 {"task": ft.task, "path": path, "row": row, "name": name, "eval": e, "split": split})


# --------------------------------------------------------------------------------------------
# Done, resume or redo


def fingerprint(stage: Stage, finished: dict[str, dict]) -> str:
    """sha256 of the stage's config and the fingerprints and finishing times of the stages it reads."""
    payload = {"config": stage.config, "inputs": {n: [finished[n]["fingerprint"], finished[n]["finished_at"]]
                                                  for n in stage.inputs}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def decide(stage: Stage, fingerprint: str, force: bool) -> str:
    """'done', 'resume' (unfinished, same config), 'new'; raises on a changed stage unless ``force``
    (which deletes the stage's directory)."""
    marker = stage.directory / STAGE_FILE
    if marker.is_file():
        done = read_json(marker)
        if done.get("fingerprint") == fingerprint:
            return "done"
        why = changed_keys(done.get("config", {}), stage.config)
        adopted = why and all(k.startswith("adopt.") for k in why)
        reason = (f"the teacher run it adopts changed ({', '.join(why)})" if adopted else
                  f"its recipe changed ({', '.join(why[:4])})" if why else
                  f"a stage it reads ({', '.join(stage.inputs)}) was redone")
    elif stage.directory.exists() and any(stage.directory.iterdir()):
        previous = stage.directory / STARTED_FILE
        if previous.is_file() and read_json(previous).get("fingerprint") == fingerprint:
            return "resume"
        why = changed_keys(read_json(previous).get("config", {}), stage.config) if previous.is_file() else []
        reason = (f"it was started with a different recipe ({', '.join(why[:4])})" if why else
                  "it was started with different inputs or by another edgekit version" if previous.is_file() else
                  "it was not started by this pipeline")
    else:
        return "new"
    if not force:
        raise UserError(f"stage '{stage.name}' in '{stage.directory}' cannot be reused: {reason}; pass --force to "
                        f"redo it (and what depends on it), or choose another --out.")
    remove_own(stage.directory)  # refuses, deleting nothing, if it holds a file edgekit did not write
    return "new"


def finished_marker(stage: Stage) -> dict:
    """The ``stage.json`` of a stage finished earlier."""
    return read_json(stage.directory / STAGE_FILE)


def mark_started(stage: Stage, fingerprint: str) -> None:
    mark_dir(stage.directory, f"{stage.kind}-run")
    write_json(stage.directory / STARTED_FILE, {"fingerprint": fingerprint, "config": stage.config})


def mark_finished(stage: Stage, fingerprint: str, seconds: float) -> dict:
    marker = {"stage": stage.name, "fingerprint": fingerprint, "config": stage.config,
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds}
    write_json(stage.directory / STAGE_FILE, marker)
    return marker
