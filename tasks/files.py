"""Data files named by a config: one path or a list, and per-language files given as a ``{lang: path}`` mapping or a
path template with ``{lang}``. Paths are relative to the run's data root; every error names the config key."""
from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Iterable, Mapping

from utils.config import ConfigError
from utils.results import SOURCE_LANGUAGES

LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}$")   # what a {lang} template matches when languages are not given


def as_list(value, key: str) -> list[str]:
    """A config value that may be one path or a list of paths, as a non-empty list."""
    items = [value] if isinstance(value, (str, Path)) else list(value or [])
    if not items:
        raise ConfigError(f"config key {key!r} names no file")
    return [str(v) for v in items]


def existing_file(root: Path, relative: str | Path, key: str) -> Path:
    """``root / relative``, which must be a file (the error names the config key and the path)."""
    path = Path(root) / relative
    if not path.is_file():
        raise FileNotFoundError(f"config key {key!r}: {path} does not exist")
    return path


def language_files(spec, languages: Iterable[str] | None, root: Path, key: str) -> dict[str, Path]:
    """``{lang: path}`` from ``spec``, a ``{lang: path}`` mapping or a path template with ``{lang}`` (null: none).

    ``languages`` picks (and orders) the languages, each file required; None takes every mapping entry, or every
    language code (2-3 lowercase letters) whose templated file exists, English first, then alphabetically.
    """
    if spec is None:
        if languages:
            raise ConfigError(f"config key {key!r} is null but {key.replace('file', 'languages')} names {languages}")
        return {}
    if isinstance(spec, Mapping):
        langs = list(spec) if languages is None else list(languages)
        missing = [lang for lang in langs if lang not in spec]
        if missing:
            raise ConfigError(f"config key {key!r} has no file for language(s) {missing} (it has {list(spec)})")
        return {lang: existing_file(root, str(spec[lang]), key) for lang in langs}
    template = str(spec)
    if "{lang}" not in template:
        raise ConfigError(f"config key {key!r} must be a {{lang: path}} mapping or a path template with {{lang}}, "
                          f"got {template!r}")
    if languages is not None:
        return {lang: existing_file(root, template.format(lang=lang), key) for lang in languages}
    found = _templated_languages(Path(root) / template)
    if not found:
        raise FileNotFoundError(f"config key {key!r}: no file matches {Path(root) / template} for any language")
    return dict(sorted(found.items(), key=lambda item: (item[0] not in SOURCE_LANGUAGES, item[0])))


def _templated_languages(template: Path) -> dict[str, Path]:
    full = template.as_posix()  # an absolute template stays as it is
    pattern = re.compile(re.escape(full).replace(re.escape("{lang}"), "(?P<lang>[^/]+)") + "$")
    found = {}
    for name in sorted(glob.glob(glob.escape(full).replace(glob.escape("{lang}"), "*"))):
        match = pattern.match(Path(name).as_posix())
        if match and LANGUAGE_CODE.match(match["lang"]) and Path(name).is_file():
            found[match["lang"]] = Path(name)
    return found


def optional_language_file(spec, language: str, root: Path) -> Path | None:
    """The file of ``language`` in a ``{lang: path}`` mapping or template, or None when there is none."""
    if spec is None or (isinstance(spec, Mapping) and language not in spec):
        return None
    path = Path(root) / (str(spec[language]) if isinstance(spec, Mapping) else str(spec).format(lang=language))
    return path if path.is_file() else None
