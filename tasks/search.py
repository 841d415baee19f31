"""The search task (Search.py): with a CCLM model, index a folder of images, find the images that match text queries
in any language, and rank captions for an image. It runs on the public API (:mod:`cclm`).

Commands (``search.command``, or the sub-command of ``python3 Search.py``):
- ``index``: add the images of folders (recursive) or files to an index folder (created on first use); files the
  index already holds unchanged are not encoded again; other files are skipped and counted, unreadable images too.
- ``query``: each query's ``top_k`` images (cosine similarity, or after re-ranking the top ``rerank_k`` by the
  matching head); recall@K when the queries come with their images (a retrieval .json).
- ``caption``: the captions ranked for one image.
Each prints its results and writes ``results.json`` (and ``results.html`` with thumbnails) to ``output_dir``.
A bad input is one line naming it and exit code 2; an existing index is never left changed by a failed command.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cclm
from cclm.index import ImageIndex, IndexingReport, index_images, scan_images
from tasks.environment import resolve_data_root, resolve_text_encoder
from tasks.runner import check_given_files, started_run
from tasks.search_pages import write_caption_page, write_query_page
from utils.config import ConfigError, load_config, set_by_path
from utils.errors import UserError
from utils.results import write_text_atomically

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CONFIG, SCHEMA = ROOT / "configs/search.yaml", ROOT / "configs/base/search.yaml"
COMMANDS = ("index", "query", "caption")
RECALL_AT = (1, 5, 10)
RERANK_QUERIES = 32   # queries re-ranked together (their candidate images are encoded once per group)


# ---------------------------------------------------------------------------------------------- the sub-commands

@dataclass(frozen=True)
class Option:
    """One sub-command option and the config key it sets."""

    flags: tuple[str, ...]
    key: str
    commands: tuple[str, ...]
    help: str
    kwargs: dict
    required: tuple[str, ...] = ()   # the commands that need it


ALL = COMMANDS
OPTIONS = (
    Option(("--index",), "search.index", ALL, "the index folder", {}, ("index", "query")),
    Option(("--checkpoint",), "checkpoint", ALL, "the model: a released CCLM .th, a retrieval checkpoint or one of "
           "ours (default for query/caption: the index's)", {}),
    Option(("--text-encoder",), "text_encoder", ALL, "folder with the tokenizer and the text encoder's "
           "config.json (default: the checkpoint's)", {}),
    Option(("--device",), "device", ALL, "auto (CUDA when available) | cuda | cpu", {}),
    Option(("--precision",), "precision", ALL, "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16", {}),
    Option(("--output_dir", "--output-dir"), "output_dir", ALL, "where results.json and results.html go "
           "(default output/search)", {}),
    Option(("--batch-size",), "search.batch_size", ALL, "images per encoder batch", {"type": int}),
    Option(("--images",), "search.images", ("index",), "folders (searched recursively) or image files",
           {"nargs": "+"}, ("index",)),
    Option(("--files-from",), "search.files_from", ("index",), "only the images listed in this file (.txt, one a "
           "line, or a retrieval .json), relative to the one --images folder", {}),
    Option(("--num-workers",), "search.num_workers", ("index",), "processes decoding images", {"type": int}),
    Option(("--query", "-q"), "search.query", ("query",), "a text query, any language (repeatable)",
           {"action": "append"}),
    Option(("--queries",), "search.queries", ("query",), "a file of queries: .txt (one a line) or .json (strings, "
           "or retrieval annotations with images: recall@K is reported)", {}),
    Option(("--image-root",), "search.image_root", ("query",), "folder the queries .json image paths are relative "
           "to (default: the file's folder)", {}),
    Option(("--image",), "search.image", ("caption",), "the image to caption", {}, ("caption",)),
    Option(("--caption", "-c"), "search.caption", ("caption",), "a candidate caption (repeatable)",
           {"action": "append"}),
    Option(("--captions",), "search.captions", ("caption",), "a file of candidate captions (.txt or .json)", {}),
    Option(("--top-k", "-k"), "search.top_k", ("query", "caption"), "results per query (default 5)", {"type": int}),
    Option(("--rerank-k",), "search.rerank_k", ("query", "caption"), "re-rank the top K by the matching head "
           "(default 0: similarity only)", {"type": int}),
    Option(("--encoding",), "search.encoding", ("index", "query", "caption"), "encoding of the input text files "
           "(default utf-8)", {}),
    Option(("--no-html",), "search.html", ("query", "caption"), "do not write results.html",
           {"action": "store_false", "default": None}),
)


def subcommand_parser() -> argparse.ArgumentParser:
    """``Search.py index|query|caption [options]``."""
    parser = argparse.ArgumentParser(prog="Search.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{index,query,caption}")
    helps = {"index": "add images to an index", "query": "find images for text queries",
             "caption": "rank captions for an image"}
    for command in COMMANDS:
        sub = commands.add_parser(command, help=helps[command], description=helps[command])
        for option in OPTIONS:
            if command in option.commands:
                kwargs = {"default": None, **option.kwargs}
                sub.add_argument(*option.flags, dest=option.key.replace(".", "__"), help=option.help,
                                 required=command in option.required, **kwargs)
    return parser


def config_from_subcommand(argv: Sequence[str]) -> dict:
    """The search config (configs/search.yaml) with the sub-command's options set."""
    args = subcommand_parser().parse_args(list(argv))
    config = load_config(CONFIG, schema=SCHEMA)
    config["search"]["command"] = args.command
    for dest, value in vars(args).items():
        if dest != "command" and value is not None:
            set_by_path(config, dest.replace("__", "."), value)
    return config


# ---------------------------------------------------------------------------------------------- running

def execute(config: dict) -> dict:
    """Run the config's command; returns what results.json holds."""
    check_given_files(config)
    if config.get("text_encoder"):
        config["text_encoder"] = resolve_text_encoder(str(config["text_encoder"]), resolve_data_root(config))
    command = config["search"]["command"]
    if command not in COMMANDS:
        raise ConfigError(f"config key 'search.command' must be one of {', '.join(COMMANDS)}, got {command!r}")
    out = Path(config.get("output_dir") or "output/search")
    out.mkdir(parents=True, exist_ok=True)
    return {"index": run_index, "query": run_query, "caption": run_caption}[command](config, out)


def load_model(config: dict, index: ImageIndex | None = None) -> cclm.CCLM:
    """The model of ``--checkpoint``, else the index's; it must be the index's model."""
    checkpoint = config.get("checkpoint") or (index.identity.get("checkpoint") if index is not None else None)
    if not checkpoint:
        raise ConfigError("no model: give --checkpoint (a CCLM checkpoint) or the --index it built")
    text_encoder = config.get("text_encoder")
    if text_encoder is None and index is not None and not config.get("checkpoint"):
        text_encoder = index.identity.get("text_encoder")
    precision = str(config.get("precision") or "auto")
    model = cclm.load(checkpoint, text_encoder=text_encoder, data_root=config.get("data_root"),
                      device=str(config.get("device") or "auto"),
                      precision=precision)
    if index is not None:
        index.check_model(model.identity)
    return model


def run_index(config: dict, out: Path) -> dict:
    """Add the images of ``search.images`` to the index; skipped and unreadable files are listed."""
    search = config["search"]
    folder = _required(search, "index")
    images = search.get("images") or []
    if not images:
        raise ConfigError("index: give the images to add (--images FOLDER_OR_FILE ...)")
    files_from = search.get("files_from")
    scan = scan_images(images, files_from, lambda path: read_file_list(path, search["encoding"]))
    for path, why in scan.skipped:
        logger.info("skipped %s: %s", path, why)
    if not scan.images:
        what = f"{len(scan.skipped)} other file(s), none an image" if scan.skipped else "nothing"
        raise UserError(f"no image to index in {', '.join(map(str, images))}: it holds {what}")
    existing = ImageIndex.load(folder) if ImageIndex.exists(folder) else None
    model = load_model(config, existing)
    index = existing or ImageIndex(folder, model.identity)
    before = len(index)
    report = index_images(model, index, scan.images, batch_size=int(search["batch_size"]),
                          num_workers=int(search["num_workers"]), progress=True)
    payload = {"command": "index", "index": str(Path(folder).resolve()), "model": index.identity,
               "images": len(index), "before": before, "added": report.added, "updated": report.updated,
               "unchanged": report.unchanged, "encoded": report.encoded,
               "skipped": [{"path": p, "reason": r} for p, r in scan.skipped],
               "unreadable": [{"path": p, "reason": r} for p, r in report.unreadable]}
    _write_json(out / "results.json", payload)
    print(index_summary(folder, len(index), report, len(scan.skipped)))
    if report.unreadable:
        first = "; ".join(f"{p}: {r}" for p, r in report.unreadable[:2])
        kept = f"the index holds the other {len(index)} image(s)" if len(index) else "nothing was indexed"
        raise UserError(f"{len(report.unreadable)} image file(s) could not be read and were skipped ({first}"
                        f"{' ...' if len(report.unreadable) > 2 else ''}; all in {out / 'results.json'}); {kept}")
    return payload


def index_summary(folder, size: int, report: IndexingReport, skipped: int) -> str:
    """One line: what indexing did."""
    return (f"index {folder}: {size} images ({report.added} added, {report.updated} updated, {report.unchanged} "
            f"unchanged; {report.encoded} encoded); {skipped} non-image file(s) skipped, "
            f"{len(report.unreadable)} unreadable")


@dataclass
class Query:
    """A text query, where it comes from, and (from a retrieval .json) the image it describes."""

    text: str
    at: str
    truth: Path | None = None


def run_query(config: dict, out: Path) -> dict:
    """Each query's best images from the index; recall@K when the queries name their images."""
    search = config["search"]
    index = ImageIndex.load(_required(search, "index"))
    if not len(index):
        raise UserError(f"the index in {index.folder} is empty")
    queries = [Query(text, f"--query {i + 1}") for i, text in enumerate(search.get("query") or [])]
    if search.get("queries"):
        queries += read_queries(Path(search["queries"]), search["encoding"], search.get("image_root"))
    if not queries:
        raise ConfigError("query: give --query TEXT or --queries FILE")
    top_k, rerank_k = ranked_counts(search)
    model = load_model(config, index)
    results = find_images(model, index, queries, top_k, rerank_k, int(search["text_batch_size"]))
    payload = {"command": "query", "index": str(index.folder.resolve()), "model": index.identity, "top_k": top_k,
               "rerank_k": rerank_k, "score": "itm" if rerank_k else "cosine",
               "queries": [{"query": q.text, "at": q.at, "truth": str(q.truth) if q.truth else None,
                            "truth_rank": truth_rank(q, r), "results": [{"path": p, "score": s} for p, s in r]}
                           for q, r in zip(queries, results)]}
    payload["recall"] = recall_at(payload["queries"], top_k)
    _write_json(out / "results.json", payload)
    if search.get("html", True):
        write_query_page(out, payload, int(search["thumbnail_size"]))
    print_queries(payload, int(search["max_printed"]))
    return payload


def find_images(model: cclm.CCLM, index: ImageIndex, queries: list[Query], top_k: int, rerank_k: int,
                text_batch: int) -> list[list[tuple[str, float]]]:
    """Each query's ``top_k`` (path, score), best first: the index's cosine similarities, or (``rerank_k``) the
    matching head's order of each query's top ``rerank_k``, through the API's re-rank."""
    texts = [q.text for q in queries]
    try:
        feats = model.encode_texts(texts, batch_size=text_batch)
    except ValueError as err:
        raise UserError(_name_query(err, queries)) from None
    scores, rows = index.search(feats, max(top_k, rerank_k))
    if not rerank_k:
        return [[(index.entries[r]["path"], float(s)) for r, s in zip(row[:top_k].tolist(), sc[:top_k].tolist())]
                for row, sc in zip(rows, scores)]
    out = []
    for start in range(0, len(texts), RERANK_QUERIES):
        group = rows[start:start + RERANK_QUERIES]
        union = sorted(set(group.flatten().tolist()))
        paths = [Path(index.entries[r]["path"]) for r in union]
        ranking = model.rank(texts[start:start + RERANK_QUERIES], paths, top_k=min(top_k, len(union)),
                             rerank_k=min(rerank_k, len(union)))
        out += [[(str(paths[c]), s) for c, s in ranking[q]] for q in range(len(ranking))]
    return out


def ranked_counts(search: dict) -> tuple[int, int]:
    """(top_k, rerank_k), checked: only re-ranked results are ordered by the matching head."""
    top_k, rerank_k = int(search["top_k"]), int(search.get("rerank_k") or 0)
    if top_k < 1 or rerank_k < 0:
        raise ConfigError(f"--top-k must be >= 1 and --rerank-k >= 0, got {top_k} and {rerank_k}")
    if rerank_k and top_k > rerank_k:
        raise ConfigError(f"--top-k {top_k} > --rerank-k {rerank_k}: only the re-ranked results are ordered by the "
                          "matching head; ask for --top-k <= --rerank-k")
    return top_k, rerank_k


def run_caption(config: dict, out: Path) -> dict:
    """The captions ranked for one image."""
    search = config["search"]
    image = Path(_required(search, "image"))
    captions = [Query(text, f"--caption {i + 1}") for i, text in enumerate(search.get("caption") or [])]
    if search.get("captions"):
        captions += read_queries(Path(search["captions"]), search["encoding"], None)
    if not captions:
        raise ConfigError("caption: give --caption TEXT or --captions FILE")
    top_k, rerank_k = ranked_counts(search)
    top_k, rerank_k = min(top_k, len(captions)), min(rerank_k, len(captions))
    index = ImageIndex.load(search["index"]) if search.get("index") else None
    model = load_model(config, index)
    try:
        ranking = model.rank([image], [c.text for c in captions], top_k=top_k, rerank_k=rerank_k)
    except ValueError as err:
        raise UserError(_name_query(err, captions)) from None
    payload = {"command": "caption", "image": str(image.resolve()), "model": model.identity, "top_k": top_k,
               "rerank_k": rerank_k, "score": "itm" if rerank_k else "cosine",
               "results": [{"caption": captions[c].text, "at": captions[c].at, "score": s} for c, s in ranking[0]]}
    _write_json(out / "results.json", payload)
    if search.get("html", True):
        write_caption_page(out, payload, int(search["thumbnail_size"]))
    print(f"captions for {image}:")
    for rank, row in enumerate(payload["results"], start=1):
        print(f"  {rank:>3}  {row['score']:8.4f}  {row['caption']}")
    return payload


# ---------------------------------------------------------------------------------------------- input files

def read_text_file(path: Path, encoding: str) -> str:
    """The text of ``path``; a one-line error naming the file and the first undecodable byte's line."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(codec)
    except LookupError:
        raise ConfigError(f"--encoding {encoding!r}: unknown encoding") from None
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line} is not {encoding} text (byte 0x{data[err.start]:02x}); save the file "
                        f"as {encoding} or pass --encoding") from None


def read_queries(path: Path, encoding: str, image_root: str | None) -> list[Query]:
    """Queries (or captions) from a .txt (one a line, blank lines ignored) or a .json: a list of strings, or
    retrieval annotations ``[{"image": path, "caption": text or [texts]}]`` whose images become the truth."""
    text = read_text_file(path, encoding)
    if path.suffix.lower() != ".json":
        return [Query(line.strip(), f"{path}:{n}") for n, line in enumerate(text.splitlines(), start=1)
                if line.strip()]
    entries = _json_list(path, text)
    root = Path(image_root) if image_root else path.parent
    queries = []
    for n, entry in enumerate(entries):
        at = f"{path} entry {n}"
        if isinstance(entry, str):
            queries.append(Query(entry, at))
            continue
        if not isinstance(entry, dict) or "caption" not in entry:
            raise UserError(f"{at}: expected a string or an object with 'caption' (and 'image'), got {entry!r:.80}")
        texts = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        truth = (root / entry["image"]).resolve() if entry.get("image") else None
        for text_ in texts:
            if not isinstance(text_, str):
                raise UserError(f"{at}: a caption must be a string, got {text_!r:.80}")
            queries.append(Query(text_, at, truth))
    return queries


def read_file_list(path: Path, encoding: str) -> list[str]:
    """Image paths from a .txt (one a line) or a .json (strings, or objects with an 'image'), in order."""
    text = read_text_file(path, encoding)
    if path.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    names = []
    for n, entry in enumerate(_json_list(path, text)):
        name = entry if isinstance(entry, str) else entry.get("image") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise UserError(f"{path} entry {n}: expected an image path or an object with 'image', got {entry!r:.80}")
        names.append(name)
    return names


def _json_list(path: Path, text: str) -> list:
    """The list a .json input file holds (one-line errors naming the file)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if isinstance(data, list):
        return data
    raise UserError(f"{path}: expected a JSON list, got {type(data).__name__}")


# ---------------------------------------------------------------------------------------------- results

def truth_rank(query: Query, results: list[tuple[str, float]]) -> int | None:
    """1-based rank of the query's own image among its results (None: not among them, or no truth)."""
    if query.truth is None:
        return None
    paths = [p for p, _ in results]
    return paths.index(str(query.truth)) + 1 if str(query.truth) in paths else None


def recall_at(rows: list[dict], top_k: int) -> dict:
    """recall@K in % over the queries that name their image, for K up to ``top_k``."""
    judged = [r for r in rows if r["truth"] is not None]
    if not judged:
        return {}
    out = {f"r{k}": 100.0 * sum(r["truth_rank"] is not None and r["truth_rank"] <= k for r in judged) / len(judged)
           for k in RECALL_AT if k <= top_k}
    out["queries"] = len(judged)
    return out


def print_queries(payload: dict, max_printed: int) -> None:
    rows = payload["queries"]
    for row in rows[:max_printed]:
        print(f"query: {row['query']}")
        for rank, hit in enumerate(row["results"], start=1):
            mark = "  <- its image" if row["truth_rank"] == rank else ""
            print(f"  {rank:>3}  {hit['score']:8.4f}  {hit['path']}{mark}")
    if len(rows) > max_printed:
        print(f"... {len(rows) - max_printed} more queries in results.json")
    recall = payload.get("recall")
    if recall:
        figures = ", ".join(f"R@{k[1:]} {v:.1f}%" for k, v in recall.items() if k != "queries")
        print(f"{recall['queries']} queries with their image: {figures} ({payload['score']})")


def _name_query(err: ValueError, queries: Sequence[Query]) -> str:
    """The API's 'text i ...' message with the query's file and line."""
    message = str(err)
    if message.startswith("text "):
        number = message.split()[1]
        if number.isdigit() and int(number) < len(queries):
            return f"{queries[int(number)].at}: {message.split(' ', 2)[2]}"
    return message


def _required(search: dict, key: str):
    if not search.get(key):
        raise ConfigError(f"config key 'search.{key}' is needed (--{key.replace('_', '-')})")
    return search[key]


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomically(path, json.dumps(payload, indent=1, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------- entry point

TITLE = "Image search with a CCLM model: index images, query them in any language, caption an image"


def main(argv: Sequence[str]) -> dict:
    """``Search.py index|query|caption [options]``, or the task flags of ``run.py --task search`` (the command and
    its inputs then come from the config's ``search:`` block)."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        subcommand_parser().parse_args(["--help"])  # prints the commands and exits
    if argv[0] in COMMANDS:
        _log_to_stderr()
        return execute(config_from_subcommand(argv))
    with started_run("Search.py", argv, TITLE) as run:
        if run.env.world_size > 1:
            raise ConfigError(f"search runs in one process; it was started with {run.env.world_size} "
                              "(use --dist cpu or --dist gpu0)")
        return execute(run.config)


def _log_to_stderr() -> None:
    """INFO lines on stderr, so that stdout holds the results alone."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
