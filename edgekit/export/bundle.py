"""Writing a bundle directory: the device tokenizer, labels, and ``manifest.json`` (``export/BUNDLE.md``).

The graph files come from the format's backend (``onnx.py``, ``tflite.py``); everything else a device needs is written here, the same for both.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import zlib
from pathlib import Path

from edgekit.io import write_json
from edgekit_device.bundle import sha256_file  # one definition for the writer and the verifier

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "device_tokenizer.json"
LABELS_FILE = "labels.json"


def gzip_size(path) -> int:
    """Bytes of the file under gzip -9 (what a plain compressed download of it would cost)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            size += len(z.compress(block))
    return size + len(z.flush())


def write_device_files(directory: Path, tokenizer_spec: dict, labels: list[str]) -> None:
    # Compact JSON: the tokenizer is part of the download.
    (directory / TOKENIZER_FILE).write_text(json.dumps(tokenizer_spec, ensure_ascii=False, separators=(",", ":")),
                                            encoding="utf-8")
    write_json(directory / LABELS_FILE, list(labels))


def file_table(directory: Path) -> dict:
    """{name: {bytes, sha256}} of every file in ``directory`` except the manifest."""
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


def versions() -> dict:
    out = {}
    for name in ("edgekit", "torch", "transformers", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert",
                 "ai-edge-quantizer"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def model_facts(classifier) -> dict:
    """The manifest's ``model``: shape, parameter counts (the checkpoint's, pooler included even when a
    mean-pooled head leaves it out of the graphs) and ``pooling``, which tells a runtime whether the
    head takes the attention mask."""
    from edgekit.student import count_parameters

    config = classifier.model.config
    parameters, nonzero = count_parameters(classifier)
    return {"architecture": "albert", "num_layers": config.num_hidden_layers, "num_heads": config.num_attention_heads,
            "hidden_size": config.hidden_size, "embedding_size": config.embedding_size, "vocab_size": config.vocab_size,
            "num_labels": config.num_labels, "shared_layer": config.num_hidden_groups == 1,
            "pooling": classifier.pooling, "parameters": parameters, "nonzero_parameters": nonzero}


def source_facts(model_dir: Path) -> dict:
    files = {name: sha256_file(model_dir / name) for name in ("config.json", "model.safetensors")
             if (model_dir / name).is_file()}
    return {"checkpoint": str(Path(model_dir).resolve()), "sha256": files}


def exits_entry(layout: str, depth: int, exit_layer: int) -> dict:
    if layout == "fixed":
        return {"layers": [exit_layer], "default": exit_layer, "dynamic": [],
                "run": f"model computes layers 1..{exit_layer} and returns their logits"}
    return {"layers": list(range(1, depth + 1)), "default": exit_layer, "dynamic": ["patience", "entropy"],
            "run": "embed once; then layer (the same graph) once per depth, feeding its output back with the same "
                   "attention_mask; head on the hidden state of any layer gives that exit's logits"}


def write_manifest(directory: Path, manifest: dict) -> dict:
    """Fill in ``files`` and ``sizes`` from what is in ``directory`` and write ``manifest.json``."""
    files = file_table(directory)
    manifest = {**manifest, "files": files,
                "sizes": {"dense_bytes": sum(f["bytes"] for f in files.values()),
                          "gzip_bytes": sum(gzip_size(directory / name) for name in files)}}
    write_json(directory / MANIFEST, manifest)
    return manifest
