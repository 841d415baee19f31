"""WIT's pixel join (dataset/wit.py)."""
import json

from dataset.wit import join_wit_images


def test_join_wit_images_keeps_line_order_first_pixels_and_no_scratch(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    rows = {"train_en.jsonl": ["u/b", "u/a", "u/missing", "u/b"], "test_en.jsonl": ["u/c"]}
    for name, urls in rows.items():
        (ann / name).write_text("".join(json.dumps({"image_url": f"https://x/{u}", "caption_reference_description":
                                                    f"caption {i}"}) + "\n" for i, u in enumerate(urls)))
    pixels = [tmp_path / "p0.tsv", tmp_path / "p1.tsv"]
    pixels[0].write_text("https://x/u/a\tAAAA\textra\nno tab line\nhttps://x/u/b\tBBBB\n")
    pixels[1].write_text("https://x/u/a\tLATER\nhttps://x/u/c\tCCCC\n")
    out = tmp_path / "out"
    summary = join_wit_images([ann / "train_en.jsonl", ann / "test_en.jsonl"], pixels, out)
    assert summary == {"train_en.jsonl": (3, 1), "test_en.jsonl": (1, 0)}
    assert sorted(p.name for p in out.iterdir()) == ["test_en.jsonl", "train_en.jsonl"]  # no scratch file left
    joined = [json.loads(line) for line in (out / "train_en.jsonl").read_text().splitlines()]
    assert [(r["image_url"][-3:], r["caption_reference_description"], r["image_content"]) for r in joined] == [
        ("u/b", "caption 0", "BBBB"), ("u/a", "caption 1", "AAAA"), ("u/b", "caption 3", "BBBB")]
    assert json.loads((out / "test_en.jsonl").read_text())["image_content"] == "CCCC"


def test_join_stops_at_a_bad_line_or_with_skipping_leaves_it_out(tmp_path):
    import pytest

    from dataset.checked import AnnotationError, configure_reading, read_report

    ann = tmp_path / "test_en.jsonl"
    ann.write_text('{"image_url": "https://x/a", "caption_reference_description": "a"}\n{"image_url": 3}\n'
                   '{"image_url": "https://x/b", "caption_reference_description": "b"}\n')
    (tmp_path / "p.tsv").write_text("https://x/a\tAAAA\nhttps://x/b\tBBBB\n")
    with pytest.raises(AnnotationError, match=r"test_en\.jsonl:2: missing key"):
        join_wit_images([ann], [tmp_path / "p.tsv"], tmp_path / "out")
    configure_reading({"skip_bad_samples": True, "max_bad_fraction": 0.5})
    assert join_wit_images([ann], [tmp_path / "p.tsv"], tmp_path / "out") == {"test_en.jsonl": (2, 0)}
    assert read_report()[str(ann)] == {"read": 3, "skipped": 1}
    joined = [json.loads(line) for line in (tmp_path / "out/test_en.jsonl").read_text().splitlines()]
    assert [r["image_content"] for r in joined] == ["AAAA", "BBBB"]
