"""``edgekit export``: a classifier checkpoint -> a bundle directory (M6-Rec section 3.5).

``export_model`` only dispatches and checks: it validates the arguments, builds the device
tokenizer, asks a backend (``edgekit.export.onnx`` or ``edgekit.export.tflite``) to write the
graphs of ``edgekit.export.graphs``, writes the manifest (``edgekit.export.bundle``) and checks
parity (``edgekit.export.parity``) by running the bundle through ``edgekit_device``. The
directory is written atomically: a failed check leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import UserError

FORMATS = ("onnx", "tflite")
PACK_SUFFIX = ".edgepack"
__all__ = ["FORMATS", "export_model", "load_classifier", "packed_path"]


def _tflite_backend():
    """``edgekit.export.tflite``, imported only for TFLite exports (litert-torch is a large import)."""
    try:
        from edgekit.export import tflite
    except ImportError as e:
        if e.name and e.name.startswith(("litert_torch", "ai_edge")):
            raise UserError(f"TFLite export is not available here ({e.name} is missing); install litert-torch and "
                            "ai-edge-litert, or use --format onnx.") from None
        raise
    return tflite


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


def _float_modules(classifier, target, format: str, scheme, device_tokenizer, texts, max_length: int) -> tuple:
    """The modules accuracy-aware int8 keeps in float (INC decides on ``texts``, padded to one length)."""
    import torch

    from edgekit.quantize.inc import float_modules_by_inc

    if format != "onnx" or scheme != "dynamic":
        raise UserError("--accuracy-aware applies to dynamic int8 ONNX bundles; use --format onnx --int8 dynamic.")
    target = 0.99 if target is True else target
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0:
        raise UserError(f"the accuracy-aware target must be between 0 and 1, got {target!r}.")
    texts = [t for t in texts if t and t.strip()][:256]
    if not texts:
        raise UserError("--accuracy-aware needs real texts to judge int8 on: pass --task with --data-dir, "
                        "--samples FILE or --calibration FILE.")
    batches = []
    for i in range(0, len(texts), 32):
        # INC's exported graph has one static length
        ids, mask = device_tokenizer.encode_batch(texts[i:i + 32], max_length, pad_to=max_length)
        batches.append((torch.from_numpy(ids), torch.from_numpy(mask)))
    return tuple(float_modules_by_inc(classifier, batches, float(target)))


BUNDLE_KIND = "bundle"  # the marker kind of a bundle directory (edgekit_device.unpack writes the same)


def _check_pack_path(path, overwrite: bool) -> None:
    from edgekit_device import BundleError
    from edgekit_device.pack import check_pack_path

    try:
        check_pack_path(path, overwrite)
    except BundleError as e:
        raise UserError(str(e)) from None


def export_model(model_dir, out, format: str = "onnx", int8: bool | str = False, exit_layer: int | None = None,
                 max_length: int | None = None, sample_texts=None, calibration_texts=None, pack: bool = False,
                 pack_codec: str = "zlib", min_agreement: float | None = None, sample_source: str | None = None,
                 overwrite: bool = False, accuracy_aware: bool | float = False, embedding_bits: int = 8,
                 embedding_scale: str = "table", sample_requests=None) -> Path:
    """Export the classifier in ``model_dir`` as a bundle directory ``out``; returns ``out``.

    A late-interaction checkpoint becomes the two-graph ``late-interaction`` bundle
    (``late_interaction.export``), with the same parity gate, packing and table snapping, run on
    requests: ``sample_requests`` (each a list of segment texts, e.g. a task's dev examples), else
    requests made of ``sample_texts``.

    Args:
        format: ``"onnx"`` (dynamic batch and length) or ``"tflite"`` (static shapes, batch 1).
        int8: False (float32), True (dynamic int8 weights; static activation ranges when
            ``calibration_texts`` are given), or ``"dynamic"`` / ``"static"`` explicitly.
        exit_layer: k for a ``fixed`` bundle computing exactly k layers; None (default) for the
            ``per-layer`` bundle that serves every exit, fixed or dynamic.
        max_length: longest input in tokens, special tokens included (default: the length the
            model was fine-tuned with, else 128, as every command; TFLite's shapes are static at it).
        sample_texts: texts the parity check runs, the first ``parity.SAMPLES`` (256): the task's
            dev texts where there is a task (default: the calibration texts, else generated token
            sequences).
        sample_source: what ``sample_texts`` are, a plural noun phrase for the manifest's
            ``parity.inputs`` and the failure sentence (e.g. "texts of the tnews dev split").
        calibration_texts: texts for static int8 ranges.
        pack: also write ``packed_path(out)``, the small single-file download that
            ``edgekit_device.unpack``, the phone app and the browser demo restore bit-exactly.
        pack_codec: ``zlib`` (default: what Java and browsers decode natively) or ``xz`` (smaller,
            read only by ``edgekit_device``).
        min_agreement: argmax agreement every exit must reach (default: ``parity.MIN_AGREEMENT``
            of the precision, 0.999 for fp32 and 0.98 for int8; near-ties aside).
        overwrite: replace ``out`` (and its pack) if it is a bundle edgekit wrote earlier; a
            directory or file edgekit did not write is never replaced (``edgekit.io.check_out``).
        accuracy_aware: ONNX dynamic int8 only: Neural Compressor's accuracy-driven tuning picks the
            modules kept in float (``quantize.inc.float_modules_by_inc``) until every exit agrees with
            the float model on at least this share (True: 0.99) of the calibration texts, else the
            sample texts (then the gate judges the texts the choice was made on).
        embedding_bits: int8 bundles only: 2..7 snaps the word-embedding table of the exported copy
            to ``2**bits - 1`` levels, one step per table or per row as ``embedding_scale``
            (``quantize.table_bits``: a smaller packed download); 8 (default) leaves it. The
            parity gate compares the bundle with the original checkpoint, so it judges the
            snapping too.
        embedding_scale: int8 bundles: ``"table"`` (default) gives the word-embedding table one
            int8 scale, as ONNX Runtime's int8 Gather; ``"row"`` (TFLite only) one per row, a
            little more accurate and about 85 KB more download on the paper shape
            (``export.tflite``). fp32 bundles take only the default.
    """
    import edgekit_device
    from edgekit_device.pack import CODECS

    from edgekit.export.bundle import (FORMAT_VERSION, exits_entry, model_facts, source_facts, versions,
                                       write_device_files, write_manifest)
    from edgekit.export.device_tokenizer import device_tokenizer_spec
    from edgekit.export.graphs import export_copy
    from edgekit.export.onnx import write_onnx
    from edgekit.export.parity import PROBE_TEXTS, SAMPLES, check_device_tokenizer, check_parity, sample_inputs
    from edgekit.io import atomic_dir, check_out

    check_out(out, BUNDLE_KIND, overwrite)  # before minutes of work, and again when writing
    if pack:
        _check_pack_path(packed_path(out), overwrite)
    if format not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {format!r}.")
    if min_agreement is not None and (isinstance(min_agreement, bool) or not isinstance(min_agreement, (int, float))
                                      or not 0.0 <= min_agreement <= 1.0):
        raise UserError(f"min_agreement must be between 0 and 1, got {min_agreement!r}.")
    if pack_codec not in CODECS:
        raise UserError(f"pack codec must be one of {', '.join(CODECS)}, got {pack_codec!r}.")
    calibration_texts = [t for t in (calibration_texts or []) if t and t.strip()]
    scheme = _int8_scheme(int8, calibration_texts)
    from edgekit.quantize.table_bits import (DEFAULT_BITS, DEFAULT_SCALE, check_bits, check_scale, snap_hint,
                                             snap_word_embeddings)

    embedding_bits = check_bits(embedding_bits)
    if embedding_bits != DEFAULT_BITS and scheme is None:
        raise UserError("--embedding-bits applies to int8 bundles (an fp32 table stores 32 bits per weight "
                        "whatever its levels); add --int8 or drop --embedding-bits.")
    embedding_scale = check_scale(embedding_scale, format)
    if embedding_scale != DEFAULT_SCALE and scheme is None:
        raise UserError("--embedding-scale row applies to int8 bundles (an fp32 table has no int8 scale); "
                        "add --int8 or drop --embedding-scale.")
    from edgekit.checkpoint import check_model_dir, default_max_length

    model_dir = check_model_dir(model_dir)  # a run directory names the model it wrote
    from edgekit.checkpoint import load_config_of

    if getattr(load_config_of(model_dir), "late_interaction", None):  # two halves, run by edgekit_device.segments
        if max_length is not None:
            raise UserError("a late-interaction bundle's length is the checkpoint's max_segment_tokens; "
                            "drop --max-length.")
        if accuracy_aware is not False and accuracy_aware is not None:
            raise UserError("--accuracy-aware does not support late-interaction bundles yet; drop it.")
        from edgekit.late_interaction.export import export_late_interaction

        export_late_interaction(model_dir, out, int8=int8 if not calibration_texts else "static",
                                sample_texts=sample_texts or calibration_texts, sample_requests=sample_requests,
                                sample_source=sample_source, min_agreement=min_agreement, overwrite=overwrite,
                                format=format, exit_layer=exit_layer, embedding_bits=embedding_bits)
        if pack:
            edgekit_device.pack(out, packed_path(out), codec=pack_codec, overwrite=overwrite)
        return Path(out)
    if max_length is None:  # the length every command defaults to: the one the model was fine-tuned with
        max_length = default_max_length(model_dir)
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
    given = [t for t in (sample_texts or []) if t and t.strip()]
    if given:
        inputs = sample_source or "sample texts"
    else:
        given, inputs = calibration_texts, "calibration texts"
    sample_texts = given[:SAMPLES]
    if not sample_texts:
        inputs = "generated token sequences"
    tokenizer_check = check_device_tokenizer(tokenizer, device_tokenizer, sample_texts + PROBE_TEXTS, max_length)
    ids, mask, source = sample_inputs(device_tokenizer, sample_texts, max_length, config.vocab_size,
                                      tokenizer.all_special_ids)
    calibration = None
    if scheme == "static":
        texts = calibration_texts[:256]
        calibration = [device_tokenizer.encode_batch(texts[i:i + 4], max_length) for i in range(0, len(texts), 4)]

    float_modules = ()
    if accuracy_aware is not False and accuracy_aware is not None:
        float_modules = _float_modules(classifier, accuracy_aware, format, scheme, device_tokenizer,
                                       calibration_texts or sample_texts, max_length)
    model = export_copy(classifier)
    # the copy only: parity compares with `classifier`
    snapped = snap_word_embeddings(model, embedding_bits, embedding_scale)
    out = Path(out)
    default_exit = exit_layer or depth
    with atomic_dir(out, BUNDLE_KIND, overwrite) as tmp:
        if format == "onnx":
            graphs, quantization = write_onnx(model, tmp, layout, default_exit, max_length, scheme, calibration,
                                              float_modules)
        else:
            graphs, quantization = _tflite_backend().write_tflite(model, tokenizer, tmp, layout, default_exit,
                                                                  max_length, scheme, calibration_texts,
                                                                  embedding_scale)
        if quantization is not None:
            quantization = {**quantization, "embedding_scale": embedding_scale, "embedding_bits": embedding_bits,
                            **({"embedding_snap": snapped} if snapped else {})}
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
        try:
            manifest["parity"] = check_parity(classifier, predictor, ids, mask, manifest["precision"], source,
                                              min_agreement, inputs)
        except UserError as e:
            raise snap_hint(e, embedding_bits, snapped) from None
        write_manifest(tmp, {k: v for k, v in manifest.items() if k not in ("files", "sizes")})
    if pack:
        edgekit_device.pack(out, packed_path(out), codec=pack_codec, overwrite=overwrite)
    return out
