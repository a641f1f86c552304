"""int8 error by depth of the per-layer bundle (one shared layer applied k times): every exit, every variant.

    python benchmarks/int8_depth.py --model CLASSIFIER_DIR [--texts 256] [--variants ...] [--tflite]
    python benchmarks/int8_depth.py --student STUDENT_DIR   # a distilled student, pruned 80% here, random head

For each int8 variant of the ONNX ``embed`` / ``layer`` / ``head`` graphs (the graphs ``edgekit export``
writes, quantized with ``edgekit.export.onnx.quantize_onnx``), the runtime's loop is replayed on TNEWS dev
texts and compared with the float32 graphs at every exit k:

    max / mean over texts of max_c |logit_int8 - logit_fp32|     (the parity gate reports the max)
    agreement = share of texts whose argmax is unchanged          (the gate needs >= 0.98 at every exit)
    accuracy ratio = accuracy_int8 / accuracy_fp32 on the labels  (the issue's target: >= 0.995)
    hidden error = mean over texts of |h_int8 - h_fp32| / |h_fp32| at [CLS] after k applications

``--tflite`` adds the TFLite bundles ``edgekit export --format tflite --int8 dynamic`` writes, run through
``edgekit_device``. ``--student`` turns a distilled student (no task head) into a 15-class classifier
with a random head (std 0.5) after 80% magnitude pruning: its agreement and accuracy mean little, its
hidden error and logit error by depth are the encoder's. Writes ``benchmarks/results/int8_depth.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "clue" / "tnews" / "dev.json"
LAYER = "/albert_layer_groups.0/albert_layers.0/"
HEAD_CLASSIFIER = "/classifier/MatMul"
# variant name -> quantize_onnx keyword arguments ("calibrate": static scheme on the dev texts)
VARIANTS = {
    "dynamic, per-tensor weights (old default)": dict(per_channel=False),
    "dynamic, per-channel weights (default)": dict(per_channel=True),
    "dynamic, per-channel, classifier float": dict(per_channel=True, keep_float=(HEAD_CLASSIFIER,)),
    "static, per-tensor weights": dict(scheme="static", per_channel=False),
    "static, per-channel weights": dict(scheme="static", per_channel=True),
}


def _sessions(paths: dict) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return {name: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for name, p in paths.items()}


def run_layers(sessions: dict, ids: np.ndarray, mask: np.ndarray, depth: int, batch: int = 32):
    """The per-layer runtime loop: (logits (K, B, C), [CLS] hidden (K, B, H)) after each of the K applications."""
    logits, hidden = [], []
    head_mask = len(sessions["head"].get_inputs()) == 2
    for start in range(0, len(ids), batch):
        i, m = ids[start:start + batch], mask[start:start + batch]
        h = sessions["embed"].run(None, {"input_ids": i})[0]
        ls, hs = [], []
        for _ in range(depth):
            h = sessions["layer"].run(None, {"hidden": h, "attention_mask": m})[0]
            ls.append(sessions["head"].run(None, {"hidden": h, **({"attention_mask": m} if head_mask else {})})[0])
            hs.append(h[:, 0])
        logits.append(np.stack(ls))
        hidden.append(np.stack(hs))
    return np.concatenate(logits, 1), np.concatenate(hidden, 1)


def per_exit(ref_logits, logits, ref_hidden=None, hidden=None, labels=None) -> list[dict]:
    rows = []
    for k in range(len(ref_logits)):
        r, g = ref_logits[k], logits[k]
        d = np.abs(g - r).max(-1)
        row = {"exit": k + 1, "max_dlogit": float(d.max()), "mean_dlogit": float(d.mean()),
               "agreement": float((r.argmax(-1) == g.argmax(-1)).mean())}
        if hidden is not None:
            row["hidden_err"] = float((np.linalg.norm(hidden[k] - ref_hidden[k], axis=-1)
                                       / np.linalg.norm(ref_hidden[k], axis=-1)).mean())
        if labels is not None:
            row["acc_fp32"] = float((r.argmax(-1) == labels).mean())
            row["acc_int8"] = float((g.argmax(-1) == labels).mean())
            row["acc_ratio"] = row["acc_int8"] / row["acc_fp32"] if row["acc_fp32"] else float("nan")
        rows.append(row)
    return rows


def load_model(args):
    from edgekit.checkpoint import load_tokenizer

    if args.model:
        from edgekit.export.stage import load_classifier

        classifier, tokenizer, _ = load_classifier(args.model)
        return classifier, tokenizer, f"classifier `{args.model}`"
    from edgekit.early_exit import EarlyExitClassifier
    from edgekit.prune import MagnitudePruner
    from edgekit.student import load_student

    classifier = EarlyExitClassifier.from_student(load_student(args.student), 15)
    torch.manual_seed(0)
    with torch.no_grad():
        classifier.model.classifier.weight.normal_(0, 0.5)
        classifier.model.albert.pooler.weight.normal_(0, 0.05)
    pruner = MagnitudePruner()
    pruner.prepare(classifier)
    pruner.update_masks(0.8)
    pruner.squash_mask()
    return classifier.float().eval(), load_tokenizer(args.student), f"student `{args.student}` pruned 80%, random head"


def texts_and_labels(classifier, count: int):
    lines = [json.loads(line) for line in DEV.read_text(encoding="utf-8").splitlines() if line.strip()][:count]
    label2id = classifier.model.config.label2id or {}
    key = next((f for f in ("label", "label_desc") if str(lines[0][f]) in label2id), None)
    labels = np.array([label2id[str(line[key])] for line in lines]) if key else None
    return [line["sentence"] for line in lines], labels


def tflite_rows(model_dir, texts, ids, mask, ref_logits, labels, work: Path) -> list[dict]:
    import edgekit_device

    from edgekit.export import export_model

    out = export_model(model_dir, work / "tflite-dynamic", format="tflite", int8="dynamic", sample_texts=texts,
                       min_agreement=0.0, max_length=ids.shape[1])
    predictor = edgekit_device.Predictor(edgekit_device.load_bundle(out), threads=1)
    got = np.concatenate([predictor.exit_logits(ids[i:i + 1], mask[i:i + 1]) for i in range(len(ids))], axis=1)
    return per_exit(ref_logits, got, labels=labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a fine-tuned classifier checkpoint")
    source.add_argument("--student", help="a distilled student: pruned 80%% here, random 15-class head")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"among {list(VARIANTS)}")
    parser.add_argument("--tflite", action="store_true", help="also the TFLite dynamic-int8 bundle (--model only)")
    parser.add_argument("--name", default="int8_depth")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    from edgekit.export.graphs import calibration_feeds, export_copy
    from edgekit.export.onnx import MAX_CALIBRATION_LAYERS, export_onnx, graph_specs, quantize_onnx

    torch.set_num_threads(1)
    started = time.time()
    load_before = os.getloadavg()[0]
    classifier, tokenizer, what = load_model(args)
    texts, labels = texts_and_labels(classifier, args.texts)
    enc = tokenizer(texts, truncation=True, max_length=args.max_length, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    depth = classifier.depth
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-int8-depth-") as work:
        work = Path(work)
        model = export_copy(classifier)
        specs = graph_specs(model, "per-layer", depth, args.max_length)
        fp32 = {n: export_onnx(m, a, work / f"fp32-{n}.onnx", e) for n, (m, a, e) in specs.items()}
        ref_logits, ref_hidden = run_layers(_sessions(fp32), ids, mask, depth)
        graphs = {n: m for n, (m, _, _) in specs.items()}
        calibration = [(ids[i:i + 4], mask[i:i + 4]) for i in range(0, len(ids), 4)]
        for v, name in enumerate(args.variants):
            options = dict(VARIANTS[name])
            scheme = options.pop("scheme", "dynamic")
            paths = {}
            for graph, path in fp32.items():
                feeds = (list(calibration_feeds(graphs, graph, calibration, depth, MAX_CALIBRATION_LAYERS))
                         if scheme == "static" else None)
                paths[graph] = quantize_onnx(path, work / f"v{v}-{graph}.onnx", scheme, feeds, **options)
            logits, hidden = run_layers(_sessions(paths), ids, mask, depth)
            results[f"onnx: {name}"] = per_exit(ref_logits, logits, ref_hidden, hidden, labels)
            print(f"{name}: done ({time.time() - started:.0f} s)", flush=True)
        if args.tflite and args.model:
            results["tflite: dynamic (edgekit export default)"] = tflite_rows(args.model, texts, ids, mask, ref_logits,
                                                                             labels, work)
    command = "python benchmarks/int8_depth.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = {name: {"worst_agreement": min(r["agreement"] for r in rows),
                      "max_dlogit": max(r["max_dlogit"] for r in rows),
                      "mean_dlogit_exit1": rows[0]["mean_dlogit"], "mean_dlogit_last": rows[-1]["mean_dlogit"],
                      **({"worst_acc_ratio": min(r["acc_ratio"] for r in rows)} if "acc_ratio" in rows[0] else {})}
               for name, rows in results.items()}
    result = {"command": command.strip(), "date": datetime.date.today().isoformat(), "model": what, "depth": depth,
              "texts": len(texts), "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
              "seconds": round(time.time() - started, 1), "summary": summary, "per_exit": results}
    shown = sorted({1, 2, 3, 4, 5, 6, 8, 12, 16, 20, depth} & set(range(1, depth + 1)))
    lines = [f"Command: `{result['command']}` ({result['date']})  ",
             f"Model: {what}, {depth} applications of one shared layer; {len(texts)} TNEWS dev texts, max length "
             f"{args.max_length}; reference: the same graphs in float32.  ", "",
             "Per exit: max / mean |Δlogit| · agreement with float" + (" · accuracy int8/fp32" if labels is not None
                                                                     else "") + " · [CLS] hidden relative error.", "",
             "| variant | worst agreement | max abs Δlogit | mean Δlogit exit 1 → last |"
             + (" worst accuracy ratio |" if labels is not None else ""),
             "|---|---:|---:|---:|" + ("---:|" if labels is not None else "")]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['worst_agreement']:.3f} | {s['max_dlogit']:.3g} | {s['mean_dlogit_exit1']:.3g} → "
                     f"{s['mean_dlogit_last']:.3g} |" + (f" {s['worst_acc_ratio']:.3f} |" if "worst_acc_ratio" in s else ""))
    lines += ["", "| variant | " + " | ".join(f"exit {k}" for k in shown) + " |", "|---|" + "---:|" * len(shown)]
    for name, rows in results.items():
        cells = []
        for k in shown:
            r = rows[k - 1]
            cell = f"{r['max_dlogit']:.3f} / {r['mean_dlogit']:.4f} · {r['agreement']:.3f}"
            if "acc_ratio" in r:
                cell += f" · {r['acc_ratio']:.3f}"
            if "hidden_err" in r:
                cell += f" · h {r['hidden_err']:.4f}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out, f"{args.name}.md").write_text(text)


if __name__ == "__main__":
    main()
