#!/usr/bin/env python3
"""The public API's overhead (cclm/api.py, the search index): images indexed and queries answered per second,
against the bare model forward on the same batches, in one run.

    python3 bench/api_overhead.py [--size tiny|full] [--images 64] [--queries 64] [--batch 32] [--rounds 5]

The model has random weights (the work does not depend on them): ``tiny`` is the tiny retrieval config's model
(configs/tiny/itr_multi30k.yaml: 64 px Swin, a 4-layer text encoder of width 64); ``full`` has the released shapes
(Swin-B 384 px, 12 XLM-R-large-shaped layers; the synthetic world's small vocabulary). The API object wraps the same
model instance as the bare path, so both run the same weights. Each round times every variant once, in an order
that alternates between rounds. On a shared machine other people's jobs only ever add time, so the ratio API / bare
is taken between the fastest rounds (the medians' ratio is shown beside it); target <= 1.10:

- images from tensors: ``api.encode_images(batch)`` vs ``model.get_vision_embeds`` + ``get_image_feat``;
- images from files: ``api.encode_images(paths)`` and ``cclm.index.index_images`` into a new index (stat, decode,
  encode, save) vs decoding with the same transform + the bare forward;
- queries: the search command's ``find_images`` (clean, tokenise, encode, cosine top-5 over the index) vs the same
  steps written out on the bare model;
- ranking with re-rank: ``api.rank(texts, images, rerank_k=k)`` vs ``models.ranking``'s encoders + ``rerank_topk``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.add_repo_to_path()

import torch  # noqa: E402

FULL = {"vision_config": "swin_base_384", "image_res": 384, "text_num_hidden_layers": 12, "embed_dim": 256,
        "text_config": {"hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 16,
                        "intermediate_size": 4096}}


def build(size: str):
    """(api object, bare model, tokenizer, data root) with random weights."""
    import cclm
    from dataset.tokenizer import load_tokenizer
    from dataset.transforms import build_transform
    from models.factory import create_model

    config, root = common.prepared_task_config(common.REPO / "configs/tiny/itr_multi30k.yaml")
    if size == "full":
        config.update(FULL)
        config, root = _with_text_encoder(config, root)
    torch.manual_seed(0)
    model = create_model("cclm_retrieval", config, root=root).eval()
    tokenizer = load_tokenizer(config["text_encoder"])
    api = cclm.CCLM(model, tokenizer, build_transform("test", int(config["image_res"])), config,
                    torch.device("cpu"), "fp32", identity={"fingerprint": "bench", "embed_dim": config["embed_dim"],
                                                           "image_res": config["image_res"], "checkpoint": "random"})
    return api, model, tokenizer, root


def _with_text_encoder(config: dict, root: Path):
    """The full-size text encoder folder (XLM-R-large-shaped config, the world's tokenizer)."""
    from transformers import XLMRobertaConfig

    from dataset.tokenizer import load_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="api-bench-xlmr-"))
    tokenizer = load_tokenizer(config["text_encoder"])
    tokenizer.save_pretrained(str(folder))
    XLMRobertaConfig(vocab_size=len(tokenizer), pad_token_id=1, max_position_embeddings=514, type_vocab_size=1,
                     layer_norm_eps=1e-5, **config["text_config"]).save_pretrained(str(folder))
    return dict(config, text_encoder=str(folder)), root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rerank-k", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from cclm.index import ImageIndex, index_images
    from dataset.images import load_image
    from dataset.text import pre_caption
    from models.ranking import CCLMView, encode_images, encode_texts, rerank_topk
    from tasks.search import Query, find_images

    api, model, tokenizer, root = build(args.size)
    paths = sorted((root / "images" / "flickr30k-images").glob("*.jpg"))[:args.images]
    texts = [c for c in _captions(root)][:args.queries]
    queries = [Query(t, "bench") for t in texts]
    tensors = torch.stack([api.transform(load_image(p)) for p in paths])
    work = Path(tempfile.mkdtemp(prefix="api-bench-"))
    index = ImageIndex(work / "ready", api.identity)
    index_images(api, index, paths, batch_size=args.batch, progress=False)
    view, k = CCLMView(model), args.rerank_k

    @torch.no_grad()
    def bare_forward(batch):
        feats = []
        for b in batch.split(args.batch):
            embeds = model.get_vision_embeds(b)[0]
            feats.append(model.get_image_feat(embeds))
        return torch.cat(feats)

    @torch.no_grad()
    def bare_files():
        return bare_forward(torch.stack([api.transform(load_image(p)) for p in paths]))

    @torch.no_grad()
    def bare_queries():
        tok = tokenizer([pre_caption(t, api.max_words) for t in texts], padding="max_length", truncation=True,
                        max_length=api.max_tokens, return_tensors="pt")
        feats = []
        for ids, atts in zip(tok["input_ids"].split(64), tok["attention_mask"].split(64)):
            feats.append(model.get_text_feat(model.get_text_embeds(ids, atts)))
        top = (torch.cat(feats) @ index.features.t()).topk(5, dim=1)
        return [[(str(paths[r]), s) for r, s in zip(row.tolist(), sc.tolist())] for row, sc in zip(top.indices,
                                                                                                    top.values)]

    def bare_rank():
        img = encode_images(view, tensors.split(args.batch), torch.device("cpu"))
        txt = encode_texts(view, [pre_caption(t, api.max_words) for t in texts], tokenizer, api.max_tokens, 64,
                           torch.device("cpu"))
        return rerank_topk(view, img, txt, k, directions=("t2i",))

    fresh = iter(range(10 ** 6))
    variants = {
        "images/tensors": {"bare": lambda: bare_forward(tensors),
                           "api": lambda: api.encode_images(tensors, batch_size=args.batch, progress=False)},
        "images/files": {"bare": bare_files,
                         "api": lambda: api.encode_images(paths, batch_size=args.batch, progress=False),
                         "index": lambda: index_images(api, ImageIndex(work / f"i{next(fresh)}", api.identity), paths,
                                                       batch_size=args.batch, progress=False)},
        "queries": {"bare": bare_queries, "api": lambda: find_images(api, index, queries, 5, 0, 64)},
        "rank+rerank": {"bare": bare_rank, "api": lambda: api.rank(texts, tensors, top_k=k, rerank_k=k,
                                                                   batch_size=args.batch)},
    }
    timings = {(group, name): [] for group, named in variants.items() for name in named}
    for fn in [f for named in variants.values() for f in named.values()]:
        fn()  # warm-up
    for r in range(args.rounds):
        order = list(timings) if r % 2 == 0 else list(reversed(timings))
        for group, name in order:
            timings[(group, name)].append(common.timed(variants[group][name])[0])
    rows = []
    counts = {"images/tensors": len(paths), "images/files": len(paths), "queries": len(texts),
              "rank+rerank": len(texts)}
    for (group, name), seconds in timings.items():
        mine, bare = common.summarize(seconds), common.summarize(timings[(group, "bare")])
        rows.append({"what": group, "path": name, "min_s": mine["min"], "median_s": mine["median"],
                     "per_s": counts[group] / mine["min"], "ratio": mine["min"] / bare["min"],
                     "ratio_median": mine["median"] / bare["median"], "all_s": seconds})
    print(f"API overhead, {args.size} model, {len(paths)} images, {len(texts)} queries, batch {args.batch}, "
          f"rerank_k {k}, {args.rounds} rounds, {args.threads} threads")
    common.print_table(rows, [("what", "inputs"), ("path", "path"), ("min_s", "min s"), ("median_s", "median s"),
                              ("per_s", "items/s (min)"), ("ratio", "time / bare (min)"),
                              ("ratio_median", "(median)")])
    common.write_json({"bench": f"api_overhead_{args.size}", "args": vars(args), "rows": rows,
                       "machine": common.machine_facts()}, args.json)
    return 0


def _captions(root: Path):
    import json

    for lang in ("de", "ja", "en", "fr"):
        for entry in json.loads((root / f"data/finetune/multi30k/test_2016_flickr.{lang}.json").read_text("utf-8")):
            yield from entry["caption"]


if __name__ == "__main__":
    sys.exit(main())
