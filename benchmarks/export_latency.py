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
ai-edge-quantizer, calibrated on 8 CLUE TNEWS sentences). Batch 1, one thread everywhere, the same
input (a sequence of exactly T tokens, T = 64 and 128) for every runtime, median of the runs after
two warm-up calls, all in one process. With ``--peer-python``, Hugging Face Optimum's ONNX export
of the same student (full depth) and its ORT dynamic int8 are timed on the same inputs
(``benchmarks/optimum_peer.py``, which runs in its own environment: see its docstring for why).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
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
from edgekit.export.tflite import TFLiteGraph, calibration_inputs_from_texts, export_tflite  # noqa: E402
from edgekit.prune import MagnitudePruner  # noqa: E402
from edgekit.student import StudentConfig, build_student  # noqa: E402

VOCAB = ROOT.parent / "shared" / "data" / "vocab" / "bert-base-chinese"
EXITS, LENGTHS, RUNS = (1, 2, 6, 24), (64, 128), 7
QUICK_EXITS, QUICK_LENGTHS, QUICK_RUNS = (2, 24), (64,), 3


def _median_ms(fn, runs: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


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
    from edgekit.export.graphs import export_copy, export_onnx, graph_specs
    from edgekit.export.onnx_int8 import quantize_onnx

    module, args, entry = graph_specs(export_copy(model), "fixed", exit_layer, length)["model"]
    fp32 = export_onnx(module, args, work / f"onnx-k{exit_layer}-t{length}.onnx", entry)
    int8 = quantize_onnx(fp32, work / f"onnx-int8-k{exit_layer}-t{length}.onnx", "dynamic")
    return {"fp32": fp32, "int8": Path(int8)}


def _row(model: str, fmt: str, precision: str, exit_layer: int, length: int, ms: float, files=(), gz=None,
         delta=None) -> dict:
    return {"model": model, "format": fmt, "precision": precision, "exit": exit_layer, "seq": length,
            "latency_ms": round(ms, 2), "bytes": sum(Path(f).stat().st_size for f in files) if files else None,
            "gzip_bytes": gz, "max_abs_diff_vs_pytorch": None if delta is None else float(delta)}


def run(quick: bool, peer_python: str | None, work: Path) -> dict:
    from transformers import BertTokenizer

    from conftest import clue_sentences

    exits, lengths, runs = (QUICK_EXITS, QUICK_LENGTHS, QUICK_RUNS) if quick else (EXITS, LENGTHS, RUNS)
    torch.set_num_threads(1)
    student = _student()
    tokenizer = BertTokenizer.from_pretrained(VOCAB)
    calibration_texts = clue_sentences(8)
    rows = []
    started = time.time()

    teacher = _teacher()
    for length in lengths:
        ids, mask = (torch.from_numpy(a) for a in _inputs(length))
        with torch.no_grad():
            ms = _median_ms(lambda: teacher(input_ids=ids, attention_mask=mask), max(3, runs // 2))
        rows.append(_row("teacher (BERT-large shape)", "pytorch", "fp32", 24, length, ms))
        print(f"teacher T={length}: {ms:.1f} ms", flush=True)
    teacher_bytes = sum(p.numel() * 4 for p in teacher.parameters())
    del teacher

    for length in lengths:
        np_ids, np_mask = _inputs(length)
        ids, mask = torch.from_numpy(np_ids), torch.from_numpy(np_mask)
        calibration = calibration_inputs_from_texts(tokenizer, calibration_texts, length)
        for k in exits:
            with torch.no_grad():
                reference = student(ids, mask, exit_layer=k).logits[-1].numpy()
                ms = _median_ms(lambda: student.predict(ids, mask, exit_layer=k), runs)
            rows.append(_row("student 80% pruned", "pytorch", "fp32", k, length, ms))

            for precision, path in _export_onnx(student, k, length, work).items():
                session = _onnx_session(path)
                feeds = {"input_ids": np_ids, "attention_mask": np_mask}
                delta = np.abs(session.run(None, feeds)[0] - reference).max()
                ms = _median_ms(lambda: session.run(None, feeds), runs)
                gz = _gzip_bytes([path]) if k == exits[-1] else None
                rows.append(_row("student 80% pruned", "onnx", precision, k, length, ms, [path], gz, delta))

            for precision, int8 in (("fp32", None), ("int8-dynamic", "dynamic"), ("int8-full", "full")):
                export = export_tflite(student, work / f"tflite-{precision}-k{k}-t{length}", exit_layer=k,
                                       max_length=length, int8=int8, calibration_inputs=calibration)
                graph = TFLiteGraph(export.files[0], num_threads=1)
                feeds = {"input_ids": np_ids.astype(np.int32), "attention_mask": np_mask.astype(np.int32)}
                delta = np.abs(graph(**feeds)["logits"] - reference).max()
                ms = _median_ms(lambda: graph(**feeds), runs)
                gz = _gzip_bytes(export.files) if k == exits[-1] else None
                rows.append(_row("student 80% pruned", "tflite", precision, k, length, ms, export.files, gz, delta))
            print(f"student T={length} k={k}: " + ", ".join(
                f"{r['format']} {r['precision']} {r['latency_ms']:.1f}" for r in rows[-6:]), flush=True)

    peer = None
    if peer_python:
        peer = _peer(student, peer_python, lengths, runs, work)
        for key, ms in peer["latency_ms"].items():
            precision, length = key.split("@")
            rows.append(_row("student 80% pruned", "optimum-onnx", precision, 24, int(length), ms,
                             gz=None, delta=peer["max_abs_diff_vs_pytorch"].get(key)))
            rows[-1]["bytes"] = peer["bytes"][precision]

    return {"rows": rows, "peer": peer, "teacher_fp32_bytes": teacher_bytes, "exits": list(exits),
            "lengths": list(lengths), "runs": runs, "seconds": round(time.time() - started, 1)}


def _peer(student, python: str, lengths, runs: int, work: Path) -> dict:
    model_dir = work / "student-hf"
    student.save_pretrained(model_dir)
    inputs = work / "inputs.npz"
    np.savez(inputs, **{f"{name}_{t}": a for t in lengths for name, a in zip(("ids", "mask"), _inputs(t))})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([python, str(ROOT / "benchmarks" / "optimum_peer.py"), str(model_dir), str(work / "optimum"),
                             str(inputs), str(runs)], capture_output=True, text=True, env=env, timeout=900)
    if result.returncode:
        raise RuntimeError(f"the Optimum peer failed:\n{result.stderr[-3000:]}")
    peer = json.loads(result.stdout.strip().splitlines()[-1])
    deltas = {}
    for key, logits in peer.pop("logits").items():
        length = int(key.split("@")[1])
        ids, mask = (torch.from_numpy(a) for a in _inputs(length))
        with torch.no_grad():
            reference = student(ids, mask).logits[-1].numpy()
        deltas[key] = float(np.abs(np.asarray(logits) - reference).max())
    peer["max_abs_diff_vs_pytorch"] = deltas
    return peer


# ---------------------------------------------------------------------------------------------
# Report


def _find(rows, **match):
    return next((r for r in rows if all(r[k] == v for k, v in match.items())), None)


def ratios(result: dict) -> list[dict]:
    rows, out = result["rows"], []
    for length in result["lengths"]:
        teacher = _find(rows, format="pytorch", model="teacher (BERT-large shape)", seq=length)
        for precision in ("int8-dynamic", "int8-full"):
            exit2 = _find(rows, format="tflite", precision=precision, exit=2, seq=length)
            if teacher and exit2:
                value = teacher["latency_ms"] / exit2["latency_ms"]
                out.append({"ratio": f"teacher PyTorch fp32 / TFLite {precision} exit@2", "seq": length,
                            "value": round(value, 1), "target": 40, "pass": value >= 40})
        for fmt, fp32, int8 in (("tflite", "fp32", "int8-dynamic"), ("tflite", "fp32", "int8-full"),
                                ("onnx", "fp32", "int8")):
            a = _find(rows, format=fmt, precision=fp32, exit=24, seq=length)
            b = _find(rows, format=fmt, precision=int8, exit=24, seq=length)
            if a and b:
                value = a["latency_ms"] / b["latency_ms"]
                out.append({"ratio": f"{fmt} fp32 / {fmt} {int8}, full depth", "seq": length, "value": round(value, 2),
                            "target": 2, "pass": value >= 2})
        a = _find(rows, format="pytorch", precision="fp32", exit=24, seq=length, model="student 80% pruned")
        for precision in ("int8-dynamic", "int8-full"):
            b = _find(rows, format="tflite", precision=precision, exit=24, seq=length)
            if a and b:
                value = a["latency_ms"] / b["latency_ms"]
                out.append({"ratio": f"student PyTorch fp32 / TFLite {precision}, full depth", "seq": length,
                            "value": round(value, 2), "target": 2, "pass": value >= 2})
    return out


def markdown(result: dict, command: str) -> str:
    rows = result["rows"]
    mb = lambda b: "" if b is None else f"{b / 1e6:.1f}"  # noqa: E731
    lines = [f"Command: `{command}`  ", f"Date: {result['date']}  ",
             f"Machine: {result['machine']}; batch 1, 1 thread, median of {result['runs']} runs after 2 warm-ups; "
             f"load average {result['load_before']} before, {result['load_after']} after (a shared machine)  ",
             f"Versions: {result['versions']}", "",
             "Student: 24 shared layers, hidden 768, 16 heads, E=128, vocabulary 21,128, 15 labels, pruned to 80%. "
             "Teacher: BERT-large shape (24 layers, hidden 1024, 16 heads, FFN 4096), fp32. "
             "`fixed` exports: a graph computing exactly k layers. Sizes are the graph files; gzip (level 6) shows "
             "what pruning saves on the wire (dense formats store zeros).", ""]
    for length in result["lengths"]:
        lines += [f"### T = {length}", "", "| model | format | precision | " +
                  " | ".join(f"exit {k} ms" for k in result["exits"]) + " | MB | gzip MB | max abs Δlogit vs PyTorch |",
                  "|---|---|---|" + "---:|" * len(result["exits"]) + "---:|---:|---:|"]
        keys = []
        for r in rows:
            if r["seq"] == length and (r["model"], r["format"], r["precision"]) not in keys:
                keys.append((r["model"], r["format"], r["precision"]))
        for model, fmt, precision in keys:
            cells, size, gz, delta = [], None, None, []
            for k in result["exits"]:
                r = _find(rows, model=model, format=fmt, precision=precision, exit=k, seq=length)
                cells.append("" if r is None else f"{r['latency_ms']:.1f}")
                if r is not None:
                    size = r["bytes"] if r["bytes"] is not None else size
                    gz = r["gzip_bytes"] if r["gzip_bytes"] is not None else gz
                    if r["max_abs_diff_vs_pytorch"] is not None:
                        delta.append(r["max_abs_diff_vs_pytorch"])
            lines.append(f"| {model} | {fmt} | {precision} | " + " | ".join(cells) +
                         f" | {mb(size)} | {mb(gz)} | {'' if not delta else f'{max(delta):.1e}'} |")
        lines.append("")
    lines += ["Teacher fp32 weights: " + f"{result['teacher_fp32_bytes'] / 1e6:.0f} MB.", "", "### Ratios", "",
              "| ratio | T | value | target | |", "|---|---:|---:|---:|---|"]
    for r in result["ratios"]:
        lines.append(f"| {r['ratio']} | {r['seq']} | {r['value']} | ≥ {r['target']} | {'PASS' if r['pass'] else 'MISS'} |")
    if result.get("peer"):
        p = result["peer"]
        lines += ["", f"Peer: Hugging Face Optimum {p['versions']} (`optimum.exporters.onnx.main_export` + "
                  "`ORTQuantizer`, `AutoQuantizationConfig.avx512_vnni(is_static=False)`), full depth only "
                  f"(it exports the whole model; no early exit), export took {p['export_seconds']} s. Rows "
                  "`optimum-onnx` above."]
    else:
        lines += ["", "Peer: not run (pass `--peer-python`; Optimum's ONNX exporter needs transformers < 4.58, "
                  "see benchmarks/optimum_peer.py)."]
    return "\n".join(lines) + "\n"


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
