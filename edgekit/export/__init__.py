"""Export for phones and browsers (M6-Rec section 3.5): a classifier checkpoint -> a bundle directory.

``export_model`` is the stage's entry point (``edgekit export``). A bundle holds the model graphs
(ONNX or TFLite, float32 or int8, one ``fixed`` exit or ``per-layer`` graphs serving every exit),
``device_tokenizer.json``, ``labels.json`` and ``manifest.json``; ``export/BUNDLE.md`` specifies
it and ``edgekit_device`` (torch-free) runs it. Every export is checked before it is kept: the
device tokenizer must give the checkpoint tokenizer's ids, and the bundle, run through
``edgekit_device``, must reproduce the PyTorch logits at every exit it offers (``parity.py``).
The directory is written atomically: a failed check leaves nothing behind.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgekit.errors import UserError

FORMATS = ("onnx", "tflite")
PACK_SUFFIX = ".edgepack"
__all__ = ["FORMATS", "export_model", "load_classifier", "packed_path"]


def packed_path(out) -> Path:
    """Where ``--pack`` writes the packed bundle: ``BUNDLE.edgepack`` beside the directory."""
    out = Path(out)
    return out.with_name(out.name + PACK_SUFFIX)


def load_classifier(model_dir):
    """(EarlyExitClassifier, tokenizer, labels) of a classifier checkpoint directory."""
    from edgekit.checkpoint import check_model_dir, load_config_of, load_tokenizer
    from edgekit.early_exit import EarlyExitClassifier

    path = check_model_dir(model_dir)
    config = load_config_of(path)
    architectures = list(getattr(config, "architectures", None) or [])
    if config.model_type != "albert" or "AlbertForSequenceClassification" not in architectures:
        kind = architectures[0] if architectures else config.model_type
        raise UserError(f"'{model_dir}' holds a {kind} checkpoint, not an ALBERT classifier; export needs a "
                        "classifier with its task head (edgekit finetune writes one).")
    classifier = EarlyExitClassifier.from_pretrained(path).float().eval()
    tokenizer = load_tokenizer(path)
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
    return classifier, tokenizer, labels


def _check_max_length(max_length, config, tokenizer, fmt: str, num_special: int) -> int:
    limit = config.max_position_embeddings
    if max_length is None:
        model_max = getattr(tokenizer, "model_max_length", None) or limit
        return min(limit, model_max, 128 if fmt == "tflite" else limit)
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise UserError(f"max_length must be an integer, got {max_length!r}.")
    if max_length > limit:
        raise UserError(f"max_length {max_length} is beyond the model's {limit} position embeddings; "
                        f"pass --max-length {limit} or less.")
    if max_length <= num_special:
        raise UserError(f"max_length {max_length} leaves no room for text after the tokenizer's {num_special} "
                        f"special tokens; pass --max-length {num_special + 1} or more.")
    return max_length


def _int8_scheme(int8, calibration_texts) -> str | None:
    if int8 in (None, False):
        if calibration_texts:
            raise UserError("calibration texts only apply to int8 exports; add --int8 or drop --calibration.")
        return None
    if int8 is True:
        return "static" if calibration_texts else "dynamic"
    if int8 not in ("dynamic", "static"):
        raise UserError(f"int8 must be True, 'dynamic' or 'static', got {int8!r}.")
    if int8 == "static" and not calibration_texts:
        raise UserError("static int8 needs calibration texts (--calibration FILE): a few hundred sentences "
                        "like the ones the model will see.")
    return int8


def _calibration_feeds(embed, layer, graph: str, batches, depth: int, limit: int = 64):
    """Feeds of one ONNX graph for min/max calibration, computed lazily with the PyTorch graphs.

    The shared layer and the head see the hidden states of every depth, so they are calibrated on
    all depths. onnxruntime keeps every intermediate tensor of every feed in memory until the end,
    so at most ``limit`` layer applications are fed: batch b contributes the depths d with
    (b + d) % stride == 0, which spreads the texts over the depths, and the fixed graph (all k
    layers per feed) gets ``limit // depth`` batches."""
    import torch

    stride = max(1, -(-len(batches) * depth // limit))
    with torch.no_grad():
        for b, (ids, mask) in enumerate(batches):
            if graph == "embed":
                yield {"input_ids": ids}
                continue
            if graph == "model":
                if b >= max(1, limit // depth):
                    return
                yield {"input_ids": ids, "attention_mask": mask}
                continue
            hidden = embed(torch.from_numpy(ids))
            for d in range(depth):
                if graph == "layer" and (b + d) % stride == 0:
                    yield {"hidden": hidden.numpy(), "attention_mask": mask}
                hidden = layer(hidden, torch.from_numpy(mask))
                if graph == "head" and (b + d) % stride == 0:
                    yield {"hidden": hidden.numpy()}


def _write_onnx(model, directory: Path, layout: str, exit_layer: int, max_length: int, scheme, calibration, depth):
    from edgekit.export.graphs import EmbedGraph, LayerGraph, export_onnx, graph_specs
    from edgekit.export.onnx_int8 import quantize_onnx

    specs = graph_specs(model, layout, exit_layer, max_length)
    graphs = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-") as work:
        for name, (module, args, entry) in specs.items():
            target = directory / f"{name}.onnx"
            if scheme is None:
                export_onnx(module, args, target, entry)
            else:
                fp32 = export_onnx(module, args, Path(work) / f"{name}.onnx", entry)
                feeds = None
                if scheme == "static":
                    feeds = _calibration_feeds(EmbedGraph(model, max_length).eval(), LayerGraph(model).eval(), name,
                                               calibration, depth)
                quantize_onnx(fp32, target, scheme, feeds)
            graphs[name] = {"file": target.name, **entry}
    if scheme is None:
        quantization = None
    else:
        quantization = {
            "scheme": "dynamic" if scheme == "dynamic" else "static-qdq",
            "tool": "onnxruntime.quantization",
            "weights": "int8, symmetric per tensor (zero point 0): MatMul weights and embedding tables",
            "activations": ("uint8 per tensor, range computed at run time (MatMulInteger)" if scheme == "dynamic" else
                            "uint8 per tensor, ranges from min/max calibration (QuantizeLinear/DequantizeLinear)"),
        }
    return graphs, quantization


_AXES = {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
         "hidden": ["batch", "sequence", "hidden"], "next_hidden": ["batch", "sequence", "hidden"],
         "logits": ["batch", "labels"]}


def _tflite_tensor(t: dict) -> dict:
    quantized = t.get("quantization") and t["dtype"] in ("int8", "uint8", "int16")
    return {"name": t["name"], "dtype": "float32" if quantized else t["dtype"], "shape": list(t["shape"]),
            "axes": _AXES.get(t["name"], [f"dim{i}" for i in range(len(t["shape"]))]),
            "stored_dtype": t["dtype"], "quantization": t.get("quantization")}


def _write_tflite(model, tokenizer, directory: Path, layout: str, exit_layer: int, max_length: int, scheme, texts):
    try:
        from edgekit.export.tflite import calibration_inputs_from_texts, export_tflite
    except ImportError as e:
        if e.name and e.name.startswith(("edgekit.export.tflite", "litert_torch", "ai_edge")):
            raise UserError(f"TFLite export is not available here ({e.name} is missing); install litert-torch and "
                            "ai-edge-litert, or use --format onnx.") from None
        raise
    int8 = {None: None, "dynamic": "dynamic", "static": "full"}[scheme]
    calibration = calibration_inputs_from_texts(tokenizer, texts, max_length) if scheme == "static" else None
    result = export_tflite(model, directory, exit_layer=exit_layer, max_length=max_length, int8=int8,
                           calibration_inputs=calibration, layout=layout, batch_size=1)
    graphs = {name: {"file": g["file"], "signature": g.get("signature"),
                     "inputs": [_tflite_tensor(t) for t in g["inputs"]],
                     "outputs": [_tflite_tensor(t) for t in g["outputs"]]}
              for name, g in result.metadata["graphs"].items()}
    quantization = None if int8 is None else {
        "scheme": int8, "tool": "ai-edge-quantizer",
        "weights": "int8 (symmetric)", "activations": "float" if int8 == "dynamic" else "int8, calibrated",
        "mask_value": result.metadata.get("mask_value")}
    return graphs, quantization


def export_model(model_dir, out, format: str = "onnx", int8: bool | str = False, exit_layer: int | None = None,
                 max_length: int | None = None, sample_texts=None, calibration_texts=None, pack: bool = False,
                 pack_codec: str = "xz", min_agreement: float | None = None) -> Path:
    """Export the classifier in ``model_dir`` as a bundle directory ``out``; returns ``out``.

    Args:
        format: ``"onnx"`` (dynamic batch and length) or ``"tflite"`` (static shapes, batch 1).
        int8: False (float32), True (dynamic int8 weights; static activation ranges when
            ``calibration_texts`` are given), or ``"dynamic"`` / ``"static"`` explicitly.
        exit_layer: k for a ``fixed`` bundle computing exactly k layers; None (default) for the
            ``per-layer`` bundle that serves every exit, fixed or dynamic.
        max_length: longest input in tokens, special tokens included (default: the model's
            position embeddings for ONNX, 128 for TFLite, whose shapes are static).
        sample_texts: texts the parity check runs (default: generated token sequences).
        calibration_texts: texts for static int8 ranges.
        pack: also write ``packed_path(out)``, the small single-file download that
            ``edgekit_device.unpack`` restores bit-exactly.
        min_agreement: argmax agreement every exit must reach (default 0.99).
    """
    import edgekit_device
    from edgekit_device.pack import CODECS

    from edgekit.export.bundle import (FORMAT_VERSION, exits_entry, model_facts, source_facts, versions,
                                       write_device_files, write_manifest)
    from edgekit.export.device_tokenizer import device_tokenizer_spec
    from edgekit.export.graphs import export_copy
    from edgekit.export.parity import MIN_AGREEMENT, PROBE_TEXTS, SAMPLES, check_device_tokenizer, check_parity, sample_inputs
    from edgekit.io import atomic_dir

    if format not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {format!r}.")
    min_agreement = MIN_AGREEMENT if min_agreement is None else float(min_agreement)
    if not 0.0 <= min_agreement <= 1.0:
        raise UserError(f"min_agreement must be between 0 and 1, got {min_agreement!r}.")
    if pack_codec not in CODECS:
        raise UserError(f"pack codec must be one of {', '.join(CODECS)}, got {pack_codec!r}.")
    calibration_texts = [t for t in (calibration_texts or []) if t and t.strip()]
    scheme = _int8_scheme(int8, calibration_texts)
    classifier, tokenizer, labels = load_classifier(model_dir)
    config = classifier.model.config
    depth = classifier.depth
    if exit_layer is not None and (isinstance(exit_layer, bool) or not isinstance(exit_layer, int)
                                   or not 1 <= exit_layer <= depth):
        raise UserError(f"exit layer {exit_layer!r} is outside the model's layers 1..{depth}; pass --exit-layer "
                        f"between 1 and {depth}, or none for a bundle with every exit.")
    layout = "per-layer" if exit_layer is None else "fixed"
    if layout == "per-layer" and config.num_hidden_groups != 1:
        raise UserError("the per-layer bundle needs one layer shared by all depths (num_hidden_groups=1); "
                        "export this model with --exit-layer.")

    spec = device_tokenizer_spec(tokenizer)
    device_tokenizer = edgekit_device.Tokenizer(spec)
    max_length = _check_max_length(max_length, config, tokenizer, format, device_tokenizer.num_special)
    sample_texts = [t for t in (sample_texts or calibration_texts or []) if t and t.strip()][:SAMPLES]
    tokenizer_check = check_device_tokenizer(tokenizer, device_tokenizer, sample_texts + PROBE_TEXTS, max_length)
    ids, mask, source = sample_inputs(device_tokenizer, sample_texts, max_length, config.vocab_size,
                                      tokenizer.all_special_ids)
    calibration = None
    if scheme == "static":
        texts = calibration_texts[:256]
        calibration = [device_tokenizer.encode_batch(texts[i:i + 4], max_length) for i in range(0, len(texts), 4)]

    model = export_copy(classifier)
    out = Path(out)
    default_exit = exit_layer or depth
    with atomic_dir(out) as tmp:
        if format == "onnx":
            graphs, quantization = _write_onnx(model, tmp, layout, default_exit, max_length, scheme, calibration, depth)
        else:
            graphs, quantization = _write_tflite(model, tokenizer, tmp, layout, default_exit, max_length, scheme,
                                                 calibration_texts)
        write_device_files(tmp, spec, labels)
        from edgekit import __version__

        manifest = {
            "format_version": FORMAT_VERSION,
            "format": format,
            "precision": "fp32" if scheme is None else "int8",
            "quantization": quantization,
            "layout": layout,
            "graphs": graphs,
            "max_length": max_length,
            "exits": exits_entry(layout, depth, default_exit),
            "model": model_facts(classifier),
            "tokenizer": {"file": "device_tokenizer.json", "type": spec["type"], "check": tokenizer_check},
            "labels": {"file": "labels.json", "count": len(labels)},
            "edgekit_version": __version__,
            "source": source_facts(Path(model_dir)),
            "versions": versions(),
        }
        manifest = write_manifest(tmp, manifest)
        predictor = edgekit_device.Predictor(edgekit_device.load_bundle(tmp), threads=2)
        manifest["parity"] = check_parity(classifier, predictor, ids, mask, manifest["precision"], source, min_agreement)
        write_manifest(tmp, {k: v for k, v in manifest.items() if k not in ("files", "sizes")})
    if pack:
        edgekit_device.pack(out, packed_path(out), codec=pack_codec)
    return out
