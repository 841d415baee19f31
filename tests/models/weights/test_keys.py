"""Key operations shared by the layout conversions."""
import torch

from models.weights.keys import (add_prefix, layer_indices, layer_key_pattern, renamed, shape_mismatches,
                                 split_prefix, strip_prefixes)


def test_strip_prefixes():
    sd = {"module._orig_mod.a": 1, "_orig_mod.module.b": 2, "c.module.d": 3}
    assert strip_prefixes(sd) == {"a": 1, "b": 2, "c.module.d": 3}


def test_split_and_add_prefix_are_inverse():
    sd = {"vision_encoder.norm.weight": 1, "vision_encoder.layers.0.x": 2, "temp": 3, "text_encoder.vision_encoder": 4}
    inside, outside = split_prefix(sd, "vision_encoder.")
    assert inside == {"norm.weight": 1, "layers.0.x": 2}
    assert outside == {"temp": 3, "text_encoder.vision_encoder": 4}
    assert {**outside, **add_prefix(inside, "vision_encoder.")} == sd


def test_renamed_takes_the_first_matching_prefix():
    renames = (("lm_head.decoder.", "cls.predictions.decoder."), ("lm_head.", "head."))
    assert renamed("lm_head.decoder.weight", renames) == "cls.predictions.decoder.weight"
    assert renamed("lm_head.bias", renames) == "head.bias"
    assert renamed("roberta.x", renames) is None


def test_layer_key_pattern_and_indices():
    pattern = layer_key_pattern("text_encoder.bert.")
    keys = ["text_encoder.bert.encoder.layer.10.output.dense.weight", "text_encoder.bert.encoder.layer.2.x",
            "text_encoder.encoder.layer.3.x", "text_encoder_bert.encoder.layer.4.x"]
    assert pattern.match(keys[0]).groups() == ("10", "output.dense.weight")
    assert layer_indices(keys, pattern) == [2, 10]  # neither the bare layout nor a look-alike name


def test_shape_mismatches_name_key_and_both_shapes():
    own = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert shape_mismatches({"a": torch.zeros(3, 3), "b": torch.zeros(4), "c": torch.zeros(1)}, own) == [
        "a: file (3, 3) vs model (2, 3)"]
