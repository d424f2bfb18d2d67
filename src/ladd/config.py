"""Typed configs: dataclasses, YAML presets, dotted command-line overrides, validation with helpful errors."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config value is wrong; the message names the field and the fix."""




class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. PyYAML's default (YAML 1.1) also reads yes/no/on/off as booleans, so
    ``train.mixed_precision=no`` arrived as False and was refused as not a string."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
def fail(name: str, problem: str, fix: str) -> None:
    """Raise the one error format of every config check: ``<field>: <problem>; <fix>``."""
    raise ConfigError(f"{name}: {problem}; {fix}")


def number(name: str, value) -> float:
    """A float from an int, a float or a numeric string: PyYAML reads ``5e-5`` (no dot) as a string."""
    if isinstance(value, bool):
        fail(name, f"got {value!r}", "give a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        fail(name, f"got {value!r}", "give a number, e.g. 1.0e-4")


def positive_ints(section: str, obj, names) -> None:
    """Every field of ``names`` on ``obj`` is an int >= 1 (booleans are refused: YAML reads ``true`` as one)."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            fail(f"{section}.{name}", f"got {value!r}", "give a positive integer")


def to_dict(cfg) -> dict:
    """A config as plain data; a config class may define its own ``to_dict`` (e.g. one with a method section)."""
    own = getattr(cfg, "to_dict", None)
    return own() if callable(own) else dataclasses.asdict(cfg)


def _coerce(name: str, tp, value):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value or {}, prefix=name + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(name, args[0], value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (object,)
        return origin(_coerce(name, inner, v) for v in value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{name} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from ``data``; unknown keys are an error that lists the valid ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown config field(s) {[prefix + u for u in unknown]}; valid: {sorted(fields)}")
    kwargs = {k: _coerce(prefix + k, hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def apply_override(data: dict, override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to the nested dict ``data``."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like field.sub=value (e.g. train.steps=100)")
    key, raw = override.split("=", 1)
    node = data
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {p} is not a section")
    try:
        node[leaf] = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({' '.join(str(e).split())})") from None


def load(cls, preset: str | Path | None = None, overrides: typing.Iterable[str] = ()):
    """``cls`` from defaults, then the YAML ``preset``, then dotted ``overrides``; validated."""
    data = read_preset(preset) if preset is not None else {}
    for o in overrides:
        apply_override(data, o)
    return from_dict(cls, data)


def read_preset(path: str | Path, _seen: tuple = ()) -> dict:
    """A YAML preset as a dict. ``base: other.yaml`` (relative to the preset's folder) starts from that preset
    and merges this one's keys over it, section by section (e.g. ``base: nano.yaml`` + ``train: {steps: 2400}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config preset {path} does not exist; presets live in configs/")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset is a YAML mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = path.parent / base
    if base_path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base: {base}' makes a cycle of presets")
    return _merge(read_preset(base_path, _seen + (path.resolve(),)), data)


def _merge(base: dict, top: dict) -> dict:
    """``top``'s keys over ``base``'s, mapping into mapping; an empty mapping replaces (``sample_shifts: {}`` clears
    what the base set, as the override ``student.sample_shifts={}`` does)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def save(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def option(help: str, **kw):
    """A field of a one-section config with its flag's ``help`` (and ``choices``, ``required``); ``default``
    defaults to None."""
    return dataclasses.field(default=kw.pop("default", None), metadata={"help": help, **kw})


def add_arguments(parser, cls) -> None:
    """Flat ``--field-name`` options for every field of the one-section config ``cls`` (``ladd eval``, ``ladd
    sample``, the nano recipes): the same typed dataclass, its ``__post_init__`` checks, and a field's
    ``metadata`` for ``help``, ``choices`` and ``required``. Booleans are ``--flag`` / ``--no-flag``."""
    import argparse

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        text = meta.pop("help", "")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            if default is not None:
                text += (" " if text else "") + "(default: %(default)s)"
            parser.add_argument(flag, type=tp, default=default, help=text, **meta)


def from_args(cls, args):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
