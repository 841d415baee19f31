"""Caption choice and the per-sample collate shared by the pre-training readers."""
import random

import pytest
import torch

from dataset.pretrain_common import choose_captions, collate_samples
from dataset.shards import BadRecordError


def test_one_caption_from_dicts_lists_and_strings():
    rng = random.Random(0)
    langs = {choose_captions({"en": "a", "de": "b"}, "f:1", rng)[0] for _ in range(50)}
    assert langs == {("en", "a"), ("de", "b")}
    assert choose_captions([{"fr": "c"}], "f:1", rng) == [("fr", "c")]
    assert choose_captions("plain", "f:1", rng) == [(None, "plain")]
    assert choose_captions(["x", "y"], "f:1", random.Random(1))[0][1] in {"x", "y"}


def test_two_captions_are_in_distinct_languages():
    rng = random.Random(0)
    for _ in range(30):
        (l1, t1), (l2, t2) = choose_captions({"en": "a", "de": "b", "fr": "c"}, "f:1", rng, n=2)
        assert l1 != l2 and {"en": "a", "de": "b", "fr": "c"}[l2] == t2


def test_language_chosen_restricts_and_requires():
    rng = random.Random(0)
    got = {choose_captions({"en": "a", "de": "b", "fr": "c"}, "f:1", rng, language_chosen=["de", "fr"])[0][0]
           for _ in range(40)}
    assert got == {"de", "fr"}
    with pytest.raises(BadRecordError, match=r"^f:2: missing caption language\(s\) \['zh'\]"):
        choose_captions({"en": "a"}, "f:2", rng, language_chosen=["en", "zh"])


@pytest.mark.parametrize("value,message", [
    ([], "the caption list is empty"),
    (5, "the caption must be a dict language -> text, got int"),
    ({"en": ["a"]}, "the caption in 'en' is not a string"),
    ("plain", None),
])
def test_bad_caption_values(value, message):
    if message is None:  # a string cannot give two languages
        with pytest.raises(BadRecordError, match="2 caption languages are needed"):
            choose_captions(value, "f:3", random.Random(0), n=2)
        return
    with pytest.raises(BadRecordError, match=rf"^f:3: {message}"):
        choose_captions(value, "f:3", random.Random(0))


def test_collate_stacks_tensors_and_makes_long_tensors():
    samples = [{"image": torch.zeros(3, 2, 2), "text_ids": [0, 5, 2]}, {"image": torch.ones(3, 2, 2),
                                                                        "text_ids": [0, 6, 2]}]
    batch = collate_samples(samples)
    assert batch["image"].shape == (2, 3, 2, 2) and batch["image"][1].sum() == 12
    assert batch["text_ids"].dtype == torch.long and batch["text_ids"].tolist() == [[0, 5, 2], [0, 6, 2]]
