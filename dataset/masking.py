"""MLM masking of a token-id sequence as the reference pre-training does it (docs/data-formats.md#text-masking)."""
from __future__ import annotations

import random


class TextMasker:
    """Choose positions of ``[<s>] + pieces + [</s>]`` to predict; corrupt them (80 % <mask>, 10 % random, 10 % kept).

    * n_pred = min(max_masks, max(1, round(n * mask_prob))), n counting <s> and </s>.
    * Candidates are positions 1..n-1: <s> is never chosen; </s> is, as in the reference, unless ``mask_eos=False``.
    * Candidates are visited in random order; with probability ``skipgram_prb`` a visit takes a span of
      uniform{2..skipgram_size} positions starting there (stopping at the last candidate), otherwise one position.
      A span can overshoot n_pred; the set is then cut to n_pred at random.
    * Random replacements are drawn from the whole id range [0, vocab size) as in the reference (special tokens
      included); ``random_includes_special=False`` draws only non-special ids.

    Call with the ids and a ``random.Random``; get (ids_masked, masked_pos, masked_ids): ids_masked has the input's
    length, masked_pos (ascending) is padded with 0 and masked_ids with -100 to ``max_masks``.
    """

    def __init__(self, tokenizer, mask_prob: float, max_masks: int, skipgram_prb: float = 0.0,
                 skipgram_size: int = 1, mask_eos: bool = True, random_includes_special: bool = True):
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
        if max_masks < 1:
            raise ValueError(f"max_masks must be positive, got {max_masks}")
        if skipgram_prb > 0 and skipgram_size < 2:
            raise ValueError(f"skipgram_size must be at least 2 when skipgram_prb > 0, got {skipgram_size}")
        self.mask_prob, self.max_masks = mask_prob, max_masks
        self.skipgram_prb, self.skipgram_size = skipgram_prb, skipgram_size
        self.mask_eos = mask_eos
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        special = set(tokenizer.all_special_ids)
        self.random_ids = None if random_includes_special else [i for i in range(self.vocab_size)
                                                                 if i not in special]

    def n_predictions(self, n_tokens: int) -> int:
        """How many positions a sequence of ``n_tokens`` (with <s> and </s>) gets."""
        return min(self.max_masks, max(1, round(n_tokens * self.mask_prob)))

    def choose_positions(self, n_tokens: int, rng: random.Random) -> list[int]:
        """The positions to predict, ascending."""
        last = n_tokens - 1 if self.mask_eos else n_tokens - 2
        if last < 1:
            raise ValueError(f"a sequence of {n_tokens} tokens has no position to mask")
        n_pred = self.n_predictions(n_tokens)
        candidates = list(range(1, last + 1))
        rng.shuffle(candidates)
        chosen: set[int] = set()
        for start in candidates:
            if len(chosen) >= n_pred:
                break
            if start in chosen:
                continue
            span = rng.randint(2, self.skipgram_size) if rng.random() < self.skipgram_prb else 1
            chosen.update(range(start, min(start + span, last + 1)))
        positions = sorted(chosen)
        if len(positions) > n_pred:
            positions = sorted(rng.sample(positions, n_pred))
        return positions

    def corrupt(self, token_id: int, rng: random.Random) -> int:
        """80 % <mask>, 10 % a random id, 10 % unchanged."""
        draw = rng.random()
        if draw < 0.8:
            return self.mask_id
        if draw < 0.9:
            if self.random_ids is None:
                return rng.randrange(self.vocab_size)
            return rng.choice(self.random_ids)
        return token_id

    def __call__(self, text_ids: list[int], rng: random.Random | None = None):
        rng = rng or random
        positions = self.choose_positions(len(text_ids), rng)
        masked = list(text_ids)
        for pos in positions:
            masked[pos] = self.corrupt(text_ids[pos], rng)
        n_pad = self.max_masks - len(positions)
        masked_pos = positions + [0] * n_pad
        masked_ids = [text_ids[pos] for pos in positions] + [-100] * n_pad
        return masked, masked_pos, masked_ids
