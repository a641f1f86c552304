"""Checkpoint directories: standard Hugging Face directories plus edgekit's ``edgekit.json``.

``config.json`` + ``model.safetensors`` + tokenizer files, so anything that loads the architecture
loads the model; ``edgekit.json`` beside them records what the HF config cannot (stage, teacher,
vocabulary mapping, exits, sparsity).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from edgekit.errors import UserError
from edgekit.io import atomic_dir, read_json, write_json

META_FILE = "edgekit.json"
BUILTIN_TEACHERS = ("e5-small",)


def edgekit_home() -> Path:
    return Path(os.environ.get("EDGEKIT_HOME", Path.home() / ".cache" / "edgekit"))


def resolve_teacher(spec: str) -> Path:
    """A teacher directory, or a built-in name imported on first use (``e5-small``).

    The first use may be by every rank of a ``torchrun`` job at once: one process imports under a
    file lock in the teachers cache while the others wait for it, then find the checkpoint there.
    """
    if spec in BUILTIN_TEACHERS:
        target = edgekit_home() / "teachers" / spec
        if not (target / "config.json").exists():
            with _exclusive_lock(target.with_name(f".{spec}.lock"), f"the built-in teacher {spec} to be imported "
                                                                    f"into '{target}' by another process"):
                if not (target / "config.json").exists():  # another process may have imported it meanwhile
                    from edgekit.teachers import import_e5_small

                    import_e5_small(target, overwrite=True)
        return target
    return resolve_model_dir(spec, role="teacher")


@contextlib.contextmanager
def _exclusive_lock(lock_file: Path, waiting_for: str):
    """Hold an exclusive ``flock`` on ``lock_file`` (created if missing) for the block.

    The lock file is left behind on purpose: deleting it would let a late process lock a new file
    while an early one still holds the old inode. Where ``fcntl`` does not exist (Windows), no lock.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {waiting_for}", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Which model a path names: a checkpoint directory, a bundle, or a run directory's own model

RUN_MODEL = "model"  # every stage writes its output model to RUN/model; results.json records it as model_dir
RESULTS_FILE = "results.json"


def _is_checkpoint(p: Path) -> bool:
    """A Hugging Face directory: a config.json that is a model config, not a run's recorded config."""
    config = p / "config.json"
    return config.is_file() and not run_config_of(p)


def run_config_of(p: Path) -> dict | None:
    """The config.json an edgekit run directory records (``{"command": ..., "config": ...}``), or None."""
    config = p / "config.json"
    if not (config.is_file() and (p / "versions.json").is_file()):
        return None
    try:
        data = read_json(config)
    except (ValueError, OSError):
        return None
    return data if isinstance(data, dict) and "command" in data and "config" in data else None


def _pipeline_models(p: Path, bundles: bool) -> list[str]:
    found = [p / "distill" / RUN_MODEL, p / "prune" / RUN_MODEL, *sorted(p.glob(f"finetune/*/{RUN_MODEL}"))]
    if bundles:
        found += sorted(p.glob("export/*/bundle"))
    return [str(f) for f in found if f.is_dir()]


def resolve_model_dir(path, role: str = "model", bundles: bool = False) -> Path:
    """The model directory ``path`` names: itself, or the model a run directory wrote.

    A checkpoint directory (``config.json`` of a model) or, with ``bundles``, a bundle directory
    (``manifest.json``) names itself. A stage's run directory (``edgekit distill/prune/finetune
    --out RUN``) names the model its ``results.json`` records (``model_dir``, normally ``RUN/model``;
    ``bundle`` for a pipeline's export stage when ``bundles``). Anything else is returned unchanged,
    for ``check_model_dir`` to explain. An ``edgekit run`` directory holds several models and names
    none: the error lists them.
    """
    p = Path(path)
    if not p.is_dir() or _is_checkpoint(p) or (p / "manifest.json").is_file():
        return p
    run_config = run_config_of(p)
    if run_config is None:
        return p
    if isinstance(run_config.get("config"), dict) and "pipeline" in run_config["config"]:
        models = _pipeline_models(p, bundles)
        raise UserError(f"'{path}' is an `edgekit run` directory holding several models; pass one of them as the "
                        f"{role}" + (f": {', '.join(models)}." if models else " once the run has written them."))
    results = p / RESULTS_FILE
    if not results.is_file():
        raise UserError(f"'{path}' is a run directory whose run has not finished (it has no {RESULTS_FILE}); "
                        f"finish it with --resume, then pass the directory again (its model is {p / RUN_MODEL}).")
    try:
        recorded = read_json(results)
    except (ValueError, OSError):
        raise UserError(f"'{results}' cannot be read as JSON; pass the run's model directory itself "
                        f"({p / RUN_MODEL}).") from None
    # student_dir: what distill and prune recorded before every stage wrote RUN/model
    keys = ("model_dir", "student_dir") + (("bundle",) if bundles else ())
    for key in keys:
        if isinstance(recorded, dict) and isinstance(recorded.get(key), str):
            return _locate(p, recorded[key], role)
    if isinstance(recorded, dict) and isinstance(recorded.get("bundle"), str):
        raise UserError(f"'{path}' is an export run: its bundle is not a PyTorch checkpoint; pass the fine-tuned "
                        f"model it was exported from as the {role}.")
    raise UserError(f"'{path}' is a run directory whose {RESULTS_FILE} records no model; pass a checkpoint "
                    "directory written by `edgekit distill`, `prune` or `finetune`.")


def _locate(run: Path, recorded: str, role: str) -> Path:
    """The recorded model, looked for inside the run first: a run directory may have been moved or
    been written from another working directory (the recorded path is as the user typed --out)."""
    inside = run / Path(recorded).name
    if inside.is_dir():
        return inside
    if Path(recorded).is_absolute() and Path(recorded).is_dir():
        return Path(recorded)
    raise UserError(f"the {role} that '{run}/{RESULTS_FILE}' records ('{recorded}') is missing; pass the "
                    "model directory itself.")


def check_model_dir(path, role: str = "model", builtin: bool = False) -> Path:
    """The checkpoint directory ``path`` names (see ``resolve_model_dir``); a UserError unless it is a
    Hugging Face checkpoint directory with weights. With ``builtin``, a built-in teacher's name
    (``e5-small``) names its imported checkpoint, imported on first use."""
    p = resolve_teacher(str(path)) if builtin and str(path) in BUILTIN_TEACHERS else resolve_model_dir(path, role)
    if not p.exists():
        raise UserError(f"{role} directory '{path}' does not exist; check the path"
                        + (" or use the built-in teacher 'e5-small'." if role == "teacher" else "."))
    if not p.is_dir():
        raise UserError(f"{role} '{path}' is a file, not a checkpoint directory; pass the directory that holds config.json.")
    if (p / "manifest.json").is_file() and not (p / "config.json").is_file():
        source = _bundle_source(p)
        raise UserError(f"'{path}' is a device bundle, not a PyTorch checkpoint; pass the checkpoint it was "
                        f"exported from" + (f" ({source})." if source else "."))
    if not (p / "config.json").is_file():
        raise UserError(f"'{path}' is not a Hugging Face checkpoint directory (it has no config.json); "
                        "pass a directory written by save_pretrained or by `edgekit teacher e5-small`.")
    if not any((p / f).exists() for f in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")):
        raise UserError(f"checkpoint directory '{p}' has a config.json but no weights (model.safetensors); "
                        "it may be an interrupted save: re-create it.")
    _check_safetensors(p / "model.safetensors", path)
    return p


def _check_safetensors(weights: Path, path) -> None:
    """Parse the header of ``weights`` (cheap: no tensor is read), so that a failed download or an
    interrupted copy is one sentence here instead of a traceback from deep inside transformers;
    safetensors also checks that the file is as long as its header says."""
    if not weights.is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except Exception as e:  # noqa: BLE001  (SafetensorError is a Rust type; OSError on unreadable files)
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{weights.name} in '{path}' cannot be read ({reason}); the file is damaged or incomplete: "
                        "copy or download the checkpoint again.") from None


def _bundle_source(p: Path) -> str | None:
    try:
        source = read_json(p / "manifest.json").get("source", {}).get("checkpoint")
    except (ValueError, OSError, AttributeError):
        return None
    return source if isinstance(source, str) else None


DEFAULT_MAX_LENGTH = 128  # the fine-tuning default (task.max_length)


def default_max_length(model_dir) -> int:
    """The input length every command uses for a checkpoint unless told otherwise: the length it was
    fine-tuned with (``edgekit.json`` ``max_length``), else 128, capped at its position embeddings."""
    p = check_model_dir(model_dir)
    recorded = read_meta(p).get("max_length")
    length = recorded if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded > 0 \
        else DEFAULT_MAX_LENGTH
    positions = getattr(load_config_of(p), "max_position_embeddings", None)
    return min(length, positions) if isinstance(positions, int) else length


@contextlib.contextmanager
def quiet_loading():
    """Turn off transformers' own progress bars ("Loading weights") for the block: a command that
    loads a small model to answer once should print the answer and nothing else."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_config_of(path, role: str = "model"):
    from transformers import AutoConfig

    p = check_model_dir(path, role)
    try:
        return AutoConfig.from_pretrained(p)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"the config.json in '{path}' cannot be read by transformers ({str(e).splitlines()[0]}); "
                        "pass a checkpoint of a supported encoder.") from None


def load_encoder(path, role: str = "model", frozen: bool = False):
    """Load a supported encoder with ``AutoModel`` (teachers: frozen and in eval mode)."""
    from transformers import AutoModel

    from edgekit.distill.adapters import adapter_for

    p = check_model_dir(path, role)
    config = load_config_of(p, role)
    adapter_for(config)  # unsupported architectures fail here with the supported list
    model = AutoModel.from_pretrained(p)
    if frozen:
        model.eval()
        model.requires_grad_(False)
    return model


def load_tokenizer(path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(Path(path))
    except (OSError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        if isinstance(e, ValueError) and (Path(path) / "tokenizer.json").is_file():
            raise UserError(f"no usable tokenizer in '{path}': its tokenizer.json cannot be read ({reason}); the file "
                            "is damaged or incomplete: copy or download the checkpoint again.") from None
        raise UserError(f"no usable tokenizer in '{path}' ({reason}); "
                        "a checkpoint directory must include its tokenizer files.") from None


def read_meta(path) -> dict:
    p = Path(path) / META_FILE
    return read_json(p) if p.exists() else {}


def save_model_dir(model, out, tokenizer=None, meta: dict | None = None, extra_json: dict | None = None,
                   overwrite: bool = True) -> Path:
    """Write ``model`` (+ tokenizer, ``edgekit.json`` and extra JSON files) atomically to ``out``.

    A stage saves into its own run directory, so an earlier checkpoint there is replaced
    (``overwrite``); anything that is not a checkpoint edgekit wrote is still refused (``atomic_dir``)."""
    from edgekit import __version__

    with atomic_dir(out, "checkpoint", overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / META_FILE, {"edgekit_version": __version__, **(meta or {})})
        for name, data in (extra_json or {}).items():
            write_json(tmp / name, data)
    return Path(out)
