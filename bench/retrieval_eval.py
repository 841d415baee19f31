#!/usr/bin/env python3
"""Two-stage retrieval evaluation time: models.ranking against the reference's algorithm, on the same weights.

    python3 bench/retrieval_eval.py --model full [--images 12] [--texts-per-image 5] [--k-test 12] [--bf16]
    python3 bench/retrieval_eval.py GOLDEN_DIR [--images 100] [--texts-per-image 5] [--k-test 32] [--bf16]

Models (``--model``): ``full``, the full-size retrieval model with random weights (Swin-B at 384 px: 145 image
tokens of width 1024; an XLM-R-large-shaped text/fusion encoder: 6 text + 6 fusion layers of width 1024, vocabulary
250,002), nothing downloaded; ``golden``, the golden fixture's tiny CCLM with its weights (Swin 224 px, embed 16;
12 layers of width 128); or a task config, whose model is built with random weights (e.g. the tiny retrieval
configs: 64 px, 4 layers of width 64). ``full`` texts are random token ids with caption-like lengths (CLS + words +
SEP: 2 + a normal draw of mean 17.7 and deviation 6.5, clipped to [4, 38] words; mean 19.7 tokens, as Multi30K /
COCO captions under the XLM-R tokenizer), the others English captions of the synthetic world's grammar tokenised
with its tokenizer; all padded to ``--max-tokens`` (40), as the reference pads them. Images are random tensors
(their content does not change the work).

Paths, all from the same image encodings:
* reference: the reference's algorithm. Texts encoded in batches of 64 in input order (every padded position
  computed); for every query and direction one fusion forward over its ``k_test`` candidates, the query image
  repeated for each pair (its keys/values projected k times), all 6 fusion layers over every padded position, the
  ITM head on the CLS, the scores written into a dense -100 matrix, rows sorted (equal scores: lower index first).
* ours: ``models.ranking`` as the retrieval tasks run it (``encode_texts``' batches by length, ``rerank_topk``).
* ours, bf16 (``--bf16``): the same encodings (float32), ``rerank_topk`` under bf16 autocast: 16-bit fusion,
  float32 re-score of the pairs too close to order.
The paths alternate round by round (``--repeats``). Every path's ranks are compared with the reference's query by
query: identical, or differing only in the order of candidates whose reference scores agree to 1e-6 (relative;
float32 rounding of a different batching). The exit status is 1 if any query of any path differs beyond that.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
POSITIONS = ("left", "right", "top", "bottom", "centre")
TIE = 1e-6  # relative score difference below which two candidates' order is float32 rounding, not a rank change


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


def caption_like_ids(n: int, max_tokens: int, vocab: int, seed: int = 0):
    """(ids, mask) of ``n`` random texts with caption-like lengths (see the module docstring), padded to
    ``max_tokens`` with the XLM-R layout (CLS 0, pad 1, SEP 2)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    words = (torch.randn(n, generator=g) * 6.5 + 17.7).round().clamp(4, min(38, max_tokens - 2)).long()
    ids = torch.randint(4, vocab, (n, max_tokens), generator=g)
    atts = (torch.arange(max_tokens) < (words + 2).unsqueeze(1)).long()
    ids[:, 0] = 0
    ids[torch.arange(n), words + 1] = 2
    ids[atts == 0] = 1
    return ids, atts


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


def build_full_model():
    """The full-size retrieval model (Swin-B 384 + XLM-R-large-shaped 6 + 6 layers), random weights, eval mode."""
    import torch

    from models.factory import create_model
    from pretrain_step import full_size_model_config, full_size_text_config

    text_dir = full_size_text_config(Path(tempfile.mkdtemp(prefix="xlmr-large-shape-")))
    config = dict(full_size_model_config(text_dir), vision_config="swin_base_384", image_res=384)
    torch.manual_seed(0)
    return create_model("cclm_retrieval", config).eval()


def reference_itm_logits(model):
    """The reference's stage-2 scorer on ``model``'s weights: (image_embeds, image_atts, text_embeds, text_atts) of
    N pairs -> N class-1 logits, every fusion layer run in full (the image keys/values projected for every pair,
    every padded text position computed, the whole last layer), the ITM head reading the CLS."""
    import torch

    from models.text_encoder import extended_cross_attention_mask, extended_self_attention_mask

    encoder = getattr(model.text_encoder, "bert", model.text_encoder)

    @torch.no_grad()
    def score(image_embeds, image_atts, text_embeds, text_atts):
        image_embeds = image_embeds.contiguous()  # one copy per pair, as the reference's repeat()
        self_mask = extended_self_attention_mask(text_atts, text_embeds.dtype)
        cross_mask = extended_cross_attention_mask(image_atts, text_embeds.dtype)
        hidden = text_embeds
        for layer in encoder.encoder.layer[encoder.fusion_layer:]:
            hidden = layer(hidden, self_mask, image_embeds, encoder_attention_mask=cross_mask)
        return model.itm_head(hidden[:, 0])[:, 1]

    return score


def one_query_at_a_time(score, img, txt, k: int, direction: str):
    """The reference's re-rank loop: per query one ``score(image_embeds, image_atts, text_embeds, text_atts)`` call
    over its k candidates (the query repeated k times), the scores in a dense -100 matrix whose rows are sorted
    (equal scores: lower index first). Returns ((N_query, k) ranked candidates, the dense scores)."""
    import torch

    sims = img.feats.float() @ txt.feats.float().t()
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
        scores[q, cand] = score(ie, ia, te, ta).float()
    return scores.argsort(dim=1, descending=True, stable=True)[:, :k], scores


def compare_ranks(a, b, loop_scores, tie: float = TIE) -> dict:
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


def encode_in_order(model, ids, atts, batch: int):
    """The reference's text encoding: batches in input order, the text layers over every padded position."""
    import torch

    from models.ranking import EncodedTexts
    from models.text_encoder import extended_self_attention_mask

    encoder = getattr(model.text_encoder, "bert", model.text_encoder)
    embeds = []
    with torch.no_grad():
        for s in range(0, len(ids), batch):
            hidden = encoder.embeddings(input_ids=ids[s:s + batch])
            self_mask = extended_self_attention_mask(atts[s:s + batch], hidden.dtype)
            for layer in encoder.encoder.layer[:encoder.fusion_layer]:
                hidden = layer(hidden, self_mask)
            embeds.append(hidden)
    embeds = torch.cat(embeds)
    return EncodedTexts(embeds, atts, model.get_text_feat(embeds))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("golden", nargs="?", type=Path,
                        help="golden fixture folder (cclm-tiny-ref), for --model golden")
    parser.add_argument("--model", default="golden",
                        help="'full' (full size, random weights), 'golden' (the fixture's model and weights) or a "
                             "task config whose model is built with random weights, e.g. "
                             "configs/tiny/itr_multi30k.yaml")
    parser.add_argument("--images", type=int)
    parser.add_argument("--texts-per-image", type=int, default=5)
    parser.add_argument("--k-test", type=int)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--rerank-batch", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="also the re-rank under bf16 autocast")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds of the paths (medians)")
    parser.add_argument("--json", help="write the figures here (also to $OUT/retrieval_eval.json when $OUT is set)")
    args = parser.parse_args(argv)
    full = args.model == "full"
    args.images = args.images or (12 if full else 100)
    args.k_test = args.k_test or (12 if full else 32)
    if args.model == "golden":
        golden = common.golden_dir(args.golden)
        tokenizer_dir = common.synthetic_world({"images": 200, "seed": 0}) / "tokenizer"
    elif not full:
        config, root = common.prepared_task_config(args.model)
        tokenizer_dir = config["text_encoder"]
    common.add_repo_to_path()
    import torch

    from models.ranking import CCLMView, encode_images, encode_token_ids, rerank_topk

    torch.set_num_threads(args.threads)
    if full:
        model = build_full_model()
    else:
        model = build_golden_model(golden) if args.model == "golden" else build_config_model(config, root)
    adapter = CCLMView(model)
    n_texts = args.images * args.texts_per_image
    if full:
        ids, atts = caption_like_ids(n_texts, args.max_tokens, model.text_encoder.config.vocab_size)
    else:
        from dataset.tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer_dir)(captions(n_texts), padding="max_length", truncation=True,
                                            max_length=args.max_tokens, return_tensors="pt")
        ids, atts = tok["input_ids"], tok["attention_mask"]
    lengths = atts.sum(1).float()
    g = torch.Generator().manual_seed(0)
    res = model.vision_encoder.image_res
    images = [torch.randn(min(16, args.images - s), 3, res, res, generator=g) for s in range(0, args.images, 16)]
    print(f"retrieval evaluation ({args.model} model): {args.images} images x {n_texts} texts, k_test {args.k_test}, "
          f"{args.threads} threads; text tokens mean {lengths.mean():.1f}, max {int(lengths.max())} "
          f"(padded to {args.max_tokens})", flush=True)

    start = time.perf_counter()
    img = encode_images(adapter, images, torch.device("cpu"))
    image_s = time.perf_counter() - start
    directions = ("i2t", "t2i")
    reference_score = reference_itm_logits(model)
    encoded, ranks_of, dense = {}, {}, {}

    def reference():
        encoded["reference"] = txt = encode_in_order(model, ids, atts, 64)
        mid = time.perf_counter()
        out = {}
        for d in directions:
            out[d], dense[d] = one_query_at_a_time(reference_score, img, txt, args.k_test, d)
        return out, mid

    def ours(bf16: bool, stats: dict):
        def run():
            encoded["ours"] = txt = encode_token_ids(adapter, ids, atts, 64, torch.device("cpu"))
            mid = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                ranked = rerank_topk(adapter, img, txt, args.k_test, args.rerank_batch, directions, stats=stats)
            return {d: r[0] for d, r in ranked.items()}, mid
        return run

    stats = {"ours": {}, "ours, bf16 fusion": {}}
    paths = {"reference algorithm": reference, "ours": ours(False, stats["ours"])}
    if args.bf16:
        paths["ours, bf16 fusion"] = ours(True, stats["ours, bf16 fusion"])
    encode_s = {name: [] for name in paths}
    rerank_s = {name: [] for name in paths}
    cpu_s = {name: [] for name in paths}
    with torch.no_grad():
        for _ in range(args.repeats):  # the paths alternate, so they share the machine's load
            for name, path in paths.items():
                start, cpu = time.perf_counter(), time.process_time()
                ranks_of[name], mid = path()
                end = time.perf_counter()
                encode_s[name].append(mid - start)
                rerank_s[name].append(end - mid)
                cpu_s[name].append(time.process_time() - cpu)
    rows = []
    for name in paths:
        text_s, rerank = (common.summarize(encode_s[name])["median"], common.summarize(rerank_s[name])["median"])
        same = {d: compare_ranks(ranks_of["reference algorithm"][d], ranks_of[name][d], dense[d]) for d in directions}
        rows.append({"path": name, "image_encode_s": image_s, "text_encode_s": text_s, "rerank_s": rerank,
                     "total_s": image_s + text_s + rerank, "ranks": same, "stats": stats.get(name),
                     "text_and_rerank_cpu_s": common.summarize(cpu_s[name])["median"],
                     "identical_ranks": all(r["all_identical"] for r in same.values()),
                     "identical_up_to_ties": all(r["all_identical_up_to_ties"] for r in same.values()),
                     "rerank_all_s": rerank_s[name], "text_encode_all_s": encode_s[name]})
    for row in rows:
        row["rerank_x_vs_reference"] = rows[0]["rerank_s"] / row["rerank_s"]
        row["total_x_vs_reference"] = rows[0]["total_s"] / row["total_s"]
        row["rerank_x_vs_ours_fp32"] = rows[1]["rerank_s"] / row["rerank_s"]
        row["cpu_x_vs_reference"] = rows[0]["text_and_rerank_cpu_s"] / row["text_and_rerank_cpu_s"]
    common.print_table(rows, [("path", "path"), ("image_encode_s", "image enc s"), ("text_encode_s", "text enc s"),
                              ("rerank_s", "re-rank s"), ("total_s", "total s"),
                              ("rerank_x_vs_reference", "re-rank x vs ref"), ("total_x_vs_reference", "total x vs ref"),
                              ("rerank_x_vs_ours_fp32", "re-rank x vs ours"),
                              ("cpu_x_vs_reference", "text+re-rank CPU x vs ref"), ("identical_ranks", "same ranks"),
                              ("identical_up_to_ties", "same up to ties")])
    for row in rows[1:]:
        for d, r in row["ranks"].items():
            print(f"{row['path']}, {d}: {r['identical']}/{r['queries']} queries with the reference's ranks, "
                  f"{r['identical_up_to_ties']}/{r['queries']} up to float32 ties ({TIE:g} relative)")
        if row["stats"]:
            print(f"{row['path']}: {row['stats']}")
    result = {"bench": "retrieval_eval", "model": args.model, "images": args.images, "texts": n_texts,
              "k_test": args.k_test, "max_tokens": args.max_tokens, "rerank_batch": args.rerank_batch,
              "threads": args.threads, "text_tokens_mean": float(lengths.mean()), "rows": rows,
              "machine": common.machine_facts(), "command": " ".join(sys.argv)}
    common.write_json(result, args.json)
    ok = all(row["identical_up_to_ties"] for row in rows)
    if not ok:
        print("FAIL: some path's ranks differ from the reference's beyond float32 ties")
    return 0 if ok else 1


if __name__ == "__main__":
    common.use_passive_openmp()
    sys.exit(main())
