"""The checked-reading core: JSON lines and documents with file and line in every error; every IGLUE sample file
goes through the reader its task uses."""
import json

import pytest

from dataset.checked import AnnotationError, iter_jsonl, read_json
from dataset.retrieval import ImageRoots, read_eval_data, read_train_pairs


def test_jsonl_reader_lines_offsets_bom_and_no_final_newline(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": "\xc3\xa9"}')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (3, {"a": "é"})]
    assert [offset for _, offset, _ in iter_jsonl(path, with_offsets=True)] == [0, 13]
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(AnnotationError, match="a.jsonl:2: expected a JSON object, got list"):
        list(iter_jsonl(path))
    with pytest.raises(AnnotationError, match="annotation file not found"):
        list(iter_jsonl(tmp_path / "none.jsonl"))
    (tmp_path / "b.json").write_text('[\n{"a": 1},\n{"a" 2}\n]')
    with pytest.raises(AnnotationError, match="b.json:3: malformed JSON"):
        read_json(tmp_path / "b.json")


def read_any_sample_file(path, rel, tmp_path):
    """Dispatch one IGLUE sample file to the reader its task uses; return the number of usable records."""
    from dataset.gqa import read_answer_list, read_gqa_questions
    from dataset.marvl import convert_marvl_file
    from dataset.nlvr import read_nlvr2_jsonl
    from dataset.xvnli import read_xvnli
    task = rel.split("/")[0]
    if task == "XVNLI":
        return len(read_xvnli(path, tmp_path)[0])
    if task in ("flickr30k", "xFlickrCO"):
        roots = ImageRoots(flickr30k=tmp_path, coco=tmp_path)
        assert len(read_train_pairs("xflickrco", path, roots)) > 0
        return len(read_eval_data("xflickrco", path, roots).texts)
    if task == "wit":
        return len(read_eval_data("wit", path, ImageRoots(wit=tmp_path)).texts)
    if "ans2label" in rel or "label2ans" in rel:
        return len(read_answer_list(path))
    if task in ("gqa", "xGQA"):
        return len(read_gqa_questions(path))
    if task == "marvl":
        return len(convert_marvl_file(path, few_shot="few_shot" in rel))
    if task == "nlvr2":
        return len(read_nlvr2_jsonl(path, tmp_path))
    raise AssertionError(f"no reader for {rel}")


def test_every_sample_file_has_a_reader(iglue_sample, tmp_path):
    files = sorted(p for p in (iglue_sample / "datasets").rglob("*") if p.is_file())
    assert len(files) == 47  # every annotation file of the sample (its README aside)
    for path in files:
        rel = path.relative_to(iglue_sample / "datasets").as_posix()
        assert read_any_sample_file(path, rel, tmp_path) >= 3, rel


def test_document_records_know_their_lines_through_a_bom_crlf_and_pretty_printing(tmp_path):
    from dataset.checked import read_json_records

    records = [{"a": 1, "b": [1, 2]}, {"a": 2}, {"a": 3, "c": {"d": "e"}}]
    text = "\ufeff" + json.dumps(records, indent=2).replace("\n", "\r\n")
    (tmp_path / "d.json").write_bytes(text.encode("utf-8"))
    found = read_json_records(tmp_path / "d.json")
    lines = text.split("\r\n")
    assert [lines[item.line - 1].strip() for item in found.items] == ["{", "{", "{"]
    assert [item.value for item in found.items] == records
    assert found.form == "list" and found.line == 1


def test_a_duplicate_key_deep_inside_a_record_is_reported_at_its_own_line(tmp_path):
    (tmp_path / "d.json").write_text('[\n {"a": 1},\n {"a": {\n   "x": 1,\n   "x": 2}}\n]\n')
    from dataset.checked import read_json_records

    items = read_json_records(tmp_path / "d.json").items
    assert items[0].error is None and items[1].line == 3
    assert items[1].error == (5, "duplicate key 'x' (first at line 4)")
    with pytest.raises(AnnotationError, match=r"d\.json:5: duplicate key 'x' \(first at line 4\)"):
        read_json(tmp_path / "d.json")


def test_skipping_counts_per_file_and_stops_past_the_bad_fraction(tmp_path):
    from dataset.checked import BadDataError, RecordReader, configure_reading, read_report, string_field

    path = tmp_path / "r.jsonl"
    path.write_text('{"t": "a"}\n{"t": 1}\n{"t": "c"}\n{"t": "d"}\n')

    def read():
        kept = []
        with RecordReader(path) as reader:
            for at, record in reader.jsonl():
                with reader.record(at):
                    kept.append(string_field(record, "t", at))
        return kept

    configure_reading({})
    with pytest.raises(AnnotationError, match=r"r\.jsonl:2: 't' must be a string"):
        read()
    configure_reading({"skip_bad_samples": True, "max_bad_fraction": 0.25})
    assert read() == ["a", "c", "d"]
    assert read_report() == {str(path): {"read": 4, "skipped": 1}}
    path.write_text('{"t": "a"}\n{"t": 1}\n{oops\n{"t": "d"}\n')
    with pytest.raises(BadDataError, match=r"r\.jsonl: 2 of 4 records were bad .* the first: .*r\.jsonl:2: 't' must"):
        read()
    configure_reading({"skip_bad_samples": True})
    assert read_report() == {}
    with pytest.raises(Exception, match="max_bad_fraction"):
        configure_reading({"max_bad_fraction": 1.5})

