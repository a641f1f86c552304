"""Option-adapter on ALBERT's shared layer: one adapter per depth or one for all depths (issue #13).

    nohup nice -n 10 .venv/bin/python benchmarks/tune_albert_sharing.py > runs/tune-albert-sharing.log 2>&1 &

An ALBERT student applies one layer L times, so ``tune.adapter_sharing`` either gives each of
the L applications its own FFN adapter (``per-depth``, the default) or all of them one adapter
(``shared``). This runs three arms of ``edgekit.tune.tune`` on TNEWS with the same budget into
``OUT/<arm>`` (default ``runs/tune-albert-sharing``): option-adapter per-depth, option-adapter
shared, and plain option tuning (no adapter), the baseline every ratio is taken against. Finished
arms are read back, unfinished ones resumed from their last checkpoint; after each arm it
rewrites ``benchmarks/results/NAME.{md,json}`` (``--name``; ``--smoke`` writes to ``--out``
instead, for a quick check that the script works).

Seconds per step are training steps only: every step is logged (``log_every`` 1) with its
tokens/s, the benchmark replays the same deterministic batches to count each step's tokens, and
the median of tokens_i / (tokens/s)_i leaves out the steps that also ran an evaluation or wrote a
checkpoint. Arms run one after the other on a shared machine, so times are noisy.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.io import latest_checkpoint, read_json, versions, write_json  # noqa: E402

ARMS = {  # arm -> (method, adapter_sharing)
    "option": ("option", None),
    "per-depth": ("option-adapter", "per-depth"),
    "shared": ("option-adapter", "shared"),
}
BASELINE = "option"
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_MODEL = ROOT / "runs" / "m6-edge-cpu" / "distill" / "checkpoints" / "step-0000125" / "model"


def overrides(args, arm: str) -> dict:
    method, sharing = ARMS[arm]
    tune = {"method": method, "eval_every": args.eval_every, "prompts": args.prompts}
    if sharing:
        tune["adapter_sharing"] = sharing
    return {
        "model": str(args.model),
        "task": {"name": "tnews", "data_dir": str(args.data_dir), "max_length": args.max_length,
                 "max_eval_examples": args.dev},
        "tune": tune,
        # log_every 1: each step's tokens/s, from which seconds per training step are recovered
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "grad_accum": 1, "lr": args.lr,
                  "save_every": args.eval_every, "keep_checkpoints": 1, "log_every": 1, "seed": 0},
    }


def run_arm(args, arm: str, command: str) -> dict:
    from edgekit.tune import load_tune_config, tune

    out = Path(args.out) / arm
    if (out / "results.json").exists():
        return read_json(out / "results.json")
    cfg = load_tune_config(None, overrides(args, arm))
    resume = latest_checkpoint(out) is not None
    print(f"== {arm} ({'resuming' if resume else 'starting'}) {datetime.datetime.now():%H:%M}", flush=True)
    return tune(cfg, out, resume=resume, command=command)


def step_tokens(args) -> list[int]:
    """Text tokens (attention-mask sum) of each training step, replaying the run's batches: the same
    seed, batch size and data order as ``edgekit.tune`` (``ResumableBatches``), so every arm sees them."""
    from edgekit.checkpoint import load_tokenizer
    from edgekit.data import ResumableBatches
    from edgekit.tasks import load_task

    task = load_task("tnews", args.data_dir)
    tokenizer = load_tokenizer(args.model)
    batches = ResumableBatches(len(task.train), args.batch_size, 0)
    out = []
    for _ in range(args.steps):
        texts = [task.train.texts[i] for i in batches.next()]
        out.append(sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]))
    return out


def seconds_per_step(metrics_path: Path, tokens: list[int]) -> float | None:
    """Median over logged steps i of tokens_i / (tokens/s)_i: the training step's own time, the
    median leaving out the few steps that also evaluated or checkpointed."""
    import json

    if not metrics_path.exists():
        return None
    per_step = {}
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "tokens_per_s" in rec and 1 <= rec["step"] <= len(tokens) and rec["tokens_per_s"] > 0:
            per_step[rec["step"]] = tokens[rec["step"] - 1] / rec["tokens_per_s"]
    return statistics.median(per_step.values()) if per_step else None


def majority_share(args) -> tuple[float, int]:
    """The share of the most frequent class among the evaluated dev examples (what a constant guess scores)."""
    from collections import Counter

    from edgekit.tasks import load_task

    labels = load_task("tnews", args.data_dir).dev.labels[:args.dev]
    return Counter(labels).most_common(1)[0][1] / len(labels), len(labels)


def summarize(args, arm: str, r: dict, tokens: list[int]) -> dict:
    last = r["history"][-1]["accuracy"]
    return {"arm": arm, "method": r["method"], "adapter_count": r.get("adapter_count"),
            "adapter_rank": r.get("adapter_rank"), "trainable": r["trainable_parameters"],
            "trainable_percent": r["trainable_percent"], "base": r["base_parameters"],
            "task_file_bytes": r["task_file_bytes"], "base_bytes": r["base_bytes"],
            "s_per_step": seconds_per_step(Path(args.out) / arm / "metrics.jsonl", tokens),
            "run_seconds": r["seconds"], "acc_last": last, "acc_best": r["dev_accuracy"], "best_step": r["best_step"],
            "history": r["history"], "lr": r["lr"], "prompts": r["prompts"], "dev_examples": r["dev_examples"]}


def write_report(args, rows: dict, tokens: list[int], command: str, dest: Path, name: str) -> None:
    s = {arm: summarize(args, arm, r, tokens) for arm, r in rows.items()}
    base = s.get(BASELINE)
    majority, n_dev = majority_share(args)

    def ratio(arm, key):
        if base is None or not base[key] or s[arm][key] is None:
            return "n/a"
        return f"{s[arm][key] / base[key]:.2f}×"

    any_row = next(iter(s.values()), None)
    lines = ["# Option-adapter on ALBERT's shared layer: one adapter per depth vs one shared (TNEWS)", "",
             f"Command: `{command}`  ",
             f"Date: {datetime.date.today()}; machine: {versions()['platform']}, CPU only, 1 torch thread, `nice`; "
             "2 cores shared with other training jobs, arms run one after the other: times are noisy.  ",
             f"Model: `{args.model}` — the paper-shape ALBERT student (one shared layer applied 24 times, hidden "
             "768, 16 heads, so adapter rank r = 768/16 = 48) after only 125 distillation steps. **It is an "
             "undertrained student**: accuracies here sit between chance (1/15) and the majority class and say "
             "little about which sharing tunes better; the parameter counts and file sizes are the solid part.  ",
             f"Budget (each arm the same): {args.steps} optimizer steps of {args.batch_size} examples, max_length "
             f"{args.max_length}, {args.prompts} soft prompts (the last 15 are the options), lr {args.lr:g}, seed 0, "
             f"dev = the first {n_dev} TNEWS dev examples, evaluated every {args.eval_every} steps. Majority class "
             f"of those dev examples: {100 * majority:.2f}%.", "",
             "| arm | adapters | trainable params | % of base | × option | task file bytes | × option "
             "| s/step (train) | × option | dev acc last | dev acc best @step | Δ last vs option (points) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arm in ARMS:
        if arm not in s:
            lines.append(f"| {arm} | (pending) |" + " |" * 10)
            continue
        r = s[arm]
        adapters = f"{r['adapter_count']} × r {r['adapter_rank']}" if r["adapter_count"] else "none"
        sps = f"{r['s_per_step']:.2f}" if r["s_per_step"] is not None else "n/a"
        delta = f"{100 * (r['acc_last'] - base['acc_last']):+.2f}" if base else "n/a"
        lines.append(f"| {arm} | {adapters} | {r['trainable']:,} | {r['trainable_percent']:.3f}% | "
                     f"{ratio(arm, 'trainable')} | {r['task_file_bytes']:,} | {ratio(arm, 'task_file_bytes')} | "
                     f"{sps} | {ratio(arm, 's_per_step')} | {100 * r['acc_last']:.2f} | "
                     f"{100 * r['acc_best']:.2f} @{r['best_step']} | {delta} |")
    if any_row:
        lines += ["", f"Base: {any_row['base']:,} parameters, {any_row['base_bytes']:,} bytes of safetensors. "
                  "Seconds per step: the median over steps of each step's tokens over its logged tokens/s "
                  "(steps that evaluated or checkpointed drop out in the median). Whole-run seconds (with evaluations): "
                  + ", ".join(f"{a} {r['run_seconds']:.0f}" for a, r in s.items())
                  + " (a resumed arm counts only its last stretch).",
                  "", "Dev accuracy by step: " + "; ".join(
                      f"{a}: " + ", ".join(f"{h['step']}→{100 * h['accuracy']:.1f}" for h in r["history"])
                      for a, r in s.items())]
    if "per-depth" in s and "shared" in s:
        pd, sh = s["per-depth"], s["shared"]
        per_adapter = (pd["trainable"] - (base["trainable"] if base else 0)) / pd["adapter_count"] if base else None
        lines += ["", f"Per-depth adapters carry {pd['trainable'] / sh['trainable']:.1f}× the trainable parameters of "
                  f"one shared adapter ({pd['trainable_percent']:.2f}% vs {sh['trainable_percent']:.2f}% of the base)"
                  + (f"; one adapter is {per_adapter:,.0f} parameters" if per_adapter else "") + "."]
    lines += ["", "Both sharings do the same work per step (the adapter runs at each of the L applications either "
              "way; per token and depth it adds 2·d·r multiply-adds beside the FFN's 2·d·4d, r/4d of it), so their "
              "step times should match; differences in the s/step column come from the load of the other jobs on "
              "the machine, which changed between arms. What sharing changes is the task's size: parameters, file "
              "bytes and optimizer state."]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(dest / f"{name}.json", {
        "command": command, "date": str(datetime.date.today()),
        "budget": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                   if k not in ("out", "name", "smoke")},
        "majority_class_share": majority, "dev_examples": n_dev, "arms": s, "versions": versions()})
    print((dest / f"{name}.md").read_text(encoding="utf-8"), flush=True)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "clue" / "tnews")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--dev", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", default=str(ROOT / "runs" / "tune-albert-sharing"))
    ap.add_argument("--name", default="tune_albert_sharing", help="results file stem")
    ap.add_argument("--smoke", action="store_true", help="write the results into --out, not benchmarks/results")
    args = ap.parse_args()
    arms = args.arms.split(",")
    if any(a not in ARMS for a in arms):
        raise SystemExit(f"--arms takes a comma-separated list of {', '.join(ARMS)}, got {args.arms!r}.")
    if not (args.model / "config.json").exists():
        raise SystemExit(f"--model {args.model} has no config.json; point it at a saved ALBERT student's model "
                         "directory (e.g. runs/<run>/distill/checkpoints/step-N/model).")
    torch.set_num_threads(1)
    command = "python benchmarks/tune_albert_sharing.py " + " ".join(sys.argv[1:])
    dest = Path(args.out) if args.smoke else RESULTS
    tokens = step_tokens(args)
    rows = {a: read_json(Path(args.out) / a / "results.json") for a in ARMS
            if (Path(args.out) / a / "results.json").exists()}
    for arm in [a for a in ARMS if a in arms]:  # the baseline first
        start = time.perf_counter()
        r = run_arm(args, arm, command)
        if r.get("interrupted"):
            raise SystemExit(f"arm {arm} was interrupted at step {r['step']}; run the same command again to resume.")
        rows[arm] = r
        print(f"   {arm}: dev {100 * r['dev_accuracy']:.2f} ({time.perf_counter() - start:.0f}s)", flush=True)
        write_report(args, rows, tokens, command, dest, args.name)


if __name__ == "__main__":
    main()
