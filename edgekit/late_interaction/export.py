"""A late-interaction checkpoint -> a ``late-interaction`` bundle: the two halves as ONNX graphs.

- ``segment_encoder``: embeddings + layers 1..L' on segments, one per row, positions from 0
  (input_ids, attention_mask (B, T) -> hidden (B, T, H)); its outputs are what a server caches.
- ``interaction``: segment embedding + layers L'+1..L + head (hidden (B, T, H), segment_ids (B, T),
  -1 for padding -> logits (B, C)).

Float32, or int8 with onnxruntime's dynamic scheme (``quantize_onnx``, as ``edgekit export
--int8``). The manifest records the split (``late_interaction``); ``edgekit_device.segments.
SegmentBundle`` runs the bundle without torch, and the parity check compares it with the
checkpoint on sample requests before the directory is kept.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from edgekit.errors import UserError
from edgekit.late_interaction.model import LateInteractionClassifier

LAYOUT = "late-interaction"


class SegmentEncoderGraph(nn.Module):
    """input_ids, attention_mask (B, T) -> layer L''s output (B, T, H); each row one segment, padded on the right."""

    def __init__(self, model: LateInteractionClassifier):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        segment_ids = attention_mask.long() - 1  # one segment per row: 0 for tokens, -1 for padding
        positions = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1  # 0..T-1, traced with a dynamic T
        return self.model.lower(self.model.embed(input_ids, positions), segment_ids)


class InteractionGraph(nn.Module):
    """hidden (B, T, H), segment_ids (B, T) -> logits (B, C): segment embedding, the last layers, the head."""

    def __init__(self, model: LateInteractionClassifier):
        super().__init__()
        self.model = model

    def forward(self, hidden: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        return self.model.upper(hidden, segment_ids)


def _entries(hidden: int, labels: int) -> dict:
    def t(name, dtype, axes):
        return {"name": name, "dtype": dtype, "shape": [{"hidden": hidden, "labels": labels}.get(a) for a in axes],
                "axes": axes}

    seq, hid = ["batch", "sequence"], ["batch", "sequence", "hidden"]
    return {"segment_encoder": {"inputs": [t("input_ids", "int64", seq), t("attention_mask", "int64", seq)],
                                "outputs": [t("hidden", "float32", hid)]},
            "interaction": {"inputs": [t("hidden", "float32", hid), t("segment_ids", "int64", seq)],
                            "outputs": [t("logits", "float32", ["batch", "labels"])]}}


def export_copy(model: LateInteractionClassifier) -> LateInteractionClassifier:
    """The copy the graphs are traced from (float32, eval, eager attention: the additive mask as plain
    arithmetic); table snapping changes it, never the checkpoint parity compares with."""
    model = copy.deepcopy(model).float().eval()
    model.config._attn_implementation = "eager"
    return model


def parity_requests(texts: list[str], max_segments: int) -> list[list[str]]:
    """Requests made of sample segments when there are no real ones: 1, 2, 3 ... consecutive texts
    (at most ``max_segments`` each), so every request size up to the bundle's limit is run."""
    requests, start, size = [], 0, 1
    while start < len(texts):
        size = min(size, max_segments)
        requests.append(texts[start:start + size])
        start += size
        size += 1
    return requests


def check_parity(reference, bundle, requests: list[list[str]], precision: str, depth: int,
                 min_agreement: float | None = None, inputs: str = "requests") -> dict:
    """Logits of the checkpoint and the bundle on ``requests`` (each a list of segment texts); raise
    if they differ as ``edgekit.export.parity`` judges a bundle's exit (argmax agreement with
    near-ties excused; fp32 also bounds the logits). Each distinct segment is encoded once per side,
    as a server with a cache would; a request with more than ``max_segments`` segments is fitted as
    in training (``data.fit_segments``). Returns the manifest's ``parity`` entry, with the keys of
    the other layouts' plus ``segments``."""
    from edgekit.export.parity import MIN_AGREEMENT, NEAR_TIE_MARGIN, TOLERANCES, failure_sentence, judge_exit
    from edgekit.late_interaction.data import fit_segments

    min_agreement = MIN_AGREEMENT[precision] if min_agreement is None else float(min_agreement)
    requests = [fit_segments(r, bundle.max_segments) for r in requests]
    segments = sorted({s for r in requests for s in r})
    ours = dict(zip(segments, reference.encode_segments(segments)))
    theirs = dict(zip(segments, bundle.encode_segments(segments)))
    expected = reference.interact([[ours[s] for s in r] for r in requests])
    got = bundle.interact([[theirs[s] for s in r] for r in requests])
    entry = {"exit": depth, **judge_exit(expected, got, precision, min_agreement)}
    if entry["failed"]:
        raise UserError(failure_sentence([entry], precision, min_agreement, f"{len(requests)} {inputs}",
                                         int8_fix="export fp32, or lower --min-agreement if you accept that many "
                                                  "changed predictions"))
    del entry["failed"]
    return {"samples": len(requests), "source": "requests", "inputs": inputs, "segments": len(segments),
            "min_agreement": min_agreement, "near_tie_margin": NEAR_TIE_MARGIN, "tolerance": TOLERANCES[precision],
            "agreement": entry["agreement"], "raw_agreement": entry["raw_agreement"],
            "near_ties": entry["near_ties"], "max_abs_diff": entry["max_abs_diff"],
            "p99_abs_diff": entry["p99_abs_diff"], "per_exit": [entry]}


# parity segments when no sample texts are given: a request of the paper's Figure 3 kind, and titles
DEFAULT_TEXTS = ("男性", "点击了 手机壳", "最近搜索：跑步鞋 轻便", "会点击 运动手环 吗？", "江疏影甜甜圈自拍",
                 "出栏一头猪亏损300元")


def export_late_interaction(model_dir, out, int8: bool | str = False, sample_texts=None, overwrite: bool = False,
                            format: str = "onnx", exit_layer: int | None = None, sample_requests=None,
                            sample_source: str | None = None, min_agreement: float | None = None,
                            embedding_bits: int = 8) -> Path:
    """Write the ``late-interaction`` bundle of the checkpoint ``model_dir`` to ``out``; returns ``out``.

    The parity gate runs ``sample_requests`` (lists of segment texts: a task's dev examples; the
    first ``parity.SAMPLES``) if given, else requests made of ``sample_texts`` (``parity_requests``),
    else of a few built-in segments; ``sample_source`` names them in the manifest. ``embedding_bits``
    below 8 snaps the export copy's word-embedding table (``quantize.table_bits``; int8 only, as
    ``edgekit export --embedding-bits``); parity still compares with the checkpoint."""
    import edgekit_device
    from edgekit_device.segments import SegmentBundle

    from edgekit import __version__
    from edgekit.checkpoint import check_model_dir
    from edgekit.export.bundle import FORMAT_VERSION, source_facts, versions, write_device_files, write_manifest
    from edgekit.export.device_tokenizer import device_tokenizer_spec
    from edgekit.export.onnx import export_onnx, quantize_onnx
    from edgekit.export.parity import PROBE_TEXTS, SAMPLES, check_device_tokenizer
    from edgekit.export.stage import BUNDLE_KIND
    from edgekit.io import atomic_dir, check_out
    from edgekit.late_interaction.serving import load_segment_model
    from edgekit.quantize.table_bits import snap_hint, snap_word_embeddings
    from edgekit.student import count_parameters

    check_out(out, BUNDLE_KIND, overwrite)
    if format != "onnx":
        raise UserError(f"a late-interaction checkpoint exports to ONNX only, got format {format!r}; pass --format onnx.")
    if exit_layer is not None:
        raise UserError("a late-interaction bundle has one exit, the last layer; drop --exit-layer.")
    if int8 not in (False, None, True, "dynamic"):
        raise UserError(f"a late-interaction bundle is float32 or dynamic int8, got int8={int8!r}; "
                        "pass --int8 without calibration, or no --int8.")
    model_dir = check_model_dir(model_dir)
    reference = load_segment_model(model_dir)
    model = export_copy(reference.model)
    spec = device_tokenizer_spec(reference.tokenizer)
    requests = [[s for s in r if s and s.strip()] for r in (sample_requests or [])[:SAMPLES]]
    requests = [r for r in requests if r]
    if requests:
        inputs = sample_source or "requests"
    else:
        texts = [t for t in (sample_texts or []) if t and t.strip()][:64]
        inputs = f"requests of 1..n of {len(texts)} {sample_source or 'sample texts'}" if texts else \
            "requests of built-in sample segments"
        requests = parity_requests(texts or list(DEFAULT_TEXTS), model.max_segments)
    texts = sorted({s for r in requests for s in r})
    tokenizer_check = check_device_tokenizer(reference.tokenizer, edgekit_device.Tokenizer(spec),
                                             texts + PROBE_TEXTS, model.max_segment_tokens)
    config = model.config
    entries = _entries(config.hidden_size, config.num_labels)
    modules = {"segment_encoder": (SegmentEncoderGraph(model), (torch.full((2, 8), 5), torch.ones(2, 8, dtype=torch.long))),
               "interaction": (InteractionGraph(model), (torch.zeros(2, 8, config.hidden_size),
                                                         torch.tensor([[0] * 4 + [1] * 4, [0] * 6 + [-1] * 2])))}
    precision = "int8" if int8 else "fp32"
    parameters, nonzero = count_parameters(model)  # before snapping, which changes no zero
    snapped = snap_word_embeddings(model, embedding_bits) if int8 else None
    out = Path(out)
    with atomic_dir(out, BUNDLE_KIND, overwrite) as tmp, tempfile.TemporaryDirectory(prefix="edgekit-li-") as work:
        graphs = {}
        for name, (module, args) in modules.items():
            target = tmp / f"{name}.onnx"
            if int8:
                quantize_onnx(export_onnx(module, args, Path(work) / target.name, entries[name]), target, "dynamic")
            else:
                export_onnx(module, args, target, entries[name])
            graphs[name] = {"file": target.name, **entries[name]}
        write_device_files(tmp, spec, reference.labels)
        settings = {**model.settings(), "split_layer": model.split, "hidden_size": config.hidden_size}
        manifest = {
            "format_version": FORMAT_VERSION, "format": "onnx", "precision": precision,
            "quantization": {"scheme": "dynamic", "embedding_bits": embedding_bits,
                             **({"embedding_snap": snapped} if snapped else {})} if int8 else None,
            "layout": LAYOUT, "graphs": graphs, "max_length": model.max_segment_tokens,
            "exits": {"layers": [model.depth], "default": model.depth, "dynamic": [],
                      "run": "segment_encoder on each segment alone (cache its output per segment text); interaction "
                             "on a request's cached outputs concatenated, with segment_ids 0..n-1 (-1: padding)"},
            "late_interaction": settings,
            "model": {"architecture": model.family, "num_layers": model.depth, "num_heads": config.num_attention_heads,
                      "hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
                      "num_labels": config.num_labels, "pooling": model.pooling, "parameters": parameters,
                      "nonzero_parameters": nonzero},
            "tokenizer": {"file": "device_tokenizer.json", "type": spec["type"], "check": tokenizer_check},
            "labels": {"file": "labels.json", "count": len(reference.labels)},
            "edgekit_version": __version__, "source": source_facts(Path(model_dir)), "versions": versions(),
        }
        manifest = write_manifest(tmp, manifest)
        bundle = SegmentBundle(tmp, threads=2)
        try:
            manifest["parity"] = check_parity(reference, bundle, requests, precision, model.depth, min_agreement, inputs)
        except UserError as e:
            raise snap_hint(e, embedding_bits, snapped) from None
        write_manifest(tmp, {k: v for k, v in manifest.items() if k not in ("files", "sizes")})
    return out
