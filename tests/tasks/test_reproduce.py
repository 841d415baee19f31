"""The reproduce task (Reproduce.py, tasks/reproduce.py): the dry run on a fresh clone names every missing input and
where it comes from; a run with inputs missing stops before any benchmark; checkpoints choose each benchmark's mode;
rows compare within / outside the tolerance; on the synthetic world a benchmark runs through run.py and its numbers
land beside the paper's (all seven benchmarks in the slow test)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import Reproduce
from tasks.reproduce import Benchmark, Step, choose_checkpoint, compare_rows, read_benchmarks, source_of
from utils.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = "configs/tiny/reproduce.yaml"
BENCHMARKS = ["xvnli", "xgqa", "marvl", "xflickrco", "wit", "multi30k", "mscoco"]


def dry_run(tmp_path, *extra):
    return Reproduce.main(["--dry-run-data", "--output_dir", str(tmp_path / "out"), *extra])


# -------------------------------------------------------------------------------------------------- dry run

def test_dry_run_on_a_fresh_clone_names_every_missing_input_and_where_it_comes_from(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    result = dry_run(tmp_path, "--opts", f"data_root={empty}")
    rows = result["inputs"]
    assert result["missing"] == len(rows) > 60 and not any(r["found"] for r in rows)
    assert all(r["from"] for r in rows), [r["path"] for r in rows if not r["from"]]
    checkpoint = next(r for r in rows if r["path"] == "(not given)")
    assert "drive.google.com" in checkpoint["from"] and len(checkpoint["needed_by"]) == len(BENCHMARKS)
    needed = {entry.split(":")[0] for r in rows for entry in r["needed_by"]}
    assert needed == set(BENCHMARKS)
    paths = {r["path"] for r in rows}
    for expected in ("iglue/datasets/XVNLI/annotations/ar/test.jsonl", "iglue/datasets/gqa/annotations/valid.json",
                     "iglue/datasets/marvl/zero_shot/annotations/marvl-sw.jsonl", "images/marvl-images/ta",
                     "iglue/datasets/wit/annotations/test_vi.jsonl", "images/wit_test", "images/coco/val2014",
                     "data/finetune/multi30k/test_2016_flickr.cs.json", "data/xlm-roberta-large"):
        assert expected in paths
    listing = (tmp_path / "out" / "inputs.md").read_text(encoding="utf-8")
    assert "| MISSING | `iglue/datasets/xFlickrCO/annotations/tr/test.jsonl` | xflickrco: test_file.tr |" in listing

    # The listing is exactly what is missing: with every listed path in place (and a checkpoint), nothing is.
    for row in rows:
        if row["path"] == "(not given)":
            continue
        path = empty / row["path"]
        if row["kind"] == "folder":
            path.mkdir(parents=True, exist_ok=True)
            (path / "x").write_text("x")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
    (tmp_path / "cclm_4m.th").write_bytes(b"x")
    again = dry_run(tmp_path, "--checkpoint", str(tmp_path / "cclm_4m.th"), "--opts", f"data_root={empty}")
    assert again["missing"] == 0 and all(r["found"] for r in again["inputs"])


def test_dry_run_through_run_py_works_without_data_or_weights(tmp_path):
    out = subprocess.run([sys.executable, "run.py", "--task", "reproduce", "--dist", "cpu", "--dry-run-data",
                          "--output_dir", str(tmp_path / "out"), "--opts", f"data_root={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "inputs missing" in out.stdout and "https://github.com/e-bug/iglue" in out.stdout
    assert (tmp_path / "out" / "inputs.md").is_file() and not (tmp_path / "out" / "results.json").exists()


def test_dry_run_in_a_fresh_copy_of_the_repository_lists_what_it_lists_here(tmp_path):
    """Only the tracked files (no cache/, no output/, no synthetic world, no .venv): run.py's dry run from that copy,
    with its own folder as the data root, lists every input as missing, with the same rows as here."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout: no list of the tracked files")
    clone = tmp_path / "clone"
    for name in tracked.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    done = subprocess.run([sys.executable, "run.py", "--task", "reproduce", "--dist", "cpu", "--dry-run-data"],
                          cwd=clone, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "CCLM_DATA"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    fresh = json.loads((clone / "output" / "reproduce" / "inputs.json").read_text(encoding="utf-8"))
    here = dry_run(tmp_path, "--opts", f"data_root={clone}")["inputs"]
    assert len(fresh) > 60 and fresh == here
    assert not any(r["found"] for r in fresh) and all(r["from"] for r in fresh)
    assert f"inputs missing (paths relative to the data root {clone})" in done.stdout + done.stderr


def test_a_run_with_inputs_missing_stops_before_any_benchmark(tmp_path):
    with pytest.raises(ConfigError, match=r"input\(s\) missing.*--dry-run-data"):
        Reproduce.main(["--output_dir", str(tmp_path / "out"), "--opts", f"data_root={tmp_path}"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["inputs.json", "inputs.md", "log.txt"]


def test_a_missing_checkpoint_or_evaluating_one_file_is_one_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--checkpoint /nonexistent/cclm.th: no such file or folder"):
        Reproduce.main(["--checkpoint", "/nonexistent/cclm.th", "--output_dir", str(tmp_path)])
    (tmp_path / "cclm.th").write_bytes(b"x")
    with pytest.raises(ConfigError, match="--checkpoint must be a folder holding <benchmark>/checkpoint_best.pth"):
        Reproduce.main(["--checkpoint", str(tmp_path / "cclm.th"), "--evaluate", "--output_dir", str(tmp_path)])


def test_the_text_encoder_is_any_folder_or_a_hub_id_the_hub_provides(tmp_path):
    encoder = tmp_path / "enc"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    rows = dry_run(tmp_path, "--opts", f"data_root={tmp_path / 'data'}", f"text_encoder={encoder}")["inputs"]
    assert [r["found"] for r in rows if r["path"] == str(encoder)] == [True]
    with pytest.raises(ConfigError, match=r"input\(s\) missing.*; config key 'text_encoder': 'xlm-roberta-large' is "
                                          r"no folder .*HF_HUB_OFFLINE"):  # the tests run with the hub switched off
        Reproduce.main(["--output_dir", str(tmp_path / "out"), "--opts", f"data_root={tmp_path / 'data'}",
                        "text_encoder=xlm-roberta-large"])


def test_dry_run_data_is_a_flag_of_reproduce_only(tmp_path):
    import XVNLI

    with pytest.raises(ConfigError, match="--dry-run-data is a flag of task reproduce only"):
        XVNLI.main(["--config", "configs/tiny/xvnli.yaml", "--dry-run-data", "--output_dir", str(tmp_path)])


# ------------------------------------------------------------------------------------------------------ plan

def test_checkpoint_file_or_folder_chooses_fine_tuning_or_evaluation(tmp_path):
    config = {"pretrained_name": "cclm_4m_epoch_29.th"}
    xvnli, wit = Benchmark("xvnli", "xvnli", "c", ("acc",)), Benchmark("wit", "wit", "c", ("img_r1",))
    (tmp_path / "xvnli").mkdir()
    (tmp_path / "xvnli" / "checkpoint_best.pth").write_bytes(b"x")
    assert choose_checkpoint(xvnli, str(tmp_path / "pre.th"), config, False) == ("fine-tune", tmp_path / "pre.th")
    assert choose_checkpoint(xvnli, str(tmp_path), config, False) == ("evaluate",
                                                                     tmp_path / "xvnli" / "checkpoint_best.pth")
    assert choose_checkpoint(wit, str(tmp_path), config, False) == ("fine-tune", tmp_path / "cclm_4m_epoch_29.th")
    assert choose_checkpoint(wit, str(tmp_path), config, True) == ("evaluate", tmp_path / "wit" / "checkpoint_best.pth")
    assert choose_checkpoint(wit, None, config, False) == ("fine-tune", None)


@pytest.mark.parametrize("change, message", [
    ({"only": ["xvnlii"]}, r"'only' names unknown benchmark\(s\) \['xvnlii'\]"),
    ({"benchmarks": {"a": {"task": "vqa", "config": TINY, "metrics": ["acc"]}}}, "unknown task 'vqa'"),
    ({"benchmarks": {"a": {"task": "xvnli", "config": "configs/none.yaml", "metrics": ["acc"]}}}, "does not exist"),
    ({"benchmarks": {"a": {"task": "xvnli", "config": TINY, "metrics": ["f1"]}}}, r"no tolerance for metric\(s\)"),
    ({"benchmarks": {"a": {"task": "xvnli", "config": TINY, "metrics": ["acc"], "seed": 1}}}, r"unknown key\(s\)"),
])
def test_benchmark_entries_are_checked(change, message):
    config = {"benchmarks": {"xvnli": {"task": "xvnli", "config": TINY, "metrics": ["acc"]}}, "only": None,
              "tolerance": {"acc": 1.0}, **change}
    with pytest.raises(ConfigError, match=message):
        read_benchmarks(config)


def test_source_of_takes_the_longest_matching_prefix():
    sources = {"images/": "root", "images/coco": "coco", "iglue/": "iglue"}
    assert source_of("images/coco/val2014", sources) == "coco"
    assert source_of("images", sources) == "root" and source_of("images/gqa", sources) == "root"
    assert source_of("images/cocoa", sources) == "root" and source_of("data/x.json", sources) is None


# ------------------------------------------------------------------------------------------------ comparison

def test_rows_are_within_or_outside_the_tolerance_and_say_what_is_absent():
    step = Step(Benchmark("xflickrco", "xflickrco", "c", ("img_r1",)), "fine-tune", Path("ck"), Path("."))
    payload = {"languages": {"en": {"img_r1": 80.0}, "de": {"img_r1": 50.0}, "ja": {"img_r1": 40.0},
                             "zh": {"img_r1": 30.0}}}
    paper = {"values": {"img_r1": {"de": 48.0, "ja": 41.5, "zh": None, "tr": 20.0, "avg": 40.0}}}
    rows = {r["language"]: r for r in compare_rows(step, payload, paper, {"img_r1": 2.0})}
    assert list(rows) == ["en", "de", "ja", "zh", "tr", "avg"]
    assert rows["de"]["status"] == "within" and rows["de"]["diff"] == pytest.approx(2.0)   # the bound is inside
    assert rows["ja"]["status"] == "within" and rows["zh"]["status"] == "no paper number"
    assert rows["en"]["status"] == "no paper number" and rows["tr"]["status"] == "no result"
    assert rows["avg"]["ours"] == pytest.approx(40.0) and rows["avg"]["status"] == "within"  # mean without en
    paper["values"]["img_r1"]["de"] = 47.9
    assert compare_rows(step, payload, paper, {"img_r1": 2.0})[1]["status"] == "outside"
    assert {r["status"] for r in compare_rows(step, None, paper, {"img_r1": 2.0})} == {"not run"}


def test_the_paper_file_cites_its_source_and_enters_no_unverified_number():
    paper = yaml.safe_load((ROOT / "configs/paper/cclm.yaml").read_text(encoding="utf-8"))
    assert paper["source"]["url"] == "https://arxiv.org/abs/2206.00621" and "v2" in paper["source"]["version"]
    assert set(paper["benchmarks"]) == set(BENCHMARKS)
    for name, entry in paper["benchmarks"].items():
        numbers = [v for values in entry["values"].values() for v in values.values() if v is not None]
        assert not numbers or entry["table"], f"{name}: numbers without the table they come from"


# -------------------------------------------------------------------------------------- the synthetic world

@pytest.fixture(scope="module")
def one_thread_env():
    """The benchmark processes run on one thread each (the shared CPUs are oversubscribed otherwise)."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if before is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = before


def test_a_benchmark_runs_through_run_py_and_its_numbers_land_beside_the_papers(tmp_path, random_checkpoint):
    """XVNLI evaluated from a fine-tuned checkpoint in the --checkpoint folder, against a paper file with one number;
    a second invocation reuses the finished run."""
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "xvnli").mkdir(parents=True)
    shutil.copy(random_checkpoint(ROOT / "configs/tiny/xvnli.yaml", ROOT / "configs/base/xvnli.yaml",
                                  "cclm_classification"), checkpoints / "xvnli" / "checkpoint_best.pth")
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump({"source": {"title": "T", "url": "U"}, "verification": "test numbers",
                                     "benchmarks": {"xvnli": {"table": "Table X", "values": {
                                         "acc": {"de": 99.0, "avg": None}}}}}), encoding="utf-8")
    argv = ["--config", TINY, "--checkpoint", str(checkpoints), "--device", "cpu", "--output_dir",
            str(tmp_path / "out"), "--opts", "only=[xvnli]", f"paper={paper}",
            'opts=["test_languages=[en,de]", run.progress=false]']
    result = Reproduce.main(argv)

    ours = json.loads((tmp_path / "out" / "xvnli" / "results.json").read_text(encoding="utf-8"))
    rows = {r["language"]: r for r in result["rows"]}
    assert list(rows) == ["en", "de", "avg"] and result["benchmarks"]["xvnli"]["mode"] == "evaluate"
    assert rows["de"]["ours"] == ours["languages"]["de"]["acc"] and rows["de"]["paper"] == 99.0
    assert rows["de"]["status"] == "outside" and rows["avg"]["status"] == "no paper number"
    table = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert f"| xvnli | acc | de | {ours['languages']['de']['acc']:.2f} | 99.00 |" in table and "test numbers" in table
    assert Reproduce.main(argv)["benchmarks"]["xvnli"]["reused"] is True


@pytest.mark.slow
def test_all_benchmarks_fine_tune_from_a_pretrained_checkpoint_on_the_synthetic_world(tmp_path, random_checkpoint,
                                                                                       one_thread_env):
    checkpoint = random_checkpoint(ROOT / "configs/tiny/pretrain_cclm_4m.yaml", ROOT / "configs/base/pretrain.yaml",
                                   "cclm_pretrain")
    out = subprocess.run([sys.executable, "run.py", "--task", "reproduce", "--dist", "cpu", "--config", TINY,
                          "--checkpoint", checkpoint, "--output_dir", str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert {name: b["exit_code"] for name, b in result["benchmarks"].items()} == {name: 0 for name in BENCHMARKS}
    assert all(b["mode"] == "fine-tune" for b in result["benchmarks"].values())
    for name in BENCHMARKS:
        ours = json.loads((tmp_path / "out" / name / "results.json").read_text(encoding="utf-8"))
        rows = [r for r in result["rows"] if r["benchmark"] == name and r["language"] in ours["languages"]]
        assert rows and all(r["ours"] == ours["languages"][r["language"]][r["metric"]] for r in rows)
        assert all(r["status"] == "no paper number" for r in rows)
