"""dataset.prepare: captions table / TSV -> shards that the pre-training readers read back."""
import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dataset.prepare import PrepareError, main

ROOT = Path(__file__).resolve().parents[2]


def make_images(folder, colors):
    folder.mkdir()
    for name, color in colors.items():
        Image.new("RGB", (6, 4), color).save(folder / name)


def read_records(out):
    files = sorted(out.glob("*.jsonl"))
    return files, [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_images_from_csv_round_trip(tmp_path):
    make_images(tmp_path / "imgs", {"a.png": (255, 0, 0), "b.png": (0, 255, 0), "c.png": (0, 0, 255)})
    (tmp_path / "caps.csv").write_text("image,en,de\na.png,a red square,ein rotes quadrat\n"
                                       "b.png,a green square,\nc.png,a blue square,ein blaues quadrat\n"
                                       "a.png,red,rot\n")
    main(["images", "--images", str(tmp_path / "imgs"), "--captions", str(tmp_path / "caps.csv"),
          "--out", str(tmp_path / "out"), "--shard-size", "2"])
    files, records = read_records(tmp_path / "out")
    assert [f.name for f in files] == ["part-00000.jsonl", "part-00001.jsonl"]
    assert [r["caption"] for r in records] == [
        [{"en": "a red square", "de": "ein rotes quadrat"}, {"en": "red", "de": "rot"}],
        {"en": "a green square"}, {"en": "a blue square", "de": "ein blaues quadrat"}]
    pixels = [Image.open(io.BytesIO(base64.b64decode(r["binary"]))).getpixel((1, 1)) for r in records]
    assert pixels == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_prepared_shards_feed_the_image_text_reader(tmp_path, tiny_tokenizer):
    from dataset.pretrain import build_pretrain_datasets

    make_images(tmp_path / "imgs", {"x.png": (9, 9, 9)})
    (tmp_path / "caps.json").write_text(json.dumps([{"file": "x.png", "fr": "un carré bleu", "ja": None}]))
    main(["images", "--images", str(tmp_path / "imgs"), "--captions", str(tmp_path / "caps.json"),
          "--image-column", "file", "--out", str(tmp_path / "out"), "--shard-size", "5"])
    config = dict(train_file=[str(tmp_path / "out")], max_words=30, max_tokens=16, mask_prob=0.4, max_masks=4,
                  image_res=32, images=dict(batch_size=1))
    batch = next(iter(build_pretrain_datasets(config, tiny_tokenizer, repeat=False)["images"]))
    assert batch["image"].shape == (1, 3, 32, 32) and batch["text_ids"][0, 0] == 0


def test_parallel_round_trip_through_the_module_cli(tmp_path):
    (tmp_path / "pairs.tsv").write_text("src\ttgt\nhello\thallo\n\ngood morning\tguten morgen\nyes\tja\n")
    result = subprocess.run([sys.executable, "-m", "dataset.prepare", "parallel", "--tsv", str(tmp_path / "pairs.tsv"),
                             "--src-lang", "en", "--tgt-lang", "de", "--header", "--out", str(tmp_path / "out"),
                             "--shard-size", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    files, records = read_records(tmp_path / "out")
    assert len(files) == 2
    assert [(r["source_text"], r["target_text"]) for r in records] == [
        ("hello", "hallo"), ("good morning", "guten morgen"), ("yes", "ja")]
    assert {r["source_lang"] for r in records} == {"en"} and {r["target_lang"] for r in records} == {"de"}


def test_bad_rows_name_file_and_line(tmp_path):
    make_images(tmp_path / "imgs", {"a.png": (1, 2, 3)})
    (tmp_path / "missing.csv").write_text("image,en\na.png,fine\nnope.png,a caption\n")
    with pytest.raises(PrepareError, match=r"missing\.csv:3: image file not found"):
        main(["images", "--images", str(tmp_path / "imgs"), "--captions", str(tmp_path / "missing.csv"),
              "--out", str(tmp_path / "o1"), "--shard-size", "1"])
    assert not list((tmp_path / "o1").glob("*.jsonl"))  # nothing half-written is left
    (tmp_path / "empty.csv").write_text("image,en,de\na.png,,\n")
    with pytest.raises(PrepareError, match=r"empty\.csv:2: no caption in any language"):
        main(["images", "--images", str(tmp_path / "imgs"), "--captions", str(tmp_path / "empty.csv"),
              "--out", str(tmp_path / "o2")])
    (tmp_path / "bad.tsv").write_text("a\tb\nonly one column\n")
    with pytest.raises(PrepareError, match=r"bad\.tsv:2: expected 2 tab-separated columns, got 1"):
        main(["parallel", "--tsv", str(tmp_path / "bad.tsv"), "--src-lang", "en", "--tgt-lang", "de",
              "--out", str(tmp_path / "o3"), "--shard-size", "1"])
    assert not list((tmp_path / "o3").glob("*"))  # the finished first shard is removed too
    (tmp_path / "o4").mkdir()
    (tmp_path / "o4" / "part-00000.jsonl").write_text("{}\n")
    (tmp_path / "ok.tsv").write_text("a\tb\n")
    with pytest.raises(PrepareError, match="already holds 1 .jsonl"):
        main(["parallel", "--tsv", str(tmp_path / "ok.tsv"), "--src-lang", "en", "--tgt-lang", "de",
              "--out", str(tmp_path / "o4")])


def tar_members(path):
    import tarfile

    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_images_as_tar_shards(tmp_path):
    make_images(tmp_path / "imgs", {"a.png": (255, 0, 0), "b.jpg": (0, 255, 0), "c.bmp": (0, 0, 255)})
    (tmp_path / "caps.csv").write_text("image,en,de\na.png,a red square,ein rotes quadrat\nb.jpg,green,grün\n"
                                       "c.bmp,blue,blau\n")
    paths = main(["images", "--images", str(tmp_path / "imgs"), "--captions", str(tmp_path / "caps.csv"),
                  "--out", str(tmp_path / "out"), "--shard-size", "2", "--format", "tar"])
    assert [Path(p).name for p in paths] == ["part-00000.tar", "part-00001.tar"]
    first, second = tar_members(paths[0]), tar_members(paths[1])
    assert sorted(first) == ["000000000.json", "000000000.png", "000000001.jpg", "000000001.json"]
    assert first["000000000.png"] == (tmp_path / "imgs" / "a.png").read_bytes()  # the file's bytes, unchanged
    assert json.loads(first["000000000.json"]) == {"caption": {"en": "a red square", "de": "ein rotes quadrat"}}
    assert sorted(second) == ["000000002.json", "000000002.png"]  # BMP is re-encoded as PNG
    assert Image.open(io.BytesIO(second["000000002.png"])).getpixel((1, 1)) == (0, 0, 255)
    stats = [json.loads((tmp_path / "out" / f"part-0000{i}_stats.json").read_text())["successes"] for i in (0, 1)]
    assert stats == [2, 1]


def test_stats_for_tars_made_elsewhere(tmp_path, s3_bucket):
    from webdataset import TarWriter

    from utils.remote import url_filesystem

    (tmp_path / "d").mkdir()
    for shard, n in (("00000", 3), ("00001", 2)):
        with TarWriter(str(tmp_path / "d" / f"{shard}.tar")) as writer:
            for i in range(n):
                writer.write({"__key__": f"{shard}{i:04d}", "jpg": b"x", "txt": "a caption", "json": {"i": i}})
    written = main(["stats", str(tmp_path / "d" / "{00000..00001}.tar")])
    assert [Path(p).name for p in written] == ["00000_stats.json", "00001_stats.json"]
    assert json.loads((tmp_path / "d" / "00000_stats.json").read_text())["successes"] == 3
    assert main(["stats", str(tmp_path / "d")]) == []  # existing counts are kept
    fs, root = url_filesystem(s3_bucket)
    fs.put_file(str(tmp_path / "d" / "00001.tar"), f"{root}/w/00001.tar")
    assert main(["stats", f"{s3_bucket}/w/"]) == [f"{s3_bucket}/w/00001_stats.json"]
    assert json.loads(fs.cat_file(f"{root}/w/00001_stats.json"))["successes"] == 2
    data = (tmp_path / "d" / "00000.tar").read_bytes()
    (tmp_path / "d" / "00000.tar").write_bytes(data[:len(data) // 3])
    with pytest.raises(PrepareError, match=r"00000.tar: unreadable tar after \d samples .* repair or remove"):
        main(["stats", str(tmp_path / "d" / "00000.tar"), "--overwrite"])


def test_jsonl_to_tars_written_straight_to_s3(tmp_path, s3_bucket):
    from utils.remote import url_filesystem

    make_images(tmp_path / "imgs", {"a.png": (1, 2, 3)})
    (tmp_path / "caps.csv").write_text("image,en\na.png,one\na.png,two\n")
    main(["images", "--images", str(tmp_path / "imgs"), "--captions", str(tmp_path / "caps.csv"),
          "--out", str(tmp_path / "jsonl")])
    out = f"{s3_bucket}/tars"
    assert main(["tars", "--jsonl", str(tmp_path / "jsonl"), "--out", out]) == [f"{out}/part-00000.tar"]
    fs, root = url_filesystem(out)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(root)) == ["part-00000.tar", "part-00000_stats.json"]
    with pytest.raises(PrepareError, match="already holds 1 .tar"):
        main(["tars", "--jsonl", str(tmp_path / "jsonl"), "--out", out])
    (tmp_path / "bad.jsonl").write_text(json.dumps({"binary": "###", "caption": "x"}) + "\n")
    with pytest.raises(PrepareError, match=r"bad\.jsonl:1: invalid base64"):
        main(["tars", "--jsonl", str(tmp_path / "bad.jsonl"), "--out", f"{s3_bucket}/bad"])
    assert not fs.exists(f"{root.split('/')[0]}/bad/part-00000.tar")
