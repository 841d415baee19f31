"""Two-stage retrieval: the batched re-rank equals the one-query loop; recalls from top-k lists."""
import pytest
import torch
from torch import nn

from bench.retrieval_eval import one_query_at_a_time as reference_loop
from models.ranking import (EncodedImages, EncodedTexts, contrastive_topk, encode_token_ids, evaluate_retrieval,
                            order_by_score, recall_from_topk, rerank_topk, retrieval_metrics, shard_rows, similarities,
                            used_lengths)
from tests.processes import join_group, run_ranks
from utils.metrics import retrieval_recall


class FakeFusion(nn.Module):
    """A random model with a matching head that depends on both inputs and on the padding mask."""

    def __init__(self, d=8):
        super().__init__()
        torch.manual_seed(0)
        self.q = nn.Linear(d, d)
        self.head = nn.Sequential(nn.Linear(2 * d, 16), nn.GELU(), nn.Linear(16, 1))

    def itm_logits(self, image_embeds, image_atts, text_embeds, text_atts, image_index=None):
        if image_index is not None:
            image_embeds = image_embeds[image_index]
        attn = torch.softmax(self.q(text_embeds) @ image_embeds.transpose(1, 2), dim=-1)
        fused = (attn @ image_embeds) * text_atts.unsqueeze(-1)
        pooled = fused.sum(1) / text_atts.sum(1, keepdim=True)
        return self.head(torch.cat([pooled, image_embeds[:, 0]], -1)).squeeze(-1)


def random_encoded(n_img=12, n_txt=30, d=8, e=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    img = EncodedImages(torch.randn(n_img, 5, d, generator=g),
                        nn.functional.normalize(torch.randn(n_img, e, generator=g), dim=-1))
    atts = torch.ones(n_txt, 7, dtype=torch.long)
    for t in range(n_txt):
        atts[t, 3 + t % 4:] = 0
    txt = EncodedTexts(torch.randn(n_txt, 7, d, generator=g), atts,
                       nn.functional.normalize(torch.randn(n_txt, e, generator=g), dim=-1))
    return img, txt


def one_query_at_a_time(model, img, txt, k, direction):
    return reference_loop(model.itm_logits, img, txt, k, direction)[0]


def test_batched_rerank_equals_one_query_loop():
    model = FakeFusion().eval()
    img, txt = random_encoded()
    for direction in ("i2t", "t2i"):
        expected = one_query_at_a_time(model, img, txt, 5, direction)
        for batch in (1, 7, 64, 1000):
            got, scores = rerank_topk(model, img, txt, 5, batch, (direction,))[direction]
            assert torch.equal(got, expected), (direction, batch)
            assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_recall_from_topk_hand_made():
    topk = torch.tensor([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    gt = [[0], [0, 1], [1]]  # hits at position 1, 0, 1
    assert recall_from_topk(topk, gt, (1, 2, 3)) == [100 / 3, 100.0, 100.0]


def test_topk_metrics_agree_with_dense_recall():
    """Dense score matrices with -100 outside the top-k give the same recalls as the top-k lists."""
    model = FakeFusion().eval()
    img, txt = random_encoded()
    img2txt = [[t for t in range(30) if t % 12 == i] for i in range(12)]
    txt2img = [t % 12 for t in range(30)]
    k = 10
    i2t, i2t_s = rerank_topk(model, img, txt, k, 16, ("i2t",))["i2t"]
    t2i, t2i_s = rerank_topk(model, img, txt, k, 16, ("t2i",))["t2i"]
    dense_i2t = torch.full((12, 30), -100.0).scatter_(1, i2t, i2t_s)
    dense_t2i = torch.full((30, 12), -100.0).scatter_(1, t2i, t2i_s)
    dense = retrieval_recall(dense_i2t, img2txt, txt2img, scores_t2i=dense_t2i)
    ours = retrieval_metrics(i2t, t2i, img2txt, txt2img)
    for key, value in dense.items():
        assert abs(ours[key] - value) < 1e-9, key


def test_evaluate_retrieval_reports_itc_too():
    model = FakeFusion().eval()
    img, txt = random_encoded()
    m = evaluate_retrieval(model, img, txt, [[i] for i in range(12)], list(range(12)) + [0] * 18, k_test=4)
    assert {"r_mean", "txt_r1", "img_r10", "itc_r_mean"} <= set(m)


def test_shard_rows_cover_everything_once():
    for n in (1, 5, 16, 17):
        for world in (1, 2, 3, 8):
            rows = [r for rank in range(world) for r in shard_rows(n, rank, world)]
            assert rows == list(range(n))


class TableModel:
    """Embeddings carry their item's index; the ITM logit of (image i, text t) is looked up in a hand-made table."""

    def __init__(self, table):
        self.table = torch.tensor(table, dtype=torch.float)

    def itm_logits(self, image_embeds, image_atts, text_embeds, text_atts, image_index=None):
        if image_index is not None:
            image_embeds = image_embeds[image_index]
        return self.table[image_embeds[:, 0, 0].long(), text_embeds[:, 0, 0].long()]


def test_two_stage_on_a_hand_made_case():
    """ITM re-orders the contrastive top-k; a ground truth outside the top-k is a miss at every K."""
    sims = torch.tensor([[0.8, 0.9, 0.1],    # image 0: contrastive top-2 = texts 1, 0
                         [0.1, 0.85, 0.5],   # image 1: texts 1, 2
                         [0.7, 0.6, 0.2]])   # image 2: texts 0, 1 (its text 2 is not in the top-2)
    itm = [[5.0, 1.0, 0.0],
           [0.0, 3.0, 4.0],
           [2.0, 1.0, 6.0]]
    index = torch.arange(3, dtype=torch.float).view(3, 1, 1)
    img = EncodedImages(index.clone(), torch.eye(3))
    txt = EncodedTexts(index.clone(), torch.ones(3, 1, dtype=torch.long), sims.t().contiguous())
    m = evaluate_retrieval(TableModel(itm), img, txt, [[0], [1], [2]], [0, 1, 2], k_test=2, ks=(1, 2, 3))
    # image->text after ITM: image 0 -> [0, 1] (hit at 1), image 1 -> [2, 1] (hit at 2), image 2 -> miss
    assert [m["txt_r1"], m["txt_r2"], m["txt_r3"]] == [100 / 3, 200 / 3, 200 / 3]
    # text->image: text 0 -> images [0, 2], text 1 -> [0, 1] re-ranked to [1, 0], text 2 -> [1, 2] -> [2, 1]
    assert [m["img_r1"], m["img_r2"], m["img_r3"]] == [100.0, 100.0, 100.0]
    assert m["r_mean"] == (m["txt_r_mean"] + m["img_r_mean"]) / 2
    # contrastive ranking alone (full lists): image ranks 1, 0, 2; text ranks 0, 1, 1
    assert [m["itc_txt_r1"], m["itc_txt_r2"], m["itc_txt_r3"]] == [100 / 3, 200 / 3, 100.0]
    assert [m["itc_img_r1"], m["itc_img_r2"], m["itc_img_r3"]] == [100 / 3, 100.0, 100.0]


class CountingFusion(FakeFusion):
    """FakeFusion that records the (image, text) pairs it scores and the image rows of each forward."""

    def __init__(self):
        super().__init__()
        self.pairs, self.image_rows = [], []

    def itm_logits(self, image_embeds, image_atts, text_embeds, text_atts, image_index=None):
        # embeddings carry their item's index in [:, 0, 0] (set by the test)
        rows = image_embeds[image_index] if image_index is not None else image_embeds
        self.pairs += list(zip(rows[:, 0, 0].long().tolist(), text_embeds[:, 0, 0].long().tolist()))
        self.image_rows.append(image_embeds.shape[0])
        return super().itm_logits(image_embeds, image_atts, text_embeds, text_atts, image_index)


def test_both_directions_score_each_distinct_pair_once_with_images_shared():
    img, txt = random_encoded()
    img.embeds[:, 0, 0] = torch.arange(12, dtype=torch.float)
    txt.embeds[:, 0, 0] = torch.arange(30, dtype=torch.float)
    model = CountingFusion().eval()
    k = 5
    ranked = rerank_topk(model, img, txt, k, 16)
    sims = img.feats @ txt.feats.t()
    wanted = {(i, int(t)) for i in range(12) for t in sims[i].topk(k).indices} | \
             {(int(i), t) for t in range(30) for i in sims[:, t].topk(k).indices}
    assert sorted(model.pairs) == sorted(wanted)  # every needed pair, none twice
    assert len(wanted) < 12 * k + 30 * k  # the two directions do share pairs here
    assert sum(model.image_rows) < len(wanted)  # each forward holds its distinct images once
    plain = FakeFusion().eval()
    for direction in ("i2t", "t2i"):
        expected = one_query_at_a_time(plain, img, txt, k, direction)
        assert torch.equal(ranked[direction][0], expected), direction


def test_equal_scores_keep_the_lower_candidate_index_first():
    cand = torch.tensor([[7, 2, 5, 0]])
    scores = torch.tensor([[1.0, 3.0, 1.0, 1.0]])
    idx, sc = order_by_score(cand, scores)
    assert idx.tolist() == [[2, 0, 5, 7]]
    assert sc.tolist() == [[3.0, 1.0, 1.0, 1.0]]


def _rerank_worker(rank, world, port, out_dir, disagree=False):
    import os

    from utils.dist import cleanup_distributed

    join_group(rank, world, port)
    img, txt = random_encoded()
    if disagree and rank > 0:  # another rank's stage-1 similarities differ (e.g. other GPU kernels' rounding)
        txt = EncodedTexts(txt.embeds, txt.atts, txt.feats.flip(0))
    ranked = rerank_topk(FakeFusion().eval(), img, txt, 5, 7)
    torch.save(ranked, os.path.join(out_dir, f"ranked{rank}.pt"))
    cleanup_distributed()


def assert_every_rank_has_the_one_process_rankings(out_dir, world):
    img, txt = random_encoded()
    expected = rerank_topk(FakeFusion().eval(), img, txt, 5, 7)
    for rank in range(world):
        got = torch.load(out_dir / f"ranked{rank}.pt", weights_only=True)
        for direction in ("i2t", "t2i"):
            assert torch.equal(got[direction][0], expected[direction][0]), (rank, direction)
            torch.testing.assert_close(got[direction][1], expected[direction][1])


def test_pairs_split_over_three_processes_give_the_one_process_rankings(tmp_path):
    """Each process scores its block of the distinct pairs; every process ends with the whole rankings."""
    run_ranks(_rerank_worker, 3, str(tmp_path))
    assert_every_rank_has_the_one_process_rankings(tmp_path, 3)


def test_ranks_use_rank_zeros_candidates(tmp_path):
    """Candidate lists that differ between ranks would misalign the gathered scores: rank 0's are used everywhere."""
    run_ranks(_rerank_worker, 2, str(tmp_path), True)
    assert_every_rank_has_the_one_process_rankings(tmp_path, 2)


def test_unknown_direction_is_an_error():
    img, txt = random_encoded()
    with pytest.raises(ValueError, match="'i2t' and/or 't2i'"):
        rerank_topk(FakeFusion().eval(), img, txt, 5, 7, ("x2y",))["x2y"]


class PaddingRecorder(FakeFusion):
    """FakeFusion that records the text mask of every fusion forward."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def itm_logits(self, image_embeds, image_atts, text_embeds, text_atts, image_index=None):
        self.masks.append(text_atts.clone())
        return super().itm_logits(image_embeds, image_atts, text_embeds, text_atts, image_index)


def test_fusion_batches_hold_texts_of_one_length_without_padding():
    img, txt = random_encoded()  # texts of 3 to 6 real tokens padded to 7
    model = PaddingRecorder().eval()
    ranked = rerank_topk(model, img, txt, 5, 16)
    assert len(model.masks) > 1
    assert all(bool(mask.all()) for mask in model.masks)  # every position of every batch is a real token
    assert {mask.shape[1] for mask in model.masks} == {3, 4, 5, 6}
    assert max(mask.shape[0] for mask in model.masks) <= 16
    for direction in ("i2t", "t2i"):
        assert torch.equal(ranked[direction][0], one_query_at_a_time(FakeFusion().eval(), img, txt, 5, direction))


class NoisyIn16Bit(FakeFusion):
    """FakeFusion whose scores under 16-bit autocast carry a deterministic error of up to ``eps`` per pair."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def itm_logits(self, image_embeds, image_atts, text_embeds, text_atts, image_index=None):
        low = torch.is_autocast_enabled("cpu")
        with torch.autocast("cpu", enabled=False):
            scores = super().itm_logits(image_embeds.float(), image_atts, text_embeds.float(), text_atts, image_index)
        if not low:
            return scores
        rows = image_embeds[image_index] if image_index is not None else image_embeds
        return scores + self.eps * torch.sin(1e4 * (text_embeds[:, 0, 0].float() + 7.3 * rows[:, 0, 0].float()))


def test_16bit_rerank_gives_the_float32_order(monkeypatch):
    """Under bf16 autocast the pairs whose 16-bit scores are too close are re-scored in float32: the ranks are the
    float32 ones, although the 16-bit scores alone would order some queries differently."""
    import models.ranking as ranking

    monkeypatch.setattr(ranking, "CALIBRATION_PAIRS", 8)
    img, txt = random_encoded()
    exact = rerank_topk(NoisyIn16Bit(0.0).eval(), img, txt, 5, 16)
    gaps = torch.cat([(s[:, :-1] - s[:, 1:]).reshape(-1) for _, s in exact.values()])
    model = NoisyIn16Bit(float(gaps.median()) / 4).eval()  # flips some close candidates, not the far ones
    with torch.autocast("cpu", dtype=torch.bfloat16):
        noisy = {d: ranking.order_by_score(c, model.itm_logits(*_pairs_of(img, txt, c, d)).view(c.shape))[0]
                 for d, c in ((d, r[0]) for d, r in exact.items())}
        stats = {}
        mixed = rerank_topk(model, img, txt, 5, 16, stats=stats)
    assert any(not torch.equal(noisy[d], exact[d][0]) for d in exact)  # 16-bit scores alone: another order
    for direction in exact:
        assert torch.equal(mixed[direction][0], exact[direction][0]), direction
    assert stats["calibration_pairs"] == 8 and 0 < stats["rescored_pairs"] < stats["pairs"] - 8
    assert stats["max_error"] <= model.eps


def _pairs_of(img, txt, cand, direction):
    """(image embeds, atts, text embeds, atts) of every (query, candidate) pair of ``cand``, row-major."""
    query = torch.arange(cand.shape[0]).repeat_interleave(cand.shape[1])
    images, texts = (query, cand.reshape(-1)) if direction == "i2t" else (cand.reshape(-1), query)
    ie = img.embeds[images]
    return ie, torch.ones(ie.shape[:2], dtype=torch.long), txt.embeds[texts], txt.atts[texts]


def test_stage_one_similarities_are_float32_under_autocast():
    img, txt = random_encoded(n_img=40, n_txt=90, e=64)
    expected = contrastive_topk(img, txt, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert similarities(img, txt).dtype == torch.float32
        got = contrastive_topk(img, txt, 10)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


class LengthRecorder:
    """A text model whose states are the ids themselves (zero at padding); records each batch's used lengths."""

    def __init__(self):
        self.batches = []

    def text_embeds(self, ids, atts):
        self.batches.append(used_lengths(atts).tolist())
        return (ids * atts).float().unsqueeze(-1)

    def text_feat(self, embeds):
        return embeds[:, 0]


def test_texts_are_encoded_in_batches_sorted_by_length_and_returned_in_order():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 9, (23,), generator=g)
    atts = (torch.arange(8) < lengths.unsqueeze(1)).long()
    ids = torch.randint(3, 50, (23, 8), generator=g) * atts
    model = LengthRecorder()
    txt = encode_token_ids(model, ids, atts, 5, torch.device("cpu"))
    assert torch.equal(txt.embeds.squeeze(-1), ids.float()) and torch.equal(txt.atts, atts)
    seen = [n for batch in model.batches for n in batch]
    assert seen == sorted(lengths.tolist()) and [len(b) for b in model.batches] == [5, 5, 5, 5, 3]
