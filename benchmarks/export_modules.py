"""How many of our modules one ``edgekit export`` call passes through (issue 9's layout measure).

Runs ``edgekit export`` (through the CLI's ``main``) on a tiny ALBERT classifier built from a config,
once per format and precision, under ``sys.setprofile``, and records every module of ``edgekit`` and
``edgekit_device`` in which at least one function was called. The count is a proxy for how many
rooms a reader walks through when following one export down the code.

    python benchmarks/export_modules.py                    # this checkout
    python benchmarks/export_modules.py --root /tmp/before  # another checkout (e.g. a git worktree of an older commit)

Writes ``benchmarks/results/export_modules.json`` (or ``--out``) with the command, the root and the
module lists.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = [("onnx", False), ("onnx", True), ("tflite", False), ("tflite", True)]


def _tiny_classifier(path: Path, vocab_dir: Path) -> Path:
    import torch
    from transformers import AlbertConfig, AlbertForSequenceClassification, BertTokenizer

    torch.manual_seed(0)
    tok = BertTokenizer.from_pretrained(vocab_dir)
    config = AlbertConfig(vocab_size=len(tok), embedding_size=16, hidden_size=32, num_hidden_layers=4,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, num_labels=3,
                          pad_token_id=tok.pad_token_id)
    config.architectures = ["AlbertForSequenceClassification"]
    model = AlbertForSequenceClassification(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _modules_called(argv: list[str], roots: list[Path]) -> list[str]:
    from edgekit.cli import main

    prefixes = [str(r) + os.sep for r in roots]
    seen: set[str] = set()

    def profile(frame, event, arg):
        # Functions only: module and class bodies run at import, which is not walking through.
        if event == "call" and frame.f_code.co_flags & inspect.CO_OPTIMIZED:
            name = frame.f_code.co_filename
            if name not in seen and any(name.startswith(p) for p in prefixes):
                seen.add(name)

    sys.setprofile(profile)
    try:
        try:
            main(argv)
        except SystemExit as e:
            if e.code:
                raise
    finally:
        sys.setprofile(None)
    rel = []
    for name in seen:
        for root in roots:
            if name.startswith(str(root) + os.sep):
                rel.append(str(Path(name).relative_to(root.parent)))
    return sorted(rel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=HERE.parent, help="the checkout to measure")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "export_modules.json")
    args = parser.parse_args()
    root = args.root.resolve()
    sys.path[:0] = [str(root), str(root / "export")]
    import edgekit
    import edgekit_device

    pkg_roots = [Path(edgekit.__file__).resolve().parent, Path(edgekit_device.__file__).resolve().parent]
    if not all(str(p).startswith(str(root)) for p in pkg_roots):
        raise SystemExit(f"imported {pkg_roots}, not the checkout {root}")
    vocab = root.parent / "shared" / "data" / "vocab" / "bert-base-chinese"
    if not vocab.exists():
        vocab = HERE.parent.parent / "shared" / "data" / "vocab" / "bert-base-chinese"
    results = {"command": "python benchmarks/export_modules.py" + (f" --root {args.root}" if args.root != HERE.parent else ""),
               "root": str(root), "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = _tiny_classifier(Path(tmp) / "clf", vocab)
        for fmt, int8 in CASES:
            out = Path(tmp) / f"bundle-{fmt}-{int8}"
            argv = ["export", str(model), "--format", fmt, "--out", str(out)] + (["--int8"] if int8 else [])
            start = time.time()
            modules = _modules_called(argv, pkg_roots)
            case = {"format": fmt, "int8": int8, "modules": len(modules), "module_list": modules,
                    "seconds": round(time.time() - start, 1)}
            results["cases"].append(case)
            print(f"{fmt:6s} int8={int8!s:5s}: {len(modules)} modules")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
