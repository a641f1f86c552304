"""ONNX fp32 vs dynamic int8 of the paper-shape student's ``fixed`` graphs, by exit: latency, size, op counts.

    python benchmarks/onnx_int8_shared.py [--lengths 64 128] [--exits 1 2 6 24] [--old-int8 OLD/onnx_int8.py]

The ONNX rows of ``export_latency.py`` (same student, inputs, sessions and interleaved timing, imported
from it) without the TFLite conversions and the teacher, for checking the int8 ONNX graphs alone.
``--old-int8`` adds rows quantized by another version of the ONNX int8 module (``edgekit/export/onnx.py``;
``edgekit/export/onnx_int8.py`` before the backends were reorganised, e.g. the one before shared weights
were quantized at every use: ``git show REV:edgekit/export/onnx_int8.py``).
Writes ``benchmarks/results/onnx_int8_shared.{json,md}``.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_latency as bench  # noqa: E402

OPS = ("MatMul", "MatMulInteger", "DynamicQuantizeLinear")


def ops(path) -> dict:
    graph = onnx.load(str(path)).graph
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}

    def root(name):
        while name in alias:
            name = alias[name]
        return name

    count = collections.Counter(n.op_type for n in graph.node)
    out = {op: count[op] for op in OPS}
    out["fp32_weight_MatMul"] = sum(n.op_type == "MatMul" and any(root(i) in floats for i in n.input) for n in graph.node)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128])
    parser.add_argument("--exits", type=int, nargs="+", default=[1, 2, 6, 24])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--old-int8", help="another onnx.py / onnx_int8.py whose quantize_onnx gives extra 'int8 (old)' rows")
    parser.add_argument("--out", default=str(bench.ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    from edgekit.export.graphs import export_copy
    from edgekit.export.onnx import export_onnx, graph_specs, quantize_onnx

    variants = {"int8": quantize_onnx}
    if args.old_int8:
        spec = importlib.util.spec_from_file_location("old_onnx_int8", args.old_int8)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        variants["int8 (old)"] = old.quantize_onnx
    torch.set_num_threads(1)
    student = bench._student()
    load_before = os.getloadavg()[0]
    runners, rows = {}, {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-int8-") as work:
        work = Path(work)
        for length in args.lengths:
            np_ids, np_mask = bench._inputs(length)
            feeds = {"input_ids": np_ids, "attention_mask": np_mask}
            for k in args.exits:
                with torch.no_grad():
                    reference = student(torch.from_numpy(np_ids), torch.from_numpy(np_mask), exit_layer=k).logits[-1].numpy()
                module, margs, entry = graph_specs(export_copy(student), "fixed", k, length)["model"]
                paths = {"fp32": export_onnx(module, margs, work / f"fp32-k{k}-t{length}.onnx", entry)}
                for i, (name, quantize) in enumerate(variants.items()):
                    paths[name] = Path(quantize(paths["fp32"], work / f"int8-{i}-k{k}-t{length}.onnx", "dynamic"))
                for precision, path in paths.items():
                    session = bench._onnx_session(path)
                    key = (precision, k, length)
                    runners[key] = lambda session=session, feeds=feeds: session.run(None, feeds)
                    rows[key] = {"bytes": path.stat().st_size, "ops": ops(path),
                                 "delta": float(np.abs(session.run(None, feeds)[0] - reference).max())}
                print(f"converted T={length} k={k} ({time.time() - started:.0f} s)", flush=True)
        timings = bench._measure(runners, args.rounds)
    out = [{"precision": p, "exit": k, "seq": t, "latency_ms": round(timings[(p, k, t)][0], 2),
            "cpu_ms": round(timings[(p, k, t)][1], 2), **rows[(p, k, t)]} for (p, k, t) in runners]
    command = "python benchmarks/onnx_int8_shared.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command.strip(), "rows": out, "rounds": args.rounds, "load_before": round(load_before, 2),
              "load_after": round(os.getloadavg()[0], 2), "seconds": round(time.time() - started, 1)}
    lines = [f"Command: `{result['command']}`  ",
             f"Machine: {os.cpu_count()} cores shared with other jobs (load average {result['load_before']} before, "
             f"{result['load_after']} after); batch 1, one onnxruntime thread  ", "",
             "Paper-shape student (24 shared layers, hidden 768, 80% pruned), edgekit `fixed` ONNX graph computing k "
             f"layers, dynamic int8 via `edgekit.export.onnx.quantize_onnx`. Cells: **CPU ms** (wall ms), medians "
             f"of {args.rounds} interleaved rounds (`export_latency._measure`). Ops: MatMul / MatMulInteger / MatMul "
             "still on an fp32 weight.", ""]
    for length in args.lengths:
        lines += [f"### T = {length}", "", "| precision | exit | latency | MB | MatMul | MatMulInteger | fp32-weight MatMul | "
                  "max abs Δlogit |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in out:
            if r["seq"] == length:
                o = r["ops"]
                lines.append(f"| {r['precision']} | {r['exit']} | **{r['cpu_ms']:.1f}** ({r['latency_ms']:.1f}) | "
                             f"{r['bytes'] / 1e6:.1f} | {o['MatMul']} | {o['MatMulInteger']} | {o['fp32_weight_MatMul']} | "
                             f"{r['delta']:.1e} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    Path(args.out, "onnx_int8_shared.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out, "onnx_int8_shared.md").write_text(text)


if __name__ == "__main__":
    main()
