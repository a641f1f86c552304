"""Task files: one task's tuned parameters in one small safetensors file, described by its metadata.

A task file holds exactly the parameters tuning trained (``TuneModule.state_dict``): for option
tuning a few hundred embeddings, for fine-tuning the whole model. Its safetensors header carries,
under ``edgekit_task``, one JSON object: the format, the method and its ``TuneSpec``, the task
(name, labels, ``max_length``) and the base checkpoint it was tuned on (path and the sha256 of its
weight files). A task file loads only onto the base with that hash. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from edgekit.errors import UserError

FORMAT = "edgekit-task/1"
META_KEY = "edgekit_task"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_fingerprints: dict[tuple, str] = {}


def weight_files(model_dir) -> list[Path]:
    d = Path(model_dir)
    files = [d / n for n in WEIGHT_FILES if (d / n).is_file()] or sorted(d.glob("model-*-of-*.safetensors"))
    if not files:
        raise UserError(f"'{model_dir}' has no weight files (model.safetensors); pass a checkpoint directory.")
    return files[:1] if files[0].name in WEIGHT_FILES else files


def base_fingerprint(model_dir) -> str:
    """sha256 of a checkpoint's weight files (cached per file size and modification time)."""
    files = weight_files(model_dir)
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _fingerprints:
        h = hashlib.sha256()
        for f in files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        _fingerprints[key] = h.hexdigest()
    return _fingerprints[key]


def save_task_file(path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``tensors`` and ``meta`` to ``path`` atomically (a temporary file, then a rename)."""
    from safetensors.torch import save_file

    from edgekit.io import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp),
                  metadata={META_KEY: json.dumps({"format": FORMAT, **meta}, ensure_ascii=False)})
    return path


def task_meta(spec, task: str, labels, max_length: int, base_dir, base, descriptions=()) -> dict:
    """The metadata of a task file: how to rebuild the parameters, the task, and the base's identity."""
    return {"method": spec.method, "spec": spec.to_json(), "task": task, "labels": list(labels),
            "label_descriptions": list(descriptions), "max_length": max_length,
            "base": {"path": str(Path(base_dir).resolve()), "sha256": base_fingerprint(base_dir),
                     "model_type": base.model_type, "parameters": base.parameter_count()}}


def read_task_meta(path) -> dict:
    """The JSON metadata of a task file; a ``UserError`` for anything that is not one."""
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir() and (p / "task.safetensors").is_file():  # a run directory of `edgekit tune`
        p = p / "task.safetensors"
    if not p.is_file():
        raise UserError(f"task file '{path}' does not exist; pass the task.safetensors an `edgekit tune` run wrote.")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception:  # safetensors raises its own error types for every malformed header
        raise UserError(f"'{path}' is not a safetensors file; pass the task.safetensors an `edgekit tune` run wrote.") from None
    if raw is None:
        raise UserError(f"'{path}' is a safetensors file without edgekit task metadata; pass the task.safetensors "
                        "an `edgekit tune` run wrote.")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise UserError(f"task file '{path}' has format {meta.get('format')!r}; this edgekit reads {FORMAT}.")
    meta["path"] = str(p)
    return meta


def check_base(meta: dict, base_dir) -> None:
    """Refuse a task file tuned on another base (compared by the sha256 of the weights)."""
    want, have = meta["base"]["sha256"], base_fingerprint(base_dir)
    if want != have:
        raise UserError(f"task file '{meta['path']}' was tuned on the base '{meta['base']['path']}' (weights sha256 "
                        f"{want[:12]}…), not on '{base_dir}' ({have[:12]}…); load it onto the base it was tuned on.")


def load_task_tensors(meta: dict) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(meta["path"])


def load_tuned(task_file, base=None, device: str = "cpu"):
    """(``TuneModule`` in eval mode, metadata) of a task file on its base (default: the recorded path)."""
    from edgekit.checkpoint import check_model_dir, load_encoder
    from edgekit.tune.model import Base, TuneModule, TuneSpec

    meta = read_task_meta(task_file)
    base_dir = check_model_dir(base or meta["base"]["path"])
    check_base(meta, base_dir)
    module = TuneModule(Base(load_encoder(base_dir)), TuneSpec(**meta["spec"]))
    module.load_state_dict(load_task_tensors(meta))
    return module.to(device).eval(), meta
