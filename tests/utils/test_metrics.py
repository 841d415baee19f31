"""Metric functions on hand-made score matrices; every expected value was worked out by hand (see comments)."""
import numpy as np
import pytest
import torch

from utils.metrics import accuracy, best_gt_ranks, retrieval_recall, vqa_exact_match

# 3 images x 6 texts, two captions per image.
SCORES = np.array([
    [0.9, 0.1, 0.8, 0.2, 0.3, 0.4],  # image 0, GT texts 0,1: best GT 0.9 is first            -> rank 0
    [0.7, 0.6, 0.1, 0.5, 0.2, 0.3],  # image 1, GT texts 2,3: best GT 0.5, beaten by 0.7, 0.6 -> rank 2
    [0.9, 0.8, 0.7, 0.6, 0.5, 0.1],  # image 2, GT texts 4,5: best GT 0.5, beaten by 4 texts  -> rank 4
])
IMG2TXT = [[0, 1], [2, 3], [4, 5]]
TXT2IMG = [0, 0, 1, 1, 2, 2]
# Transposed, text -> image ranks: t0 [.9,.7,.9] GT .9 ties image 2 -> 1 (ties go against the GT);
# t1 [.1,.6,.8] -> 2; t2 [.8,.1,.7] -> 2; t3 [.2,.5,.6] -> 1; t4 [.3,.2,.5] -> 0; t5 [.4,.3,.1] -> 2.


def test_recall_several_texts_per_image():
    r = retrieval_recall(SCORES, IMG2TXT, TXT2IMG, ks=(1, 3, 5))
    # image ranks [0, 2, 4]
    assert r["txt_r1"] == pytest.approx(100 / 3)
    assert r["txt_r3"] == pytest.approx(200 / 3)
    assert r["txt_r5"] == pytest.approx(100.0)
    assert r["txt_r_mean"] == pytest.approx(200 / 3)
    # text ranks [1, 2, 2, 1, 0, 2]
    assert r["img_r1"] == pytest.approx(100 / 6)
    assert r["img_r3"] == pytest.approx(100.0)
    assert r["img_r5"] == pytest.approx(100.0)
    assert r["img_r_mean"] == pytest.approx(650 / 9)
    assert r["r_mean"] == pytest.approx(1250 / 18)
    assert list(r) == ["txt_r1", "txt_r3", "txt_r5", "txt_r_mean", "img_r1", "img_r3", "img_r5", "img_r_mean", "r_mean"]


def test_default_keys_and_torch_input():
    scores = torch.eye(12)  # every query's GT scores 1, all others 0 -> perfect recall
    r = retrieval_recall(scores, [[i] for i in range(12)], list(range(12)))
    assert list(r) == ["txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean"]
    assert all(v == 100.0 for v in r.values())
    # ground truth as tensors; image 2's text is scored below image 2's other candidates -> txt_r1 = 2/3
    scores = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.2]])
    r = retrieval_recall(scores, torch.tensor([[0], [1], [2]]), torch.tensor([0, 1, 2]), ks=(1,))
    assert r["txt_r1"] == pytest.approx(200 / 3)


def test_separate_t2i_matrix_with_minus_100_fill():
    i2t = [[5.0, -100.0], [-100.0, 3.0]]   # both images find their text first
    t2i = [[-100.0, 2.0], [1.0, -100.0]]   # both texts put their image second
    r = retrieval_recall(i2t, [[0], [1]], [0, 1], ks=(1,), scores_t2i=t2i)
    assert r == {"txt_r1": 100.0, "txt_r_mean": 100.0, "img_r1": 0.0, "img_r_mean": 0.0, "r_mean": 50.0}


def test_several_images_per_text_and_mapping_ground_truth():
    t2i = np.array([
        [0.1, 0.9, 0.5],  # GT images 0,1: best .9 first -> rank 0
        [0.3, 0.2, 0.1],  # GT image 2 last -> rank 2
        [0.5, 0.4, 0.3],  # GT image 1 second -> rank 1
    ])
    r = retrieval_recall(t2i.T, {0: [0], 1: [0, 2], 2: [1]}, [[0, 1], [2], [1]], ks=(1, 2), scores_t2i=t2i)
    assert r["img_r1"] == pytest.approx(100 / 3)
    assert r["img_r2"] == pytest.approx(200 / 3)


def test_ties_between_ground_truths_do_not_count_against_each_other():
    ranks = best_gt_ranks(np.array([[0.5, 0.5, 0.1], [0.5, 0.5, 0.5]]), [[0, 1], [2]])
    assert ranks.tolist() == [0, 2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(scores_i2t=[[1.0, 0.0]], img2txt=[[0]], txt2img=[0]), "txt2img has 1 entries"),
    (dict(scores_i2t=[[1.0, 0.0]], img2txt=[[2]], txt2img=[0, 0]), "outside 0..1"),
    (dict(scores_i2t=[[1.0, 0.0]], img2txt=[[]], txt2img=[0, 0]), "img2txt\\[0\\] is empty"),
    (dict(scores_i2t=[[float("nan"), 0.0]], img2txt=[[0]], txt2img=[0, 0]), "NaN"),
    (dict(scores_i2t=[1.0, 0.0], img2txt=[[0]], txt2img=[0, 0]), "2-D"),
    (dict(scores_i2t=[[1.0, 0.0]], img2txt=[[0]], txt2img=[0, 0], scores_t2i=[[1.0, 0.0]]), "expected \\(2, 1\\)"),
])
def test_recall_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_recall(**kwargs)


def test_accuracy_from_logits_and_ids():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])  # argmax 1, 0, 1
    assert accuracy(logits, torch.tensor([1, 1, 1])) == pytest.approx(200 / 3)
    assert accuracy([2, 0, 1, 1], [2, 0, 0, 0]) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="do not match"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="no examples"):
        accuracy([], [])


def test_vqa_exact_match():
    refs = {"1": "yes", "2": "yes", "3": "red", "4": None}  # question 4 has no answer: not scored
    preds = {"1": "yes", 2: "no", "3": "red"}                 # int ids are compared as strings
    assert vqa_exact_match(preds, refs) == pytest.approx(200 / 3)
    assert vqa_exact_match({"1": "Yes"}, {"1": "yes"}) == 0.0  # exact match, as GQA scores
    with pytest.raises(ValueError, match="no prediction for 1 question"):
        vqa_exact_match({"1": "yes", "2": "no"}, refs)
