"""The CLUE benchmark (M6-Rec Table 7 in miniature): one `edgekit run` of a CLUE recipe, then targets.

    python benchmarks/clue.py [--recipe recipes/clue_e5.yaml] [--out runs/clue-e5] [--data-dir ../shared/data/clue]

Runs (or resumes, skipping finished stages) the whole pipeline of the recipe, which produces side
by side: the teacher fine-tuned per task, the dense distilled student, the same student pruned to
80%, its int8 bundle (evaluated through the device runtime), and an undistilled student of the
same shape. Then it checks the issue's ratio targets per task (pruned ≥ 0.97 × dense, student ≥
0.92 × teacher) and writes benchmarks/results/clue_e5.{md,json} and clue_e5_accuracy_vs_size.png.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.io import read_json, versions, write_json  # noqa: E402
from edgekit.pipeline import load_pipeline_config, run_pipeline  # noqa: E402

TARGETS = {"pruned_over_dense": 0.97, "dense_over_teacher": 0.92, "pruned_over_teacher": 0.92}
DATA_NOTE = ("IFLYTEK and CSL are not trained on the official train sets (../shared/data/clue/README.md): IFLYTEK is "
             "trained on 5,753 pooled FewCLUE/DataCLUE lines (the official train has 12,133) and evaluated on the "
             "official dev; CSL is trained on 2/3 of the official dev and evaluated on the other 1/3 (split by "
             "abstract). TNEWS is the official train and dev. Compare IFLYTEK/CSL only with runs made here.")


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/clue_e5.yaml")
    ap.add_argument("--out", default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--name", default="clue_e5")
    ap.add_argument("--force", action="store_true", help="redo stages whose recipe changed (edgekit run --force)")
    args = ap.parse_args()
    command = "python benchmarks/clue.py" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                  if v not in (None, False, True) and k != "name")
    overrides = {"pipeline": {"data_dir": args.data_dir}} if args.data_dir else {}
    cfg = load_pipeline_config(ROOT / args.recipe if not Path(args.recipe).is_absolute() else args.recipe, overrides)
    start = time.perf_counter()
    report = run_pipeline(cfg, args.out, force=args.force, command=command)
    out_dir = Path(report["run_dir"])
    stage_seconds = {}
    for marker in out_dir.rglob("stage.json"):
        m = read_json(marker)
        stage_seconds[m["stage"]] = m["seconds"]

    checks = []
    for key, target in TARGETS.items():
        for task, value in report["ratios"].get(key, {}).items():
            checks.append({"ratio": key, "task": task, "value": value, "target": target,
                           "pass": value >= target})
    distill_cfg = read_json(out_dir / "distill" / "config.json")["config"]
    student = distill_cfg["student"]
    distill_results = read_json(out_dir / "distill" / "results.json")
    prune_results = read_json(out_dir / "prune" / "results.json") if (out_dir / "prune" / "results.json").exists() else {}
    shape = (f"{student['num_layers']} layers sharing one set of weights, {student['num_heads']} heads, hidden "
             f"{student['hidden_size']}, intermediate {student['intermediate_size']}, factorized embeddings "
             f"{student['embedding_size']}, vocabulary {distill_results['vocab']['trimmed_vocab_size']:,} pieces "
             f"(trimmed from {distill_results['vocab']['original_vocab_size']:,}); {distill_results['parameters']:,} "
             f"parameters without the task head")
    lines = [f"# CLUE benchmark: {args.name}", "",
             f"Command: `{command}`  ", f"Date: {datetime.date.today()}; machine: {versions()['platform']}, "
             f"torch {versions().get('torch')}, {versions().get('torch_threads')} threads, CPU only  ",
             f"Recipe: `{args.recipe}`; run directory: `{out_dir}`", "",
             f"Teacher: `{report['teacher']}` (multilingual-e5-small, 12 layers, hidden 384). Student: {shape}. "
             f"Distilled {distill_results['steps']} steps on {distill_results['corpus_examples']:,} unlabelled CLUE texts; "
             f"pruned to {prune_results.get('target_sparsity', 0):.0%} over {prune_results.get('steps', 0)} steps with "
             "the early-exit loss; fine-tuned per task with the accumulated early-exit loss; bundle = int8 ONNX "
             "per-layer bundle evaluated through `edgekit_device` (what ships).", "",
             "## Dev accuracy (%) and size", "", report["table"], "",
             f"Data: {DATA_NOTE}", "", "## Targets (ratios of dev accuracy)", "",
             "| ratio | task | value | target | |", "|---|---|---:|---:|---|"]
    lines += [f"| {c['ratio']} | {c['task']} | {c['value']:.3f} | ≥ {c['target']:.2f} | {'PASS' if c['pass'] else 'MISS'} |"
              for c in checks]
    for key in ("bundle_over_checkpoint", "distilled_over_baseline"):
        if key in report["ratios"]:
            lines += ["", f"{key}: " + ", ".join(f"{t} {v:.3f}" for t, v in report["ratios"][key].items())]
    lines += ["", "## Stage times (seconds, 2 CPU cores)", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(stage_seconds.items())]
    md = "\n".join(lines) + "\n"
    print(md)
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{args.name}.md").write_text(md, encoding="utf-8")
    shutil.copyfile(out_dir / "compare" / "accuracy_vs_size.png", results_dir / f"{args.name}_accuracy_vs_size.png")
    shutil.copyfile(out_dir / "compare" / "compare.csv", results_dir / f"{args.name}.csv")
    result = {"command": command, "date": str(datetime.date.today()), "recipe": args.recipe, "student_shape": student,
              "accuracy": report["accuracy"], "ratios": report["ratios"], "checks": checks,
              "stage_seconds": stage_seconds, "wall_seconds_this_invocation": round(time.perf_counter() - start, 1),
              "data_note": DATA_NOTE, "versions": versions()}
    write_json(results_dir / f"{args.name}.json", result)
    return result


if __name__ == "__main__":
    main()
