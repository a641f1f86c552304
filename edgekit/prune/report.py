"""What pruning bought: per-tensor sparsity, model size, and the schedule and loss curves.

M6-Rec section 3.5 reports pruning as "M6-Edge's size from 10M to 2M"; the report counts
parameters and non-zeros (shared tensors once, as ALBERT's 24 layers are one set of weights) and
adds two byte counts: dense fp32, and gzip of the same bytes, a proxy for what an unstructured
sparse checkpoint costs to download.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


def _gzip_size(tensors) -> int:
    """Bytes of gzip (level 6, as the gzip tool) over the tensors' fp32 bytes, streamed."""
    z = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip container
    size = 0
    for t in tensors:
        size += len(z.compress(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()))
    return size + len(z.flush())


def sparsity_report(model: nn.Module, pruned=None) -> dict:
    """Per-tensor (name, shape, numel, nonzeros, sparsity) and totals for every parameter, shared ones once.

    ``pruned``: names of the tensors a pruner selected; each tensor is then marked ``pruned``."""
    pruned = set(pruned) if pruned is not None else None
    tensors, params = [], []
    for name, p in model.named_parameters():  # yields a shared tensor once
        numel, nonzeros = p.numel(), int(torch.count_nonzero(p))
        tensors.append({"name": name, "shape": list(p.shape), "numel": numel, "nonzeros": nonzeros,
                        "sparsity": 1.0 - nonzeros / numel if numel else 0.0,
                        **({"pruned": name in pruned} if pruned is not None else {})})
        params.append(p)
    total = sum(t["numel"] for t in tensors)
    nonzero = sum(t["nonzeros"] for t in tensors)
    return {
        "tensors": tensors,
        "totals": {
            "parameters": total,
            "nonzeros": nonzero,
            "sparsity": 1.0 - nonzero / total if total else 0.0,
            "dense_fp32_bytes": 4 * total,
            "gzip_fp32_bytes": _gzip_size(params),
        },
    }


def write_report(report: dict, path_json: str | Path) -> Path:
    """Write ``report`` as indented JSON, creating the parent directory."""
    path = Path(path_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def _save_plot(x: Sequence[float], y: Sequence[float], path_png: str | Path, ylabel: str, title: str,
               **line_kw) -> Path:
    # Figure + Agg canvas directly: no pyplot global state, no backend switch for the caller
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(x) != len(y):
        raise ValueError(f"{len(x)} steps but {len(y)} values")
    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(list(x), list(y), **line_kw)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    from edgekit.io import claim

    claim(path)  # a file of the run directory it is drawn into (what --overwrite may replace)
    fig.savefig(path)
    return path


def plot_schedule(steps: Sequence[int], sparsities: Sequence[float], path_png: str | Path) -> Path:
    """The target sparsity against the step, drawn as steps (masks change only every Δt)."""
    return _save_plot(steps, sparsities, path_png, "target sparsity", "Gradual magnitude pruning schedule",
                      drawstyle="steps-post")


def plot_loss(steps: Sequence[int], losses: Sequence[float], path_png: str | Path) -> Path:
    """The training loss against the step."""
    return _save_plot(steps, losses, path_png, "loss", "Training loss while pruning")
