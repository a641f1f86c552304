"""Download size of the paper-shape (M6-Edge) classifier bundle on trained weights: ONNX and TFLite,
dense / gzip / packed (xz and zlib), against the 2.5 MB goal, with a random-weights bundle measured
in the same run as the baseline.

    python benchmarks/bundle_size.py --model runs/m6-edge-cpu/<the fine-tuned tnews model>

``--model`` is a fine-tuned paper-shape classifier (``recipes/m6_edge_cpu.yaml``: distilled,
pruned to 80%, fine-tuned on TNEWS; its vocabulary trimmed to the corpus). Rows:

- **random (baseline)**: the paper student at random init (21,128-piece bert-base-chinese
  vocabulary, 1-D parameters with small noise), 80% magnitude-pruned per tensor, ONNX dynamic int8.
  Every ratio is against this bundle, packed with the same codec.
- **trained, as shipped**: ``--model`` exported as the pipeline does (per-layer, every exit, its
  fine-tuned max_length), ONNX fp32 / int8 and TFLite fp32 / dynamic int8 (the TFLite full-int8
  file stores the same int8 weights).
- **trained, 21,128-row table**: the same weights with the word-embedding table padded to the
  21,128 rows of bert-base-chinese with elements drawn from the trained table (seed 0), what an
  untrimmed vocabulary costs.
- **table at 4 bits**: ``--model`` exported with ``edgekit export --embedding-bits 4``
  (``edgekit.quantize.table_bits``) at the default ``--embedding-scale table``: the word-embedding
  table snapped to 15 levels (-7..7) of one step per table, as its one int8 scale in both formats,
  so the stored int8 codes take 15 values; size, the table's relative error and accuracy. Its
  parity gate compares the bundle with the original checkpoint.
- **per-row table scale**: TFLite int8 exported with ``--embedding-scale row`` (one int8 scale per
  row of the word-embedding table, ai-edge-quantizer's own default; ``table`` is edgekit's).

Per tensor (trained ONNX int8): elements, share non-zero, order-0 entropy of the non-zero int8
values and of the bit mask, the floor ``nonzero * H(values) / 8 + elements * H(p) / 8`` bytes.

Accuracy: the deepest exit of each int8 bundle and of the checkpoint on the first ``--examples``
TNEWS dev texts: agreement (same argmax) and accuracy ratio (bundle / checkpoint); the target is
>= 99.5%. Parity columns are the export's own gate on 64 TNEWS dev texts (agreement >= 0.98 for
int8, 0.999 and the logit tolerance for fp32, every exit).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.early_exit import EarlyExitClassifier  # noqa: E402
from edgekit.export import export_model  # noqa: E402
from edgekit.prune import MagnitudePruner  # noqa: E402
from edgekit.student import StudentConfig, build_student  # noqa: E402

COMMAND = "nice -n 5 python benchmarks/bundle_size.py"
ROW_SCALE = "per-row table scale (--embedding-scale row)"
SHARED = ROOT.parent / "shared"
VOCAB_DIR = SHARED / "data" / "vocab" / "bert-base-chinese"
TNEWS = SHARED / "data" / "clue" / "tnews"
GOAL = 2_500_000
MB = 1_000_000
FULL_VOCAB = 21_128
TABLE = "albert.embeddings.word_embeddings.weight"
GATE = {"fp32": 0.999, "int8": 0.98}


def _tnews(split: str, n: int) -> tuple[list[str], list[str]]:
    lines = (TNEWS / f"{split}.json").read_text(encoding="utf-8").split("\n")
    rows = [json.loads(line) for line in lines if line.strip()][:n]
    return [r["sentence"] for r in rows], [r["label"] for r in rows]


def random_classifier(path: Path) -> None:
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(VOCAB_DIR)  # transformers 5 ignores vocab_file=
    torch.manual_seed(0)
    model = EarlyExitClassifier.from_student(build_student(StudentConfig(), vocab_size=len(tokenizer), seed=0),
                                             num_labels=15)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.01)
    pruner = MagnitudePruner()
    pruner.prepare(model)
    pruner.update_masks(0.8)
    pruner.squash_mask()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _edit_table(src: Path, dst: Path, edit) -> dict:
    """Copy checkpoint ``src`` to ``dst`` with its word-embedding table replaced by ``edit(table)``."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".edgekit-written.json", "*.pt"))
    tensors = load_file(str(src / "model.safetensors"))
    old = tensors[TABLE]
    new, facts = edit(old)
    tensors[TABLE] = np.ascontiguousarray(new, dtype=np.float32)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    if new.shape[0] != old.shape[0]:
        config = json.loads((dst / "config.json").read_text())
        config["vocab_size"] = int(new.shape[0])
        (dst / "config.json").write_text(json.dumps(config, indent=2))
    return facts


def resample_rows(table: np.ndarray, rows: int = FULL_VOCAB, seed: int = 0):
    """The table padded to ``rows`` rows whose elements are drawn i.i.d. from its own elements (seed).

    Elements, not whole rows: copied rows would be exact repeats, which xz's long matches code
    almost for free and no real vocabulary has. The draw keeps the trained value distribution
    and the pruned share."""
    extra = np.random.default_rng(seed).choice(table.reshape(-1), size=(rows - table.shape[0], table.shape[1]))
    return np.concatenate([table, extra]), {"rows": rows, "trained_rows": int(table.shape[0]),
                                            "extra_rows": "elements drawn i.i.d. from the trained table"}


def _entropy(counts: np.ndarray) -> float:
    q = counts[counts > 0] / counts.sum()
    return float(-(q * np.log2(q)).sum())


def tensor_table(bundle: Path) -> list[dict]:
    """Per int8 / fp32 initializer of 1 KiB or more of an ONNX bundle: what it costs at least."""
    import onnx
    from onnx import numpy_helper

    rows = []
    for path in sorted(bundle.glob("*.onnx")):
        for init in onnx.load(str(path)).graph.initializer:
            a = numpy_helper.to_array(init).reshape(-1)
            if a.nbytes < 1024:
                continue
            nz = a != 0
            p = float(nz.mean())
            mask_bits = a.size * _entropy(np.array([nz.sum(), (~nz).sum()]))
            value_bits = _entropy(np.unique(a[nz], return_counts=True)[1]) if a.dtype == np.int8 else 32.0
            rows.append({"graph": path.stem, "tensor": init.name, "dtype": str(a.dtype), "elements": int(a.size),
                         "nonzero": round(p, 4), "value_bits": round(value_bits, 2),
                         "floor_bytes": int((nz.sum() * value_bits + mask_bits) / 8)})
    return rows


def _gzip_bytes(bundle: Path) -> int:
    return sum(len(gzip.compress(p.read_bytes(), 9)) for p in bundle.iterdir() if p.is_file()
               and not p.name.startswith("."))


def export_row(model: Path, out: Path, fmt: str, int8, texts: list[str], embedding_bits: int = 8,
               embedding_scale: str = "table") -> dict:
    import edgekit_device

    start = time.time()
    export_model(model, out, format=fmt, int8=int8, sample_texts=texts, min_agreement=0.0,
                 embedding_bits=embedding_bits, embedding_scale=embedding_scale)
    manifest = json.loads((out / "manifest.json").read_text())
    precision = "int8" if int8 else "fp32"
    parity = manifest["parity"]
    row = {"format": fmt, "precision": precision, "export_seconds": round(time.time() - start, 1),
           "max_length": manifest.get("max_length"),
           "dense_bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file() and not p.name.startswith(".")),
           "gzip_bytes": _gzip_bytes(out), "packed": {},
           "parity": {k: parity.get(k) for k in ("samples", "agreement", "max_abs_diff")},
           "parity_gate": GATE[precision],
           "embedding_snap": (manifest.get("quantization") or {}).get("embedding_snap")}
    row["parity"]["passes_gate"] = parity.get("agreement", 0) >= GATE[precision]
    for codec in ("xz", "zlib"):
        packed = out.with_name(f"{out.name}.{codec}.edgepack")
        report = edgekit_device.pack(out, packed, codec=codec)
        restored = edgekit_device.unpack(packed, out.with_name(f"{out.name}.{codec}.restored"))
        same = all((restored / n).read_bytes() == (out / n).read_bytes() for n in manifest["files"])
        shutil.rmtree(restored)
        row["packed"][codec] = {"bytes": report["packed_bytes"], "bit_exact": same,
                                "files": {n: f["parts"] for n, f in report["files"].items()}}
    return row


def deepest_predictions(path: Path, texts: list[str]) -> np.ndarray:
    from edgekit.eval.evaluate import _eval_bundle, _eval_checkpoint, is_bundle

    preds, labels, *_ = (_eval_bundle(path, texts, 16, 1) if is_bundle(path) else
                         _eval_checkpoint(path, texts, 16, None))
    return np.array(labels)[preds[-1]]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="fine-tuned paper-shape classifier")
    parser.add_argument("--examples", type=int, default=300, help="TNEWS dev texts for accuracy")
    parser.add_argument("--label", default="", help="what --model is, for the results (e.g. its recipe)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    parity_texts, _ = _tnews("dev", 64)
    eval_texts, gold = _tnews("dev", args.examples)
    gold = np.array(gold)
    work = Path(tempfile.mkdtemp(prefix="edgekit-bundle-size-"))
    try:
        random_classifier(work / "random")
        baseline = export_row(work / "random", work / "random-onnx-int8", "onnx", "dynamic", parity_texts)
        shipped = {f"{fmt} {'int8' if int8 else 'fp32'}": export_row(args.model, work / f"{fmt}-{int8}", fmt, int8,
                                                                    parity_texts)
                   for fmt in ("onnx", "tflite") for int8 in (False, "dynamic")}
        tensors = tensor_table(work / "onnx-dynamic")
        full_vocab = _edit_table(args.model, work / "full-vocab", resample_rows)
        variant_rows = {
            "21,128-row table": {fmt: export_row(work / "full-vocab", work / f"full-{fmt}", fmt, "dynamic",
                                                 parity_texts) for fmt in ("onnx", "tflite")},
            "table at 4 bits (--embedding-bits 4)": {fmt: export_row(args.model, work / f"t4-{fmt}", fmt, "dynamic",
                                                                     parity_texts, embedding_bits=4)
                                                     for fmt in ("onnx", "tflite")},
            ROW_SCALE: {"tflite": export_row(args.model, work / "row-tflite", "tflite", "dynamic", parity_texts,
                                             embedding_scale="row")},
        }
        variants = {"21,128-row table": full_vocab,
                    "table at 4 bits (--embedding-bits 4)": {
                        fmt: row["embedding_snap"]
                        for fmt, row in variant_rows["table at 4 bits (--embedding-bits 4)"].items()},
                    ROW_SCALE: {"tflite": {"embedding_scale": "row"}}}
        reference = deepest_predictions(args.model, eval_texts)
        accuracy = {"examples": len(eval_texts), "checkpoint": float((reference == gold).mean())}
        for name, path in (("onnx int8", work / "onnx-dynamic"), ("tflite int8", work / "tflite-dynamic"),
                           ("onnx int8, table at 4 bits (one step per table)", work / "t4-onnx"),
                           ("tflite int8, table at 4 bits (one step per table)", work / "t4-tflite"),
                           ("tflite int8, per-row table scale", work / "row-tflite")):
            pred = deepest_predictions(path, eval_texts)
            acc = float((pred == gold).mean())
            accuracy[name] = {"accuracy": acc, "agreement": float((pred == reference).mean()),
                              "accuracy_ratio": acc / accuracy["checkpoint"] if accuracy["checkpoint"] else None}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {"command": f"{COMMAND} --model {args.model}", "date": str(datetime.date.today()),
              "model": str(args.model), "model_label": args.label, "goal_bytes": GOAL, "baseline": baseline,
              "shipped": shipped, "variants": {k: {"edit": variants[k], "rows": v} for k, v in variant_rows.items()},
              "tensors": tensors, "accuracy": accuracy}
    md = render(result)
    print(md)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bundle_size.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bundle_size.md").write_text(md + "\n")
    return result


def _mb(n: int) -> str:
    return f"{n / MB:.3f}"


def render(r: dict) -> str:
    base = r["baseline"]
    bx, bz = base["packed"]["xz"]["bytes"], base["packed"]["zlib"]["bytes"]
    lines = [f"Command: `{r['command']}`  ", f"Date: {r['date']}  ",
             f"Model: `{r['model']}` {r['model_label']}", "",
             "MB = 10^6 bytes. Ratios: packed size / the random-weights bundle (paper shape, 21,128-row table, "
             f"80% pruned, ONNX int8) packed with the same codec in this run: xz {_mb(bx)} MB, zlib {_mb(bz)} MB. "
             f"Goal: ≤ {_mb(r['goal_bytes'])} MB.", "",
             "| bundle | dense MB | gzip MB | packed xz MB (ratio) | packed zlib MB (ratio) | ≤ 2.5 MB (xz / zlib) | "
             "parity: agreement, max abs Δlogit (gate) |", "|---|---:|---:|---:|---:|---|---|"]

    def row(name: str, x: dict) -> str:
        px, pz = x["packed"]["xz"]["bytes"], x["packed"]["zlib"]["bytes"]
        p = x["parity"]
        ok = lambda n: "yes" if n <= r["goal_bytes"] else "no"  # noqa: E731
        return (f"| {name} | {_mb(x['dense_bytes'])} | {_mb(x['gzip_bytes'])} | {_mb(px)} ({px / bx:.3f}) | "
                f"{_mb(pz)} ({pz / bz:.3f}) | {ok(px)} / {ok(pz)} | {p['agreement']:.3f}, {p['max_abs_diff']:.2g} "
                f"(≥ {x['parity_gate']}: {'pass' if p['passes_gate'] else 'FAIL'}) |")

    lines.append(row("random weights, onnx int8 (baseline)", base))
    for name, x in r["shipped"].items():
        lines.append(row(f"trained as shipped, {name}", x))
    for vname, v in r["variants"].items():
        for fmt, x in v["rows"].items():
            lines.append(row(f"trained, {vname}, {fmt} int8", x))
    lines += ["", "Variant edits: " + "; ".join(f"{k}: {json.dumps(v['edit'])}" for k, v in r["variants"].items()),
              "", "Where the packed (xz) bytes of the trained int8 bundles go:", "",
              "| bundle | file | part | bytes |", "|---|---|---|---:|"]
    for name in ("onnx int8", "tflite int8"):
        for f, parts in r["shipped"][name]["packed"]["xz"]["files"].items():
            for part, size in parts.items():
                lines.append(f"| {name} | {f} | {part} | {size:,} |")
    lines += ["", "Per tensor (trained ONNX int8, tensors of 1 KiB or more; floor = non-zero × value bits / 8 + "
              "elements × H(non-zero share) / 8):", "",
              "| graph | tensor | dtype | elements | non-zero | value bits | floor bytes |",
              "|---|---|---|---:|---:|---:|---:|"]
    for t in r["tensors"]:
        lines.append(f"| {t['graph']} | {t['tensor']} | {t['dtype']} | {t['elements']:,} | {t['nonzero']:.3f} | "
                     f"{t['value_bits']} | {t['floor_bytes']:,} |")
    a = r["accuracy"]
    lines += ["", f"Accuracy at the deepest exit on the first {a['examples']} TNEWS dev texts (checkpoint "
              f"{a['checkpoint']:.3f}); target: accuracy ratio ≥ 99.5%:", "",
              "| bundle | accuracy | agreement with checkpoint | accuracy ratio |", "|---|---:|---:|---:|"]
    for name, x in a.items():
        if isinstance(x, dict):
            ratio = f"{x['accuracy_ratio']:.1%}" if x["accuracy_ratio"] is not None else "n/a"
            lines.append(f"| {name} | {x['accuracy']:.3f} | {x['agreement']:.3f} | {ratio} |")
    every = [p["bit_exact"] for x in [base, *r["shipped"].values()] for p in x["packed"].values()]
    lines += ["", f"Every pack unpacks bit-exactly: {all(every)}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
