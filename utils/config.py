"""YAML configs: ``base:`` inheritance, dotted ``key.sub=value`` overrides, and checking keys against a schema.

A config file may name one or more parents with ``base: path.yaml`` (relative to the file, or to ``configs/``);
parents are merged first and the child wins. The schema of a task is the resolved chain of its base config: every key
a user file or an override sets must exist there, so a misspelt key is an error naming the key and the file, instead of
a silently ignored setting. A mapping whose default is ``{}`` or ``null`` is open: any sub-keys are accepted.
Every error about a key in a file names ``file:line`` (the YAML line of the key) and the dotted key; a NaN or
infinite number (``.nan``, ``.inf``) is an error wherever it appears.
"""
from __future__ import annotations

import copy
import difflib
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from utils.atomic import atomic_write
from utils.errors import UserError

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
BASE_KEY = "base"


class ConfigError(UserError, ValueError):
    """A config file or override is malformed or sets a key the task does not know."""


def _yaml() -> YAML:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    return yaml


Lines = dict[tuple, int]  # key path ('optimizer', 'lr') -> 1-based line of the key in its file


def read_yaml(path: str | os.PathLike) -> dict:
    """Read one YAML file into plain dicts/lists; errors name the file (and line for syntax errors)."""
    return _read_with_lines(Path(path))[0]


def _read_with_lines(path: Path) -> tuple[dict, Lines]:
    """One YAML file as plain dicts/lists, and the line of every mapping key in it."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            document = YAML(typ="rt", pure=True).load(f)
    except YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
        if mark is None or not problem:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        context = getattr(e, "context", None)
        raise ConfigError(f"{path}:{mark.line + 1}: invalid YAML ({context + ': ' if context else ''}{problem})") from e
    if document is None:
        return {}, {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(document).__name__}")
    lines: Lines = {}
    data = _plain_with_lines(document, (), lines)
    _check_finite(data, lambda key_path: f"{path}:{lines.get(key_path, 1)}")
    return data, lines


def _plain_with_lines(node: Any, key_path: tuple, lines: Lines) -> Any:
    """ruamel's round-trip nodes as plain Python values (as the safe loader gives), recording the keys' lines."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            position = node.lc.key(key) if hasattr(node, "lc") else None
            if position is not None:
                lines[key_path + (key,)] = position[0] + 1
            out[key] = _plain_with_lines(value, key_path + (key,), lines)
        return out
    if isinstance(node, list):
        return [_plain_with_lines(value, key_path, lines) for value in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _check_finite(data: Any, where, key_path: tuple = ()) -> None:
    """A ConfigError for the first NaN or infinite number; ``where(key path)`` names the file and line."""
    if isinstance(data, dict):
        for key, value in data.items():
            _check_finite(value, where, key_path + (key,))
    elif isinstance(data, list):
        for value in data:
            _check_finite(value, where, key_path)
    elif isinstance(data, float) and not math.isfinite(data):
        dotted = ".".join(map(str, key_path))
        raise ConfigError(f"{where(key_path)}: config key {dotted!r} is {data}: NaN and infinite numbers are not "
                          "allowed (write a finite number, or null where the key takes one)")


def _resolve_base(parent_file: Path, ref: str) -> Path:
    for candidate in (parent_file.parent / ref, CONFIG_ROOT / ref):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{parent_file}: base config {ref!r} not found (looked next to the file and in {CONFIG_ROOT})")


def _chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict, Lines]]:
    """Files from the root ancestor to ``path``, each with its own keys (``base`` removed) and their lines."""
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular base: {' -> '.join(str(p) for p in seen + (path,))}")
    data, lines = _read_with_lines(path)
    bases = data.pop(BASE_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    out: list[tuple[Path, dict, Lines]] = []
    for ref in bases:
        out.extend(_chain(_resolve_base(path, ref), seen + (path,)))
    out.append((path, data, lines))
    return out


def _is_open(default: Any) -> bool:
    return default is None or (isinstance(default, dict) and not default)


def _suggest(key: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(data: Mapping, schema: Mapping, source: str, prefix: str = "", lines: Lines | None = None,
               key_path: tuple = ()) -> None:
    """Raise ConfigError for the first key in ``data`` that ``schema`` does not have (or whose value has the wrong
    kind); with ``lines`` (key path -> line) the message names ``source:line``."""
    for key, value in data.items():
        dotted, path = f"{prefix}{key}", key_path + (key,)
        at = f"{source}:{lines[path]}" if lines and path in lines else source
        if key not in schema:
            raise ConfigError(f"{at}: unknown config key {dotted!r}{_suggest(str(key), map(str, schema))}")
        default = schema[key]
        if isinstance(default, dict) and not _is_open(default):
            if not isinstance(value, dict):
                raise ConfigError(f"{at}: config key {dotted!r} must be a mapping, got {value!r}")
            check_keys(value, default, source, dotted + ".", lines, path)
        else:
            _check_scalar_type(value, default, at, dotted)


def _check_scalar_type(value: Any, default: Any, source: str, dotted: str) -> None:
    """A key whose default is a number or a boolean takes a value of that kind (an integer key also takes a float
    with an integral value, e.g. 1e6), so ``batch_size: sixteen`` fails here, naming the key and the file."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok = (isinstance(value, int) or isinstance(value, float) and value.is_integer()) and not isinstance(value, bool)
        kind = "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:
        return
    if not ok:
        raise ConfigError(f"{source}: config key {dotted!r} must be {kind} (like its default {default!r}), "
                          f"got {value!r}")


def merge(base: dict, update: Mapping) -> dict:
    """Deep-merge ``update`` into a copy of ``base``; mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (['a','b','c'], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key part")
    try:
        value = _yaml().load(io.StringIO(raw)) if raw.strip() else ""
    except YAMLError as e:
        raise ConfigError(f"override {item!r}: cannot parse value: {e}") from e
    _check_finite(value, lambda _: f"override {item!r}", tuple(key.split(".")))
    return key.split("."), value


def _nest(parts: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(parts):
        out = {part: out}
    return out


def load_config(path: str | os.PathLike | None, overrides: Iterable[str] = (),
                schema: str | os.PathLike | Mapping | None = None) -> dict:
    """Resolve a config: schema defaults, then the file's ``base:`` chain, then ``key=value`` overrides.

    Args:
        path: the YAML file (None: the schema's defaults alone).
        overrides: dotted overrides such as ``optimizer.lr=3e-5``.
        schema: a YAML path or mapping whose keys are the only ones allowed (None: no key check).
    Returns:
        The merged config as plain dicts, without ``base``.
    """
    if schema is None:
        schema_data = None
        config: dict = {}
    elif isinstance(schema, Mapping):
        schema_data = dict(schema)
        config = copy.deepcopy(schema_data)
    else:
        schema_data = {}
        for file, data, _ in _chain(Path(schema)):
            schema_data = merge(schema_data, data)
        config = copy.deepcopy(schema_data)
    if path is not None:
        for file, data, lines in _chain(Path(path)):
            if schema_data is not None:
                check_keys(data, schema_data, str(file), lines=lines)
            config = merge(config, data)
    for item in overrides:
        parts, value = parse_override(item)
        update = _nest(parts, value)
        if schema_data is not None:
            check_keys(update, schema_data, f"override {item!r}")
        config = merge(config, update)
    return config


def set_by_path(config: dict, dotted: str, value: Any) -> None:
    """Set ``config['a']['b'] = value`` for ``dotted='a.b'``, creating mappings on the way."""
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def get_by_path(config: Mapping, dotted: str, default: Any = None) -> Any:
    """Read ``config['a']['b']`` for ``dotted='a.b'``; ``default`` when any part is missing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def dump_config(config: Mapping, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically) so that a run can be reproduced from its output folder."""
    atomic_write(path, lambda f: _yaml().dump(_plain(config), f), binary=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
