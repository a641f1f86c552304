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

import numpy as np
import torch
from torch import nn

from edgekit.errors import UserError
from edgekit.late_interaction.model import LateInteractionClassifier

LAYOUT = "late-interaction"
# fp32: the graphs compute the checkpoint's arithmetic; int8 moves logits by a few hundredths
MAX_LOGIT_DIFF = {"fp32": 1e-3, "int8": None}
MIN_AGREEMENT = {"fp32": 1.0, "int8": 0.9}


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


def check_parity(reference, bundle, texts: list[str], precision: str) -> dict:
    """Logits of the checkpoint and the bundle on requests made of ``texts``; raise if they differ.

    Requests: 1, 2, 3 ... consecutive texts (up to ``max_segments``), every text encoded once per
    side, as a server with a cache would."""
    ours, theirs = reference.encode_segments(texts), bundle.encode_segments(texts)
    requests, start, size = [], 0, 1
    while start < len(texts):
        size = min(size, bundle.max_segments)
        requests.append(list(range(start, min(start + size, len(texts)))))
        start += size
        size += 1
    expected = reference.interact([[ours[i] for i in r] for r in requests])
    got = bundle.interact([[theirs[i] for i in r] for r in requests])
    diff = float(np.abs(expected - got).max())
    agreement = float((expected.argmax(-1) == got.argmax(-1)).mean())
    limit = MAX_LOGIT_DIFF[precision]
    if (limit is not None and diff > limit) or agreement < MIN_AGREEMENT[precision]:
        raise UserError(f"the exported late-interaction graphs disagree with the checkpoint (max logit difference "
                           f"{diff:.2e}, argmax agreement {agreement:.3f} on {len(requests)} requests); this is a bug "
                           "in edgekit's export, please report it.")
    # the keys of the other layouts' parity entry (edgekit.export.parity), which `edgekit export` prints
    return {"samples": len(requests), "inputs": f"requests of 1..{size - 1} of {len(texts)} sample segments",
            "raw_agreement": agreement, "min_agreement": MIN_AGREEMENT[precision], "near_ties": 0,
            "max_abs_diff": diff, "max_abs_diff_limit": limit, "segments": len(texts)}


# parity segments when no sample texts are given: a request of the paper's Figure 3 kind, and titles
DEFAULT_TEXTS = ("男性", "点击了 手机壳", "最近搜索：跑步鞋 轻便", "会点击 运动手环 吗？", "江疏影甜甜圈自拍",
                 "出栏一头猪亏损300元")


def export_late_interaction(model_dir, out, int8: bool | str = False, sample_texts=None, overwrite: bool = False,
                            format: str = "onnx", exit_layer: int | None = None) -> Path:
    """Write the ``late-interaction`` bundle of the checkpoint ``model_dir`` to ``out``; returns ``out``."""
    import edgekit_device
    from edgekit_device.segments import SegmentBundle

    from edgekit import __version__
    from edgekit.checkpoint import check_model_dir
    from edgekit.export.bundle import FORMAT_VERSION, source_facts, versions, write_device_files, write_manifest
    from edgekit.export.device_tokenizer import device_tokenizer_spec
    from edgekit.export.onnx import export_onnx, quantize_onnx
    from edgekit.export.parity import PROBE_TEXTS, check_device_tokenizer
    from edgekit.export.stage import BUNDLE_KIND
    from edgekit.io import atomic_dir, check_out
    from edgekit.late_interaction.serving import load_segment_model
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
    model = copy.deepcopy(reference.model).float().eval()
    model.config._attn_implementation = "eager"  # the additive mask as plain arithmetic in the graph
    spec = device_tokenizer_spec(reference.tokenizer)
    texts = [t for t in (sample_texts or []) if t and t.strip()][:64] or list(DEFAULT_TEXTS)
    tokenizer_check = check_device_tokenizer(reference.tokenizer, edgekit_device.Tokenizer(spec),
                                             texts + PROBE_TEXTS, model.max_segment_tokens)
    config = model.config
    entries = _entries(config.hidden_size, config.num_labels)
    modules = {"segment_encoder": (SegmentEncoderGraph(model), (torch.full((2, 8), 5), torch.ones(2, 8, dtype=torch.long))),
               "interaction": (InteractionGraph(model), (torch.zeros(2, 8, config.hidden_size),
                                                         torch.tensor([[0] * 4 + [1] * 4, [0] * 6 + [-1] * 2])))}
    precision = "int8" if int8 else "fp32"
    parameters, nonzero = count_parameters(model)
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
            "quantization": {"scheme": "dynamic"} if int8 else None,
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
        manifest["parity"] = check_parity(reference, bundle, texts, precision)
        write_manifest(tmp, {k: v for k, v in manifest.items() if k not in ("files", "sizes")})
    return out
