"""The teacher reference adopted from a finished ``edgekit finetune`` run instead of fine-tuned again.

Fine-tuning the e5-small teacher on a CLUE task costs hours on a CPU, so a pipeline task may name
the run that already did it (``pipeline.tasks[].teacher_run``). The stage ``reference/teacher/<task>``
then writes a run directory that every reader of a finetune run understands (``config.json``,
``versions.json``, ``results.json``, ``model``) without copying the model: ``model`` is a symlink
to the adopted run's model directory, and the JSON files are the run's own with ``adopted_from``.
The adopted run is only read, never written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edgekit.checkpoint import (BUILTIN_TEACHERS, RESULTS_FILE, RUN_MODEL, run_config_of, check_model_dir,
                                edgekit_home, read_meta, resolve_model_dir)
from edgekit.errors import UserError
from edgekit.io import claim, read_json, write_json


def _model_path(spec: str) -> Path:
    """Where a teacher spec's checkpoint lives, without importing a built-in teacher."""
    if spec in BUILTIN_TEACHERS:
        return (edgekit_home() / "teachers" / spec).resolve()
    try:
        return resolve_model_dir(spec, role="teacher").resolve()  # a run directory names its model
    except UserError:
        return Path(spec).resolve()


def check_teacher_run(run, task: str, teacher: str) -> dict:
    """Check that ``run`` is a finished ``edgekit finetune`` run of ``teacher`` on ``task``, one
    ``UserError`` sentence otherwise; returns what the stage needs (``run``, ``model_dir``,
    ``results_sha256``). Reads only the run's JSON files and the header of its weights."""
    run = Path(run)
    fix = f"pass the --out directory of a finished `edgekit finetune --model {teacher} --task {task}` run"
    where = f"pipeline task {task}'s teacher_run '{run}'"
    if not run.is_dir():
        raise UserError(f"{where} " + ("is a file" if run.exists() else "does not exist") + f"; {fix}.")
    recorded = run_config_of(run)
    if recorded is None:
        what = ("is a checkpoint directory, not the run directory that wrote it"
                if (run / "config.json").is_file() else "is not an edgekit run directory (no config.json and "
                                                        "versions.json)")
        raise UserError(f"{where} {what}; {fix}.")
    model_dir = check_model_dir(resolve_model_dir(run, role="teacher"), role="teacher")  # unfinished: its sentence
    results = read_json(run / RESULTS_FILE)
    config = recorded["config"]
    if not (isinstance(results, dict) and results.get("stage") == "finetune" and isinstance(config.get("task"), dict)):
        stage = results.get("stage") if isinstance(results, dict) else None
        raise UserError(f"{where} is " + (f"an edgekit {stage} run" if isinstance(stage, str) else "not a finetune run")
                        + f", not an edgekit finetune run; {fix}.")
    if config["task"].get("name") != task:
        raise UserError(f"{where} fine-tuned on task '{config['task'].get('name')}', not '{task}'; {fix} "
                        f"(or name it under task {config['task'].get('name')}).")
    trained = config.get("model")
    # the run records --model as typed (relative to where it ran); edgekit.json records it resolved
    sources = {_model_path(str(trained))} | {Path(p).resolve() for p in [read_meta(model_dir).get("finetuned_from")]
                                              if isinstance(p, str)}
    if trained != teacher and _model_path(teacher) not in sources:
        raise UserError(f"{where} fine-tuned the model '{trained}', but the pipeline's teacher is '{teacher}'; {fix} "
                        f"(or set pipeline.teacher: {trained}).")
    digest = hashlib.sha256((run / RESULTS_FILE).read_bytes()).hexdigest()
    return {"run": run.resolve(), "model_dir": model_dir.resolve(), "results_sha256": digest}


def adopt_teacher_run(run: Path, model_dir: Path, directory: Path) -> dict:
    """Write ``directory`` as the adopted run: ``model`` a symlink to ``model_dir`` (absolute), and
    the run's ``config.json``, ``versions.json`` and ``results.json`` with ``adopted_from: run``."""
    directory = Path(directory)
    link = directory / RUN_MODEL
    if link.is_symlink():  # an adoption a kill cut short: point it again
        link.unlink()
    elif link.exists():
        raise UserError(f"'{link}' exists and is not the link this stage writes; move it away and run again.")
    claim(link)
    os.symlink(str(model_dir), link, target_is_directory=True)
    config = read_json(run / "config.json")
    write_json(directory / "config.json", {**config, "adopted_from": str(run)})
    write_json(directory / "versions.json", read_json(run / "versions.json"))
    results = {**read_json(run / RESULTS_FILE), "adopted_from": str(run), "model_dir": str(link)}
    write_json(directory / RESULTS_FILE, results)
    return results
