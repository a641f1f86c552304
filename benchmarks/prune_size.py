"""Sparsity/size table for the paper shape (M6-Edge) before and after 80% magnitude pruning.

    python benchmarks/prune_size.py

Builds the paper's student (24 shared layers, 16 heads, hidden 768, E=128, 21,128-piece vocabulary,
no pooler), prunes every embedding and linear weight to 80% by magnitude (per tensor, as
`edgekit prune` does at the end of its schedule) and reports parameters, non-zeros, dense fp32
bytes and gzip bytes. Weights are the random initialisation: sizes and counts do not depend on
training, gzip bytes do a little.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.prune import MagnitudePruner, sparsity_report  # noqa: E402
from edgekit.student import StudentConfig, build_student  # noqa: E402

COMMAND = "python benchmarks/prune_size.py"


def main() -> dict:
    torch.manual_seed(0)
    model = build_student(StudentConfig(), vocab_size=21128, seed=0)
    with torch.no_grad():  # trained biases/LayerNorms are non-zero; make the init look like that
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.01)
    before = sparsity_report(model)["totals"]
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.update_masks(0.8)
    names = list(pruner.tensor_names)
    pruner.squash_mask()
    report = sparsity_report(model, names)
    after = report["totals"]
    worst = max(abs(t["sparsity"] - 0.8) for t in report["tensors"] if t["pruned"])
    rows = [("dense (after distillation)", before), ("80% pruned", after)]
    lines = [f"Command: `{COMMAND}`  ", f"Date: {datetime.date.today()}  ",
             "Shape: 24 layers sharing one set of weights, 16 heads, hidden 768, E=128, vocabulary 21,128, no pooler", "",
             "| model | parameters | non-zeros | dense fp32 bytes | gzip bytes | gzip ratio |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, t in rows:
        lines.append(f"| {label} | {t['parameters']:,} | {t['nonzeros']:,} | {t['dense_fp32_bytes']:,} | "
                     f"{t['gzip_fp32_bytes']:,} | {t['gzip_fp32_bytes'] / before['gzip_fp32_bytes']:.3f} |")
    lines += ["", f"Largest deviation of a pruned tensor from 0.8: {worst:.5f} (target ±0.005); "
              f"non-zeros ≤ 2.1M: {'PASS' if after['nonzeros'] <= 2_100_000 else 'MISS'}"]
    md = "\n".join(lines)
    print(md)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": COMMAND, "date": str(datetime.date.today()), "before": before, "after": after,
              "max_tensor_deviation": worst, "tensors": report["tensors"]}
    (out / "prune_size.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "prune_size.md").write_text(md + "\n")
    return result


if __name__ == "__main__":
    main()
