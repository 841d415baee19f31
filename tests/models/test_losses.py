"""Losses on constructed cases with hand-computed values."""
import math

import pytest
import torch

from models.losses import (HardNegatives, bbox_losses, box_cxcywh_to_xyxy, check_hard_negatives, contrastive_loss,
                           hard_negative_weights, matching_loss, mlm_loss, paired_generalized_box_iou,
                           sample_hard_negatives)


def test_contrastive_loss_on_identical_orthonormal_features():
    feats = torch.eye(4)
    # logits = I / 1: each row's CE is log(e + 3) - 1, in both directions.
    loss = contrastive_loss(feats, feats.clone(), torch.tensor(1.0))
    assert loss.item() == pytest.approx(math.log(math.e + 3) - 1, rel=1e-6)


def test_contrastive_loss_vanishes_for_identical_features_at_low_temperature():
    feats = torch.nn.functional.normalize(torch.eye(6) + 0.01, dim=-1)
    assert contrastive_loss(feats, feats, torch.tensor(0.001)).item() < 1e-6


def test_contrastive_loss_with_shared_ids_uses_soft_targets():
    feats = torch.eye(2)
    # Both items share an id: target (0.5, 0.5) per row; row loss = log(1 + e) - 0.5.
    loss = contrastive_loss(feats, feats, torch.tensor(1.0), idx=torch.tensor([7, 7]))
    assert loss.item() == pytest.approx(math.log(1 + math.e) - 0.5, rel=1e-6)


def test_contrastive_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="gather"):
        contrastive_loss(torch.eye(2), torch.eye(2), torch.tensor(1.0), gather="all")
    with pytest.raises(ValueError, match="shapes differ"):
        contrastive_loss(torch.eye(2), torch.eye(3), torch.tensor(1.0))


def test_hard_negative_weights_zero_the_positives():
    sim = torch.zeros(3, 3)
    weights = hard_negative_weights(sim)
    expected = torch.full((3, 3), 1 / 3 + 1e-5)
    expected.fill_diagonal_(0)
    torch.testing.assert_close(weights, expected)
    same_id = hard_negative_weights(sim, idx=torch.tensor([0, 0, 1]))
    assert same_id[0, 1] == 0 and same_id[1, 0] == 0 and same_id[0, 2] > 0


def test_hard_negatives_are_never_the_positive():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    y = x + 0.01 * torch.randn(5, 8, generator=g)  # positives are by far the most similar
    for _ in range(50):
        neg = sample_hard_negatives(x, y, torch.tensor(0.07), generator=g)
        assert (neg.x_for_y != torch.arange(5)).all() and (neg.y_for_x != torch.arange(5)).all()
    idx = torch.tensor([0, 0, 1, 1, 2])
    for _ in range(50):
        neg = sample_hard_negatives(x, y, torch.tensor(0.07), idx=idx, generator=g)
        assert (idx[neg.x_for_y] != idx).all() and (idx[neg.y_for_x] != idx).all()


def test_hard_negatives_draw_what_the_reference_row_by_row_draws():
    """One multinomial call per direction must use the generator exactly as the reference's per-row calls do
    (negative images for every text first, then negative texts for every image)."""
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=-1)
    temp = torch.tensor(0.07)
    drawn = sample_hard_negatives(x, y, temp, generator=torch.Generator().manual_seed(11))
    ref_gen = torch.Generator().manual_seed(11)
    w_x2y = torch.softmax(x @ y.t() / temp, dim=1) + 1e-5
    w_y2x = torch.softmax(y @ x.t() / temp, dim=1) + 1e-5
    w_x2y.fill_diagonal_(0)
    w_y2x.fill_diagonal_(0)
    x_for_y = [int(torch.multinomial(w_y2x[b], 1, generator=ref_gen)) for b in range(7)]
    y_for_x = [int(torch.multinomial(w_x2y[b], 1, generator=ref_gen)) for b in range(7)]
    assert drawn.x_for_y.tolist() == x_for_y and drawn.y_for_x.tolist() == y_for_x


def test_hard_negatives_from_reference_draws_keep_the_order():
    neg = HardNegatives.from_draws([[9], [1], [5], [2]])
    assert neg.x_for_y.tolist() == [9, 1] and neg.y_for_x.tolist() == [5, 2]
    with pytest.raises(ValueError, match="even"):
        HardNegatives.from_draws([1, 2, 3])


def test_check_hard_negatives_names_the_problem():
    with pytest.raises(ValueError, match="x_for_y"):
        check_hard_negatives(HardNegatives(torch.tensor([0, 5]), torch.tensor([1, 0])), 2)
    with pytest.raises(ValueError, match="shape"):
        check_hard_negatives(HardNegatives(torch.tensor([1]), torch.tensor([1, 0])), 2)


def test_matching_loss_labels_positives_one_negatives_zero():
    assert matching_loss(torch.zeros(2, 2), torch.zeros(4, 2)).item() == pytest.approx(math.log(2))
    confident = matching_loss(torch.tensor([[-20.0, 20.0]]), torch.tensor([[20.0, -20.0]] * 2))
    assert confident.item() < 1e-8
    wrong = matching_loss(torch.tensor([[20.0, -20.0]]), torch.tensor([[20.0, -20.0]] * 2))
    assert wrong.item() == pytest.approx(40 / 3, rel=1e-4)


def test_mlm_loss_ignores_padding_labels():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]])
    labels = torch.tensor([[-100, 2]])
    expected = -math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3)))
    assert mlm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_box_conversion():
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.3, 0.4, 0.2, 0.4]])
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.4, 0.6]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(boxes), expected)


def test_generalized_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 3.0, 3.0]])
    # identical: 1; disjoint: 0 - (3 - 2) / 3; overlap: 1/7 - (9 - 7) / 9.
    expected = torch.tensor([1.0, -1 / 3, 1 / 7 - 2 / 9])
    torch.testing.assert_close(paired_generalized_box_iou(a, b), expected)


def test_bbox_losses_exclude_whole_image_items():
    pred = torch.tensor([[0.9, 0.1, 0.1, 0.9], [0.5, 0.5, 0.2, 0.2]], requires_grad=True)
    target = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.4, 0.5, 0.2, 0.4]])
    l1, giou = bbox_losses(pred, target, is_image=torch.tensor([1.0, 0.0]))
    assert l1.item() == pytest.approx(0.3, rel=1e-5)  # |0.1| + |0.2| for the region item only
    # region item: pred [0.4,0.4,0.6,0.6] (area .04), target [0.3,0.3,0.5,0.7] (area .08): inter .1 x .2 = .02,
    # union .10, iou .2; hull [0.3,0.3,0.6,0.7] = .12 -> giou = .2 - .02 / .12 = 1/30
    assert giou.item() == pytest.approx(1 - 1 / 30, rel=1e-5)
    (l1 + giou).backward()
    assert pred.grad[0].abs().sum() == 0 and pred.grad[1].abs().sum() > 0


def test_bbox_losses_without_region_items_are_zero_with_a_graph():
    pred = torch.tensor([[0.5, 0.5, 0.3, 0.3]], requires_grad=True)
    l1, giou = bbox_losses(pred, torch.tensor([[0.5, 0.5, 1.0, 1.0]]), is_image=torch.tensor([1.0]))
    assert l1.item() == 0 and giou.item() == 0
    assert l1.requires_grad and giou.requires_grad
    (l1 + giou).backward()


def test_bbox_losses_zero_giou_for_a_degenerate_box():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]], requires_grad=True)
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, -0.1, 0.2]])
    l1, giou = bbox_losses(pred, target)
    assert giou.item() == 0 and giou.requires_grad
    assert l1.item() == pytest.approx(0.3 / 2, rel=1e-5)
    giou.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))  # no gradient, and no NaN, from the zeroed term


def test_bbox_losses_with_a_box_whose_giou_is_nan_still_give_finite_gradients():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]], requires_grad=True)
    target = torch.tensor([[0.5, 0.5, -0.2, 0.2]])  # x1 < x0: area and union 0 -> NaN GIoU if computed
    l1, giou = bbox_losses(pred, target)
    (l1 + giou).backward()
    assert giou.item() == 0 and torch.isfinite(pred.grad).all()
    torch.testing.assert_close(pred.grad, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))  # the L1 term's sign only
