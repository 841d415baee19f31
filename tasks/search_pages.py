"""The search task's HTML pages: ``results.html`` in the output folder, with JPEG thumbnails in ``thumbs/`` (one per
image, named by a hash of its path) linking to the original files."""
from __future__ import annotations

import hashlib
import html
import logging
from pathlib import Path

from PIL import Image

from utils.results import write_text_atomically

logger = logging.getLogger(__name__)

STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}h2{font-size:1.05em;margin:1.2em 0 .4em}
.row{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:SIZEpx;font-size:.8em}
figure img{max-width:SIZEpx;max-height:SIZEpx;display:block;border:3px solid transparent}
figure.truth img{border-color:#2a2}figcaption{word-break:break-all}.meta{color:#666;font-size:.85em}
ol li{margin:.2em 0}"""


def thumbnail(out: Path, image: str, size: int) -> str | None:
    """The thumbnail of ``image`` under ``out/thumbs`` (made once), relative to ``out``; None if it cannot be read."""
    name = f"thumbs/{hashlib.sha1(image.encode()).hexdigest()[:16]}.jpg"
    target = out / name
    if not target.is_file():
        try:
            with Image.open(image) as img:
                img = img.convert("RGB")
                img.thumbnail((size, size))
                target.parent.mkdir(parents=True, exist_ok=True)
                img.save(target, quality=85)
        except OSError as err:
            logger.warning("no thumbnail for %s: %s", image, err)
            return None
    return name


def _figure(out: Path, path: str, label: str, size: int, truth: bool = False) -> str:
    thumb = thumbnail(out, path, size)
    picture = f'<img src="{html.escape(thumb)}" alt="">' if thumb else "(unreadable)"
    css = ' class="truth"' if truth else ""
    return (f'<figure{css}><a href="{html.escape(Path(path).as_uri())}">{picture}</a>'
            f"<figcaption>{label}<br>{html.escape(Path(path).name)}</figcaption></figure>")


def _page(title: str, meta: str, body: list[str], size: int) -> str:
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title><style>"
            + STYLE.replace("SIZE", str(size)) + "</style></head><body>\n<h1>" + html.escape(title) + "</h1>\n"
            + f'<p class="meta">{meta}</p>\n' + "\n".join(body) + "\n</body></html>\n")


def _model_line(payload: dict) -> str:
    model = payload["model"]
    ranking = (f"top {payload['rerank_k']} re-ranked by the matching head (scores: ITM logits)" if payload["rerank_k"]
               else "cosine similarity")
    return html.escape(f"model {model.get('checkpoint')}; {ranking}")


def write_query_page(out: Path, payload: dict, size: int) -> Path:
    """results.html of a query run: one row of thumbnails per query, its own image framed in green."""
    body = []
    recall = payload.get("recall")
    if recall:
        figures = ", ".join(f"R@{k[1:]} {v:.1f}%" for k, v in recall.items() if k != "queries")
        body.append(f"<p><b>{recall['queries']} queries with their image: {html.escape(figures)}</b></p>")
    for row in payload["queries"]:
        figures = [_figure(out, hit["path"], f"{rank}. {hit['score']:.4f}", size, row["truth_rank"] == rank)
                   for rank, hit in enumerate(row["results"], start=1)]
        body.append(f"<h2>{html.escape(row['query'])}</h2>\n<div class=\"row\">" + "".join(figures) + "</div>")
    path = out / "results.html"
    write_text_atomically(path, _page(f"CCLM search: {payload['index']}", _model_line(payload), body, size))
    return path


def write_caption_page(out: Path, payload: dict, size: int) -> Path:
    """results.html of a caption run: the image and its captions, best first."""
    items = "".join(f"<li>{html.escape(r['caption'])} <span class=\"meta\">{r['score']:.4f}</span></li>"
                    for r in payload["results"])
    body = [_figure(out, payload["image"], "", size), f"<ol>{items}</ol>"]
    path = out / "results.html"
    write_text_atomically(path, _page("CCLM: captions for an image", _model_line(payload), body, size))
    return path
