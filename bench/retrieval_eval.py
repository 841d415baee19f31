#!/usr/bin/env python3
"""Two-stage retrieval evaluation time: the batched re-rank of models.ranking vs one query at a time.

    python3 bench/retrieval_eval.py GOLDEN_DIR [--images 100] [--texts-per-image 5] [--k-test 32] [--threads 2]

The model (``--model``) is the golden fixture's tiny CCLM (Swin 224 px, embed 16; 12-layer text/fusion encoder of
width 128) as a retrieval model with the fixture's weights, or the model of a task config with random weights (the
tiny retrieval configs: 64 px, a 4-layer text encoder of width 64). Texts are English captions of the synthetic
world's grammar, tokenised with the synthetic world's tokenizer (its ids fit both vocabularies) and padded to
``max_tokens`` (40) as the reference does; images are random tensors (their content does not change the work).

All paths start from the same encodings (timed once, as "encode"). The one-query loop is the reference's
algorithm: for every query, one fusion forward over its ``k_test`` candidates (the query repeated k times), scores
written into a dense -100 matrix, rows sorted (equal scores: lower index first). The batched path is
``models.ranking.rerank_topk`` through ``models.ranking.CCLMView``, as Retrieval.py runs it: the distinct pairs
of both directions scored once, sorted by image, ``rerank_batch`` pairs per forward with each image's keys/values
projected once and a CLS-only last layer. The ranks of both paths are compared query by query: identical, or
differing only in the order of candidates whose scores agree to 1e-6 (relative; float32 rounding of a different
batching, which flips a near-tie about once per few hundred queries). The exit status is 1 if any query differs
beyond that.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REFERENCE_SECONDS = 18.25  # the reference's time for this evaluation (100 x 500, k_test 32, 2 threads; issue 8)
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
POSITIONS = ("left", "right", "top", "bottom", "centre")


def captions(n: int, seed: int = 0) -> list[str]:
    """``n`` English scene captions from the synthetic world's grammar (varied length, 5 templates)."""
    from dataset.synthetic.language import English, Phrase

    rng = random.Random(seed)
    grammar = English()
    out = []
    for _ in range(n):
        positions = rng.sample(POSITIONS, rng.choice((1, 2)))
        groups = [(Phrase(rng.choice((1, 2, 3)), rng.choice(SHAPES), rng.choice(COLOURS + (None,)),
                          rng.choice(("small", "large", None))), pos) for pos in positions]
        out.append(grammar.caption(groups, rng.randrange(5)))
    return out


def build_golden_model(golden: Path):
    """The fixture's tiny model as a retrieval model (eval mode), its weights loaded through our conversion."""
    import torch
    from ruamel.yaml import YAML

    from models.factory import create_model

    config = YAML(typ="safe").load(next(golden.glob("*.yaml")).read_text())
    config.update(load_text_params=False, load_vision_params=False)
    torch.manual_seed(0)
    model = create_model("cclm_retrieval", config, root=golden)
    report = model.load_pretrained(golden / "tiny_state.pt")
    if report.missing:
        raise RuntimeError(f"tiny_state.pt left keys missing in the retrieval model: {report.missing}")
    return model.eval()


def build_config_model(config: dict, root: Path):
    """The retrieval model of a prepared task config (random weights, seed 0), eval mode."""
    import torch

    from models.factory import create_model

    config = dict(config, load_text_params=False, load_vision_params=False)
    torch.manual_seed(0)
    return create_model("cclm_retrieval", config, root=root).eval()


def one_query_at_a_time(adapter, img, txt, k: int, direction: str):
    """The reference's re-rank: per query one fusion forward of its k candidates, a dense -100 score matrix."""
    import torch

    sims = img.feats @ txt.feats.t()
    if direction == "t2i":
        sims = sims.t()
    scores = torch.full(sims.shape, -100.0)
    for q in range(sims.shape[0]):
        cand = sims[q].topk(k).indices
        if direction == "i2t":
            ie, te, ta = img.embeds[q].expand(k, -1, -1), txt.embeds[cand], txt.atts[cand]
        else:
            ie, te, ta = img.embeds[cand], txt.embeds[q].expand(k, -1, -1), txt.atts[q].expand(k, -1)
        ia = torch.ones(ie.shape[:2], dtype=torch.long)
        scores[q, cand] = adapter.itm_logits(ie, ia, te, ta).float()
    return scores.argsort(dim=1, descending=True, stable=True)[:, :k], scores


def compare_ranks(a, b, loop_scores, tie: float = 1e-6) -> dict:
    """How many queries have the same ordered top-k lists in both, and whether every other one differs only by the
    order of numerically tied candidates: ``b`` must hold the same candidates as ``a`` and be sorted by the loop's
    own scores up to ``tie`` (relative), i.e. a swap of two scores that agree to float32 rounding of a different
    batching (different kernels, shared keys/values) is a tie, not a rank change."""
    same = (a == b).all(dim=1)
    same_sets = (a.sort(dim=1).values == b.sort(dim=1).values).all(dim=1)
    tied_only = same | (same_sets & _sorted_up_to_ties(loop_scores.gather(1, b), tie))
    return {"queries": int(same.numel()), "identical": int(same.sum()), "identical_up_to_ties": int(tied_only.sum()),
            "all_identical": bool(same.all()), "all_identical_up_to_ties": bool(tied_only.all())}


def _sorted_up_to_ties(scores, tie: float):
    """Rows of ``scores`` that are non-increasing up to ``tie`` relative (a row of candidates in ranked order)."""
    return (scores[:, 1:] <= scores[:, :-1] + tie * scores[:, :-1].abs().clamp(min=1)).all(dim=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("golden", nargs="?", type=Path, help="golden fixture folder (cclm-tiny-ref), for --model golden")
    parser.add_argument("--model", default="golden",
                        help="'golden' (the fixture's model and weights) or a task config whose model is built with "
                             "random weights, e.g. configs/tiny/itr_multi30k.yaml (64 px, 4 layers of width 64)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--texts-per-image", type=int, default=5)
    parser.add_argument("--k-test", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--rerank-batch", type=int, default=128)
    parser.add_argument("--bf16", action="store_true",
                        help="also time the batched path under bf16 autocast (faster; its ranks are reported, not "
                             "required to match)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds of the re-rank paths (medians)")
    parser.add_argument("--root", help="run the model code of another checkout (e.g. the code before a change)")
    parser.add_argument("--json", help="write the figures here (also to $OUT/retrieval_eval.json when $OUT is set)")
    args = parser.parse_args(argv)
    if args.model == "golden":
        golden = common.golden_dir(args.golden)
        world = common.synthetic_world({"images": 200, "seed": 0})
        tokenizer_dir = world / "tokenizer"
    else:
        config, root = common.prepared_task_config(args.model)
        tokenizer_dir = config["text_encoder"]
    common.add_repo_to_path(args.root)
    import torch

    from dataset.tokenizer import load_tokenizer
    from models.ranking import CCLMView, encode_images, encode_texts, rerank_topk

    torch.set_num_threads(args.threads)
    model = build_golden_model(golden) if args.model == "golden" else build_config_model(config, root)
    adapter = CCLMView(model)
    tokenizer = load_tokenizer(tokenizer_dir)
    texts = captions(args.images * args.texts_per_image)
    g = torch.Generator().manual_seed(0)
    res = model.vision_encoder.image_res
    images = [torch.randn(min(16, args.images - s), 3, res, res, generator=g) for s in range(0, args.images, 16)]
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    print(f"retrieval evaluation ({args.model} model): {args.images} images x {len(texts)} texts, k_test {args.k_test}, "
          f"{args.threads} threads; text tokens mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)} "
          f"(padded to {args.max_tokens})", flush=True)

    start = time.perf_counter()
    img = encode_images(adapter, images, torch.device("cpu"))
    txt = encode_texts(adapter, texts, tokenizer, args.max_tokens, 64, torch.device("cpu"))
    encode_s = time.perf_counter() - start

    directions = ("i2t", "t2i")
    loop_scores = {}

    def loop():
        out = {}
        for d in directions:
            out[d], loop_scores[d] = one_query_at_a_time(adapter, img, txt, args.k_test, d)
        return out

    paths = {"one query at a time": loop,
             f"batched ({args.rerank_batch} pairs)":
                 lambda: {d: ranked[0] for d, ranked in
                          rerank_topk(adapter, img, txt, args.k_test, args.rerank_batch, directions).items()}}
    if args.bf16:
        def batched_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return {d: ranked[0] for d, ranked in
                        rerank_topk(adapter, img, txt, args.k_test, args.rerank_batch, directions).items()}
        paths[f"batched ({args.rerank_batch} pairs), bf16 autocast"] = batched_bf16
    seconds = {name: [] for name in paths}
    ranks_of = {}
    with torch.no_grad():
        for _ in range(args.repeats):  # the paths alternate, so they share the machine's load
            for name, rank in paths.items():
                start = time.perf_counter()
                ranks_of[name] = rank()
                seconds[name].append(time.perf_counter() - start)
    loop_name = next(iter(paths))
    rows = []
    for name in paths:
        rerank = common.summarize(seconds[name])["median"]
        same = {d: compare_ranks(ranks_of[loop_name][d], ranks_of[name][d], loop_scores[d]) for d in directions}
        rows.append({"path": name, "encode_s": encode_s, "rerank_s": rerank, "total_s": encode_s + rerank,
                     "identical_ranks": all(r["all_identical"] for r in same.values()),
                     "identical_up_to_ties": all(r["all_identical_up_to_ties"] for r in same.values()), "ranks": same,
                     "rerank_all_s": seconds[name]})
    for row in rows:
        row["x_vs_loop"] = rows[0]["total_s"] / row["total_s"]
        row["x_vs_reference_18.25s"] = REFERENCE_SECONDS / row["total_s"]
    common.print_table(rows, [("path", "path"), ("encode_s", "encode s"), ("rerank_s", "re-rank s"),
                              ("total_s", "total s"), ("x_vs_loop", "x vs loop"),
                              ("x_vs_reference_18.25s", "x vs ref 18.25 s"), ("identical_ranks", "same ranks"),
                              ("identical_up_to_ties", "same up to ties")])
    for row in rows[1:]:
        for d, r in row["ranks"].items():
            print(f"{row['path']}, {d}: {r['identical']}/{r['queries']} queries with the loop's ranks, "
                  f"{r['identical_up_to_ties']}/{r['queries']} up to numerical ties (1e-6 relative)")
    result = {"bench": "retrieval_eval", "model": args.model, "images": args.images, "texts": len(texts), "k_test": args.k_test,
              "max_tokens": args.max_tokens, "rerank_batch": args.rerank_batch, "threads": args.threads,
              "text_tokens_mean": sum(lengths) / len(lengths), "rows": rows, "reference_s": REFERENCE_SECONDS,
              "root": args.root, "machine": common.machine_facts(), "command": " ".join(sys.argv)}
    common.write_json(result, args.json)
    return 0 if all(row["identical_up_to_ties"] for row in rows if "bf16" not in row["path"]) else 1


if __name__ == "__main__":
    sys.exit(main())
