"""skip_bad_samples on every fine-tuning task's tiny config: with a few bad records injected into a training file and
a test file, the run finishes and its results.json reports the records read and skipped per file; the same run
without skipping stops at the first bad record, naming its file and line."""
import importlib
import json
import shutil
from pathlib import Path

import pytest

from dataset.errors import AnnotationError
from tasks.environment import resolve_data_root

ROOT = Path(__file__).resolve().parents[2]
DERIVED = ("data/wit", "data/marvl")  # made from the IGLUE files by the runs themselves


def bad_jsonl(key: str):
    """A malformed line after the first record and, after the third, a record whose ``key`` has the wrong type."""
    return lambda text: _bad_jsonl(text, key)


def _bad_jsonl(text: str, key: str) -> tuple[str, list[int]]:
    lines = text.splitlines()
    record = json.loads(lines[0])
    wrong = {**record, key: [["not", "this"]]}
    lines[1:1] = ['{"broken": ']
    lines[4:4] = [json.dumps(wrong)]
    return "\n".join(lines) + "\n", [2, 5]


def bad_json_list(text: str) -> tuple[str, list[int]]:
    """The list rewritten one record per line, with a record missing a key and one with a duplicate key."""
    items = [json.dumps(item, ensure_ascii=False) for item in json.loads(text)]
    first = json.loads(items[0])
    missing = json.dumps({k: v for k, v in list(first.items())[1:]}, ensure_ascii=False)
    duplicate = items[0][:-1] + ", " + json.dumps(next(iter(first))) + ": " + json.dumps(first[next(iter(first))]) + "}"
    items[1:1] = [missing]
    items[4:4] = [duplicate]
    return "[\n" + ",\n".join(items) + "\n]\n", [3, 6]


def bad_json_dict(text: str) -> tuple[str, list[int]]:
    """An xGQA dict rewritten one question per line, with a non-integer question id and a repeated one."""
    entries = [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in json.loads(text).items()]
    first_key = next(iter(json.loads(text)))
    entries[1:1] = ['"q-not-a-number": ' + entries[0].split(": ", 1)[1]]
    entries[4:4] = [entries[0]]
    assert first_key in entries[4]
    return "{\n" + ",\n".join(entries) + "\n}\n", [3, 6]


# task -> (injected files: (path under the data root, how), options making the run short)
TASKS = {
    "itr_multi30k": ([("data/finetune/multi30k/train.en.json", bad_json_list),
                      ("data/finetune/multi30k/test_2016_flickr.de.json", bad_json_list)],
                     ["test_languages=[en,de]", "val_languages=[en]"]),
    "itr_coco": ([("data/finetune/mscoco/en.train.json", bad_json_list),
                  ("data/finetune/mscoco/ja.1k_test.json", bad_json_list)], ["test_languages=[en,ja]"]),
    "xflickrco": ([("iglue/datasets/flickr30k/annotations/train_ann.jsonl", bad_jsonl("sentences")),
                   ("iglue/datasets/xFlickrCO/annotations/de/test.jsonl", bad_jsonl("img_path"))], ["test_languages=[en,de]"]),
    "wit": ([("iglue/datasets/wit/annotations/train_en.jsonl", bad_jsonl("image_url")),
             ("iglue/datasets/wit/annotations/test_de.jsonl", bad_jsonl("image_url"))], ["test_languages=[en,de]"]),
    "xvnli": ([("iglue/datasets/XVNLI/annotations/en/train_48.jsonl", bad_jsonl("gold_label")),
               ("iglue/datasets/XVNLI/annotations/de/test.jsonl", bad_jsonl("sentence2"))], ["test_languages=[en,de]"]),
    "gqa": ([("iglue/datasets/xGQA/annotations/few_shot/en/train_48.json", bad_json_dict),
             ("iglue/datasets/xGQA/annotations/few_shot/de/test.json", bad_json_dict)], ["test_languages=[en,de]"]),
    "nlvr": ([("data/finetune/nlvr_en/nlvr_train.json", bad_json_list),
              ("iglue/datasets/marvl/zero_shot/annotations/marvl-de.jsonl", bad_jsonl("caption"))], ["test_languages=[de]"]),
}
SCRIPTS = {"itr_multi30k": "Retrieval", "itr_coco": "Retrieval", "xflickrco": "xFlickrCO", "wit": "WIT",
           "xvnli": "XVNLI", "gqa": "GQA", "nlvr": "NLVR"}


@pytest.fixture(scope="module")
def world() -> Path:
    return resolve_data_root({"synthetic": {"images": 200, "seed": 0}})


def data_root_with_bad_records(world: Path, target: Path, task: str) -> dict[Path, tuple[int, list[int]]]:
    """A copy of the world's annotations (images linked, not copied) with bad records injected into the task's
    files; ``{file: (records, bad lines)}``."""
    shutil.copytree(world, target, ignore=lambda folder, names: [
        n for n in names if (Path(folder) / n).relative_to(world).as_posix() in ("images", "pretrain", *DERIVED)])
    (target / "images").symlink_to(world / "images")
    injected = {}
    for rel, inject in TASKS[task][0]:
        path = target / rel
        text, bad_lines = inject(path.read_text(encoding="utf-8"))
        path.write_text(text, encoding="utf-8")
        records = len(json.loads(text, object_pairs_hook=list)) if rel.endswith(".json") else \
            sum(1 for line in text.splitlines() if line.strip())
        injected[path] = (records, bad_lines)
    return injected


def run(task: str, root: Path, out: Path, *opts: str) -> dict:
    module = importlib.import_module(SCRIPTS[task])
    config = ROOT / "configs" / "tiny" / f"{task}.yaml"
    return module.main(["--config", str(config), "--output_dir", str(out), "--opts", f"data_root={root}",
                        "synthetic=null", "run.max_steps=1", "schedular.epochs=1", *TASKS[task][1], *opts])


# XVNLI runs in the default suite (about 20 s); the other tasks take up to a minute each and are marked slow
@pytest.mark.parametrize("task", [task if task == "xvnli" else pytest.param(task, marks=pytest.mark.slow)
                                  for task in TASKS])
def test_skip_mode_finishes_and_reports_per_file_and_strict_mode_names_the_first_bad_line(task, world, tmp_path):
    injected = data_root_with_bad_records(world, tmp_path / "data", task)
    with pytest.raises(AnnotationError) as info:
        run(task, tmp_path / "data", tmp_path / "strict")
    firsts = [f"{path}:{bad[0]}:" for path, (_, bad) in injected.items()]
    assert any(first in str(info.value) for first in firsts), (firsts, str(info.value))

    payload = run(task, tmp_path / "data", tmp_path / "skip", "skip_bad_samples=true", "max_bad_fraction=0.5")
    written = json.loads((tmp_path / "skip" / "results.json").read_text(encoding="utf-8"))
    report = written["extra"]["read_report"]
    assert payload["extra"]["read_report"] == report
    for path, (records, bad) in injected.items():
        assert report[str(path)] == {"read": records, "skipped": len(bad)}, (path, report)
    assert all(counts["skipped"] == 0 for file, counts in report.items() if Path(file) not in injected)
    assert "annotation files read" in (tmp_path / "skip" / "log.txt").read_text(encoding="utf-8")
