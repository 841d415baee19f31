"""Per-run result files: ``results.json`` and ``results.md`` (rows = languages, columns = metrics, IGLUE average).

The IGLUE average is the mean over the non-English languages (IGLUE reports cross-lingual transfer, so the
English source language is left out); each metric is averaged over the languages that report it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping

from utils.atomic import write_text_atomically
from utils.remote import sync_outputs

IGLUE_AVG = "IGLUE avg"
SOURCE_LANGUAGES = ("en",)


def iglue_average(per_language: Mapping[str, Mapping[str, float]],
                  exclude: tuple[str, ...] = SOURCE_LANGUAGES) -> dict[str, float]:
    """Mean of every metric over the languages not in ``exclude``; {} when no such language exists."""
    targets = [metrics for lang, metrics in per_language.items() if lang not in exclude]
    average = {}
    for metric in _metric_columns(per_language):
        values = [m[metric] for m in targets if metric in m]
        if values:
            average[metric] = sum(values) / len(values)
    return average


def _metric_columns(per_language: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Metric names in order of first appearance over the languages."""
    columns: list[str] = []
    for metrics in per_language.values():
        columns.extend(m for m in metrics if m not in columns)
    return columns


def _check_numbers(per_language: Mapping[str, Mapping[str, float]]) -> None:
    if not per_language:
        raise ValueError("write_results: no language has results")
    for lang, metrics in per_language.items():
        if not isinstance(metrics, Mapping):
            raise ValueError(f"write_results: results of {lang!r} must map metric -> number, got {type(metrics).__name__}")
        for metric, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"write_results: {lang}/{metric} is {value!r}, not a number")


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.2f}"


def results_markdown(per_language: Mapping[str, Mapping[str, float]], primary: str, title: str = "Results",
                     iglue: bool = True, note: str = "Values are percentages.", row_name: str = "language") -> str:
    """The markdown table: one row per language, then the IGLUE average row (if any non-English language)."""
    columns = _metric_columns(per_language)
    lines = [f"# {title}", "", f"Primary metric: `{primary}`. {note}".rstrip(), "",
             f"| {row_name} | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    rows = list(per_language.items())
    average = iglue_average(per_language) if iglue else {}
    if average:
        rows.append((IGLUE_AVG, average))
    for name, metrics in rows:
        lines.append(f"| {name} | " + " | ".join(_format(metrics.get(c)) for c in columns) + " |")
    if average:
        excluded = ", ".join(SOURCE_LANGUAGES)
        lines += ["", f"{IGLUE_AVG}: mean over the languages other than {excluded}."]
    return "\n".join(lines) + "\n"


def write_predictions(path: Path, predictions: Mapping) -> None:
    """``[{"question_id": ..., "answer": ...}, ...]`` as JSON (one entry a line), in question-id order (numeric ids,
    also when written as strings, by value: 9 before 10)."""
    rows = [json.dumps({"question_id": qid, "answer": answer}, ensure_ascii=False)
            for qid, answer in sorted(predictions.items(), key=lambda item: _id_order(item[0]))]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, "[\n" + ",\n".join(rows) + "\n]\n")


def _id_order(qid) -> tuple:
    text = str(qid)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def write_results(output_dir: str | os.PathLike, per_language: Mapping[str, Mapping[str, float]], primary: str,
                  extra: Mapping | None = None, title: str = "Results", iglue: bool = True,
                  note: str = "Values are percentages.", row_name: str = "language") -> dict:
    """Write ``results.json`` and ``results.md`` into ``output_dir`` and return the JSON payload.

    ``per_language``: {language: {metric: value}} in the order rows should appear; ``primary``: the metric the run is
    selected/reported on (must be present for at least one language); ``extra``: more JSON-serialisable facts
    (task, epoch, checkpoint, protocol...) stored under ``"extra"``. ``iglue=False`` leaves out the IGLUE average
    (runs whose rows are not languages, such as pre-training).
    """
    _check_numbers(per_language)
    if not any(primary in m for m in per_language.values()):
        raise ValueError(f"write_results: primary metric {primary!r} is in no language's results "
                         f"(metrics: {_metric_columns(per_language)})")
    payload = {
        "primary": primary,
        "languages": {lang: dict(metrics) for lang, metrics in per_language.items()},
        "iglue_avg": iglue_average(per_language) if iglue else {},
        "iglue_avg_excludes": list(SOURCE_LANGUAGES),
        "extra": dict(extra or {}),
    }
    try:
        text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    except TypeError as e:
        raise ValueError(f"write_results: extra must be JSON-serialisable: {e}") from e
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output_dir / "results.json", text)
    write_text_atomically(output_dir / "results.md",
                          results_markdown(per_language, primary, title, iglue, note, row_name))
    sync_outputs(output_dir)  # --output_hdfs: the results (and the rest of the folder) reach remote storage now
    return payload
