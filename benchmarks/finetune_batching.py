"""Token positions per fine-tuning step on TNEWS: padding to max_length, dynamic padding, and dynamic
padding with length-bucketed batches (``edgekit.finetune.batching``).

    python benchmarks/finetune_batching.py [--data-dir ../shared/data/clue] [--tokenizer DIR]

Counts, over one epoch of the official TNEWS train set (53,360 titles) at max length 128 and batch
32, the token positions the model computes per step (batch × padded width) and the real tokens among
them. No model runs: the ratio is what the encoder's cost scales with (attention a little more than
linearly). Target: bucketed ≤ 0.7 × dynamic padding of random batches, measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.finetune.batching import bucketed_order, padded_tokens  # noqa: E402

TARGET = 0.7


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "clue"))
    ap.add_argument("--tokenizer", default=str(ROOT.parent / "shared" / "data" / "vocab" / "bert-base-chinese"),
                    help="a tokenizer directory (default: bert-base-chinese's WordPiece, ~1 token per character)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--pool-batches", type=int, default=50)
    args = ap.parse_args()
    from transformers import AutoTokenizer, BertTokenizerFast

    from edgekit.tasks import load_task

    task = load_task("tnews", Path(args.data_dir) / "tnews")
    plain_vocab = not (Path(args.tokenizer) / "tokenizer.json").exists() and (Path(args.tokenizer) / "vocab.txt").exists()
    tok = (BertTokenizerFast if plain_vocab else AutoTokenizer).from_pretrained(args.tokenizer)
    lengths = [len(ids) for ids in tok(task.train.texts, truncation=True, max_length=args.max_length)["input_ids"]]
    b = args.batch_size
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    random_batches = [order[i:i + b] for i in range(0, len(order) - b + 1, b)]
    bucketed = bucketed_order(lengths, b, args.pool_batches, seed=0)
    steps = len(random_batches)
    real = sum(lengths[i] for batch in random_batches for i in batch)
    rows = {"pad to max_length": steps * b * args.max_length,
            "dynamic padding, random batches": padded_tokens(random_batches, lengths),
            f"dynamic padding, length-bucketed (pools of {args.pool_batches})": padded_tokens(bucketed, lengths)}
    base = rows["dynamic padding, random batches"]
    bucket_key = list(rows)[-1]
    ratio = rows[bucket_key] / base
    cmd = "python benchmarks/finetune_batching.py" + "".join(f" {a}" for a in sys.argv[1:])
    lines = [f"Command: `{cmd}`  ", f"Date: {datetime.date.today()}; TNEWS train ({len(lengths):,} titles), tokenizer "
             f"`{Path(args.tokenizer).name}`, max length {args.max_length}, batch {b}, {steps:,} steps", "",
             "| batching | token positions per step | real tokens share | vs random dynamic |", "|---|---:|---:|---:|"]
    real_per_step = real / steps
    for name, total in rows.items():
        lines.append(f"| {name} | {total / steps:,.0f} | {real_per_step / (total / steps):.1%} | {total / base:.2f}× |")
    lines += ["", f"Real tokens per step: {real_per_step:,.0f}. Length-bucketed / random: {ratio:.2f} "
              f"({'PASS' if ratio <= TARGET else 'MISS'} against ≤ {TARGET})."]
    md = "\n".join(lines) + "\n"
    print(md)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "finetune_batching.md").write_text(md, encoding="utf-8")
    data = {"command": cmd, "date": str(datetime.date.today()), "steps": steps, "real_tokens_per_step": real_per_step,
            "positions_per_step": {k: v / steps for k, v in rows.items()}, "bucketed_over_random": round(ratio, 4),
            "target": TARGET, "pass": ratio <= TARGET}
    (results / "finetune_batching.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return data


if __name__ == "__main__":
    main()
