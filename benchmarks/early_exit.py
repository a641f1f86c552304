"""Speed and accuracy by exit layer (M6-Rec section 3.5: "some low-end devices can only afford one or two
layers while other high-end ones may use more").

    python benchmarks/early_exit.py latency                      # paper shape, random weights
    python benchmarks/early_exit.py accuracy --model CLASSIFIER_DIR --task sentiment [--data-dir DIR] [--name NAME]

``latency``: the paper-shape classifier (24 shared layers, hidden 768, 16 heads, E=128, vocabulary
21,128, 15 labels) on CPU, per exit layer, batch 1 and batch 32, sequence length 64; layers above
the exit are never computed (``EarlyExitClassifier.predict``). Ratio = full-depth time / exit time.

``accuracy``: accuracy of a fine-tuned early-exit classifier at every exit layer (PNG plot), and
dynamic exits (PABEE patience, DeeBERT entropy) batched, per example: speedup against full depth
measured as wall time in the same run, at the accuracy it reaches.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

from edgekit.early_exit import EarlyExitClassifier  # noqa: E402
from edgekit.student import StudentConfig, build_student  # noqa: E402


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best.append(time.perf_counter() - start)
    best.sort()
    return best[len(best) // 2]  # median


def latency(args) -> dict:
    torch.manual_seed(0)
    clf = EarlyExitClassifier.from_student(build_student(StudentConfig(), 21128, pooler=True, seed=0), 15).eval()
    seq = args.seq
    rows = []
    for batch in (1, 32):
        ids = torch.randint(5, 21128, (batch, seq))
        mask = torch.ones_like(ids)
        full = None
        for k in sorted(set(args.exits + [24]), reverse=True):
            t = _time(lambda: clf.predict(ids, mask, exit_layer=k), args.repeats if batch == 1 else max(2, args.repeats // 4))
            full = t if k == 24 else full
            rows.append({"batch": batch, "exit_layer": k, "ms": round(t * 1000, 2), "speedup_vs_full": round(full / t, 2)})
    rows.sort(key=lambda r: (r["batch"], r["exit_layer"]))
    lines = [f"Command: `{' '.join(['python', 'benchmarks/early_exit.py'] + sys.argv[1:])}`  ",
             f"Date: {datetime.date.today()}; torch {torch.__version__}, {torch.get_num_threads()} threads, seq {seq}, "
             "paper shape (24 shared layers, hidden 768, 16 heads, E=128, vocab 21,128), PyTorch fp32 eager", "",
             "| batch | exit layer | latency ms (median) | speedup vs 24 layers |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['exit_layer']} | {r['ms']} | {r['speedup_vs_full']}× |" for r in rows]
    md = "\n".join(lines)
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"command": lines[0], "date": str(datetime.date.today()), "threads": torch.get_num_threads(),
              "seq": seq, "rows": rows}
    (RESULTS / "early_exit_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "early_exit_latency.md").write_text(md + "\n")
    return result


def accuracy(args) -> dict:
    from transformers import AutoTokenizer

    clf = EarlyExitClassifier.from_pretrained(args.model).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    from edgekit.tasks import load_task

    label2id = {str(k): v for k, v in clf.model.config.label2id.items()}
    task = load_task(args.task, args.data_dir)
    n = len(task.dev) if args.limit is None else min(args.limit, len(task.dev))
    texts = task.dev.texts[:n]
    y = torch.tensor([label2id[task.labels[v]] for v in task.dev.labels[:n]])
    if args.max_length is None:  # the length the model was fine-tuned with
        from edgekit.checkpoint import default_max_length

        args.max_length = default_max_length(args.model)
    # batches of 32 texts of similar length, each padded to its own longest (as a server batches), so neither
    # full depth nor dynamic exit spends its time on padding
    order = sorted(range(n), key=lambda i: len(tok(texts[i], truncation=True, max_length=args.max_length)["input_ids"]))
    y = y[order]
    batches = []
    for i in range(0, n, 32):
        enc = tok([texts[j] for j in order[i:i + 32]], padding=True, truncation=True, max_length=args.max_length,
                  return_tensors="pt")
        batches.append((enc["input_ids"], enc["attention_mask"]))
    depth = clf.depth

    def run_fixed(k):
        return torch.cat([clf.predict(i, m, exit_layer=k) for i, m in batches])

    def timed(fn):
        start = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - start

    # one timed pass per setting, each also its accuracy pass (a pass is seconds long on a real dev split)
    run_fixed(1)  # warm-up
    per_exit = []
    for k in range(1, depth + 1):
        pred, seconds = timed(lambda: run_fixed(k))
        per_exit.append({"exit_layer": k, "accuracy": float((pred == y).float().mean()), "seconds": round(seconds, 3)})
        print(f"early exit {args.task}: exit {k}/{depth}: accuracy {100 * per_exit[-1]['accuracy']:.2f}", flush=True)
    full_times = [per_exit[-1]["seconds"]]  # timed again mid-way and at the end: the ratio's baseline is their median
    full_acc = per_exit[-1]["accuracy"]
    dynamic = []
    # entropy thresholds as shares of the largest possible entropy, ln C: the same settings mean the same
    # confidence on CSL (2 classes) and IFLYTEK (119), where a fixed 0.5 nats never exits
    max_entropy = math.log(clf.model.config.num_labels)
    settings = [("patience", {"patience": p}) for p in (1, 2, 3, 4)] + \
               [("entropy", {"entropy_threshold": round(f * max_entropy, 4)}) for f in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)]
    for n_setting, (mode, kw) in enumerate(settings):
        if n_setting == len(settings) // 2:
            full_times.append(timed(lambda: run_fixed(depth))[1])
        out, t = timed(lambda: [clf.predict_dynamic(i, m, mode=mode, **kw) for i, m in batches])
        pred = torch.cat([o[0] for o in out])
        layers = torch.cat([o[1] for o in out]).float()
        dynamic.append({"mode": mode, **kw, "accuracy": float((pred == y).float().mean()),
                        "mean_exit_layer": float(layers.mean()), "seconds": t})
        print(f"early exit {args.task}: {mode} {next(iter(kw.values()))}: accuracy {100 * dynamic[-1]['accuracy']:.2f}, "
              f"{t:.2f} s", flush=True)
    full_times.append(timed(lambda: run_fixed(depth))[1])
    full_time = sorted(full_times)[1]
    for d in dynamic:
        d["speedup_vs_full"] = round(full_time / d.pop("seconds"), 2)
    ok = [d for d in dynamic if d["accuracy"] >= full_acc - 0.01]
    best = max(ok, key=lambda d: d["speedup_vs_full"]) if ok else None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["exit_layer"] for r in per_exit], [100 * r["accuracy"] for r in per_exit], marker="o")
    ax.set_xlabel("exit layer")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy per exit layer: {Path(args.model).name}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_dir = Path(getattr(args, "out_dir", None) or RESULTS)
    name = getattr(args, "name", None) or "early_exit_accuracy"
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{name}.png", dpi=120)
    plt.close(fig)
    cmd = getattr(args, "command", None) or " ".join(["python", "benchmarks/early_exit.py"] + sys.argv[1:])
    lines = [f"Command: `{cmd}`  ", f"Date: {datetime.date.today()}; {len(texts)} dev examples of task {args.task}; "
             "batch 32 of similar length, each padded to its longest; one timed pass per row, against the median of 3 "
             "full-depth passes (first, middle, last); "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads", "",
             "| exit layer | accuracy |", "|---:|---:|"]
    lines += [f"| {r['exit_layer']} | {100 * r['accuracy']:.2f} |" for r in per_exit]
    lines += ["", "| dynamic exit | accuracy | mean exit layer | speedup vs full depth (wall, batched) |",
              "|---|---:|---:|---:|"]
    for d in dynamic:
        setting = f"patience {d['patience']}" if d["mode"] == "patience" else \
            f"entropy < {d['entropy_threshold']} ({d['entropy_threshold'] / max_entropy:.2f} ln C)"
        lines.append(f"| {setting} | {100 * d['accuracy']:.2f} | {d['mean_exit_layer']:.2f} | {d['speedup_vs_full']}× |")
    verdict = (f"best within 1 point of full depth ({100 * full_acc:.2f}): {best['mode']} "
               f"{best.get('patience', best.get('entropy_threshold'))} at {best['speedup_vs_full']}× "
               f"({'PASS' if best['speedup_vs_full'] >= 1.5 else 'MISS'} against 1.5×)") if best else "no setting within 1 point"
    lines += ["", verdict]
    md = "\n".join(lines)
    print(md)
    result = {"command": cmd, "date": str(datetime.date.today()), "per_exit": per_exit, "dynamic": dynamic,
              "best": best, "full_depth_accuracy": full_acc, "full_depth_seconds": [round(x, 3) for x in full_times]}
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(md + "\n")
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--seq", type=int, default=64)
    lat.add_argument("--exits", type=int, nargs="+", default=[1, 2, 4, 6, 12, 18])
    lat.add_argument("--repeats", type=int, default=8)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--model", required=True)
    acc.add_argument("--task", required=True)
    acc.add_argument("--data-dir", default=None)
    acc.add_argument("--max-length", type=int, default=None, help="default: the model's fine-tuning length")
    acc.add_argument("--limit", type=int, default=None)
    acc.add_argument("--name", default="early_exit_accuracy", help="output file stem (one per model and task)")
    acc.add_argument("--out-dir", default=None, help="default: benchmarks/results")
    args = p.parse_args()
    latency(args) if args.what == "latency" else accuracy(args)


if __name__ == "__main__":
    main()
