"""The runner: executes the plan, one stage at a time, through each stage's public entry point."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from edgekit.config import to_dict
from edgekit.errors import UserError
from edgekit.io import RunDir, check_run_dir, read_json, remove_stale_temporaries, write_json
from edgekit.pipeline.config import PipelineConfig
from edgekit.pipeline.plan import Stage, decide, finished_marker, fingerprint, mark_finished, mark_started, plan
from edgekit.pipeline.report import write_report


PIPELINE_KIND = "pipeline-run"


def run_pipeline(cfg: PipelineConfig, out=None, force: bool = False, command: str | None = None,
                 echo: Callable[[str], None] = print) -> dict:
    """Run every stage of ``cfg`` into ``out`` (default: ``pipeline.out``), skipping finished ones."""
    out = out or cfg.pipeline.out
    if out is None:
        raise UserError("no run directory given; pass --out RUN or set pipeline.out in the recipe.")
    out = Path(out)
    command = command or " ".join(sys.argv)
    # re-running continues (finished stages are skipped); anything else is refused
    check_run_dir(out, resume=True, kind=PIPELINE_KIND, skips_finished_work=True)
    out.mkdir(parents=True, exist_ok=True)
    stages = plan(cfg, out)
    run = RunDir(out, command, kind=PIPELINE_KIND)
    remove_stale_temporaries(out)  # of writes a kill cut short (the report, results.json)
    run.write_config(to_dict(cfg))
    started = time.perf_counter()
    finished: dict[str, dict] = {}
    log: list[dict] = []
    for i, stage in enumerate(stages, 1):
        fp = fingerprint(stage, finished)
        state = decide(stage, fp, force)
        head = f"[{i}/{len(stages)}] {stage.name}"
        if state == "done":
            finished[stage.name] = finished_marker(stage)
            log.append({"stage": stage.name, "status": "skipped (finished earlier)",
                        "seconds": finished[stage.name].get("seconds")})
            echo(f"{head}: finished earlier, skipped")
            continue
        echo(f"{head}: {stage.describe} -> {stage.directory}" + ("  (resuming)" if state == "resume" else ""))
        if state == "resume":
            remove_stale_temporaries(stage.directory)  # e.g. a bundle the kill cut short
        mark_started(stage, fp)
        t0 = time.perf_counter()
        result = ENTRY_POINTS[stage.kind](stage, state == "resume", command)
        if result.get("interrupted"):
            raise KeyboardInterrupt
        seconds = round(time.perf_counter() - t0, 1)
        finished[stage.name] = mark_finished(stage, fp, seconds)
        log.append({"stage": stage.name, "status": "ran", "seconds": seconds})
    report = write_report(cfg, out, log, round(time.perf_counter() - started, 1))
    run.write_results(report)
    return report


# --------------------------------------------------------------------------------------------
# One function per stage kind: run(stage, resume, command) -> the stage's results


def _distill(stage: Stage, resume: bool, command: str) -> dict:
    from edgekit.checkpoint import resolve_teacher
    from edgekit.distill import distill

    cfg = stage.job["cfg"]
    cfg.teacher.path = str(resolve_teacher(stage.job["teacher"]))
    return distill(cfg, stage.directory, resume=resume, command=command)


def _prune(stage: Stage, resume: bool, command: str) -> dict:
    from edgekit.checkpoint import resolve_teacher
    from edgekit.prune import prune

    cfg = stage.job["cfg"]
    cfg.teacher.path = str(resolve_teacher(cfg.teacher.path or stage.job["teacher"]))
    return prune(cfg, stage.directory, resume=resume, command=command)


def _baseline(stage: Stage, resume: bool, command: str) -> dict:
    """The same student shape and vocabulary as the distilled one, randomly initialised."""
    from edgekit.checkpoint import load_tokenizer, read_meta, save_model_dir
    from edgekit.student import build_student, count_parameters

    distill_cfg, dense, directory = stage.job["cfg"], stage.job["dense"], stage.directory
    tok = load_tokenizer(dense)
    meta = read_meta(dense)
    vocab_map = read_json(dense / "vocab_map.json")
    specials = {k: getattr(tok, k) for k in ("bos_token_id", "eos_token_id")}
    student = build_student(distill_cfg.student, len(vocab_map["teacher_ids"]), pad_token_id=tok.pad_token_id or 0,
                            seed=distill_cfg.train.seed, **specials)
    RunDir(directory, command).write_config({"student": to_dict(distill_cfg.student)})
    save_model_dir(student, directory / "model", tok,
                   {"kind": "student", "stage": "init", "student": meta.get("student"), "vocab": meta.get("vocab"),
                    "note": "random initialisation, no distillation (reference)"},
                   extra_json={"vocab_map.json": vocab_map})
    params, nonzero = count_parameters(student)
    results = {"stage": "baseline", "model_dir": str(directory / "model"), "parameters": params}
    write_json(directory / "results.json", results)
    return results


def _finetune(stage: Stage, resume: bool, command: str) -> dict:
    from edgekit.checkpoint import resolve_teacher
    from edgekit.finetune import finetune

    cfg = stage.job["cfg"]
    if stage.job["teacher"] is not None:  # the upper reference fine-tunes the teacher itself
        cfg.model = str(resolve_teacher(stage.job["teacher"]))
    return finetune(cfg, stage.directory, resume=resume, command=command)


def _adopt(stage: Stage, resume: bool, command: str) -> dict:
    from edgekit.pipeline.adopt import adopt_teacher_run

    return adopt_teacher_run(stage.job["run"], stage.job["model_dir"], stage.directory)


def _export(stage: Stage, resume: bool, command: str) -> dict:
    from edgekit.export import export_model, packed_path
    from edgekit.tasks import load_task

    job, directory = stage.job, stage.directory
    e, t, int8, model_dir = job["export"], job["task"], job["int8"], job["model_dir"]
    late = job.get("late", False)  # a late-interaction student: parity runs the dev examples' segments
    task = load_task(t.name, t.data_dir, t.text_field, t.text_pair_field, t.label_field, segmented=late)
    calibration = task.train.texts[:e.calibration_examples] if int8 == "static" else None
    start = time.perf_counter()
    export_model(model_dir, directory / "bundle", format=e.format, int8=int8, exit_layer=e.exit_layer,
                 max_length=job["max_length"], sample_texts=task.dev.texts[:e.parity_examples],
                 sample_requests=task.dev.segments[:e.parity_examples] if late else None,
                 calibration_texts=calibration, pack=e.pack, pack_codec=e.pack_codec, min_agreement=e.min_agreement,
                 overwrite=True, sample_source=f"{'examples' if late else 'texts'} of the {task.name} dev split",
                 embedding_bits=e.embedding_bits, embedding_scale=e.embedding_scale,
                 accuracy_aware=e.accuracy_aware if e.format == "onnx" and e.accuracy_aware is not None else False)
    manifest = read_json(directory / "bundle" / "manifest.json")
    packed = packed_path(directory / "bundle")
    results = {"stage": "export", "bundle": str(directory / "bundle"),
               "packed": str(packed) if e.pack else None,
               "packed_bytes": packed.stat().st_size if e.pack else None,
               "format": manifest["format"], "precision": manifest["precision"], "layout": manifest["layout"],
               "embedding_bits": (manifest["quantization"] or {}).get("embedding_bits", 8),
               "embedding_scale": (manifest["quantization"] or {}).get("embedding_scale"),
               "sizes": manifest["sizes"], "parity": manifest["parity"],
               "seconds": round(time.perf_counter() - start, 1)}
    RunDir(directory, command).write_config({"model": str(model_dir), "export": to_dict(e),
                                             "max_length": job["max_length"]})
    write_json(directory / "results.json", results)
    return results


def _eval(stage: Stage, resume: bool, command: str) -> dict:
    from edgekit.eval import evaluate

    job, directory = stage.job, stage.directory
    e, t, row = job["eval"], job["task"], job["row"]
    result = evaluate(job["path"], t.name, t.data_dir, job.get("split", "dev"), t.text_field, t.text_pair_field,
                      t.label_field, e.batch_size, e.max_examples, max_length=None if row == "bundle" else t.max_length,
                      threads=e.threads, test_file=t.test_file, provenance=t.provenance)
    result["name"] = job["name"]
    result["row"] = row
    write_json(directory / "eval.json", result)
    write_json(directory / "results.json", result)
    return result


ENTRY_POINTS: dict[str, Callable[[Stage, bool, str], dict]] = {
    "distill": _distill, "prune": _prune, "baseline": _baseline, "finetune": _finetune, "adopt": _adopt,
    "export": _export, "eval": _eval,
}
