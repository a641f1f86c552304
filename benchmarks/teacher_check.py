"""Issue 12's first question: does the e5-small teacher, fine-tuned with edgekit's CLUE defaults,
reach the class of published small Chinese models (TNEWS >= 53, CSL >= 75 on dev)?

    python benchmarks/teacher_check.py --tasks csl,tnews [--out-root runs] [--data-dir ../shared/data/clue]
                                       [--set KEY=VALUE ...] [--run TASK=DIR ...] [--extra NAME=DIR ...]
    python benchmarks/teacher_check.py --report-only --run csl=runs/teacher-csl5 --run tnews=runs/teacher-tnews \\
                                       --extra "CSL, 2 epochs (earlier run)=runs/teacher-csl"

Per task it runs, through the Python API, what this command line runs (hours per task on a 2-core CPU):

    edgekit finetune --model e5-small --task T --data-dir DATA/T --out OUT_ROOT/teacher-T --lr 5e-5 --eval-every E

with the CLUE defaults of ``edgekit/finetune/schedule.py`` (3 epochs, CSL 5; max length 128, CSL 256;
warm-up 0.1; batch 32) and about two evaluations per epoch (CSL: E = 31; TNEWS: E = 200 on the first
2,000 dev examples, ``task.max_eval_examples=2000``, so that an evaluation costs minutes, not an hour).
A run directory that exists is resumed (unfinished) or read (finished); one started with other settings
is refused, never continued with these. ``--run TASK=DIR`` points a task at another run directory;
``--extra NAME=DIR`` adds a finished or unfinished run as one more row (not judged as the task's answer).

``--report-only`` trains nothing: it renders ``benchmarks/results/teacher_check.{md,json}`` from the run
directories as they are (an unfinished one as "in progress, step S of N"). Training runs render the
same report at the end. The renderer (``summarize``, ``render``) is pure: run records in, markdown out.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from clue import DATA_NOTE, PUBLISHED, TEACHER_FLOOR  # noqa: E402
from edgekit.errors import UserError  # noqa: E402
from edgekit.io import read_json, versions, write_json  # noqa: E402

MODEL = "e5-small"
LR_TEXT = "5e-5"   # as the lead's runs typed it (their recorded commands)
LR = float(LR_TEXT)
EVAL_EVERY = {"csl": 31, "tnews": 200}     # about two evaluations per epoch (62 and 1,667 steps per epoch)
DEFAULT_EVAL_EVERY = 200
TASK_SETS = {"tnews": ["task.max_eval_examples=2000"]}  # 10,000 dev examples would cost an hour per evaluation
# a run whose metrics.jsonl changed this recently is taken to be training now: resuming it would be a second writer
ACTIVE_SECONDS = 15 * 60
TASK_INPUT = {"csl": "keywords first, then the abstract", "tnews": "the title, then the keywords",
              "iflytek": "the app description"}
EARLIER_TEACHER = ROOT / "benchmarks" / "results" / "clue_e5.json"
# `edgekit eval RUN --task T --data-dir DATA/T --out RUN/eval-dev.json`: the finished model on the whole dev split,
# when the run chose its checkpoint on a part of it (TNEWS); the verdict then reads this figure
WHOLE_DEV = "eval-dev.json"


# --------------------------------------------------------------------------------------------
# What a teacher run is: its settings, and the check that a run directory was started with them


def teacher_sets(task: str, sets: list[str] | None = None) -> list[str]:
    """The ``--set`` pairs of the teacher run on ``task``: the task's own (TNEWS: the 2,000-example dev
    subset) and then the caller's, which win."""
    return [*TASK_SETS.get(task, []), *(sets or [])]


def teacher_command(task: str, data_dir: str, out: str, sets: list[str] | None = None, resume: bool = False) -> str:
    """The ``edgekit finetune`` command line the teacher run on ``task`` is equal to."""
    args = ["edgekit", "finetune", "--model", MODEL, "--task", task, "--data-dir", data_dir, "--out", out,
            "--lr", LR_TEXT, "--eval-every", str(EVAL_EVERY.get(task, DEFAULT_EVAL_EVERY))]
    for pair in teacher_sets(task, sets):
        args += ["--set", pair]
    return shlex.join(args + (["--resume"] if resume else []))


def teacher_config(task: str, data_dir: str, sets: list[str] | None = None):
    """The ``FinetuneConfig`` that ``teacher_command`` builds (the way ``edgekit/cli.py`` does)."""
    from edgekit.config import merge, parse_overrides
    from edgekit.finetune import load_finetune_config

    flags = {"model": MODEL, "task": {"name": task, "data_dir": data_dir},
             "finetune": {"eval_every": EVAL_EVERY.get(task, DEFAULT_EVAL_EVERY)}, "train": {"lr": LR}}
    return load_finetune_config(None, merge(parse_overrides(teacher_sets(task, sets)), flags))


def config_differences(recorded: dict, planned: dict, prefix: str = "") -> list[str]:
    """Dotted keys where a run's recorded config differs from the planned one, as 'key: A there, B here'.

    A planned None that the run recorded as a value is no difference: the stage fills those in when it
    starts (``train.max_steps`` from the epochs, ``train.lr`` from the model size). ``task.data_dir`` is
    compared as resolved paths (a run records it as typed)."""
    if isinstance(recorded, dict) and isinstance(planned, dict):
        out = []
        for key in sorted(set(recorded) | set(planned), key=str):
            out += config_differences(recorded.get(key), planned.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if planned is None and recorded is not None and prefix in ("train.max_steps", "train.lr"):
        return []
    if prefix == "task.data_dir" and isinstance(recorded, str) and isinstance(planned, str):
        if Path(recorded).resolve() == Path(planned).resolve():
            return []

    def shown(v):
        return "unset" if v is None else v

    return [] if recorded == planned else [f"{prefix}: {shown(recorded)} there, {shown(planned)} here"]


def check_resumable(directory: Path, planned: dict, task: str, assume_stopped: bool = False,
                    now: float | None = None) -> str:
    """'new', 'resume' or 'finished' for the teacher run of ``task`` in ``directory``; one ``UserError``
    sentence when it is another run (other settings, another stage) or is being written right now."""
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        return "new"
    config = directory / "config.json"
    if not config.is_file():
        raise UserError(f"'{directory}' is not the run directory of an `edgekit finetune` run (no config.json); "
                        f"point --run {task}=DIR at another directory.")
    recorded = read_json(config).get("config", {})
    diff = config_differences(recorded, planned)
    if diff:
        raise UserError(f"'{directory}' holds a teacher run started with other settings ({'; '.join(diff[:3])}); "
                        f"rerun with the settings it was started with (--set, --data-dir) or point --run {task}=DIR "
                        f"at another directory.")
    if (directory / "results.json").is_file():
        return "finished"
    metrics = directory / "metrics.jsonl"
    now = time.time() if now is None else now
    if metrics.is_file() and not assume_stopped and now - metrics.stat().st_mtime < ACTIVE_SECONDS:
        raise UserError(f"'{directory}' was written {now - metrics.stat().st_mtime:.0f} s ago, so a process is "
                        f"probably still training it; wait for it (--report-only shows its progress), or if it was "
                        f"stopped, pass --assume-stopped to resume it.")
    return "resume"


# --------------------------------------------------------------------------------------------
# Reading run directories (only their JSON files)


def clean_metrics(records: list[dict]) -> list[dict]:
    """The records of one training history: a run restarted from an earlier step (no checkpoint to
    resume from) appends steps it had logged before, and the later records replace them."""
    kept: list[dict] = []
    last = -1
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        if step < last:
            kept = [r for r in kept if r["step"] < step]
        kept.append(record)
        last = step
    return kept


def read_run(directory, name: str | None = None) -> dict:
    """A run record: what ``summarize`` needs from an ``edgekit finetune`` run directory."""
    from edgekit.io import _metrics_record

    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"run directory '{directory}' " + ("is a file" if directory.exists() else "does not exist")
                        + "; pass --run TASK=DIR with the --out of an `edgekit finetune` run, or train it first "
                          "(leave out --report-only).")
    config_file = directory / "config.json"
    data = read_json(config_file) if config_file.is_file() else None
    if not (isinstance(data, dict) and isinstance(data.get("config"), dict) and "finetune" in data["config"]):
        raise UserError(f"'{directory}' is not the run directory of an `edgekit finetune` run (no config.json with a "
                        f"finetune section); pass the --out directory of one.")
    results = read_json(directory / "results.json") if (directory / "results.json").is_file() else None
    metrics = []
    if (directory / "metrics.jsonl").is_file():
        text = (directory / "metrics.jsonl").read_text(encoding="utf-8", errors="replace")
        metrics = [r for line in text.split("\n") if (r := _metrics_record(line)) is not None]
    best_meta = directory / "best" / "edgekit.json"
    pooling = read_json(best_meta).get("pooling") if best_meta.is_file() else None
    ran_on = read_json(directory / "versions.json") if (directory / "versions.json").is_file() else {}
    whole = read_json(directory / WHOLE_DEV) if (directory / WHOLE_DEV).is_file() else None
    return {"name": name, "dir": str(directory), "command": data.get("command"), "config": data["config"],
            "results": results, "metrics": metrics, "pooling": pooling, "versions": ran_on, "whole_dev": whole}


def default_epochs(task: str) -> float:
    from edgekit.finetune.schedule import task_epochs  # imports the task registry (and torch): only when needed

    return task_epochs(task)


# --------------------------------------------------------------------------------------------
# The report (pure: records in, summaries and markdown out)


def summarize(record: dict, epochs_default=default_epochs) -> dict:
    """One run's figures: settings, evaluations with their epoch, best / final dev accuracy, status,
    and the verdict against ``TEACHER_FLOOR`` (PASS when the best dev accuracy >= the floor)."""
    cfg, results = record["config"], record["results"]
    task, train, ft = cfg["task"]["name"], cfg["train"], cfg["finetune"]
    schedule = (results or {}).get("schedule") or {}
    max_steps = schedule.get("max_steps", train.get("max_steps"))
    epochs = schedule.get("epochs") or train.get("epochs") or epochs_default(task)
    if results and results.get("train_examples"):  # the trainer's batches per epoch: ⌊n / B⌋
        per_epoch = max(1, results["train_examples"] // train["batch_size"])
    else:
        per_epoch = max_steps / epochs if max_steps else None
    steps = clean_metrics(record["metrics"])
    logged = [(r["step"], r["lr"]) for r in steps if isinstance(r.get("lr"), (int, float))]

    def lr_at(step):  # the rate logged last at or before the step (the trainer logs every log_every steps)
        before = [lr for s, lr in logged if s <= step]
        return before[-1] if before else None

    evals = [{"step": r["step"], "epoch": round(r["step"] / per_epoch, 2) if per_epoch else None,
              "lr": lr_at(r["step"]), "accuracy": r["eval_accuracy"]} for r in steps if "eval_accuracy" in r]
    finished = results is not None
    best = None
    if evals:  # the first of equal bests, as the run's own evaluator keeps it
        top = max(evals, key=lambda e: e["accuracy"])
        best = {"step": top["step"], "accuracy": top["accuracy"]}
    if finished:  # the run's own choice (its best checkpoint became model/)
        best = {"step": results.get("best_step"), "accuracy": results["dev_accuracy"]}
    final = evals[-1]["accuracy"] if finished and evals else None
    whole = record.get("whole_dev")
    whole = {"accuracy": whole["accuracy"], "examples": whole["examples"]} if finished and whole else None
    judged = whole["accuracy"] if whole else best["accuracy"] if best else None  # the whole split when measured
    target = TEACHER_FLOOR.get(task)
    ratio = judged / target if judged is not None and target else None
    verdict = ("no target" if target is None else "not finished" if not finished else
               "PASS" if judged >= target else "MISS")
    last_step = max((r["step"] for r in steps), default=0)
    return {
        "name": record.get("name") or task.upper(), "task": task, "dir": record["dir"], "command": record["command"],
        "finished": finished, "status": "finished" if finished else f"in progress, step {last_step} of {max_steps}",
        "step": results.get("steps", last_step) if finished else last_step,
        "settings": {"epochs": epochs, "max_steps": max_steps, "batch_size": train["batch_size"],
                     "max_length": cfg["task"].get("max_length"), "lr": train.get("lr"),
                     "warmup_ratio": train.get("warmup_ratio"),
                     "pooling": (results or {}).get("pooling") or record.get("pooling") or ft.get("pooling"),
                     "freeze_embeddings": ft.get("freeze_embeddings"),
                     "max_eval_examples": cfg["task"].get("max_eval_examples"),
                     "dev_examples": (results or {}).get("dev_examples"),
                     "train_examples": (results or {}).get("train_examples")},
        "evals": evals, "best": best, "final": final, "whole_dev": whole, "seconds": (results or {}).get("seconds"),
        "target": target, "ratio": round(ratio, 4) if ratio is not None else None, "verdict": verdict,
        "ran_on": _ran_on(record.get("versions") or {}), "eval_every": ft.get("eval_every"), "differs": [],
    }


def _ran_on(v: dict) -> str:
    """Where a run trained, from its versions.json: torch, threads, CUDA device."""
    if not v:
        return "not recorded"
    device = v.get("cuda") or "CPU"
    threads = f", {v['torch_threads']} torch thread{'s' if v['torch_threads'] != 1 else ''}" \
        if v.get("torch_threads") and not v.get("cuda") else ""
    return f"{device}{threads}, torch {v.get('torch')}"


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.2f}"


def _settings_line(s: dict, task: str) -> str:
    length = f"max length {s['max_length']}" + (f" ({TASK_INPUT[task]})" if task in TASK_INPUT else "")
    steps = f"{s['max_steps']:,} steps of {s['batch_size']}" if s["max_steps"] else f"batch {s['batch_size']}"
    lr = f"lr {s['lr']:g}" if s["lr"] is not None else "lr: the default for the model size"
    embeddings = "embedding table frozen" if s["freeze_embeddings"] else "the whole model trained"
    if s["max_eval_examples"]:
        dev = f"dev: the first {s['max_eval_examples']:,} examples"
    elif s["dev_examples"]:
        dev = f"dev: all {s['dev_examples']:,} examples"
    else:
        dev = "dev: all examples"
    return (f"{s['epochs']:g} epochs ({steps}), {length}, {lr}, warm-up {s['warmup_ratio']:g}, "
            f"{s['pooling']} pooling, {embeddings}; {dev}")


def render(summaries: list[dict], command: str, date: str, machine: str, earlier: dict | None = None) -> str:
    """The markdown report of ``summaries`` (from ``summarize``); ``earlier``: the teacher row of the
    committed ``clue_e5.json`` per task, as context."""
    lines = ["# Is the e5-small teacher in the class of published small models? (issue 12's first question)", "",
             "Issue 12 asks for a teacher at " + ", ".join(f"{t.upper()} ≥ {100 * v:g}" for t, v in
                                                           TEACHER_FLOOR.items())
             + " on dev before students are tuned on it. This file records what the teacher reached with the "
               "committed code (`edgekit finetune` with its CLUE defaults), before the full benchmark "
               "(`python benchmarks/clue.py --recipe recipes/clue_e5_task.yaml`) is run. It is generated; do not "
               "edit it by hand.", "",
             f"Command: `{command}`  ", f"Date: {date}; {machine}", "",
             "| run | status | best dev | final dev | whole dev | target | judged / target | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for s in summaries:
        whole = s.get("whole_dev")
        lines.append(f"| {s['name']} | {s['status']} | {_pct(s['best'] and s['best']['accuracy'])} | "
                     f"{_pct(s['final'])} | {_pct(whole and whole['accuracy'])} | {_pct(s['target'])} | "
                     f"{'' if s['ratio'] is None else format(s['ratio'], '.3f')} | {s['verdict']} |")
    lines += ["", "Best dev: the accuracy of the checkpoint the run keeps (its best evaluation; for an unfinished "
                  "run, the best so far). Whole dev: that checkpoint on every dev example (`edgekit eval`, "
                  f"`RUN/{WHOLE_DEV}`), measured where the run evaluated a part of dev. The verdict compares the "
                  "whole-dev figure with the target where there is one, else the best; an unfinished run gets none."]
    for s in summaries:
        if s.get("from_report"):
            lines.append(f"{s['name']}: copied from the report of {s['from_report']} (`--from-report`): its run "
                         f"directory is not on the machine that rendered this one.")
        if s.get("differs"):
            lines.append(f"{s['name']}: read from a run made with other settings than this check's "
                         f"({'; '.join(s['differs'][:2])}).")
        n = s["settings"]["max_eval_examples"]
        if n:
            lines.append(f"{s['name']}: dev accuracy on the first {n:,} dev examples only (an evaluation every "
                         f"{s['eval_every']} steps costs minutes instead of an hour); `edgekit eval` of "
                         f"the finished model measures the whole dev split.")
    lines += ["", f"Data: {DATA_NOTE} CSL's split: `benchmarks/clue_provenance.md`."]
    shown = set()
    for s in summaries:
        st = s["settings"]
        lines += ["", f"## {s['name']} ({s['status']})", "",
                  f"Command: `{s['command']}`  ", f"Run directory: `{s['dir']}`  ",
                  f"Settings: {_settings_line(st, s['task'])}.  "]
        if s.get("differs"):
            lines.append(f"Not this check's settings ({'; '.join(s['differs'][:4])}): `teacher_check.py` without "
                         f"--report-only would refuse to continue this run.  ")
        if s["seconds"] is not None:
            per = f" (≈ {s['seconds'] / s['step']:.1f} s per step)" if s["step"] else ""
            lines.append(f"Time: {s['seconds']:,.0f} s{per} on {s['ran_on']}.")
        else:
            lines.append(f"Time: not known until the run finishes (its results.json records it); on {s['ran_on']}.")
        sub = f" (first {st['max_eval_examples']:,} dev examples)" if st["max_eval_examples"] else ""
        lines += ["", f"| step | epoch | lr | dev accuracy{sub} |", "|---:|---:|---:|---:|"]
        best_step = s["best"]["step"] if s["best"] else None
        for e in s["evals"]:
            acc = _pct(e["accuracy"])
            lines.append(f"| {e['step']} | {'' if e['epoch'] is None else format(e['epoch'], 'g')} | "
                         f"{'' if e['lr'] is None else format(e['lr'], '.2e')} | "
                         + (f"**{acc}**" if e["step"] == best_step else acc) + " |")
        if not s["evals"]:
            lines.append("| | | | no evaluation yet |")
        best = s["best"]
        if s["finished"]:
            lines += ["", f"Best dev accuracy {_pct(best['accuracy'])} (step {best['step']}), final "
                          f"{_pct(s['final'])}."]
            if s.get("whole_dev"):
                lines.append(f"On the whole dev split ({s['whole_dev']['examples']:,} examples): "
                             f"{_pct(s['whole_dev']['accuracy'])}.")
        elif best:
            lines += ["", f"Best dev accuracy so far {_pct(best['accuracy'])} (step {best['step']}); not finished."]
        if s["target"] is not None:
            lines.append(f"Target ≥ {_pct(s['target'])}: {s['verdict']}"
                         + (f" (best / target {s['ratio']:.3f})." if s["ratio"] is not None else "."))
        if s["task"] in shown:  # the context and the published rows once per task
            continue
        shown.add(s["task"])
        if earlier and earlier.get(s["task"]) is not None:
            lines.append(f"Earlier teacher (`clue_e5.md`, a few hundred steps, embedding table frozen, through a zero "
                         f"pooler): {_pct(earlier[s['task']])}.")
        # a source's note on another task's split (ALBERT-zh-tiny: "CSL on test") is no caveat here
        published = [(label, values[s["task"]], source if s["task"] == "csl" else source.replace("; CSL on test", ""))
                     for label, values, source in PUBLISHED if s["task"] in values]
        if published:
            lines += ["", f"Published on {s['task'].upper()} (official train sets; dev unless the source says test):",
                      "", "| model | accuracy | source |", "|---|---:|---|"]
            lines += [f"| {label} | {value:.1f} | {source} |" for label, value, source in published]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


def earlier_rows(report: Path, names: list[str], report_only: bool) -> dict[str, dict]:
    """The rows ``names`` (a task, as ``--tasks`` names it, or a row name) of an earlier ``teacher_check.json``,
    keyed by the name asked for, each marked ``from_report`` with that report's date; one sentence when
    the report or a row is missing. Run directories do not travel between machines; reports do."""
    if not names:
        return {}
    if not report_only:
        raise UserError("--from-report copies rows into a report without training; add --report-only.")
    if not report.is_file():
        raise UserError(f"--from-report reads the earlier report '{report}', which does not exist; drop --from-report "
                        "or pass --results-dir with the directory that holds it.")
    earlier = read_json(report)
    rows = {}
    for name in names:
        found = [r for r in earlier.get("runs", []) if r.get("name") == name or r.get("name", "").lower() == name]
        if not found:
            have = ", ".join(r.get("name", "?") for r in earlier.get("runs", []))
            raise UserError(f"--from-report {name}: the report '{report}' has no such row (it has: {have}).")
        rows[name] = {**found[0], "from_report": found[0].get("from_report") or earlier.get("date")}
    return rows


def _pairs(values: list[str] | None, flag: str, example: str) -> list[tuple[str, str]]:
    out = []
    for value in values or []:
        key, _, path = value.partition("=")
        if not key.strip() or not path.strip():
            raise UserError(f"{flag} takes NAME=DIR, got '{value}'; e.g. {flag} {example}.")
        out.append((key.strip(), path.strip()))
    return out


def train_teacher(task: str, directory: Path, data_dir: str, sets: list[str], assume_stopped: bool) -> None:
    """Run, resume or skip the teacher run of ``task`` in ``directory``."""
    from edgekit.config import to_dict
    from edgekit.finetune import finetune

    task_dir = str(Path(data_dir) / task)
    cfg = teacher_config(task, task_dir, sets)
    state = check_resumable(directory, to_dict(cfg), task, assume_stopped)
    if state == "finished":
        print(f"{task}: '{directory}' finished earlier; read, not trained", flush=True)
        return
    resume = state == "resume"
    print(f"{task}: {'resuming' if resume else 'fine-tuning'} the teacher in '{directory}'", flush=True)
    result = finetune(cfg, directory, resume=resume,
                      command=teacher_command(task, task_dir, str(directory), sets, resume))
    if result.get("interrupted"):
        raise UserError(f"stopped at step {result['step']} of the {task} teacher; rerun the same command to continue.")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="csl,tnews", help="comma-separated tasks (default csl,tnews)")
    ap.add_argument("--out-root", default="runs", help="run directories OUT_ROOT/teacher-TASK (default runs)")
    ap.add_argument("--data-dir", default="../shared/data/clue", help="CLUE data, one folder per task")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="edgekit finetune --set, applied to every task (repeatable)")
    ap.add_argument("--run", action="append", default=[], metavar="TASK=DIR", help="the run directory of TASK")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=DIR",
                    help="one more run directory shown as the row NAME (repeatable)")
    ap.add_argument("--report-only", action="store_true", help="train nothing; render from the run directories")
    ap.add_argument("--from-report", action="append", default=[], metavar="NAME",
                    help="with --report-only: copy the row NAME (a task, e.g. csl, or an --extra name) from the "
                         "committed teacher_check.json instead of reading its run directory (repeatable)")
    ap.add_argument("--assume-stopped", action="store_true",
                    help="resume a run directory written in the last 15 minutes (no process is training it)")
    ap.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1)")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = "python " + shlex.join(["benchmarks/teacher_check.py", *argv])

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise UserError("--tasks names no task; pass e.g. --tasks csl,tnews.")
    runs = dict(_pairs(args.run, "--run", "csl=runs/teacher-csl5"))
    unknown = [t for t in runs if t not in tasks]
    if unknown:
        raise UserError(f"--run names task '{unknown[0]}', which --tasks does not include ({', '.join(tasks)}); "
                        f"add it to --tasks or drop that --run.")
    extras = _pairs(args.extra, "--extra", '"CSL, 2 epochs (earlier run)=runs/teacher-csl"')
    dirs = {t: Path(runs.get(t, Path(args.out_root) / f"teacher-{t}")) for t in tasks}

    copied = earlier_rows(Path(args.results_dir) / "teacher_check.json", args.from_report, args.report_only)
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        for t in tasks:
            train_teacher(t, dirs[t], args.data_dir, args.sets, args.assume_stopped)

    summaries = []
    for t in tasks:
        if t in copied:
            summaries.append(copied.pop(t))
            continue
        record = read_run(dirs[t])
        s = summarize(record)
        if args.report_only:  # a task's row read from a run made otherwise says so (training refuses such a run)
            from edgekit.config import to_dict

            planned = to_dict(teacher_config(t, str(Path(args.data_dir) / t), args.sets))
            s["differs"] = config_differences(record["config"], planned)
        summaries.append(s)
    summaries += [summarize(read_run(path, name)) for name, path in extras] + list(copied.values())
    earlier = None
    if EARLIER_TEACHER.is_file():
        earlier = (read_json(EARLIER_TEACHER).get("accuracy") or {}).get("teacher")
    v = versions()
    machine = (f"rendered on {v['platform']}; the figures are read from the run directories (each with its own "
               f"command, time and machine)")
    date = str(datetime.date.today())
    md = render(summaries, command, date, machine, earlier)
    print(md)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "teacher_check.md").write_text(md, encoding="utf-8")
    result = {"command": command, "date": date, "targets": TEACHER_FLOOR, "runs": summaries,
              "published": PUBLISHED, "data_note": DATA_NOTE, "earlier_teacher": earlier, "versions": v}
    write_json(results_dir / "teacher_check.json", result)
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # one sentence, no traceback
        sys.exit(f"error: {e}")
    except KeyboardInterrupt as e:  # Ctrl+C, or SIGTERM during training: the last checkpoint was written
        from edgekit.train import interruption

        what, status = interruption(e)
        print(f"{what}; finished stages and the last checkpoint are kept: run the same command again to continue.",
              file=sys.stderr)
        sys.exit(status)
