"""Latency and size of the exported paper-shape student: PyTorch, ONNX and TFLite, fp32 and int8, by exit.

    python benchmarks/export_latency.py [--quick] [--peer-python PEER/bin/python]

Models (random weights: latency and size do not depend on training):

- student: M6-Edge, 24 layers sharing one set of weights, 16 heads, hidden 768, E=128, vocabulary
  21,128, pooler, 15 labels, every embedding and linear weight pruned to 80% by magnitude
  (``edgekit.prune.MagnitudePruner``);
- teacher: a BERT-large-shaped fp32 encoder (24 layers, hidden 1024, 16 heads, intermediate
  4096), PyTorch, full depth: the cloud model the paper compresses from.

Each student format is measured at exits 1, 2, 6 and 24 (``fixed`` graphs computing exactly k
layers): PyTorch fp32 (``EarlyExitClassifier.predict``), ONNX fp32 and dynamic int8 (edgekit's
ONNX graphs + onnxruntime.quantization), TFLite fp32, dynamic int8 and full int8 (litert-torch +
ai-edge-quantizer, full int8 calibrated on 8 CLUE TNEWS sentences). Full int8 twice: today's
graphs (``int8_ops="fully-connected"``: int8 activations at every FULLY_CONNECTED, the rest float32)
and, as ``int8-full-all (before)``, the all-int8 graphs edgekit wrote before (``int8_ops="all"``).
At T=128, full depth, the TFLite graphs are also profiled: the top native functions by share of
``perf`` samples (when ``perf`` is installed) and the ops XNNPACK leaves to TFLite's builtin
kernels (``edgekit.export.tflite.xnnpack_fallbacks``). Batch 1, one thread
everywhere, the same input (a sequence of exactly T tokens, T = 64 and 128) for every runtime, all
in one process: everything is converted first, then timed in interleaved rounds (``_measure``),
reporting CPU and wall time. With ``--peer-python``, Hugging Face Optimum's ONNX export of the same
student (full depth) and its ORT dynamic int8 are timed alongside (``benchmarks/optimum_peer.py``
exports them in its own environment: see its docstring for why).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from edgekit.early_exit import EarlyExitClassifier  # noqa: E402
from edgekit.export.tflite import (calibration_inputs_from_texts, export_tflite, quantize_tflite,  # noqa: E402
                                   xnnpack_fallbacks)
from edgekit_device.tflite_backend import TFLiteBackend  # noqa: E402
from edgekit.prune import MagnitudePruner  # noqa: E402
from edgekit.student import StudentConfig, build_student  # noqa: E402

VOCAB = ROOT.parent / "shared" / "data" / "vocab" / "bert-base-chinese"
EXITS, LENGTHS, RUNS = (1, 2, 6, 24), (64, 128), 5
QUICK_EXITS, QUICK_LENGTHS, QUICK_RUNS = (2, 24), (64,), 3


def _measure(runners: dict, rounds: int, warmup: int = 2) -> dict:
    """Median wall and CPU milliseconds of every runner, measured in interleaved rounds.

    Each round calls every runner once, in an order shuffled per round, so that load from other
    processes on a shared machine falls on all runners alike instead of on whichever ran during a
    busy minute. CPU time is the process's: every runtime runs on one thread, so it is the
    latency an idle core would give.
    """
    rng = np.random.default_rng(0)
    names = list(runners)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for r in range(warmup + rounds):
        for i in rng.permutation(len(names)):
            name = names[i]
            w, c = time.perf_counter(), time.process_time()
            runners[name]()
            if r >= warmup:
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)
    return {n: (statistics.median(wall[n]) * 1000, statistics.median(cpu[n]) * 1000) for n in names}


def _student() -> EarlyExitClassifier:
    student = build_student(StudentConfig(), vocab_size=21128, pooler=True, seed=0)
    model = EarlyExitClassifier.from_student(student, num_labels=15).eval()
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.update_masks(0.8)
    pruner.squash_mask()
    return model


def _teacher():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=21128, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                intermediate_size=4096), add_pooling_layer=True).eval()


def _inputs(length: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(length)
    ids = rng.integers(672, 21128, (1, length)).astype(np.int64)  # ordinary pieces of bert-base-chinese
    ids[0, 0], ids[0, -1] = 101, 102  # [CLS] ... [SEP]
    return ids, np.ones_like(ids)


def _gzip_bytes(paths) -> int:
    return sum(len(gzip.compress(Path(p).read_bytes(), 6)) for p in paths)


def _onnx_session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export_onnx(model, exit_layer: int, length: int, work: Path) -> dict[str, Path]:
    """edgekit's fixed ONNX graph (export/BUNDLE.md) in fp32 and dynamic int8."""
    from edgekit.export.graphs import export_copy
    from edgekit.export.onnx import export_onnx, graph_specs, quantize_onnx

    module, args, entry = graph_specs(export_copy(model), "fixed", exit_layer, length)["model"]
    fp32 = export_onnx(module, args, work / f"onnx-k{exit_layer}-t{length}.onnx", entry)
    int8 = quantize_onnx(fp32, work / f"onnx-int8-k{exit_layer}-t{length}.onnx", "dynamic")
    return {"fp32": fp32, "int8": Path(int8)}


def run(quick: bool, peer_python: str | None, work: Path) -> dict:
    from transformers import BertTokenizer

    from conftest import clue_sentences

    exits, lengths, rounds = (QUICK_EXITS, QUICK_LENGTHS, QUICK_RUNS) if quick else (EXITS, LENGTHS, RUNS)
    torch.set_num_threads(1)
    student = _student()
    teacher = _teacher()
    tokenizer = BertTokenizer.from_pretrained(VOCAB)
    calibration_texts = clue_sentences(8)
    started = time.time()

    # 1. convert everything; a runner is a no-argument call of one runtime on the timed input
    runners, rows, profile_paths = {}, {}, {}
    logit_scale = 0.0
    peer = _peer(student, peer_python, work) if peer_python else None
    for length in lengths:
        np_ids, np_mask = _inputs(length)
        ids, mask = torch.from_numpy(np_ids), torch.from_numpy(np_mask)
        feeds32 = {"input_ids": np_ids.astype(np.int32), "attention_mask": np_mask.astype(np.int32)}
        calibration = calibration_inputs_from_texts(tokenizer, calibration_texts, length)

        def teacher_call(ids=ids, mask=mask):
            with torch.no_grad():
                teacher(input_ids=ids, attention_mask=mask)

        key = ("teacher (BERT-large shape)", "pytorch", "fp32", 24, length)
        runners[key], rows[key] = teacher_call, {}
        for k in exits:
            with torch.no_grad():
                reference = student(ids, mask, exit_layer=k).logits[-1].numpy()
            logit_scale = max(logit_scale, float(np.abs(reference).max()))
            key = ("student 80% pruned", "pytorch", "fp32", k, length)
            runners[key] = lambda ids=ids, mask=mask, k=k: student.predict(ids, mask, exit_layer=k)
            rows[key] = {}

            for precision, path in _export_onnx(student, k, length, work).items():
                session = _onnx_session(path)
                feeds = {"input_ids": np_ids, "attention_mask": np_mask}
                key = ("student 80% pruned", "onnx", precision, k, length)
                runners[key] = lambda session=session, feeds=feeds: session.run(None, feeds)
                rows[key] = {"files": [path], "gzip": k == exits[-1],
                             "delta": np.abs(session.run(None, feeds)[0] - reference).max()}

            fp32 = export_tflite(student, work / f"tflite-fp32-k{k}-t{length}", exit_layer=k, max_length=length)
            dynamic = work / f"tflite-int8-dynamic-k{k}-t{length}.tflite"  # what int8="dynamic" would convert again
            dynamic.write_bytes(quantize_tflite(fp32.files[0].read_bytes(), "dynamic"))
            full = export_tflite(student, work / f"tflite-full-k{k}-t{length}", exit_layer=k, max_length=length,
                                 int8="full", calibration_inputs=calibration)
            full_all = export_tflite(student, work / f"tflite-full-all-k{k}-t{length}", exit_layer=k,
                                     max_length=length, int8="full", calibration_inputs=calibration, int8_ops="all")
            for precision, path in (("fp32", fp32.files[0]), ("int8-dynamic", dynamic), ("int8-full", full.files[0]),
                                    (BEFORE, full_all.files[0])):
                graph = TFLiteBackend(path, num_threads=1)
                key = ("student 80% pruned", "tflite", precision, k, length)
                runners[key] = lambda graph=graph, feeds32=feeds32: graph.run(feeds32)
                rows[key] = {"files": [path], "gzip": k == exits[-1],
                             "delta": np.abs(graph.run(feeds32)["logits"] - reference).max()}
                if k == exits[-1] and length == lengths[-1]:
                    profile_paths[precision] = path
            print(f"converted T={length} k={k} ({time.time() - started:.0f} s)", flush=True)

        if peer:
            with torch.no_grad():
                reference = student(ids, mask).logits[-1].numpy()
            for precision, path in peer["files"].items():
                session = _onnx_session(path)
                names = {i.name for i in session.get_inputs()}
                feeds = {n: v for n, v in {"input_ids": np_ids, "attention_mask": np_mask,
                                           "token_type_ids": np.zeros_like(np_ids)}.items() if n in names}
                key = ("student 80% pruned", "optimum-onnx", precision, 24, length)
                runners[key] = lambda session=session, feeds=feeds: session.run(None, feeds)
                rows[key] = {"files": [Path(path)], "gzip": True,
                             "delta": np.abs(session.run(None, feeds)[0] - reference).max()}

    # 2. time everything in interleaved rounds
    measured_at = time.time()
    load_at_timing = os.getloadavg()[0]  # conversion above may overlap other jobs; timing is what must be idle
    timings = _measure(runners, rounds)
    print(f"timed {len(runners)} runners x {rounds} rounds in {time.time() - measured_at:.0f} s", flush=True)
    profiles = {precision: {"fallbacks": sorted(([op, dtype, n] for (op, dtype), n in
                                                 xnnpack_fallbacks(Path(path).read_bytes()).items()),
                                                key=lambda x: -x[2]),
                            "perf": _perf_profile(Path(path), work)}
                for precision, path in profile_paths.items()}
    out = []
    for key, (wall_ms, cpu_ms) in timings.items():
        model, fmt, precision, k, length = key
        info = rows[key]
        files = info.get("files") or []
        out.append({"model": model, "format": fmt, "precision": precision, "exit": k, "seq": length,
                    "latency_ms": round(wall_ms, 2), "cpu_ms": round(cpu_ms, 2),
                    "bytes": sum(Path(f).stat().st_size for f in files) if files else None,
                    "gzip_bytes": _gzip_bytes(files) if info.get("gzip") else None,
                    "max_abs_diff_vs_pytorch": None if "delta" not in info else float(info["delta"])})
    teacher_bytes = sum(p.numel() * 4 for p in teacher.parameters())
    return {"rows": out, "peer": peer, "profiles": profiles,
            "profile_shape": {"seq": lengths[-1], "exit": exits[-1]}, "teacher_fp32_bytes": teacher_bytes, "logit_scale": logit_scale,
            "exits": list(exits), "lengths": list(lengths), "runs": rounds, "load_at_timing": round(load_at_timing, 2),
            "seconds": round(time.time() - started, 1)}


BEFORE = "int8-full-all (before)"
PROFILE_CALLS = 20
_LOOP = """import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
runner = Interpreter(model_path=sys.argv[1], num_threads=1).get_signature_runner("serving_default")
feeds = {n: np.ones(d["shape"], d["dtype"]) for n, d in runner.get_input_details().items()}
for _ in range(int(sys.argv[2])):
    runner(**feeds)
"""


def _short_symbol(symbol: str) -> str:
    """A C++ symbol without template arguments and parameter lists (the table's width)."""
    out, depth = [], 0
    for ch in symbol:
        depth += ch in "<("
        if depth == 0:
            out.append(ch)
        depth -= ch in ">)"
    return "".join(out).strip()[:90]


def _perf_profile(path: Path, work: Path, top: int = 8) -> list[list] | None:
    """[symbol, % of samples] of the top native functions while ``path`` runs PROFILE_CALLS times
    on one thread (loading included), from ``perf record``; None when perf is not installed or
    not permitted."""
    import shutil

    if shutil.which("perf") is None:
        return None
    script, data = work / "loop.py", work / f"{path.stem}.perf"
    script.write_text(_LOOP)
    record = subprocess.run(["perf", "record", "-F", "499", "-o", str(data), sys.executable, str(script), str(path),
                             str(PROFILE_CALLS)], capture_output=True, text=True,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    if record.returncode:
        return None
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "symbol", "--stdio"],
                            capture_output=True, text=True)
    out = []
    for line in report.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].endswith("%") and parts[1] in ("[.]", "[k]"):
            out.append([_short_symbol(re.split(r"\s{2,}", parts[2])[0]), float(parts[0][:-1])])
    return out[:top]


def _peer(student, python: str, work: Path) -> dict:
    model_dir = work / "student-hf"
    student.save_pretrained(model_dir)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([python, str(ROOT / "benchmarks" / "optimum_peer.py"), str(model_dir), str(work / "optimum")],
                            capture_output=True, text=True, env=env, timeout=900)
    if result.returncode:
        raise RuntimeError(f"the Optimum peer failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Report


def _find(rows, **match):
    return next((r for r in rows if all(r[k] == v for k, v in match.items())), None)


def ratios(result: dict) -> list[dict]:
    """The targets: teacher vs int8 exit@2 (>= 40x) and fp32 vs int8 of the same model at full depth (>= 2x)."""
    rows, out = result["rows"], []
    teacher_model, student_model = "teacher (BERT-large shape)", "student 80% pruned"
    pairs = []
    for length in result["lengths"]:
        teacher = _find(rows, model=teacher_model, seq=length)
        for precision in ("int8-dynamic", "int8-full"):
            pairs.append((f"teacher PyTorch fp32 / TFLite {precision} exit@2", length, 40, teacher,
                          _find(rows, format="tflite", precision=precision, exit=2, seq=length)))
        for fmt, fp32, int8 in (("tflite", "fp32", "int8-dynamic"), ("tflite", "fp32", "int8-full"),
                                ("tflite", "fp32", BEFORE),
                                ("onnx", "fp32", "int8"), ("optimum-onnx", "fp32", "int8")):
            pairs.append((f"{fmt} fp32 / {fmt} {int8}, full depth", length, 2,
                          _find(rows, format=fmt, precision=fp32, exit=24, seq=length),
                          _find(rows, format=fmt, precision=int8, exit=24, seq=length)))
        for precision in ("int8-dynamic", "int8-full"):
            pairs.append((f"student PyTorch fp32 / TFLite {precision}, full depth", length, 2,
                          _find(rows, model=student_model, format="pytorch", exit=24, seq=length),
                          _find(rows, format="tflite", precision=precision, exit=24, seq=length)))
    for name, length, target, a, b in pairs:
        if a and b:
            cpu, wall = a["cpu_ms"] / b["cpu_ms"], a["latency_ms"] / b["latency_ms"]
            out.append({"ratio": name, "seq": length, "cpu": round(cpu, 2), "wall": round(wall, 2), "target": target,
                        "pass": cpu >= target and wall >= target})
    return out


def markdown(result: dict, command: str) -> str:
    rows = result["rows"]
    mb = lambda b: "" if b is None else f"{b / 1e6:.1f}"  # noqa: E731
    lines = [f"Command: `{command}`  ", f"Date: {result['date']}  ",
             f"Machine: {result['machine']} (load average {result['load_before']} at the start, "
             f"{result.get('load_at_timing', result['load_before'])} when timing began, {result['load_after']} after); "
             "batch 1, one thread everywhere  ",
             f"Versions: {result['versions']}", "",
             "Student: 24 shared layers, hidden 768, 16 heads, E=128, vocabulary 21,128, 15 labels, every embedding and "
             "linear weight pruned to 80%. Teacher: BERT-large shape (24 layers, hidden 1024, 16 heads, FFN 4096), fp32, "
             "full depth. Student graphs are `fixed` exports computing exactly k layers.", "",
             f"Cells: **CPU ms** (wall ms), medians of {result['runs']} interleaved rounds after 2 warm-up rounds: every "
             "round runs every runtime once in a shuffled order, so load from other jobs hits all of them alike. "
             "CPU time is the process's CPU time per call; each runtime runs on one thread, so it is what an idle "
             "core gives; wall time includes waiting for a core on this shared machine." +
             (" The load average was above the core count during this run: CPU times then also include the "
              "slowdown of sharing caches and memory bandwidth (fp32 GEMMs suffer most), so compare rows of this "
              "run with each other, not with another run's." if result.get("load_at_timing", result["load_before"]) > _cores() else ""), "",
             "Sizes are the graph files; gzip (level 6) shows what pruning saves in a download (dense formats store "
             "zeros). The last column compares each runtime's logits with PyTorch fp32 on the timed input; the random "
             f"student's logits have |x| ≤ {result['logit_scale']:.2f}.", ""]
    for length in result["lengths"]:
        lines += [f"### T = {length}", "", "| model | format | precision | " +
                  " | ".join(f"exit {k}" for k in result["exits"]) + " | MB | gzip MB | max abs Δlogit |",
                  "|---|---|---|" + "---:|" * len(result["exits"]) + "---:|---:|---:|"]
        keys = []
        for r in rows:
            if r["seq"] == length and (r["model"], r["format"], r["precision"]) not in keys:
                keys.append((r["model"], r["format"], r["precision"]))
        for model, fmt, precision in keys:
            cells, size, gz, delta = [], None, None, []
            for k in result["exits"]:
                r = _find(rows, model=model, format=fmt, precision=precision, exit=k, seq=length)
                cells.append("" if r is None else f"**{r['cpu_ms']:.1f}** ({r['latency_ms']:.1f})")
                if r is not None:
                    size = r["bytes"] if r["bytes"] is not None else size
                    gz = r["gzip_bytes"] if r["gzip_bytes"] is not None else gz
                    if r["max_abs_diff_vs_pytorch"] is not None:
                        delta.append(r["max_abs_diff_vs_pytorch"])
            lines.append(f"| {model} | {fmt} | {precision} | " + " | ".join(cells) +
                         f" | {mb(size)} | {mb(gz)} | {'' if not delta else f'{max(delta):.1e}'} |")
        lines.append("")
    lines += [f"Teacher fp32 weights: {result['teacher_fp32_bytes'] / 1e6:.0f} MB.", "", "### Ratios", "",
              "| ratio | T | CPU | wall | target | |", "|---|---:|---:|---:|---:|---|"]
    for r in result["ratios"]:
        lines.append(f"| {r['ratio']} | {r['seq']} | {r['cpu']} | {r['wall']} | ≥ {r['target']} | "
                     f"{'PASS' if r['pass'] else 'MISS'} |")
    lines += _profile_markdown(result)
    if result.get("peer"):
        p = result["peer"]
        lines += ["", f"Peer: Hugging Face Optimum ({', '.join(f'{k} {v}' for k, v in p['versions'].items())}; in its own "
                  "virtualenv because optimum-onnx needs transformers < 4.58, see benchmarks/optimum_peer.py): "
                  "`optimum.exporters.onnx.main_export` + `ORTQuantizer` with "
                  "`AutoQuantizationConfig.avx512_vnni(is_static=False)`, timed here with the same onnxruntime. "
                  "Full depth only: it exports the whole model, no early exit."]
    else:
        lines += ["", "Peer: not run (pass `--peer-python`; Optimum's ONNX exporter needs transformers < 4.58, "
                  "see benchmarks/optimum_peer.py)."]
    return "\n".join(lines) + "\n"


def _cores() -> int:
    return os.cpu_count() or 1


def _profile_markdown(result: dict) -> list[str]:
    profiles = result.get("profiles") or {}
    if not profiles:
        return []
    shape = result["profile_shape"]
    lines = ["", f"### Where the time goes: TFLite at T = {shape['seq']}, exit {shape['exit']}", "",
             "Ops the XNNPACK delegate does not take (they run on TFLite's builtin kernels; for int8 mostly "
             "the reference kernels). Whether XNNPACK takes an int8 BATCH_MATMUL, ADD or SUB depends on its "
             "calibrated scales, so the same shared layer falls back at some depths and not at others.", "",
             "| precision | ops on builtin kernels (op, output dtype: count) |", "|---|---|"]
    for precision, p in profiles.items():
        cells = ", ".join(f"{op} {dtype}: {n}" for op, dtype, n in p["fallbacks"]) or "none"
        lines.append(f"| {precision} | {cells} |")
    if any(p["perf"] for p in profiles.values()):
        lines += ["", f"Top native functions by share of `perf record` samples ({PROFILE_CALLS} calls on one thread, "
                  "loading included; `xnn_` functions are XNNPACK's, `tflite::reference_ops` TFLite's reference "
                  "kernels):", "", "| precision | function | % samples |", "|---|---|---:|"]
        for precision, p in profiles.items():
            for symbol, share in p["perf"] or []:
                lines.append(f"| {precision} | `{symbol}` | {share:.1f} |")
    return lines


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T=64, exits 2 and 24, 3 runs")
    parser.add_argument("--peer-python", help="python of a venv with optimum-onnx (see benchmarks/optimum_peer.py)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where the .json/.md go")
    args = parser.parse_args(argv)
    command = "python benchmarks/export_latency.py" + (" --quick" if args.quick else "") + \
        (" --peer-python PEER/bin/python" if args.peer_python else "")
    from edgekit.io import versions

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="edgekit-latency-") as work:
        result = run(args.quick, args.peer_python, Path(work))
    v = versions()
    import importlib.metadata as md

    for name in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer"):
        v[name] = md.version(name)
    result.update(command=command, date=str(datetime.date.today()), machine=f"{platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} cores", load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2),
                  versions={k: v[k] for k in ("torch", "transformers", "onnxruntime", "litert-torch", "ai-edge-litert",
                                               "ai-edge-quantizer") if k in v})
    result["ratios"] = ratios(result)
    md_text = markdown(result, command)
    print(md_text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "export_latency_quick" if args.quick else "export_latency"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(md_text, encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
