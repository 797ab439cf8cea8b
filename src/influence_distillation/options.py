"""Config dataclass fields that describe their own command-line flags, and how configs are checked, compared,
saved and read.

`option` puts the flag, help text, choices and valid range into a field's metadata, so `--help`, config files,
manifests and validation all describe the same fields. A whole config round-trips through `to_dict` / `from_dict`
(which is how a run is replayed from its manifest); `key_dict` is what cache keys and run comparisons hash.
`performance` options (batch sizes) change speed and memory, not results, so neither hashes them: a run or cached
stage made with other batch sizes, or on another device whose defaults differ, is the same run. Library errors name
fields as `SelectionConfig.budget`; `as_flags` puts the CLI's flags in their place.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

from influence_distillation.errors import ConfigError


def option(default: Any, help: str, flag: str | None = None, choices: tuple | None = None, added: bool = False,
           minimum: float | None = None, performance: bool = False) -> Any:
    """A dataclass field that also describes its command-line flag. Numbers must be positive unless `minimum` (the
    smallest valid value) says otherwise, so a new option is range-checked without anyone remembering to. `added`
    marks an option introduced after runs and caches already existed, whose default reproduces what they did: at its
    default it is left out of `key_dict`, so an upgrade does not invalidate a finished run or a cached stage.
    `performance` marks an option that changes only speed and memory (up to float rounding): never in `key_dict`."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "added": added,
                                            "minimum": minimum, "performance": performance})


def scalar_type(annotation: Any) -> Any:
    """`int` for `int | None`, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def range_problem(metadata: Any, kind: Any, value: Any) -> str | None:
    """Why a number is outside its option's range (see `option`), or None."""
    if kind not in (int, float) or value is None or isinstance(value, bool):
        return None
    minimum = metadata.get("minimum")
    if minimum is not None:
        return f"must be at least {minimum}" if value < minimum else None
    if kind is int:
        return "must be at least 1" if value < 1 else None
    return "must be greater than 0" if value <= 0 else None


def flag_of(spec: dataclasses.Field) -> str:
    return spec.metadata.get("flag") or "--" + spec.name.replace("_", "-")


def field_name(config: Any, name: str) -> str:
    """How library errors name a field: `SelectionConfig.budget` (the CLI shows its flag, `as_flags`)."""
    return f"{(config if isinstance(config, type) else type(config)).__name__}.{name}"


def field_flags(*classes: type) -> dict[str, str]:
    """`Class.field` → its flag, for every scalar field of `classes` and of the configs nested in them."""
    flags = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for spec in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[spec.name]):
                flags |= field_flags(hints[spec.name])
            else:
                flags[field_name(cls, spec.name)] = flag_of(spec)
    return flags


# `Config.field` or `Config.field=value` (a Python literal: a number, True/False, or a quoted string).
FIELD_MENTION = re.compile(r"\b([A-Z][A-Za-z]*Config\.[a-z_][a-z0-9_]*)(?:=('[^']*'|\"[^\"]*\"|[^\s,;:()'\"]+))?")
# Keyword arguments of the run functions that are command-level flags.
ARGUMENT_FLAGS = {"overwrite=True": "--overwrite"}
QUOTES = ("'", '"')


def as_flags(message: str, flags: dict[str, str]) -> str:
    """A library message in the command line's words: `Config.field` becomes the flag that sets it, and
    `Config.field=value` the flag with its value (`--flag value`, `--flag` / `--no-flag` for booleans)."""

    def flag(match: re.Match) -> str:
        option, value = flags.get(match[1]), match[2]
        if option is None:
            return match[0]
        if value is None:
            return option
        if value in ("True", "False"):
            return option if value == "True" else f"--no-{option[2:]}"
        return f"{option} {ast.literal_eval(value) if value[0] in QUOTES else value}"

    message = FIELD_MENTION.sub(flag, message)
    for argument, option in ARGUMENT_FLAGS.items():
        message = message.replace(argument, option)
    return message


def check_ranges(config: Any) -> None:
    """Every number of a (nested) config against its option's range and every value against its option's
    choices, for configs built in Python or read from a file (the CLI's parser checks its own flags)."""
    hints = typing.get_type_hints(type(config))
    for spec in dataclasses.fields(config):
        value, name = getattr(config, spec.name), field_name(config, spec.name)
        choices = spec.metadata.get("choices")
        if dataclasses.is_dataclass(value):
            check_ranges(value)
        elif problem := range_problem(spec.metadata, scalar_type(hints[spec.name]), value):
            raise ConfigError(f"{name} {problem}, got {value}")
        elif choices and value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def key_dict(config: Any) -> dict[str, Any]:
    """`to_dict` without the `added` options that are at their defaults and without `performance` options: what
    cache keys and run comparisons hash."""
    return _comparable(to_dict(config), type(config))


def same_config(stored: Any, config: Any) -> bool:
    """Whether a config saved by `to_dict` (possibly by an older version) describes `config`. Only `added` options
    may be missing from it: a missing option whose default changed what runs do (as `--verify` did) means the saved
    run was made without it, so it is not the same run."""
    try:
        from_dict(type(config), stored)  # well-formed, known keys, valid values
    except (ConfigError, TypeError):
        return False
    return _comparable(stored, type(config)) == key_dict(config)


def _comparable(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """A saved config (nested dicts) of `cls` without `performance` options and the `added` options that are at
    their defaults."""
    hints = typing.get_type_hints(cls)
    kept = {}
    for spec in dataclasses.fields(cls):
        if spec.name not in values or spec.metadata.get("performance"):
            continue
        value = values[spec.name]
        if dataclasses.is_dataclass(hints[spec.name]):
            kept[spec.name] = _comparable(value, hints[spec.name])
        elif not (spec.metadata.get("added") and value == spec.default):
            kept[spec.name] = value
    return kept


def from_dict(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build `cls` from nested dicts, rejecting unknown keys and wrongly typed values by name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = from_dict(kind, value, f"{where}.{key}")
        else:
            kwargs[key] = coerce(value, kind, f"{where}.{key}")
            if problem := range_problem(known[key].metadata, scalar_type(kind), kwargs[key]):
                raise ConfigError(f"{where}.{key}: {problem}, got {value}")
    return cls(**kwargs)


def coerce(value: Any, kind: Any, where: str) -> Any:
    """Check a scalar config value against its annotation (`int`, `float`, `str`, `bool`, `X | None`)."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return None
        kind = options[0]
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be a finite number, got {value!r}")
            return value
    elif kind is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only reached if a new annotation type is added without support here
        raise TypeError(f"unsupported config type {kind}")
    raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML, TOML or JSON config. A run's manifest.json works too: its `config` section is used."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text) or {}
    except Exception as exc:  # every parser raises its own type; all mean "cannot parse"
        raise ConfigError(f"{path}: cannot parse config ({exc})".replace("\n", " ")) from None
    if isinstance(values, dict) and "config" in values and "stages" in values:
        values = values["config"]
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections")
    return values
