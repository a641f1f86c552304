"""M6-Rec Table 8 / Figure 8 in miniature: five tuning methods on CLUE with the e5-small teacher.

    nohup python benchmarks/tune_clue.py --tasks tnews > runs/tune-clue.log 2>&1 &

Runs ``edgekit tune`` once per (task, method) into ``OUT/<task>/<method>`` (default
``runs/tune-clue``), one after the other. Finished runs are read back, unfinished ones resumed from
their last checkpoint, so the same command continues after an interruption. After every run it
rewrites ``benchmarks/results/NAME.{md,json}`` and ``NAME_accuracy_vs_steps.png`` (``--name``,
default ``tune_clue``; the plot: dev accuracy against training steps, one line per method, Figure
8's axes).

The budget is CPU-sized and stated in the table: ``--steps`` optimizer steps of ``--batch-size``
examples (no gradient accumulation), texts cut to ``--max-length`` tokens, the first ``--dev``
dev examples, evaluated every ``--eval-every`` steps. Learning rates are A.2's (5e-5 fine-tuning,
1e-4 the others) unless ``--lr`` is given; fine-tuning keeps e5's 96M-parameter token embedding
table fixed (the rest of the model is trained), which the CPU budget needs.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.io import latest_checkpoint, read_json, versions, write_json  # noqa: E402

METHODS = ("finetune", "lora", "prompt", "option", "option-adapter")
PAPER = {  # M6-Rec Table 8, M6-Edge 10M (dev accuracy)
    "finetune": {"tnews": 0.544, "iflytek": 0.575, "csl": 0.829},
    "prompt": {"tnews": 0.534, "iflytek": 0.531, "csl": 0.760},
    "option": {"tnews": 0.544, "iflytek": 0.565, "csl": 0.813},
    "option-adapter": {"tnews": 0.552, "iflytek": 0.586, "csl": 0.831},
}
RESULTS = ROOT / "benchmarks" / "results"


def run_one(args, task: str, method: str) -> dict:
    from edgekit.tune import load_tune_config, tune

    out = Path(args.out) / task / method
    if (out / "results.json").exists():
        return read_json(out / "results.json")
    overrides = {
        "model": "e5-small",
        "task": {"name": task, "data_dir": str(Path(args.data_dir) / task), "max_length": args.max_length,
                 "max_eval_examples": args.dev},
        "tune": {"method": method, "eval_every": args.eval_every, "prompts": prompts_for(args, task, method),
                 "freeze_embeddings": method == "finetune"},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "grad_accum": 1, "save_every": args.eval_every,
                  "keep_checkpoints": 1, "log_every": 10, "seed": 0},
    }
    lr = method_lrs(args).get(method, args.lr)
    if lr:
        overrides["train"]["lr"] = lr
    cfg = load_tune_config(None, overrides)
    resume = latest_checkpoint(out) is not None
    print(f"== {task} {method} ({'resuming' if resume else 'starting'}) {datetime.datetime.now():%H:%M}", flush=True)
    return tune(cfg, out, resume=resume, command=" ".join(["python", *sys.argv]))


def prompts_for(args, task: str, method: str) -> int:
    """``--prompts``, raised to the task's class count for option methods (the last C prompts are the options)."""
    if method not in ("option", "option-adapter"):
        return args.prompts
    from edgekit.tasks import load_task

    return max(args.prompts, load_task(task, Path(args.data_dir) / task).num_labels)


def method_lrs(args) -> dict[str, float]:
    """``--method-lr prompt=3e-3,option=3e-3`` as {method: lr}; one sentence on a bad entry."""
    out = {}
    for item in filter(None, (args.method_lr or "").split(",")):
        name, _, value = item.partition("=")
        if name not in METHODS or not value:
            raise SystemExit(f"--method-lr entry {item!r} is not METHOD=LR with METHOD one of {', '.join(METHODS)}.")
        out[name] = float(value)
    return out


def write_report(args, rows: dict, command: str) -> None:
    tasks = args.tasks.split(",")
    lines = ["# Tuning methods on CLUE (M6-Rec Table 8 in miniature), teacher e5-small", "",
             f"Command: `{command}`  ", f"Date: {datetime.date.today()}; machine: {versions()['platform']}, CPU only "
             "(2 cores shared with other jobs: times are noisy)  ",
             f"Budget: {args.steps} optimizer steps of {args.batch_size} examples (no accumulation; A.2's global batch "
             f"is 128), max_length {args.max_length}, {args.prompts} soft prompts for prompt/option/option-adapter "
             f"(the last C are the options), dev = the first {args.dev} dev examples, evaluated every "
             f"{args.eval_every} steps; lr {args.lr or 'A.2 (5e-5 finetune, 1e-4 the others)'}"
             + (f", except {args.method_lr} (per method)" if args.method_lr else "")
             + " (each run's lr is in its row); fine-tuning keeps "
             "the token embedding table fixed; summary vector = masked token mean (e5's pooling); seed 0.", "",
             "| method | lr | trainable params | % of e5-small | " + " | ".join(f"{t} dev acc (last / best @step)" for t in tasks)
             + " | paper (M6-Edge) |", "|---|---:|---:|---:|" + "---:|" * len(tasks) + "---|"]
    for method in [m for m in METHODS if m in args.methods.split(",")]:
        cells, trainable, pct, lrs = [], [], [], set()
        for t in tasks:
            r = rows.get((t, method))
            if r is None:
                cells.append("(pending)")
                continue
            last = r["history"][-1]["accuracy"]
            cells.append(f"{100 * last:.2f} / {100 * r['dev_accuracy']:.2f} @{r['best_step']}")
            trainable.append(f"{r['trainable_parameters']:,}")
            pct.append(f"{r['trainable_percent']:.3f}%")
            lrs.add(f"{r['lr']:g}")
        paper = PAPER.get(method)
        paper_cell = ", ".join(f"{t} {100 * paper[t]:.1f}" for t in tasks if t in paper) if paper else "(not in Table 8)"
        # per task, in the tasks' order (the option count follows the task's classes)
        trainable, pct = " / ".join(trainable), " / ".join(pct)
        lines.append(f"| {method} | {' / '.join(sorted(lrs))} | {trainable} | {pct} | " + " | ".join(cells) + f" | {paper_cell} |")
    lines += ["", "Seconds per run: " + ", ".join(f"{t}/{m} {r['seconds']:.0f}" for (t, m), r in rows.items()), ""]
    lines += ordering_notes(rows, tasks, {t: majority_share(args, t) for t in tasks})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(RESULTS / f"{args.name}.json", {
        "command": command, "budget": {k: v for k, v in vars(args).items() if k not in ("out", "data_dir", "name")},
        "runs": {f"{t}/{m}": {k: v for k, v in r.items() if k != "task_note"} for (t, m), r in rows.items()},
        "versions": versions()})
    plot(rows, tasks, RESULTS / f"{args.name}_accuracy_vs_steps.png")


def majority_share(args, task: str) -> float:
    """The share of the most frequent label among the first ``--dev`` dev examples (what a model that
    learnt nothing scores)."""
    from collections import Counter

    from edgekit.tasks import load_task

    labels = list(load_task(task, Path(args.data_dir) / task).dev.labels)[: args.dev]
    return max(Counter(labels).values()) / len(labels)


def ordering_notes(rows: dict, tasks: list[str], majority: dict[str, float] | None = None) -> list[str]:
    """Whether the paper's ordering (option-adapter ≥ finetune > option > prompt) holds, per task; a
    comparison of two methods that both score the majority class is marked as carrying no signal."""
    out = []
    majority = majority or {}
    for t in tasks:
        acc = {m: rows[(t, m)]["history"][-1]["accuracy"] for m in METHODS if (t, m) in rows}
        if not all(m in acc for m in ("finetune", "prompt", "option", "option-adapter")):
            continue
        n = rows[(t, "finetune")]["dev_examples"]
        floor = majority.get(t, -1.0) + 0.5 / n  # accuracies are float32 counts over n examples

        def verdict(a: str, b: str, strict: bool) -> str:
            ok = acc[a] > acc[b] if strict else acc[a] >= acc[b]
            p = (acc[a] + acc[b]) / 2
            noise = 2 * math.sqrt(2 * p * (1 - p) / n)  # two standard errors of a difference of two accuracies
            if max(acc[a], acc[b]) <= floor:
                return "no signal (both at the majority class)"
            return ("yes" if ok else "NO") + (" (within noise)" if abs(acc[a] - acc[b]) < noise else "")

        checks = [("option-adapter ≥ finetune", verdict("option-adapter", "finetune", False)),
                  ("finetune > option", verdict("finetune", "option", True)),
                  ("option > prompt", verdict("option", "prompt", True))]
        within = acc["finetune"] - acc["option-adapter"] <= 0.01
        at_majority = [m for m in acc if acc[m] <= floor]
        within_note = "no signal (both at the majority class)" if max(acc["finetune"], acc["option-adapter"]) <= floor \
            else ("yes" if within else "NO")
        out.append(f"{t} (last-step accuracy, {n} dev examples; 'within noise': a gap under two standard errors): "
                   + "; ".join(f"{name}: {v}" for name, v in checks)
                   + f"; option-adapter within 1 point of finetune: {within_note}"
                   + (f"; majority class {100 * majority[t]:.2f}%, scored by: {', '.join(at_majority) or 'none'}" if t in majority
                      else "") + ".")
    return out


def plot(rows: dict, tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        for m in METHODS:
            r = rows.get((t, m))
            if r is None:
                continue
            steps = [h["step"] for h in r["history"]]
            ax.plot(steps, [100 * h["accuracy"] for h in r["history"]], marker="o", label=m)
        ax.set_title(f"{t}: dev accuracy vs training steps (e5-small)")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("dev accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="tnews")
    ap.add_argument("--methods", default="finetune,option-adapter,option,prompt,lora")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--dev", type=int, default=400)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--method-lr", default=None, help="per-method learning rates, e.g. prompt=3e-3,option=3e-3")
    ap.add_argument("--out", default=str(ROOT / "runs" / "tune-clue"))
    ap.add_argument("--name", default="tune_clue", help="results file stem in benchmarks/results")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "clue"))
    args = ap.parse_args()
    command = "python benchmarks/tune_clue.py " + " ".join(sys.argv[1:])
    method_lrs(args)
    rows = {}
    for t in args.tasks.split(","):
        for m in METHODS:
            done = Path(args.out) / t / m / "results.json"
            if done.exists():
                rows[(t, m)] = read_json(done)
    for t in args.tasks.split(","):
        for m in args.methods.split(","):
            start = time.perf_counter()
            rows[(t, m)] = run_one(args, t, m)
            print(f"   {t} {m}: dev {100 * rows[(t, m)]['dev_accuracy']:.2f} ({time.perf_counter() - start:.0f}s)",
                  flush=True)
            write_report(args, rows, command)


if __name__ == "__main__":
    main()
