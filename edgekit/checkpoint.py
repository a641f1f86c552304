"""Checkpoint directories: standard Hugging Face directories plus edgekit's ``edgekit.json``.

``config.json`` + ``model.safetensors`` + tokenizer files, so anything that loads the architecture
loads the model; ``edgekit.json`` beside them records what the HF config cannot (stage, teacher,
vocabulary mapping, exits, sparsity).
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekit.errors import UserError
from edgekit.io import atomic_dir, read_json, write_json

META_FILE = "edgekit.json"
BUILTIN_TEACHERS = ("e5-small",)


def edgekit_home() -> Path:
    return Path(os.environ.get("EDGEKIT_HOME", Path.home() / ".cache" / "edgekit"))


def resolve_teacher(spec: str) -> Path:
    """A teacher directory, or a built-in name imported on first use (``e5-small``)."""
    if spec in BUILTIN_TEACHERS:
        target = edgekit_home() / "teachers" / spec
        if not (target / "config.json").exists():
            from edgekit.teachers import import_e5_small

            import_e5_small(target, overwrite=True)
        return target
    return Path(spec)


def check_model_dir(path, role: str = "model") -> Path:
    """Raise a UserError unless ``path`` is a Hugging Face checkpoint directory."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{role} directory '{path}' does not exist; check the path"
                        + (" or use the built-in teacher 'e5-small'." if role == "teacher" else "."))
    if not p.is_dir():
        raise UserError(f"{role} '{path}' is a file, not a checkpoint directory; pass the directory that holds config.json.")
    if not (p / "config.json").is_file():
        raise UserError(f"'{path}' is not a Hugging Face checkpoint directory (it has no config.json); "
                        "pass a directory written by save_pretrained or by `edgekit teacher e5-small`.")
    if not any((p / f).exists() for f in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")):
        raise UserError(f"checkpoint directory '{path}' has a config.json but no weights (model.safetensors); "
                        "it may be an interrupted save: re-create it.")
    return p


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

    config = load_config_of(path, role)
    adapter_for(config)  # unsupported architectures fail here with the supported list
    model = AutoModel.from_pretrained(Path(path))
    if frozen:
        model.eval()
        model.requires_grad_(False)
    return model


def load_tokenizer(path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(Path(path))
    except (OSError, ValueError) as e:
        raise UserError(f"no usable tokenizer in '{path}' ({str(e).splitlines()[0]}); "
                        "a checkpoint directory must include its tokenizer files.") from None


def read_meta(path) -> dict:
    p = Path(path) / META_FILE
    return read_json(p) if p.exists() else {}


def save_model_dir(model, out, tokenizer=None, meta: dict | None = None, extra_json: dict | None = None) -> Path:
    """Write ``model`` (+ tokenizer, ``edgekit.json`` and extra JSON files) atomically to ``out``."""
    from edgekit import __version__

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / META_FILE, {"edgekit_version": __version__, **(meta or {})})
        for name, data in (extra_json or {}).items():
            write_json(tmp / name, data)
    return Path(out)
