"""Caption/question cleaning, tokenisation to ids, padding, left/right swapping."""
import pytest

from dataset.text import (can_swap_left_right, mentions_left_or_right, pad_ids, pre_caption, pre_question,
                          swap_left_right, tokenize_to_ids)


def test_pre_caption_cleans_like_the_reference():
    assert pre_caption("  A <person> (left-hand) said: \"Hi!\"  ~ok/no  \n", 50) == "a person left hand said hi ok no"
    assert pre_caption("Ein Hund, der läuft.", 50) == "ein hund der läuft"
    assert pre_caption("one two three four", 2) == "one two"
    assert pre_caption("左边有一个红色的圆。", 3) == "左边有一个红色的圆。"  # full-width punctuation stays


@pytest.mark.parametrize("text", ["", "   ", "?!...", "(,)"])
def test_pre_caption_refuses_empty_results(text):
    with pytest.raises(ValueError, match="empty"):
        pre_caption(text, 30)


def test_pre_question_keeps_inner_whitespace_and_left_spaces():
    assert pre_question(" What is  on the LEFT?  ", 30) == " what is  on the left"
    assert pre_question("is the cat black or white", 3) == "is the cat"
    assert pre_question("Is the <person> left-handed?", 30) == "is the <person> left handed"  # no <person> rule


def test_tokenize_to_ids_frames_and_truncates(tiny_tokenizer):
    ids = tokenize_to_ids(tiny_tokenizer, "a red circle on the left", 40)
    assert ids[0] == 0 and ids[-1] == 2
    assert ids[1:-1] == tiny_tokenizer.convert_tokens_to_ids(tiny_tokenizer.tokenize("a red circle on the left"))
    short = tokenize_to_ids(tiny_tokenizer, "a red circle on the left", 5)
    assert len(short) == 5 and short[:4] == ids[:4] and short[-1] == 2
    pieces = tokenize_to_ids(tiny_tokenizer, "▁a ▁red", 10, pretokenized=True)
    assert pieces == [0] + tiny_tokenizer.convert_tokens_to_ids(["▁a", "▁red"]) + [2]


def test_pad_ids():
    assert pad_ids([0, 5, 2], 5, 1) == ([0, 5, 2, 1, 1], [1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="do not fit"):
        pad_ids([0, 5, 2], 2, 1)


@pytest.mark.parametrize("lang,text,expected", [
    ("en", "the dog on the left of the right car", "the dog on the right of the left car"),
    ("de", "ein roter kreis links und ein linker hund", "ein roter kreis rechts und ein rechter hund"),
    ("fr", "un carré bleu à droite", "un carré bleu à gauche"),
    ("zh-CN", "左边有一个红色的圆", "右边有一个红色的圆"),
    ("ja", "左に赤い丸、右に青い四角", "右に赤い丸、左に青い四角"),
    ("cs", "modrý čtverec vpravo", "modrý čtverec vlevo"),
])
def test_swap_left_right(lang, text, expected):
    assert swap_left_right(text, lang) == expected


def test_unknown_languages_are_not_swapped():
    assert not can_swap_left_right("sw") and not can_swap_left_right(None)
    with pytest.raises(ValueError, match="no left/right word table"):
        swap_left_right("a dog", "xx")
    assert mentions_left_or_right("the cat on the left")
    assert mentions_left_or_right("猫在左边")
    assert not mentions_left_or_right("a cat leftover")
