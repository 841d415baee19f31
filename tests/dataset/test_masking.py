"""MLM masking: counts, protected positions, padding, 80/10/10 rates, spans."""
import random

import pytest

from dataset.masking import TextMasker

PLAIN_IDS = list(range(10, 190))  # ids that are no special token of the tiny tokenizer


def sequence(n, rng):
    return [0] + [rng.choice(PLAIN_IDS) for _ in range(n - 2)] + [2]


@pytest.mark.parametrize("n,expected", [(2, 1), (3, 1), (4, 2), (5, 2), (6, 2), (10, 4), (30, 12), (40, 12)])
def test_number_of_predictions(tiny_tokenizer, n, expected):
    masker = TextMasker(tiny_tokenizer, mask_prob=0.4, max_masks=12)
    assert masker.n_predictions(n) == expected


def test_outputs_are_consistent_and_padded(tiny_tokenizer):
    masker = TextMasker(tiny_tokenizer, 0.4, 12, skipgram_prb=0.2, skipgram_size=3)
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(3, 40)
        ids = sequence(n, rng)
        masked, pos, labels = masker(ids, rng)
        k = masker.n_predictions(n)
        assert len(masked) == n and len(pos) == 12 and len(labels) == 12
        chosen = pos[:k]
        assert chosen == sorted(set(chosen)) and all(1 <= p <= n - 1 for p in chosen)
        assert pos[k:] == [0] * (12 - k) and labels[k:] == [-100] * (12 - k)
        assert labels[:k] == [ids[p] for p in chosen]
        assert all(masked[i] == ids[i] for i in range(n) if i not in chosen)
        assert masked[0] == 0


def test_corruption_rates_are_80_10_10(tiny_tokenizer):
    masker = TextMasker(tiny_tokenizer, 0.4, 12, skipgram_prb=0.2, skipgram_size=3)
    rng = random.Random(1)
    counts = {"mask": 0, "random": 0, "kept": 0}
    for _ in range(2500):
        ids = sequence(30, rng)
        masked, pos, labels = masker(ids, rng)
        for p in pos[:12]:
            key = "mask" if masked[p] == tiny_tokenizer.mask_token_id else "kept" if masked[p] == ids[p] else "random"
            counts[key] += 1
    total = sum(counts.values())
    assert total == 2500 * 12
    assert abs(counts["mask"] / total - 0.8) < 0.015
    assert abs(counts["random"] / total - 0.1) < 0.01
    assert abs(counts["kept"] / total - 0.1) < 0.01


def test_every_candidate_position_is_equally_likely_and_eos_can_be_masked(tiny_tokenizer):
    masker = TextMasker(tiny_tokenizer, 0.25, 20)
    rng = random.Random(2)
    n, trials = 20, 4000
    hits = [0] * n
    for _ in range(trials):
        _, pos, _ = masker(sequence(n, rng), rng)
        for p in pos[:5]:
            hits[p] += 1
    assert hits[0] == 0
    for p in range(1, n):  # 5 of the 19 candidates each time
        assert abs(hits[p] / trials - 5 / 19) < 0.03, p


def test_eos_protection_option(tiny_tokenizer):
    masker = TextMasker(tiny_tokenizer, 0.5, 20, mask_eos=False)
    rng = random.Random(3)
    for _ in range(500):
        _, pos, _ = masker(sequence(6, rng), rng)
        assert 5 not in pos and 0 not in pos[:masker.n_predictions(6)]


def neighbour_rate(masker, rng, trials=1500, n=60):
    with_neighbour = total = 0
    for _ in range(trials):
        _, pos, _ = masker(sequence(n, rng), rng)
        chosen = set(pos[:masker.n_predictions(n)])
        with_neighbour += sum(1 for p in chosen if p - 1 in chosen or p + 1 in chosen)
        total += len(chosen)
    return with_neighbour / total


def test_span_masking_makes_contiguous_runs(tiny_tokenizer):
    rng = random.Random(4)
    singles = neighbour_rate(TextMasker(tiny_tokenizer, 0.1, 20, skipgram_prb=0.0), rng)
    spans = neighbour_rate(TextMasker(tiny_tokenizer, 0.1, 20, skipgram_prb=1.0, skipgram_size=3), rng)
    # 6 random positions of 59 have a chosen neighbour ~17 % of the time; spans of 2-3 nearly always do
    assert singles < 0.25
    assert spans > 0.8


def test_random_replacement_range(tiny_tokenizer):
    special = set(tiny_tokenizer.all_special_ids)

    def random_replacements(masker):
        rng, found = random.Random(5), []
        for _ in range(3000):
            ids = sequence(30, rng)
            masked, pos, _ = masker(ids, rng)
            found += [masked[p] for p in pos[:12] if masked[p] not in (ids[p], tiny_tokenizer.mask_token_id)]
        return found

    reference = random_replacements(TextMasker(tiny_tokenizer, 0.4, 12))
    assert any(i in special for i in reference)  # the reference draws from the whole id range
    assert all(0 <= i < len(tiny_tokenizer) for i in reference)
    clean = random_replacements(TextMasker(tiny_tokenizer, 0.4, 12, random_includes_special=False))
    assert clean and not any(i in special for i in clean)


def test_same_rng_same_masks(tiny_tokenizer):
    masker = TextMasker(tiny_tokenizer, 0.4, 12, skipgram_prb=0.2, skipgram_size=3)
    ids = sequence(25, random.Random(6))
    assert masker(ids, random.Random(9)) == masker(ids, random.Random(9))


def test_invalid_settings(tiny_tokenizer):
    with pytest.raises(ValueError, match="mask_prob"):
        TextMasker(tiny_tokenizer, 0.0, 12)
    with pytest.raises(ValueError, match="skipgram_size"):
        TextMasker(tiny_tokenizer, 0.4, 12, skipgram_prb=0.2, skipgram_size=1)
