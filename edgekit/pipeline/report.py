"""The run's report: ``report.json`` and ``report.md`` (the comparison table, accuracy ratios, bundles, stages)."""

from __future__ import annotations

from pathlib import Path

from edgekit.io import claim, read_json, write_json
from edgekit.pipeline.config import PipelineConfig

ROW_ORDER = ["teacher", "baseline", "dense", "pruned", "bundle"]


def write_report(cfg: PipelineConfig, out: Path, log: list[dict], seconds: float) -> dict:
    """Compare every eval of the run's tasks (into ``OUT/compare``) and write ``report.json`` and ``report.md``.

    Evals of tasks the recipe no longer runs (an earlier ``--set pipeline.tasks=...`` into the same run
    directory) stay on disk but are not mixed into this run's table."""
    from edgekit.eval import compare

    tasks = [t.name for t in cfg.pipeline.tasks]
    files = eval_files(out, tasks)
    summary = compare(files, out / "compare", overwrite=True)  # the run's own table, redone each time
    acc, splits = {}, {}
    for f in files:
        r = read_json(f)
        acc.setdefault(r["row"], {})[r["task"]] = r["accuracy"]
        splits[r["task"]] = r.get("split", "dev")
    ratios = _ratios(acc, tasks)
    bundles = {t: read_json(out / "export" / t / "results.json") for t in tasks}
    report = {"run_dir": str(out), "teacher": cfg.pipeline.teacher, "tasks": tasks,
              "stages": log, "seconds_this_run": seconds, "accuracy": acc, "splits": splits, "ratios": ratios,
              "bundles": {t: {"checkpoint": _checkpoint(out, t), **_bundle_facts(b),
                              "phone": phone_bundle(cfg, out, t)} for t, b in bundles.items()},
              "table": summary["markdown"]}
    write_json(out / "report.json", report)
    claim(out / "report.md")
    (out / "report.md").write_text(_report_markdown(report), encoding="utf-8")
    return report


def eval_files(out: Path, tasks: list[str]) -> list[Path]:
    """``OUT/eval/<row>/<task>/eval.json`` of the given tasks, rows in ``ROW_ORDER`` (others after them)."""
    return sorted((f for f in out.glob("eval/*/*/eval.json") if f.parent.name in tasks),
                  key=lambda f: (ROW_ORDER.index(f.parent.parent.name) if f.parent.parent.name in ROW_ORDER else 9, f))


def _bundle_facts(results: dict) -> dict:
    return {k: results[k] for k in ("bundle", "packed", "packed_bytes", "format", "precision", "layout", "sizes")}


def phone_bundle(cfg: PipelineConfig, out: Path, task: str) -> dict | None:
    """The bundle the phone app runs (``plan.phone_stage_name``) with its download and the worst
    exit's parity agreement with PyTorch; None for ``export.phone: none``."""
    from edgekit.pipeline.plan import phone_stage_name

    stage = phone_stage_name(cfg, task)
    if stage is None:
        return None
    results = read_json(out / stage / "results.json")
    return {**_bundle_facts(results), "agreement": results["parity"]["agreement"]}


def no_phone_reason(bundle: dict) -> str:
    """Why a task of the report (``report["bundles"][task]``) has no phone bundle."""
    if bundle.get("layout") == "late-interaction":
        return "a late-interaction task; the app runs whole texts"
    return "export.phone: none"


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


def _checkpoint(out: Path, task: str) -> str:
    """The fine-tuned checkpoint of ``task`` (what the bundle was exported from, and what
    `edgekit predict`, `eval` and `quantize` take), as its fine-tune stage recorded it."""
    from edgekit.checkpoint import resolve_model_dir

    return str(resolve_model_dir(out / "finetune" / task))


def _describe(b: dict) -> str:
    packed = f"; packed download `{b['packed']}` ({b['packed_bytes']:,} bytes)" if b.get("packed") else ""
    return f"`{b['bundle']}` ({b['format']} {b['precision']} {b['layout']}, {b['sizes']['dense_bytes']:,} bytes{packed})"


def _split_words(splits: dict) -> str:
    """Which split the accuracies are on: 'test', or per task when tasks differ ('tnews: dev, sentiment: test')."""
    names = set(splits.values())
    if len(names) <= 1:
        return next(iter(names), "dev")
    return ", ".join(f"{t}: {s}" for t, s in splits.items())


def _report_markdown(report: dict) -> str:
    lines = [f"# edgekit run: {report['run_dir']}", "", f"Teacher: `{report['teacher']}`; tasks: "
             f"{', '.join(report['tasks'])}.", "", f"## Accuracy ({_split_words(report['splits'])}) and size", "",
             report["table"], ""]
    if report["ratios"]:
        lines += ["## Ratios", "", "| ratio | " + " | ".join(report["tasks"]) + " |",
                  "|---|" + "---|" * len(report["tasks"])]
        for key, values in report["ratios"].items():
            lines.append(f"| {key} | " + " | ".join(f"{values[t]:.3f}" if t in values else "" for t in report["tasks"])
                         + " |")
        lines.append("")
    lines += ["## Models", "", "The fine-tuned checkpoint of each task (PyTorch), the bundle evaluated above, and the "
              "bundle for the phone app (`android_demo/`: copy the `.edgepack` to its assets as `bundle.edgepack`).", ""]
    for t, b in report["bundles"].items():
        lines.append(f"- {t}: checkpoint `{b['checkpoint']}`; bundle {_describe(b)}")
        phone = b.get("phone")
        lines.append(f"  - for the phone app: {_describe(phone)}, parity agreement {phone['agreement']:.3f}"
                     if phone else f"  - no phone bundle ({no_phone_reason(b)})")
    lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds'] if s['seconds'] is not None else ''} |"
              for s in report["stages"]]
    return "\n".join(lines) + "\n"
