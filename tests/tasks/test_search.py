"""The search task (Search.py, tasks/search.py): on the demo's world with a briefly trained demo model, the index, its
extension, and German/Japanese queries whose recall@5 is the evaluation's; every bad input one line and exit code 2
with an existing index left as it was; captions for an image; the run.py form."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import Demo
import Search
import cclm.api
from tasks.runner import run_script

ROOT = Path(__file__).resolve().parents[2]
HELDOUT = "data/finetune/multi30k/test_2016_flickr.{lang}.json"
# A few minutes of the demo cut to ~20 s: 300 scenes (40 held out) in en/de/ja, 32 px, 60 steps, one arm.
SHORT_DEMO = ["synthetic.images=300", "synthetic.heldout_images=40", "synthetic.val_images=10",
              "synthetic.languages=[en,de,ja]", "synthetic.parallel_pairs=600", "synthetic.progress=false",
              "image_res=32", "vision_config.image_res=32", "images.batch_size=32", "texts_para.batch_size=32",
              "demo.steps_per_epoch=30", "schedular.epochs=2", "demo.ablation=false", "demo.itm_from=0.5",
              "demo.k_test=8", "demo.eval_batch_size=40", "run.progress=false", "run.log_every=10"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The short demo's output: its checkpoint, its world and what its evaluation reported."""
    out = tmp_path_factory.mktemp("demo")
    payload = Demo.main(["--output_dir", str(out), "--seed", "0", "--opts", *SHORT_DEMO])
    return {"checkpoint": out / "with_parallel_text" / "checkpoint_latest.pth", "world": Path(payload["world"]["root"]),
            "metrics": payload["arms"]["with_parallel_text"]["languages"], "k_test": 8}


def search(*argv) -> dict:
    return Search.main([str(a) for a in argv])


def index_heldout(demo, index, out, files_from=None):
    world = demo["world"]
    return search("index", "--checkpoint", demo["checkpoint"], "--index", index, "--images", world / "images",
                  "--files-from", files_from or world / HELDOUT.format(lang="en"), "--output_dir", out)


def test_german_and_japanese_queries_find_their_images_as_the_evaluation_says(demo, tmp_path, capsys):
    world = demo["world"]
    built = index_heldout(demo, tmp_path / "index", tmp_path / "out")
    assert built["images"] == built["added"] == built["encoded"] == 40
    lines = []
    for lang in ("de", "ja"):
        queries = world / HELDOUT.format(lang=lang)
        for rerank in (0, demo["k_test"]):
            result = search("query", "--index", tmp_path / "index", "--queries", queries, "--image-root",
                            world / "images", "--top-k", 5, "--rerank-k", rerank, "--output_dir", tmp_path / lang)
            column = "t2i_itm_r5" if rerank else "t2i_r5"
            assert result["recall"]["queries"] == 40
            assert result["recall"]["r5"] == pytest.approx(demo["metrics"][lang][column]), (lang, rerank)
            lines.append(f"{lang} {'ITM re-ranked' if rerank else 'similarity'}: recall@5 {result['recall']['r5']:.1f}"
                         f"% (the evaluation: {demo['metrics'][lang][column]:.1f}%)")
        printed = capsys.readouterr().out
        assert "40 queries with their image: R@1" in printed and "<- its image" in printed
        page = (tmp_path / lang / "results.html").read_text(encoding="utf-8")
        assert page.count("<h2>") == 40 and "thumbs/" in page
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_an_index_is_extended_without_encoding_the_old_images(demo, tmp_path, monkeypatch):
    encoded = []
    real = cclm.api.encode_images

    def counting(view, batches, device):
        batches = list(batches)
        encoded.append(sum(len(b) for b in batches))
        return real(view, batches, device)

    monkeypatch.setattr(cclm.api, "encode_images", counting)
    entries = json.loads((demo["world"] / HELDOUT.format(lang="en")).read_text(encoding="utf-8"))
    half = tmp_path / "half.txt"
    half.write_text("\n".join(e["image"] for e in entries[:25]) + "\n", encoding="utf-8")
    first = index_heldout(demo, tmp_path / "index", tmp_path / "out", files_from=half)
    assert first["added"] == 25 and sum(encoded) == 25
    second = index_heldout(demo, tmp_path / "index", tmp_path / "out")
    assert (second["added"], second["unchanged"], second["images"]) == (15, 25, 40)
    assert sum(encoded) == 40  # the 25 indexed images were not encoded again


def test_captions_are_ranked_for_an_image(demo, tmp_path):
    world = demo["world"]
    entries = json.loads((world / HELDOUT.format(lang="de")).read_text(encoding="utf-8"))[:6]
    (tmp_path / "captions.txt").write_text("\n".join(e["caption"][0] for e in entries) + "\n", encoding="utf-8")
    image = world / "images" / entries[0]["image"]
    ranked = search("caption", "--checkpoint", demo["checkpoint"], "--image", image, "--captions",
                    tmp_path / "captions.txt", "--top-k", 6, "--output_dir", tmp_path / "out")
    assert sorted(r["caption"] for r in ranked["results"]) == sorted(e["caption"][0] for e in entries)
    scores = [r["score"] for r in ranked["results"]]
    assert scores == sorted(scores, reverse=True) and ranked["score"] == "cosine"
    reranked = search("caption", "--checkpoint", demo["checkpoint"], "--image", image, "--captions",
                      tmp_path / "captions.txt", "--top-k", 3, "--rerank-k", 6, "--output_dir", tmp_path / "itm")
    model = cclm.load(demo["checkpoint"])
    expected = model.rank([image], [e["caption"][0] for e in entries], top_k=3, rerank_k=6)
    assert [r["caption"] for r in reranked["results"]] == [entries[i]["caption"][0] for i in expected.indices[0]]
    assert "<ol>" in (tmp_path / "itm" / "results.html").read_text(encoding="utf-8")


def test_the_run_py_form_takes_the_command_from_the_config(tiny_cclm_checkpoint, tmp_path):
    path, _, root = tiny_cclm_checkpoint
    images = root / "images" / "flickr30k-images"
    files = sorted(images.glob("*.jpg"))[:6]
    (tmp_path / "list.txt").write_text("\n".join(f.name for f in files), encoding="utf-8")
    built = search("--task", "search", "--checkpoint", path, "--output_dir", tmp_path / "out", "--opts",
                   "search.command=index", f"search.index={tmp_path / 'index'}", f"search.images=[{images}]",
                   f"search.files_from={tmp_path / 'list.txt'}")
    assert built["images"] == 6 and (tmp_path / "out" / "config.yaml").is_file()
    found = search("--task", "search", "--output_dir", tmp_path / "q", "--opts", "search.command=query",
                   f"search.index={tmp_path / 'index'}", "search.query=[ein roter Kreis links]", "search.top_k=2")
    assert [len(q["results"]) for q in found["queries"]] == [2]
    shown = subprocess.run([sys.executable, "run.py", "--task", "search", "--help"], cwd=ROOT, capture_output=True,
                           text=True)
    assert shown.returncode == 0 and "Search.py index" in shown.stdout


# ---------------------------------------------------------------------------------------------- bad input

def exit_code(monkeypatch, caplog, *argv) -> tuple[int, list[str]]:
    """Search.py's exit code for ``argv`` and the error lines it logged."""
    monkeypatch.setattr(sys, "argv", ["Search.py", *map(str, argv)])
    caplog.clear()
    with pytest.raises(SystemExit) as stop:
        run_script(Search.main)
    return stop.value.code, [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def built_index(tiny_cclm_checkpoint, tmp_path):
    path, _, root = tiny_cclm_checkpoint
    images = sorted((root / "images" / "flickr30k-images").glob("*.jpg"))[:4]
    (tmp_path / "photos").mkdir()
    for image in images:
        (tmp_path / "photos" / image.name).write_bytes(image.read_bytes())
    search("index", "--checkpoint", path, "--index", tmp_path / "index", "--images", tmp_path / "photos",
           "--output_dir", tmp_path / "out")
    return tmp_path / "index"


def assert_one_line_exit_2(result, pattern):
    import re

    code, errors = result
    assert code == 2 and len(errors) == 1 and "\n" not in errors[0], result
    assert re.search(pattern, errors[0]), errors[0]


def test_empty_folder_and_folder_of_non_images(tiny_cclm_checkpoint, built_index, tmp_path, monkeypatch, caplog):
    before = snapshot(built_index)
    (tmp_path / "empty").mkdir()
    common = ["--checkpoint", tiny_cclm_checkpoint[0], "--index", built_index, "--output_dir", tmp_path / "o"]
    assert_one_line_exit_2(exit_code(monkeypatch, caplog, "index", "--images", tmp_path / "empty", *common),
                           r"no image to index in .*empty: it holds nothing")
    (tmp_path / "docs").mkdir()
    for name in ("a.txt", "b.pdf", "c.json"):
        (tmp_path / "docs" / name).write_text("x")
    assert_one_line_exit_2(exit_code(monkeypatch, caplog, "index", "--images", tmp_path / "docs", *common),
                           r"no image to index in .*docs: it holds 3 other file\(s\), none an image")
    assert snapshot(built_index) == before


def test_a_corrupt_image_is_skipped_counted_and_listed(tiny_cclm_checkpoint, built_index, tmp_path, monkeypatch,
                                                       caplog):
    photos = tmp_path / "photos"
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    (photos / "notes.txt").write_text("not an image")
    result = exit_code(monkeypatch, caplog, "index", "--checkpoint", tiny_cclm_checkpoint[0], "--index", built_index,
                       "--images", photos, "--output_dir", tmp_path / "o")
    assert_one_line_exit_2(result, r"1 image file\(s\) could not be read and were skipped \(.*corrupt.jpg: .*the "
                                   r"index holds the other 4 image\(s\)")
    report = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [u["path"] for u in report["unreadable"]] == [str(photos / "corrupt.jpg")]
    assert [s["path"] for s in report["skipped"]] == [str(photos / "notes.txt")]
    assert (report["unchanged"], report["images"]) == (4, 4)


def test_another_models_index_is_refused_and_kept(tiny_cclm_checkpoint, built_index, tmp_path, monkeypatch, caplog):
    state = torch.load(tiny_cclm_checkpoint[0], weights_only=True)
    state["model"]["vision_proj.weight"] *= 1.5
    torch.save(state, tmp_path / "other.pth")
    before = snapshot(built_index)
    for argv in (["index", "--images", tmp_path / "photos"], ["query", "--query", "ein roter Kreis"]):
        result = exit_code(monkeypatch, caplog, *argv, "--checkpoint", tmp_path / "other.pth", "--index", built_index,
                           "--output_dir", tmp_path / "o")
        assert_one_line_exit_2(result, r"the index in .* was built by another model .*fingerprint")
    assert snapshot(built_index) == before


def test_a_missing_tokenizer_is_one_line(tiny_cclm_checkpoint, built_index, tmp_path, monkeypatch, caplog):
    state = torch.load(tiny_cclm_checkpoint[0], weights_only=True)
    state["config"]["text_encoder"] = str(tmp_path / "deleted-text-encoder")
    torch.save(state, tmp_path / "moved.pth")
    before = snapshot(built_index)
    result = exit_code(monkeypatch, caplog, "index", "--checkpoint", tmp_path / "moved.pth", "--index", built_index,
                       "--images", tmp_path / "photos", "--output_dir", tmp_path / "o")
    assert_one_line_exit_2(result, r"no tokenizer at text encoder .*deleted-text-encoder.*pass text_encoder=")
    assert snapshot(built_index) == before


def test_a_query_file_in_another_encoding(built_index, tmp_path, monkeypatch, caplog):
    queries = tmp_path / "queries.txt"
    queries.write_bytes("ein roter Kreis\nein schöner blauer Stern\n".encode("latin-1"))
    before = snapshot(built_index)
    result = exit_code(monkeypatch, caplog, "query", "--index", built_index, "--queries", queries, "--output_dir",
                       tmp_path / "o")
    assert_one_line_exit_2(result, r"queries.txt: line 2 is not utf-8 text \(byte 0xf6\); save the file as utf-8 or "
                                   r"pass --encoding")
    assert snapshot(built_index) == before
    found = search("query", "--index", built_index, "--queries", queries, "--encoding", "latin-1", "--output_dir",
                   tmp_path / "o")
    assert [q["query"] for q in found["queries"]] == ["ein roter Kreis", "ein schöner blauer Stern"]


def test_a_query_with_no_word_names_its_line(built_index, tmp_path, monkeypatch, caplog):
    (tmp_path / "q.txt").write_text("ein roter Kreis\n\n?!\n", encoding="utf-8")
    result = exit_code(monkeypatch, caplog, "query", "--index", built_index, "--queries", tmp_path / "q.txt",
                       "--output_dir", tmp_path / "o")
    assert_one_line_exit_2(result, r"q.txt:3: \('\?!'\) has no word left after cleaning")


@pytest.mark.slow
def test_the_real_demo_then_search_in_german_and_japanese(tmp_path):
    """The README's commands: the demo (default config, ~5 min on 2 cores), then its held-out images searched in
    German and Japanese; recall@5 equals the demo's own evaluation."""
    out = tmp_path / "demo"
    payload = Demo.main(["--output_dir", str(out), "--opts", "demo.ablation=false"])
    world = Path(payload["world"]["root"])
    checkpoint = out / "with_parallel_text" / "checkpoint_latest.pth"
    index_heldout({"checkpoint": checkpoint, "world": world}, tmp_path / "index", tmp_path / "out")
    for lang in ("de", "ja"):
        for rerank, column in ((0, "t2i_r5"), (16, "t2i_itm_r5")):
            result = search("query", "--index", tmp_path / "index", "--queries", world / HELDOUT.format(lang=lang),
                            "--image-root", world / "images", "--rerank-k", rerank, "--output_dir", tmp_path / lang)
            expected = payload["arms"]["with_parallel_text"]["languages"][lang][column]
            assert result["recall"]["r5"] == pytest.approx(expected)
            print(f"{lang} rerank {rerank}: R@5 {result['recall']['r5']:.1f} (evaluation {expected:.1f})")
