"""The synthetic world: a deterministic multilingual image-text dataset written in every real on-disk format.

Nothing can be downloaded here, so tests, tiny configs and the demo run on this world. It goes through exactly the
loaders the real data uses.

Usage::

    python3 -m dataset.synthetic --out DIR --images 200 --languages en,de,fr,cs,ja,zh --seed 0

    from dataset.synthetic import generate_world, ensure_world
    paths = ensure_world("cache/world", images=200)   # generates only when absent or made with other params

What is in an image (dataset/synthetic/scenes.py): one or two groups of 1-3 identical objects (circle, square,
triangle, star, cross, diamond; red, green, blue, yellow, purple, orange, white, black; small or large) on the
left/right/top/bottom/centre (two groups sit on opposite sides), on a coloured background with an optional texture.
Each object has a pixel box. Captions (dataset/synthetic/language.py) describe every group with count, size,
colour, shape and position. There are 5 paraphrase templates per language (en, de, fr, cs, ja, zh) with agreement,
and Japanese/Chinese have no spaces. Hypotheses, questions and two-image statements (dataset/synthetic/facts.py) are
true or false of the scene by construction, and their labels are recomputed from the scene.

Splits: ``images`` scenes = train + val + test (held out; default images // 5, at most 2000; val images // 10, at
most 1000). No training scene and no parallel sentence has the content description of a test (or val) scene, so
their captions never occur in any training file, and their text is kept out of the tokenizer's training text. Test
scenes also differ from each other, so retrieval on them is well defined. The demo's held-out retrieval sets are
``data/finetune/multi30k/test_2016_flickr.<lang>.json`` (one caption per image per language, parallel across
languages); ``pretrain_caption_languages=("en",)`` makes the pre-training image captions English-only, leaving the
parallel text as the only route to the other languages.

Layout under the output folder (docs/data-formats.md#layout and the IGLUE repository; names are the real ones)::

    manifest.json                           parameters, format version and every file written
    tokenizer/                              Unigram tokenizer in the XLM-R id layout, trained on training text only
    scenes/{train,val,test}.jsonl           scene metadata: groups, boxes, ids used by each dataset (not a real format)
    pretrain/image_text/part-0000k.jsonl    {"binary": base64 jpeg, "caption": {lang: text} or [{...}, {...}]}
    pretrain/regions/part-0000k.jsonl       {"binary", optional "caption", "elems": [{"bb": [x,y,w,h], "caption"}]}
    pretrain/para_text/part-0000k.jsonl     {"source_text": en, "target_text": other language}
    pretrain/image_text_tar/part-0000k.tar  the image-text samples as webdataset tars: <key>.jpg + <key>.json
                                            {"caption": ...}, with part-0000k_stats.json (the sample count)
    pretrain/regions_tar/part-0000k.tar     the region samples likewise: <key>.jpg + <key>.json {"caption"?, "elems"}
    data/finetune/multi30k/{train,val,test_2016_flickr}.<lang>.json        retrieval json (train: one caption per
    data/finetune/mscoco/<lang>.{train,valid,1k_test}.json (zh: train,val,test)    entry; val/test: caption lists)
    data/finetune/nlvr_en/nlvr_{train,dev,test}.json                       {"images", "sentence", "label": "True"}
    iglue/datasets/XVNLI/annotations/en/{train,dev}.jsonl, <lang>/test.jsonl, <lang>/train_{1,5,10,20,25,48}.jsonl
    iglue/datasets/XVNLI/annotations_machine-translate/<lang>/test.jsonl
    iglue/datasets/gqa/annotations/{train,valid,testdev}.json (list), testdev_balanced_questions.json (dict),
                                   trainval_ans2label.json, trainval_label2ans.json
    iglue/datasets/xGQA/annotations/few_shot/<lang>/{train_48,dev,test}.json,
                                    zero_shot/testdev_balanced_questions_<lang>.json (raw GQA dicts)
    iglue/datasets/nlvr2/annotations/{train,dev,test}.jsonl                 (label "True"/"False")
    iglue/datasets/marvl/zero_shot/annotations/marvl-<lang>.jsonl, annotations_machine-translate/marvl-<lang>_gmt.jsonl
    iglue/datasets/marvl/few_shot/annotations/marvl-<lang>_train{1,2,4,10,10x2}.jsonl      (label bool)
    iglue/datasets/flickr30k/annotations/{train_ann,valid_ann,test_ann}.jsonl (5 English captions)
    iglue/datasets/xFlickrCO/annotations/<lang>/test.jsonl, <lang>/train_{1,5,10,25,50,100}.jsonl,
                             annotations_machine-translate/<lang>/test_gmt.jsonl
    iglue/datasets/wit/annotations/{train_en,val_en,test_<lang>}.jsonl,
                   annotations_machine-translate/test_<lang>_gmt.jsonl
    images/flickr30k-images/, images/coco/{train2014,val2014}/, images/val2014/, images/gqa/, images/nlvr2/,
    images/marvl-images/<lang>/images/<concept>/, images/marvl_fewshot/<lang>/all/,
    images/image_data_train/image_pixels/*.csv, images/wit_test/*.csv (tab-separated url, base64, meta url)

Every language of the world gets its own files where the real data has per-language files. Machine-translated
("gmt") files and few-shot files go to the non-English languages. Files the reference builds itself are not written
(data/marvl by marvl_preproc, data/wit by wit_preproc). Files IGLUE ships zipped are written unzipped. The same
image is stored once and hard-linked wherever else it is referenced.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import unicodedata
from pathlib import Path

FORMAT_VERSION = 2  # 2: the pre-training image shards also as webdataset tars
DEFAULT_LANGUAGES = ("en", "de", "fr", "cs", "ja", "zh")
MANIFEST = "manifest.json"
CORPUS_CAPACITY = 30000


def world_params(images: int = 200, languages=DEFAULT_LANGUAGES, seed: int = 0, image_size: int = 128,
                 heldout_images: int | None = None, val_images: int | None = None, shards: int = 4,
                 vocab_size: int = 400, pretrain_caption_languages=None, parallel_pairs: int | None = None) -> dict:
    """Check the parameters and fill in the derived defaults (the dict stored in the manifest)."""
    from dataset.synthetic.language import grammar

    languages = _language_list(languages, "languages")
    for lang in languages:
        grammar(lang)
    if "en" not in languages:
        raise ValueError("synthetic world: languages must include 'en' (English is every task's training language)")
    pretrain = languages if pretrain_caption_languages is None else _language_list(pretrain_caption_languages,
                                                                                   "pretrain_caption_languages")
    if not set(pretrain) <= set(languages):
        raise ValueError(f"synthetic world: pretrain_caption_languages {pretrain} must be among {languages}")
    heldout = min(max(4, images // 5), 2000) if heldout_images is None else int(heldout_images)
    val = min(max(2, images // 10), 1000) if val_images is None else int(val_images)
    train = int(images) - heldout - val
    if train < 4 or heldout < 1 or val < 1:
        raise ValueError(f"synthetic world: images={images} leaves {train} train, {val} val and {heldout} held-out "
                         "scenes; need at least 4 train and 1 of each other split")
    if image_size < 32 or shards < 1:
        raise ValueError(f"synthetic world: image_size {image_size} (>= 32) or shards {shards} (>= 1) too small")
    pairs = images if parallel_pairs is None else int(parallel_pairs)
    return {"format_version": FORMAT_VERSION, "images": int(images), "languages": list(languages),
            "seed": int(seed), "image_size": int(image_size), "train_images": train, "val_images": val,
            "heldout_images": heldout, "shards": int(shards), "vocab_size": int(vocab_size),
            "pretrain_caption_languages": list(pretrain), "parallel_pairs_per_language": pairs}


def _language_list(value, name: str) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [x.strip() for x in items if x.strip()]
    if not items or len(set(items)) != len(items):
        raise ValueError(f"synthetic world: {name} must be a non-empty list without repeats, got {value!r}")
    return tuple(items)


def generate_world(out_dir, images: int = 200, languages=DEFAULT_LANGUAGES, seed: int = 0, progress: bool = False,
                   **options) -> dict:
    """Write the whole world to ``out_dir`` (replacing what is there) and return its paths (see ``world_paths``).

    ``options`` are the other ``world_params`` (image_size, heldout_images, val_images, shards, vocab_size,
    pretrain_caption_languages, parallel_pairs). The world is written to a temporary sibling folder and renamed
    into place when complete, so an interrupted run leaves the previous world (or nothing) behind.
    """
    params = world_params(images=images, languages=languages, seed=seed, **options)
    out = Path(out_dir)
    if out.exists() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise ValueError(f"synthetic world: {out} exists and is not a synthetic world (no {MANIFEST}); "
                         "refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        files = _write_world(tmp, params, progress)
        manifest = {"params": params, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        _replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return world_paths(out, manifest)


def ensure_world(out_dir, progress: bool = False, **params) -> dict:
    """Return the world in ``out_dir``, generating it first if it is absent, incomplete or made with other params."""
    out = Path(out_dir)
    wanted = world_params(**params)
    manifest = read_manifest(out)
    if manifest is not None and manifest.get("params") == wanted:
        return world_paths(out, manifest)
    return generate_world(out, progress=progress, **params)


def read_manifest(out_dir) -> dict | None:
    """The manifest of a complete world in ``out_dir``, or None (absent, unreadable or files missing)."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not all((Path(out_dir) / rel).exists() for rel in manifest.get("files", [])):
        return None
    return manifest


def world_paths(out: Path, manifest: dict) -> dict:
    """Named absolute paths of a world: folders, shard lists and ``files`` (every annotation file)."""
    files = [out / rel for rel in manifest["files"]]

    def under(prefix: str) -> list[Path]:
        return [out / rel for rel in manifest["files"] if rel.startswith(prefix)]

    return {"root": out, "manifest": out / MANIFEST, "params": manifest["params"], "tokenizer": out / "tokenizer",
            "images": out / "images", "iglue": out / "iglue" / "datasets", "scenes": out / "scenes",
            "multi30k": out / "data/finetune/multi30k", "mscoco": out / "data/finetune/mscoco",
            "nlvr_en": out / "data/finetune/nlvr_en",
            "pretrain_image_text": under("pretrain/image_text/"), "pretrain_regions": under("pretrain/regions/"),
            "pretrain_para_text": under("pretrain/para_text/"),
            "pretrain_image_text_tar": [p for p in under("pretrain/image_text_tar/") if p.suffix == ".tar"],
            "pretrain_regions_tar": [p for p in under("pretrain/regions_tar/") if p.suffix == ".tar"], "files": files}


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished world into place; an old world is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_world(root: Path, params: dict, progress: bool) -> list[str]:
    from dataset.synthetic.writers import Corpus, ImagePlacer
    from dataset.synthetic.scenes import render
    from dataset.synthetic.builders import BUILDERS, Context, SceneImage

    counts = {"train": params["train_images"], "val": params["val_images"], "test": params["heldout_images"]}
    ctx = Context(root=root, seed=params["seed"], languages=tuple(params["languages"]), counts=counts,
                  shards=params["shards"], pretrain_languages=tuple(params["pretrain_caption_languages"]),
                  placer=ImagePlacer(root), corpus=Corpus(params["seed"], CORPUS_CAPACITY))
    heldout = _unique_scenes(params, "test", counts["test"], set())
    reserved = {s.signature() for s in heldout}
    val = _unique_scenes(params, "val", counts["val"], reserved)
    reserved |= {s.signature() for s in val}
    builders = [cls(ctx) for cls in BUILDERS]
    bar = _progress(sum(counts.values()), progress)
    for split, scenes in (("train", _train_scenes(params, counts["train"], reserved)), ("val", val),
                          ("test", heldout)):
        for scene in scenes:
            image = SceneImage(render(scene))
            for builder in builders:
                builder.add(scene, image)
            bar.update(1)
        for builder in builders:
            builder.end_split(split)
    bar.close()
    files = []
    for builder in builders:
        builder.close()
        files += builder.files
    files += write_parallel_text(ctx, params, reserved)
    train_world_tokenizer(ctx.corpus.texts, root / "tokenizer", params["vocab_size"])
    return sorted(files)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="synthetic world", unit="img", disable=not enabled)


def _unique_scenes(params: dict, split: str, count: int, reserved: set) -> list:
    """``count`` scenes whose contents differ from each other and from ``reserved``."""
    scenes, seen = [], set(reserved)
    for index in range(count):
        scene = _fresh_scene(params, split, index, seen)
        seen.add(scene.signature())
        scenes.append(scene)
    return scenes


def _fresh_scene(params: dict, split: str, index: int, forbidden: set, attempts: int = 2000):
    from dataset.synthetic.scenes import sample_scene

    for attempt in range(attempts):
        scene = sample_scene(params["seed"], split, index, params["image_size"], attempt)
        if scene.signature() not in forbidden:
            return scene
    raise RuntimeError(f"synthetic world: no new scene content for {split} scene {index} after {attempts} tries; "
                       "use fewer held-out/val images")


def _train_scenes(params: dict, count: int, reserved: set):
    """Training scenes, streamed; they may repeat each other's content but never a held-out or val content."""
    for index in range(count):
        yield _fresh_scene(params, "train", index, reserved)


def write_parallel_text(ctx, params: dict, reserved: set) -> list[str]:
    """en<->X sentence pairs (captions and region phrases of fresh scene contents, never held-out ones)."""
    from dataset.synthetic.writers import ShardedJsonl
    from dataset.synthetic.language import grammar
    from dataset.synthetic.scenes import sample_groups, scene_rng

    shards = ShardedJsonl(ctx.root, "pretrain/para_text", ctx.shards)
    others = ctx.others
    english = grammar("en")
    for i in range(params["parallel_pairs_per_language"] * len(others)):
        lang = others[i % len(others)]
        rng = scene_rng(ctx.seed, "para", i)
        groups = sample_groups(rng)
        while groups in reserved:
            groups = sample_groups(rng)
        target = grammar(lang)
        if rng.random() < 0.2:
            group = rng.choice(groups)
            pair = (english.located_phrase(group.phrase(), group.position),
                    target.located_phrase(group.phrase(), group.position))
        else:
            template = rng.randrange(5)
            located = [(g.phrase(), g.position) for g in groups]
            pair = (english.caption(located, template), target.caption(located, template))
        shards.write({"source_text": pair[0], "target_text": pair[1]})
        ctx.corpus.add(pair[0])
        ctx.corpus.add(pair[1])
    shards.close()
    return shards.rels


# the characters pre_caption turns into spaces
_PUNCTUATION = str.maketrans({c: " " for c in ",.'!?\"()*#:;~-/"})


def normalise_for_tokenizer(text: str) -> str:
    """Text as the task loaders feed it to the tokenizer (pre_caption: lowercase, ASCII punctuation to spaces)."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(text.split())


def train_world_tokenizer(texts: list[str], out_dir: Path, vocab_size: int) -> Path:
    """Train the XLM-R-layout tokenizer on ``texts`` and make its files exact and reproducible.

    - The texts are normalised as the loaders' pre_caption does (all tasks lowercase), so no piece is spent on
      capitals or ASCII punctuation.
    - ``train_tokenizer`` trains behind an NFKC normaliser, but ``AutoTokenizer.from_pretrained`` rebuilds the
      XLM-R pipeline without one, so characters NFKC rewrites (full-width ``，`` and ``？``) would become ``<unk>``.
      They are trained under private-use stand-ins that NFKC keeps, mapped back in the vocabulary, and the saved
      normaliser is removed, so both ways of loading see the same text.
    - The trainer's float sums depend on thread scheduling (see ``canonical_vocab``).
    """
    from dataset.tokenizer import check_xlmr_layout, load_tokenizer, train_tokenizer

    texts = sorted(normalise_for_tokenizer(t) for t in texts)
    rewritten = sorted({c for t in texts for c in t if unicodedata.normalize("NFKC", c) != c})
    stand_in = {c: chr(0xE000 + k) for k, c in enumerate(rewritten)}
    to_stand_in, back = str.maketrans(stand_in), str.maketrans({v: k for k, v in stand_in.items()})
    train_tokenizer([t.translate(to_stand_in) for t in texts], out_dir, vocab_size=vocab_size)
    path = Path(out_dir) / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    spec["normalizer"] = None
    spec["model"]["vocab"] = canonical_vocab([[piece.translate(back), score] for piece, score in
                                              spec["model"]["vocab"]])
    path.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")
    check_xlmr_layout(load_tokenizer(out_dir), where=str(out_dir))
    return Path(out_dir)


def canonical_vocab(vocab: list) -> list:
    """A Unigram vocabulary with the trainer's run-to-run noise removed (specials first, as trained).

    The trainer gives the characters that no learned piece covers scores on a 1e-4 grid above the lowest score,
    in hash-set order; those characters get the same grid scores in code-point order. Then scores are rounded and
    pieces sorted by score, then by text.
    """
    specials, pieces = vocab[:4], [list(item) for item in vocab[4:]]
    lowest = min(score for _, score in pieces)
    slots: dict[int, list[int]] = {}
    for position, (piece, score) in enumerate(pieces):
        step = (score - lowest) / 1e-4
        if len(piece) == 1 and abs(step - round(step)) < 0.02:
            slots.setdefault(round(step), []).append(position)
    grid, slot = [], 0
    while slot in slots:  # a learned one-character piece may tie with a grid score; it joins the reordering
        grid += slots[slot]
        slot += 1
    chars = sorted(pieces[p][0] for p in grid)
    for char, position in zip(chars, sorted(grid, key=lambda p: -pieces[p][1])):
        pieces[position][0] = char
    pieces = [[piece, round(score, 6)] for piece, score in pieces]
    pieces.sort(key=lambda item: (-item[1], item[0]))
    return specials + pieces


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the synthetic multilingual image-text world.")
    parser.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    parser.add_argument("--images", type=int, default=200, help="scenes in all splits together")
    parser.add_argument("--languages", default=",".join(DEFAULT_LANGUAGES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--heldout-images", type=int, default=None, help="default: images // 5, at most 2000")
    parser.add_argument("--val-images", type=int, default=None, help="default: images // 10, at most 1000")
    parser.add_argument("--shards", type=int, default=4, help="files per pre-training record kind")
    parser.add_argument("--vocab-size", type=int, default=400)
    parser.add_argument("--pretrain-caption-languages", default=None,
                        help="languages of the pre-training captions (default: all)")
    parser.add_argument("--parallel-pairs", type=int, default=None, help="per non-English language (default: images)")
    parser.add_argument("--if-missing", action="store_true", help="keep an existing world made with the same params")
    args = parser.parse_args(argv)
    options = dict(images=args.images, languages=args.languages, seed=args.seed, image_size=args.image_size,
                   heldout_images=args.heldout_images, val_images=args.val_images, shards=args.shards,
                   vocab_size=args.vocab_size, pretrain_caption_languages=args.pretrain_caption_languages,
                   parallel_pairs=args.parallel_pairs)
    start = time.perf_counter()
    try:
        make = ensure_world if args.if_missing else generate_world
        paths = make(args.out, progress=True, **options)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    params = paths["params"]
    print(f"wrote {len(paths['files'])} annotation files to {paths['root']} in {time.perf_counter() - start:.1f}s: "
          f"{params['train_images']} train, {params['val_images']} val, {params['heldout_images']} held-out scenes, "
          f"languages {','.join(params['languages'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
