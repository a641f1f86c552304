"""Does Intel Neural Compressor's int8 make the PyTorch student faster on this CPU?

    python benchmarks/inc_latency.py

The 80%-pruned paper-shape student (as in export_latency.py) at exit 6, T = 64, batch 1, one
thread: fp32 eager and ``torch.compile``d, and INC 3.10 int8 (``edgekit.quantize.inc``: PT2E,
dynamic and static) as the QDQ graph INC returns (eager) and compiled with Inductor with
``freezing`` on (INC's advice: the int8 weights become constants and the QDQ patterns become
oneDNN int8 kernels). Timed like export_latency.py: interleaved rounds, CPU and wall time.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from export_latency import _inputs, _measure, _student  # noqa: E402

from edgekit.quantize import agreement  # noqa: E402
from edgekit.quantize.inc import ExitLogits, quantize_classifier  # noqa: E402

COMMAND = "python benchmarks/inc_latency.py"
EXIT, LENGTH, ROUNDS = 6, 64, 5


def main() -> dict:
    import torch._inductor.config as inductor

    torch.set_num_threads(1)
    inductor.freezing = True
    student = _student()
    ids, mask = (torch.from_numpy(a) for a in _inputs(LENGTH))
    calibration = [(torch.cat([ids, ids.flip(1)]), torch.cat([mask, mask]))]  # torch.export needs 2+ rows
    fp32 = ExitLogits(student, EXIT).eval()
    modules, notes = {"fp32 eager": fp32}, {}
    started = time.time()
    with torch.no_grad():
        reference = fp32(ids, mask).numpy()
        for approach in ("dynamic", "static"):
            start = time.time()
            q = quantize_classifier(student, approach, calibration, exit_layer=EXIT)
            notes[f"INC {approach} quantize s"] = round(time.time() - start, 1)
            modules[f"INC {approach} int8, QDQ eager"] = q
            start = time.time()
            compiled = torch.compile(q)
            compiled(ids, mask)
            notes[f"INC {approach} compile s"] = round(time.time() - start, 1)
            modules[f"INC {approach} int8, compiled"] = compiled
        compiled = torch.compile(fp32)
        compiled(ids, mask)
        modules["fp32 compiled"] = compiled
        deltas = {name: agreement(reference, m(ids, mask).numpy())["max_abs_error"] for name, m in modules.items()}
        timings = _measure({name: (lambda m=m: m(ids, mask)) for name, m in modules.items()}, ROUNDS)
    rows = [{"variant": name, "cpu_ms": round(cpu, 2), "wall_ms": round(wall, 2), "max_abs_diff_vs_fp32": deltas[name]}
            for name, (wall, cpu) in timings.items()]
    base = timings["fp32 compiled"][1]
    lines = [f"Command: `{COMMAND}`  ", f"Date: {datetime.date.today()}  ",
             f"Machine: {os.cpu_count()} cores, shared (load average {os.getloadavg()[0]:.2f}); batch 1, one thread; "
             f"student 80% pruned, exit {EXIT}, T = {LENGTH}; medians of {ROUNDS} interleaved rounds", "",
             "| variant | CPU ms | wall ms | fp32 compiled / this (CPU) | max abs Δlogit vs fp32 |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['cpu_ms']:.1f} | {r['wall_ms']:.1f} | {base / r['cpu_ms']:.2f} | "
                     f"{r['max_abs_diff_vs_fp32']:.1e} |")
    lines += ["", "Quantize and compile seconds: " + ", ".join(f"{k} {v}" for k, v in notes.items())]
    md = "\n".join(lines) + "\n"
    print(md)
    result = {"command": COMMAND, "date": str(datetime.date.today()), "exit": EXIT, "seq": LENGTH, "rows": rows,
              "seconds": notes, "total_seconds": round(time.time() - started, 1)}
    out = ROOT / "benchmarks" / "results"
    (out / "inc_latency.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "inc_latency.md").write_text(md, encoding="utf-8")
    return result


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
