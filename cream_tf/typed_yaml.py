"""Typed configuration as YAML: dataclasses built strictly from a mapping, a YAML file and
`--params_override` ("train.epochs=2,data.batch_size=64" or an inline YAML/JSON mapping), and
written back as YAML that loads again, each key with its type, default and comment. Knows
nothing of cream_tf's own sections (cream_tf.config): any dataclass of dataclasses works."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cream_tf import atomic

T = TypeVar("T")


def from_dict(cls: type[T], data: dict | None, path: str = "") -> T:
    """Builds dataclass `cls` from a mapping, recursing into nested dataclasses, strictly."""
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"Config section {path or cls.__name__!r} must be a mapping; got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            raise ValueError(f"Unknown config key {where!r}; valid keys here are {', '.join(fields)}.")
        values[key] = _coerce(hints[key], value, where)
    return cls(**values)


def _coerce(hint, value, where):
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"Config key {where!r} must be a list; got {value!r}.")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(item, v, where) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads 1e4 (no dot) as a string; Python's float syntax is what users mean.
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint in (int, float, str, bool):
        raise ValueError(f"Config key {where!r} must be {hint.__name__}; got {value!r}.")
    return value


def to_dict(config) -> dict:
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested mapping as {"section.key": value}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_override(text: str) -> dict:
    """'a.b=1,c=x' or a YAML mapping -> nested dict."""
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("{") or "\n" in text:
        parsed = read_yaml(text, "--params_override")
        if not isinstance(parsed, dict):
            raise ValueError(f"--params_override {text!r} is not a mapping.")
        return parsed
    result: dict = {}
    for item in _split_top_level(text):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Malformed override {item!r}; expected key.subkey=value pairs separated by commas.")
        node = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = read_yaml(raw, f"--params_override {key.strip()}")
    return result


def read_yaml(text: str, where: str):
    """yaml.safe_load, its syntax errors as one line with the line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{where} is not valid YAML{at}: {problem}.") from None


def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside brackets, so 'a=[1,2],b=3' keeps the list whole."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_files(config_file: str | None) -> dict:
    """The YAML file, or files (comma-separated: each merged over the ones before it, e.g. a
    search config, then a search space's), as one mapping."""
    data: dict[str, Any] = {}
    for file in (config_file or "").split(","):
        if not file.strip():
            continue
        path = Path(file.strip())
        if not path.is_file():
            raise ValueError(f"Config file {str(path)!r} does not exist.")
        layer = read_yaml(path.read_text(), f"Config file {str(path)!r}") or {}
        if not isinstance(layer, dict):
            raise ValueError(f"Config file {str(path)!r} is not a mapping of sections (data:, train:, ...).")
        data = merge(data, layer)
    return data


def load(cls: type[T], config_file: str | None = None, params_override: str = "") -> T:
    """Defaults of `cls`, then the YAML file(s) (`read_files`), then the overrides."""
    data = read_files(config_file)
    data = merge(data, parse_override(params_override))
    return from_dict(cls, data)


def describe(config) -> str:
    """Every key of `config`, as YAML that loads back, each with its type, default and the
    comment beside its field in its source: `python main.py --mode=config` prints it."""
    lines = []
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        cls = type(value)
        hints, defaults, comments = typing.get_type_hints(cls), cls(), _field_comments(cls)
        lines.append(f"{section.name}:")
        for field in dataclasses.fields(value):
            hint = hints[field.name]
            kind = f"list of {typing.get_args(hint)[0].__name__}" if typing.get_origin(hint) is tuple else hint.__name__
            note = f"{kind}, default {_inline(getattr(defaults, field.name))}"
            if field.name in comments:
                note += f"; {comments[field.name]}"
            lines.append(f"  {field.name}: {_inline(getattr(value, field.name))}  # {note}")
    return "\n".join(lines)


def _inline(value) -> str:
    plain = (
        [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
        if isinstance(value, tuple)
        else value
    )
    return yaml.safe_dump(plain, default_flow_style=True, width=float("inf")).splitlines()[0]


def _field_comments(cls) -> dict[str, str]:
    """The `# ...` comment on each field's line of `cls`'s source."""
    comments = {}
    for line in "\n".join(inspect.getsource(c) for c in cls.__mro__[-2::-1]).splitlines():  # bases first
        match = re.match(r"\s+(\w+):[^=]*=.*?#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return comments


def to_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save(config, path) -> None:
    atomic.write_text(path, to_yaml(config))
