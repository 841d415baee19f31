"""The reference pre-training layout <-> ours."""
import torch

from models.weights.files import read_state_dict
from models.weights.pretrain import ours_to_reference, pretrain_to_ours, reference_to_ours


def test_reference_to_ours_moves_patch_merging_and_drops_buffers():
    ref = {"module.vision_encoder.layers.0.downsample.norm.weight": torch.ones(4),
           "vision_encoder.layers.0.blocks.1.attn_mask": torch.zeros(1),
           "vision_encoder.layers.0.blocks.1.attn.relative_position_index": torch.zeros(1),
           "text_encoder.bert.embeddings.position_ids": torch.arange(5)[None],
           "text_encoder.bert.embeddings.position_embeddings.weight": torch.zeros(5, 2),
           "temp": torch.tensor(0.07)}
    ours = reference_to_ours(ref)
    assert sorted(ours) == ["temp", "text_encoder.bert.embeddings.position_embeddings.weight",
                            "vision_encoder.layers.1.downsample.norm.weight"]
    back = ours_to_reference(ours)
    assert "vision_encoder.layers.0.downsample.norm.weight" in back
    assert back["text_encoder.bert.embeddings.position_ids"].tolist() == [[0, 1, 2, 3, 4]]


def test_golden_state_round_trips(golden_dir):
    ref = read_state_dict(golden_dir / "tiny_state.pt")
    back = ours_to_reference(reference_to_ours(ref))
    buffers = {k for k in ref if k.endswith(("relative_position_index", "attn_mask"))}
    assert set(back) == set(ref) - buffers
    assert all(torch.equal(back[k], ref[k]) for k in back)


def test_pretrain_to_ours_takes_either_layout():
    """Our own pre-training snapshots (timm Swin keys) load as they are; the reference's are converted."""
    ours = {"vision_encoder.layers.1.downsample.norm.weight": torch.ones(4), "temp": torch.tensor(0.07),
            "module.text_encoder.bert.embeddings.position_embeddings.weight": torch.zeros(5, 2)}
    assert sorted(pretrain_to_ours(ours)) == ["temp", "text_encoder.bert.embeddings.position_embeddings.weight",
                                             "vision_encoder.layers.1.downsample.norm.weight"]
    reference = ours_to_reference(pretrain_to_ours(ours))
    assert "vision_encoder.layers.0.downsample.norm.weight" in reference
    assert pretrain_to_ours(reference) == reference_to_ours(reference)
    assert sorted(pretrain_to_ours(reference)) == sorted(pretrain_to_ours(ours))
