"""Strict JSON with lines (dataset/jsondoc.py): JSON lines and documents, each record with its 1-based line."""
import json

import pytest

from dataset.errors import AnnotationError
from dataset.jsondoc import iter_jsonl, parse_json_line, read_json, read_json_records


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


def test_document_records_know_their_lines_through_a_bom_crlf_and_pretty_printing(tmp_path):
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
    items = read_json_records(tmp_path / "d.json").items
    assert items[0].error is None and items[1].line == 3
    assert items[1].error == (5, "duplicate key 'x' (first at line 4)")
    with pytest.raises(AnnotationError, match=r"d\.json:5: duplicate key 'x' \(first at line 4\)"):
        read_json(tmp_path / "d.json")


@pytest.mark.parametrize("line, message", [
    ('{"a": 1, "a": 2}', "duplicate key 'a' in one object"),
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": -Infinity}', "-Infinity is not a JSON number"),
    ('{"a": 1} {"b": 2}', "extra data"),
    (b'{"a": "\xff"}', "not UTF-8 text"),
    ('{"a": [1, }', "malformed JSON"),
])
def test_a_line_that_is_not_strict_json_says_why(line, message):
    with pytest.raises(ValueError, match=message):
        parse_json_line(line)
    assert parse_json_line("\ufeff {\"a\": [1, 2.5]}\r\n") == {"a": [1, 2.5]}
