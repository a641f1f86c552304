"""Typed configuration: dataclasses, loaded from YAML recipes, overridden by ``section.key=value``.

Every unknown key and every value of the wrong type is a ``UserError`` that names the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from edgekit.errors import UserError


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping of keys to values (a recipe section)"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def coerce(value: Any, tp, key: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to type ``tp`` or raise a UserError naming ``key``."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except UserError as e:
                errors.append(e)
        raise UserError(f"recipe key '{key}' must be {_type_name(tp)}, got {value!r}.")
    if origin is typing.Literal:
        if value in get_args(tp):
            return value
        raise UserError(f"recipe key '{key}' must be {_type_name(tp)}, got {value!r}.")
    if origin is list:
        (item,) = get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"recipe key '{key}' must be {_type_name(tp)}, got {value!r}.")
        return [coerce(v, item, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=key)
    else:
        return value
    raise UserError(f"recipe key '{key}' must be {_type_name(tp)}, got {value!r}.")


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, checking every key and type."""
    data = data or {}
    if not isinstance(data, dict):
        raise UserError(f"recipe section '{prefix or 'top level'}' must be a mapping of keys to values, got {data!r}.")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise UserError(
                f"unknown recipe key '{key}'; known keys{' in ' + prefix if prefix else ''}: {', '.join(sorted(names))}."
            )
        kwargs[k] = coerce(v, hints[k], key)
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def parse_overrides(pairs) -> dict:
    """``["train.lr=1e-4", "student.num_layers=4"]`` -> nested dict (values stay strings; coerced later)."""
    out: dict = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise UserError(f"override '{pair}' is not of the form section.key=value.")
        key, value = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    return out


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def read_recipe(path) -> dict:
    """The raw mapping of a YAML recipe. Relative paths inside it stay as written."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe '{path}' does not exist; pass the path of a YAML file such as recipes/quickstart.yaml.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"recipe '{path}' is not valid YAML{where}; fix the syntax and retry.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"recipe '{path}' must be a mapping of sections (teacher:, student:, ...), not a {type(data).__name__}.")
    return data


def stage_section(data: dict, stage: str) -> dict:
    """The part of a recipe that stage ``stage`` reads.

    A pipeline recipe (one with a ``pipeline:`` section, see ``edgekit.pipeline``) holds each
    stage's recipe under the stage's name; the pipeline's teacher fills in the distill and prune
    stages' ``teacher.path``. Any other recipe is read whole.
    """
    if "pipeline" not in data:
        return data
    section = data.get(stage) or {}
    if not isinstance(section, dict):
        raise UserError(f"recipe section '{stage}' must be a mapping of the {stage} stage's keys, got {section!r}.")
    teacher = (data.get("pipeline") or {}).get("teacher")
    if stage in ("distill", "prune") and teacher and "path" not in (section.get("teacher") or {}):
        section = merge({"teacher": {"path": teacher}}, section)
    return section


def stage_overrides(cls, overrides: dict, stage: str) -> dict:
    """Overrides in the shape ``edgekit run`` takes them, read by one stage's command.

    ``edgekit run --set distill.train.max_steps=5`` names the distill stage's ``train.max_steps``;
    ``edgekit distill --set distill.train.max_steps=5`` means the same, as does the stage's own
    ``train.max_steps=5``. A stage has a section of its own name (``distill.method``), so under
    ``STAGE.`` a key that is one of the stage's top-level sections and not a key of that section
    is the pipeline shape. Keys given without the prefix (flags among them) win over prefixed ones.
    """
    inner = overrides.get(stage)
    if not isinstance(inner, dict) or not dataclasses.is_dataclass(cls):
        return overrides
    fields = {f.name: f for f in dataclasses.fields(cls)}
    own = get_type_hints(cls).get(stage) if stage in fields else None
    own_keys = {f.name for f in dataclasses.fields(own)} if dataclasses.is_dataclass(own) else set()
    lifted = {k: v for k, v in inner.items() if k in fields and k not in own_keys}
    if not lifted:
        return overrides
    rest = {k: v for k, v in inner.items() if k not in lifted}
    out = {k: v for k, v in overrides.items() if k != stage}
    if rest:
        out[stage] = rest
    return merge(lifted, out)


def load_config(cls, recipe: str | Path | None = None, overrides: dict | None = None,
                ignore_sections=(), stage: str | None = None):
    """Recipe YAML (optional) merged with ``overrides``, validated into ``cls``.

    ``stage`` picks that stage's section out of a pipeline recipe. ``ignore_sections`` names
    top-level sections of a flat recipe that belong to other stages; they are skipped here
    instead of being reported as unknown keys.
    """
    data = stage_section(read_recipe(recipe), stage) if recipe and stage else (read_recipe(recipe) if recipe else {})
    data = merge(data, stage_overrides(cls, overrides or {}, stage) if stage else overrides or {})
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if k in names or k not in set(ignore_sections)}
    return from_dict(cls, data)
