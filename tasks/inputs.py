"""What a task's run reads from disk, named by the config keys that point at it, and which of it is there.

:func:`config_inputs` lists the files and folders a resolved fine-tuning config names (relative to the data root):
annotation files (one per language for the per-language keys), image folders, the text encoder folder. Files our
code builds on first use (MaRVL's converted json, WIT's base64 files) are listed with what they are built from: when
the built file is absent, its sources must be there. :func:`check_inputs` says, for each, found or missing. The
reproduce task uses both to list, before any work, exactly what is missing and where it must go.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from tasks.files import LANGUAGE_CODE, as_list, language_files


@dataclass(frozen=True)
class Input:
    """One file or folder a run reads: the config key that names it and its path relative to the data root."""

    key: str
    path: str
    kind: str = "file"                                    # file | folder
    made_from: tuple["Input", ...] = field(default=())    # what our code builds it from when it is absent
    zip_ok: bool = False                                  # <path>.zip will do (the reader extracts it)

    def exists(self, root: Path) -> bool:
        path = Path(root) / self.path
        if self.kind == "folder":
            return path.is_dir() and any(path.iterdir())
        return path.is_file() or (self.zip_ok and path.with_name(path.name + ".zip").is_file())


@dataclass(frozen=True)
class InputStatus:
    """An input and whether the run can have it: found, or buildable from sources that are all found."""

    input: Input
    found: bool
    missing: tuple[Input, ...]   # what must be added (the input itself, or the sources it is built from)


def built_from(config: Mapping, path: str) -> tuple[Input, ...]:
    """The sources our code builds ``path`` from on first use, or () when it is read as it is.

    MaRVL's json lists (``marvl_out``) come from IGLUE's jsonl (``marvl_dir``); WIT's base64 files
    (``wit_preproc.out_dir``) from IGLUE's annotations and the Kaggle pixel files (test files: the test pixels)."""
    folder, name = Path(path).parent, Path(path).name
    if config.get("marvl_dir") and config.get("marvl_out") and folder == Path(str(config["marvl_out"])):
        return (Input("marvl_dir", f"{config['marvl_dir']}/zero_shot/annotations/{Path(name).stem}.jsonl"),)
    wit = config.get("wit_preproc") or {}
    if wit.get("out_dir") and folder == Path(str(wit["out_dir"])):
        pixels = "test_pixels" if "test" in name else "train_pixels"
        return (Input("wit_preproc.annotations", f"{wit['annotations']}/{name}", zip_ok=True),
                Input(f"wit_preproc.{pixels}", str(wit[pixels]), "folder"))
    return ()


def _templated_languages(template: str, root: Path, key: str) -> list[str]:
    try:
        return list(language_files(template, None, root, key))
    except FileNotFoundError:
        return []


def _language_files(config: Mapping, key: str, languages_key: str, root: Path) -> list[Input]:
    """One input per language of a per-language key. A template without languages takes every language whose file
    exists (as the run does), else every language of the files it is built from, else stands for itself."""
    spec, languages = config.get(key), config.get(languages_key)
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        langs = list(spec) if languages is None else list(languages)
        return [Input(f"{key}.{lang}", str(spec[lang])) for lang in langs if lang in spec]
    template = str(spec)
    if "{lang}" not in template:
        return [Input(key, path) for path in as_list(spec, key)]
    if languages is None:
        sources = built_from(config, template)
        languages = (_templated_languages(template, root, key)
                     or (_templated_languages(sources[0].path, root, key) if sources else []))
        if not languages:
            return [Input(key, template)]
    return [Input(f"{key}.{lang}", template.format(lang=lang)) for lang in languages]


def _files(config: Mapping, key: str) -> list[Input]:
    value = config.get(key)
    return [] if value in (None, [], "") else [Input(key, path) for path in as_list(value, key)]


def _folders(config: Mapping, key: str) -> list[Input]:
    value = config.get(key)
    if value in (None, ""):
        return []
    if isinstance(value, Mapping):
        return [Input(f"{key}.{name}", str(path), "folder") for name, path in value.items()]
    return [Input(key, str(value), "folder")]


def _marvl_image_folders(config: Mapping, tests: list[Input]) -> list[Input]:
    """MaRVL's images of each tested language: ``marvl_image_root/marvl-images/<lang>``."""
    root = config.get("marvl_image_root")
    languages = [item.key.split(".", 1)[1] for item in tests if item.key.startswith("test_file.")]
    return [Input("marvl_image_root", f"{root}/marvl-images/{lang}", "folder") for lang in languages
            if root and config.get("marvl_dir") and LANGUAGE_CODE.match(lang)]


def config_inputs(config: Mapping, root: Path, text_encoder: bool = True) -> list[Input]:
    """The files and folders a fine-tuning config reads (relative to its data root ``root``), in config order.

    The keys are those of the fine-tuning schemas (configs/base/retrieval.yaml, xvnli.yaml, gqa.yaml, nlvr.yaml):
    training, validation and test annotations (per language where the key is per language), the answer list, the
    image folders, and the text encoder folder (tokenizer + config.json; skipped with ``text_encoder=False``)."""
    tests = _language_files(config, "test_file", "test_languages", root)
    inputs = _files(config, "train_file") + _language_files(config, "val_file", "val_languages", root)
    inputs += _files(config, "valid_file") + tests + _files(config, "en_test_file") + _files(config, "answer_list")
    inputs = [Input(i.key, i.path, i.kind, built_from(config, i.path)) for i in inputs]
    inputs += _folders(config, "image_root") + _folders(config, "vqa_root") + _marvl_image_folders(config, tests)
    if text_encoder and config.get("text_encoder"):
        inputs.append(Input("text_encoder", str(config["text_encoder"]), "folder"))
    return inputs


def check_inputs(inputs: Iterable[Input], root: Path) -> list[InputStatus]:
    """Found or missing, for each input under ``root``: a built input counts as found when all its sources are."""
    statuses = []
    for item in inputs:
        if item.exists(root):
            statuses.append(InputStatus(item, True, ()))
            continue
        lacking = tuple(source for source in item.made_from if not source.exists(root))
        buildable = bool(item.made_from) and not lacking
        statuses.append(InputStatus(item, buildable, () if buildable else (lacking or (item,))))
    return statuses
