"""Train and load small tokenizers in the XLM-R id layout, offline.

XLM-R's layout: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, the learned pieces, and ``<mask>`` last. A
SentencePiece-style Unigram model with a Metaspace pre-tokenizer, as XLM-R has; CJK text without spaces is split into
pieces by the Unigram model itself.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from dataset.jsondoc import read_json
from utils.errors import UserError

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
# the files a Hugging Face tokenizer is built from (any one of them makes a folder a tokenizer folder)
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "vocab.json",
                   "vocab.txt")


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


class TokenizerError(UserError, ValueError):
    """A text encoder folder whose tokenizer is missing or does not fit the model (the message names the folder)."""


def load_tokenizer(name_or_path: str | os.PathLike):
    """Load a tokenizer from a Hugging Face directory or hub id (the hub only when online).

    A folder must hold tokenizer files (one of ``TOKENIZER_FILES``): with ``config.json`` alone, transformers would
    build a tokenizer of a few special tokens that maps every word to ``<unk>``. When the folder has a
    ``config.json`` with ``vocab_size`` (the model's embedding rows), the tokenizer must have exactly that many ids.
    """
    from transformers import AutoTokenizer

    folder = Path(name_or_path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TokenizerError(f"{folder}: the text encoder folder holds no tokenizer file (one of "
                             f"{', '.join(TOKENIZER_FILES)}); copy the model's tokenizer files next to its "
                             "config.json (a folder without them would map every word to <unk>)")
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if folder.is_dir():
        check_vocabulary_size(tokenizer, folder)
    return tokenizer


def check_vocabulary_size(tokenizer, folder: Path) -> None:
    """Raise if ``folder/config.json`` gives a ``vocab_size`` other than the tokenizer's number of ids."""
    config = folder / "config.json"
    if not config.is_file():
        return
    values = read_json(config)
    vocab_size = values.get("vocab_size") if isinstance(values, dict) else None
    if vocab_size is not None and vocab_size != len(tokenizer):
        raise TokenizerError(f"{folder}: the tokenizer has {len(tokenizer)} ids but config.json's vocab_size (the "
                             f"model's embedding size) is {vocab_size}; the tokenizer files and config.json must come "
                             "from the same model")


def check_xlmr_layout(tokenizer, where: str = "tokenizer") -> None:
    """Raise if the special-token ids differ from XLM-R's (the model's masking and padding rely on them)."""
    expected = {"cls_token_id": 0, "pad_token_id": 1, "sep_token_id": 2, "unk_token_id": 3}
    for attr, want in expected.items():
        got = getattr(tokenizer, attr)
        if got != want:
            raise ValueError(f"{where}: {attr} is {got}, expected {want} (XLM-R id layout)")
    if tokenizer.mask_token_id != len(tokenizer) - 1:
        raise ValueError(f"{where}: <mask> has id {tokenizer.mask_token_id}, expected the last id {len(tokenizer) - 1}")
