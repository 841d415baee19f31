"""``--fewshot`` specs resolved to the files of each task (IGLUE's few-shot protocol,
docs/data-formats.md#few-shot-protocol).

| task | spec | train file (relative to the data root) | evaluation file |
|---|---|---|---|
| xvnli | ``<l>,<N>`` (``ar,48``) | ``iglue/datasets/XVNLI/annotations/<l>/train_<N>.jsonl`` | ``.../<l>/test.jsonl`` |
| xflickrco | ``<l>,<N>`` (``de,100``) | ``iglue/datasets/xFlickrCO/annotations/<l>/train_<N>.jsonl`` | ``.../<l>/test.jsonl`` |
| gqa | ``<l>`` (``bn``; ``bn,N`` picks ``train_N``, default 48) | ``iglue/datasets/xGQA/annotations/few_shot/<l>/train_48.json`` | ``.../few_shot/<l>/test.json`` |
| nlvr | ``<l>`` (``id``; ``id,N`` picks ``train<N>``, default 10x2) | ``data/marvl/marvl-<l>_train10x2.json`` | ``data/marvl/marvl-<l>.json`` |
| itr_multi30k | ``<l>,<N>`` | first N images of ``data/finetune/multi30k/train.<l>.json`` | ``.../test_2016_flickr.<l>.json`` |
| itr_coco | ``<l>,<N>`` | first N images of ``data/finetune/mscoco/<l>.train.json`` | ``<l>.1k_test.json`` (zh: ``zh.test.json``) |

As in the reference, the evaluation file of a few-shot run is the target language's **test** set, and the reference
selected the best epoch on it (no held-out split exists in IGLUE's few-shot data;
docs/data-formats.md#selection-on-test). The Multi30K/COCO rows are our extension (the reference has no few-shot
mode for them). WIT has no IGLUE few-shot split (IGLUE ships no non-English WIT training data), so it is not
resolved here: ``WIT.py`` implements its own protocol (train on the first N images of ``test_<l>``, evaluate on the
rest).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

PathLike = str | os.PathLike

_LANG = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]+)?$")
_SHOTS = re.compile(r"^\d+(x\d+)?$")


@dataclass(frozen=True)
class FewShotProtocol:
    """File templates of one task (``{lang}``, ``{shots}``) and whether the spec must name the shots."""

    train: str
    eval: str
    default_shots: str | None  # None: the spec must be <lang>,<N>
    eval_by_language: tuple[tuple[str, str], ...] = ()
    shots_are_images: bool = False  # N limits the images of a full training file instead of naming a file


PROTOCOLS = {
    "xvnli": FewShotProtocol("iglue/datasets/XVNLI/annotations/{lang}/train_{shots}.jsonl",
                             "iglue/datasets/XVNLI/annotations/{lang}/test.jsonl", None),
    "xflickrco": FewShotProtocol("iglue/datasets/xFlickrCO/annotations/{lang}/train_{shots}.jsonl",
                                 "iglue/datasets/xFlickrCO/annotations/{lang}/test.jsonl", None),
    "gqa": FewShotProtocol("iglue/datasets/xGQA/annotations/few_shot/{lang}/train_{shots}.json",
                           "iglue/datasets/xGQA/annotations/few_shot/{lang}/test.json", "48"),
    "nlvr": FewShotProtocol("data/marvl/marvl-{lang}_train{shots}.json", "data/marvl/marvl-{lang}.json", "10x2"),
    "itr_multi30k": FewShotProtocol("data/finetune/multi30k/train.{lang}.json",
                                    "data/finetune/multi30k/test_2016_flickr.{lang}.json", None,
                                    shots_are_images=True),
    "itr_coco": FewShotProtocol("data/finetune/mscoco/{lang}.train.json", "data/finetune/mscoco/{lang}.1k_test.json",
                                None, eval_by_language=(("zh", "data/finetune/mscoco/zh.test.json"),),
                                shots_are_images=True),
}
NO_FEWSHOT = {"wit": "IGLUE has no WIT few-shot split (no non-English WIT training data); WIT.py splits test_<lang> "
                     "itself"}


@dataclass(frozen=True)
class FewShotFiles:
    """What a few-shot run trains and evaluates on."""

    task: str
    language: str
    shots: str
    train_file: Path
    eval_file: Path  # the target-language test set (the reference also selected the best epoch on it)
    max_images: int | None = None  # set for tasks whose N limits the images of a full training file


def parse_fewshot(spec: str, shots_required: bool, default_shots: str | None = None) -> tuple[str, str]:
    """``(language, shots)`` from ``"<lang>"`` or ``"<lang>,<N>"``; a ValueError says what is wrong."""
    parts = [p.strip() for p in str(spec).split(",")]
    if len(parts) > 2 or not parts[0]:
        raise ValueError(f"--fewshot {spec!r}: expected <lang> or <lang>,<N> (e.g. de,100)")
    lang = parts[0]
    if not _LANG.match(lang):
        raise ValueError(f"--fewshot {spec!r}: {lang!r} is not a language code")
    if len(parts) == 1:
        if shots_required:
            raise ValueError(f"--fewshot {spec!r}: this task needs <lang>,<N>, e.g. {lang},100")
        return lang, str(default_shots)
    if not _SHOTS.match(parts[1]):
        raise ValueError(f"--fewshot {spec!r}: the number of shots {parts[1]!r} should look like 48 or 10x2")
    return lang, parts[1]


def resolve_fewshot(task: str, spec: str, data_root: PathLike = ".", check_exists: bool = True) -> FewShotFiles:
    """The few-shot files of ``task`` for ``spec``, under ``data_root``; missing files are an error naming them."""
    if task in NO_FEWSHOT:
        raise ValueError(f"--fewshot {spec!r}: {NO_FEWSHOT[task]}")
    if task not in PROTOCOLS:
        raise ValueError(f"--fewshot: unknown task {task!r}; few-shot tasks are {sorted(PROTOCOLS)}")
    protocol = PROTOCOLS[task]
    lang, shots = parse_fewshot(spec, protocol.default_shots is None, protocol.default_shots)
    max_images = None
    if protocol.shots_are_images:
        if "x" in shots:
            raise ValueError(f"--fewshot {spec!r}: for {task} N is a number of images")
        max_images = int(shots)
    eval_template = dict(protocol.eval_by_language).get(lang, protocol.eval)
    root = Path(data_root)
    files = FewShotFiles(task, lang, shots, root / protocol.train.format(lang=lang, shots=shots),
                         root / eval_template.format(lang=lang, shots=shots), max_images)
    if check_exists:
        for path in (files.train_file, files.eval_file):
            if not path.is_file():
                raise FileNotFoundError(f"--fewshot {spec!r} for {task}: {path} does not exist")
    return files
