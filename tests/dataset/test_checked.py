"""The checked-reading layer: every IGLUE sample file goes through the reader its task uses; skipped records are
counted per file and stop the run past the bad fraction."""
import pytest

from dataset.checked import AnnotationError
from dataset.retrieval import ImageRoots, read_eval_data, read_train_pairs


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

