"""The demo's report: the results table (languages x arms x ranking), the targets it checks, results.json / .md and
the two figures."""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

from tasks.demo.arms import ARM_TITLES, ARMS, COLUMNS, ArmResult
from tasks.demo.data import HeldOut
from tasks.demo.plots import plot_recall_curves, plot_training_curves

# The demo's targets, stated for 200 held-out scenes (percent R@1, text->image).
TARGET_EN_R1, TARGET_RATIO, TARGET_ABLATION_MAX = 50.0, 0.6, 5.0


def _cell(metrics: dict, column: str) -> str:
    if f"{column}_r1" not in metrics:
        return "-"
    return f"{metrics[f'{column}_r1']:.1f}/{metrics[f'{column}_r5']:.1f}"


def results_table(arms: list[ArmResult], markdown: bool = False, note: str = "") -> str:
    """Languages as rows; per arm, R@1/R@5 text->image and image->text, by similarity and after ITM re-ranking;
    ``note`` (the ITM note) is printed under the plain-text table."""
    languages = list(arms[0].metrics)
    headers = ["lang"] + [f"{h} ({ARM_TITLES[a.name]})" if markdown else h for a in arms for _, _, h in COLUMNS]
    rows = [[lang] + [_cell(a.metrics[lang], col) for a in arms for col, _, _ in COLUMNS] for lang in languages]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    width = 11
    group = " | ".join(ARM_TITLES[a.name].center(width * len(COLUMNS) - 1) for a in arms)
    lines = [" " * 5 + "| " + group, f"{headers[0]:<5}| " + " | ".join(
        " ".join(f"{h:>{width - 1}}" for h in headers[1 + i * len(COLUMNS):1 + (i + 1) * len(COLUMNS)])
        for i in range(len(arms)))]
    for r in rows:
        lines.append(f"{r[0]:<5}| " + " | ".join(
            " ".join(f"{c:>{width - 1}}" for c in r[1 + i * len(COLUMNS):1 + (i + 1) * len(COLUMNS)])
            for i in range(len(arms))))
    if note:
        lines += [""] + textwrap.wrap(note, width=len(lines[1]))
    return "\n".join(lines) + "\n"


def itm_training(config: dict, total_steps: int) -> dict:
    """How much the matching head trained: its first step, every how many steps, its updates, pairs per update."""
    demo = config["demo"]
    first, every = math.ceil(float(demo["itm_from"]) * total_steps), max(1, int(demo["itm_every"]))
    batch = int(config["images"]["batch_size"])
    rows = min(int(demo["itm_rows"] or batch), batch)
    return {"first_step": first, "every": every, "updates": len(range(first, total_steps, every)),
            "total_steps": total_steps, "pairs": rows, "batch": batch}


def itm_note(arms: list[ArmResult], config: dict) -> str:
    """Why the ITM columns differ from the similarity ones: what re-ranking is, how little the head trained here
    and what it did to English text->image R@1 (read from the results, so the note never contradicts the table)."""
    arm = next((a for a in arms if "en" in a.metrics and "t2i_itm_r1" in a.metrics["en"]), None)
    if arm is None:
        return ""
    itm = itm_training(config, arm.steps)
    sim, ranked = arm.metrics["en"]["t2i_r1"], arm.metrics["en"]["t2i_itm_r1"]
    numbers = f"en text->image: {sim:.1f} by similarity, {ranked:.1f} after re-ranking, {arm.name.replace('_', ' ')}"
    if ranked < sim:
        effect = ("That is too little for it to order candidates as well as the similarity it re-ranks: here "
                  f"re-ranking lowers R@1 ({numbers}).")
    else:
        effect = f"Here re-ranking {'raises' if ranked > sim else 'leaves'} R@1 ({numbers})."
    return (f"ITM columns: the top {config['demo']['k_test']} candidates by similarity, re-ranked by the matching "
            f"head, which at this budget trains in {itm['updates']} of the {itm['total_steps']} steps (from step "
            f"{itm['first_step']}, every {itm['every']}{_ordinal(itm['every'])} step, {itm['pairs']} of "
            f"{itm['batch']} pairs; demo.itm_from, demo.itm_every, demo.itm_rows). {effect} The sim columns are the "
            "demo's result and what its targets check; the ITM columns show the re-ranking path at work.")


def _ordinal(n: int) -> str:
    return "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def check_targets(arms: list[ArmResult]) -> list[dict]:
    """The issue's targets (text->image R@1 by similarity) as {target, value, ok} rows, for the arms that ran."""
    checks = []
    for arm in arms:
        r1 = {lang: m["t2i_r1"] for lang, m in arm.metrics.items()}
        if arm.name == ARMS[True] and "en" in r1:
            checks.append({"target": f"{arm.name}: en R@1 >= {TARGET_EN_R1:g}", "value": r1["en"],
                           "ok": r1["en"] >= TARGET_EN_R1})
            for lang in (x for x in r1 if x != "en"):
                floor = TARGET_RATIO * r1["en"]
                checks.append({"target": f"{arm.name}: {lang} R@1 >= {TARGET_RATIO:g} x en = {floor:.1f}",
                               "value": r1[lang], "ok": r1[lang] >= floor})
        if arm.name == ARMS[False]:
            for lang in (x for x in r1 if x != "en"):
                checks.append({"target": f"{arm.name}: {lang} R@1 <= {TARGET_ABLATION_MAX:g}", "value": r1[lang],
                               "ok": r1[lang] <= TARGET_ABLATION_MAX})
    return checks


def write_report(output_dir: Path, arms: list[ArmResult], heldout: HeldOut, timings: dict, world: dict,
                 config: dict) -> dict:
    """results.json, results.md and the two PNGs in ``output_dir``; returns the results.json payload."""
    n_images = len(heldout.images)
    chance = 100.0 / n_images
    checks = check_targets(arms)
    note = itm_note(arms, config)
    payload = {"task": "demo", "primary": "t2i_r1", "heldout_images": n_images, "chance_r1": chance,
               "arms": {a.name: {"languages": a.metrics, "curve": a.curve, "steps": a.steps,
                                 "train_seconds": a.seconds, "cpu_seconds": a.cpu_seconds} for a in arms},
               "itm_note": note, "targets": checks, "timings": timings, "world": world}
    (output_dir / "results.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
    lines = ["# Demo: zero-shot cross-lingual retrieval", "",
             f"{n_images} held-out scenes (chance R@1 {chance:.1f}%). Cells are R@1/R@5 in %. T->I: text->image, "
             "I->T: image->text; sim: contrastive similarity, ITM: after re-ranking the top "
             f"candidates with the matching head. Image-caption training data: English only.", "",
             results_table(arms, markdown=True)] + ([note, ""] if note else []) + ["## Targets", ""]
    lines += [f"- {'ok  ' if c['ok'] else 'MISS'} {c['target']}: {c['value']:.1f}" for c in checks]
    lines += ["", "## Timings (s)", ""] + [f"- {k}: {v:.0f}" for k, v in timings.items()]
    (output_dir / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_training_curves({ARM_TITLES[a.name]: a.records for a in arms if a.records},
                         output_dir / "training_curves.png")
    plot_recall_curves({ARM_TITLES[a.name]: a.curve for a in arms}, output_dir / "recall_curves.png", chance=chance)
    return payload
