"""results.json / results.md: language rows, metric columns and the IGLUE average without English."""
import json

import pytest

from utils.results import iglue_average, write_predictions, write_results


def test_write_results_tables_and_iglue_average(tmp_path):
    per_language = {"en": {"acc": 80.0}, "de": {"acc": 60.0}, "fr": {"acc": 50.5}}
    payload = write_results(tmp_path, per_language, primary="acc", extra={"task": "xvnli", "epoch": 3})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == payload
    assert saved["languages"]["de"] == {"acc": 60.0}
    assert saved["iglue_avg"] == {"acc": pytest.approx(55.25)}  # (60 + 50.5) / 2, English left out
    assert saved["extra"] == {"task": "xvnli", "epoch": 3}
    md = (tmp_path / "results.md").read_text()
    assert "| language | acc |" in md
    assert "| en | 80.00 |" in md
    assert "| de | 60.00 |" in md
    assert "| fr | 50.50 |" in md
    assert "| IGLUE avg | 55.25 |" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["language", "en", "de", "fr", "IGLUE avg"]


def test_several_metrics_missing_values_and_no_average_for_english_only(tmp_path):
    per_language = {"en": {"txt_r1": 70.0, "img_r1": 60.0}, "ja": {"txt_r1": 40.0}}
    write_results(tmp_path, per_language, primary="txt_r1")
    md = (tmp_path / "results.md").read_text()
    assert "| language | txt_r1 | img_r1 |" in md
    assert "| ja | 40.00 | - |" in md
    assert "| IGLUE avg | 40.00 | - |" in md
    write_results(tmp_path / "en_only", {"en": {"acc": 1.0}}, primary="acc")
    assert "IGLUE avg" not in (tmp_path / "en_only" / "results.md").read_text()
    assert json.loads((tmp_path / "en_only" / "results.json").read_text())["iglue_avg"] == {}


def test_iglue_average_skips_only_english():
    assert iglue_average({"en": {"m": 100.0}, "ar": {"m": 10.0}, "es": {"m": 20.0}, "ru": {"m": 60.0}}) == {"m": 30.0}


@pytest.mark.parametrize("per_language, primary, message", [
    ({}, "acc", "no language"),
    ({"de": {"acc": "high"}}, "acc", "de/acc"),
    ({"de": {"acc": 1.0}}, "r_mean", "primary metric 'r_mean'"),
])
def test_bad_results_are_rejected(tmp_path, per_language, primary, message):
    with pytest.raises(ValueError, match=message):
        write_results(tmp_path, per_language, primary=primary)


def test_predictions_are_written_in_numeric_question_id_order(tmp_path):
    path = tmp_path / "predictions" / "test_de.json"
    write_predictions(path, {"10": "yes", "9": "no", 201: "red", "b7": "two", "a1": "one"})
    rows = json.loads(path.read_text())
    assert [r["question_id"] for r in rows] == ["9", "10", 201, "a1", "b7"]
    assert rows[0] == {"question_id": "9", "answer": "no"}
