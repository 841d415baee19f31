"""Train and load small tokenizers in the XLM-R id layout, offline.

XLM-R's layout: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, the learned pieces, and ``<mask>`` last. A
SentencePiece-style Unigram model with a Metaspace pre-tokenizer, as XLM-R has; CJK text without spaces is split into
pieces by the Unigram model itself.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 400,
                    max_piece_length: int = 8) -> Path:
    """Train a Unigram tokenizer in the XLM-R id layout on ``texts`` and save it to ``out_dir``.

    The folder loads offline with ``AutoTokenizer.from_pretrained(out_dir)``. ``vocab_size`` counts every id,
    specials and ``<mask>`` included. A small ``max_piece_length`` keeps short sentences from becoming single tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("train_tokenizer: no non-empty text to train on")
    if vocab_size < len(SPECIALS) + 2:
        raise ValueError(f"train_tokenizer: vocab_size {vocab_size} is too small")
    tok = Tokenizer(models.Unigram())
    # No normaliser: transformers rebuilds the XLM-R pipeline without one when loading, so training with one would
    # make the saved vocabulary disagree with what the loaded tokenizer sees (callers normalise their text instead).
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size - 1, special_tokens=SPECIALS, unk_token="<unk>",
                                      max_piece_length=max_piece_length, shrinking_factor=0.75, n_sub_iterations=2)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    check_xlmr_layout(load_tokenizer(out), where=str(out))
    return out


def load_tokenizer(name_or_path: str | os.PathLike):
    """Load a tokenizer from a Hugging Face directory or hub id (the hub only when online)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(name_or_path))


def check_xlmr_layout(tokenizer, where: str = "tokenizer") -> None:
    """Raise if the special-token ids differ from XLM-R's (the model's masking and padding rely on them)."""
    expected = {"cls_token_id": 0, "pad_token_id": 1, "sep_token_id": 2, "unk_token_id": 3}
    for attr, want in expected.items():
        got = getattr(tokenizer, attr)
        if got != want:
            raise ValueError(f"{where}: {attr} is {got}, expected {want} (XLM-R id layout)")
    if tokenizer.mask_token_id != len(tokenizer) - 1:
        raise ValueError(f"{where}: <mask> has id {tokenizer.mask_token_id}, expected the last id {len(tokenizer) - 1}")
