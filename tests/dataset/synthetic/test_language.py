"""The synthetic grammars agree in gender, number and case (expected sentences written by hand)."""
import pytest

from dataset.synthetic.language import CAPTION_TEMPLATES, GRAMMARS, Phrase, grammar

RED_CIRCLE_LEFT = (Phrase(1, "circle", "red", "small"), "left")
BLUE_STARS_RIGHT = (Phrase(2, "star", "blue", "large"), "right")
SCENE = [RED_CIRCLE_LEFT, BLUE_STARS_RIGHT]


@pytest.mark.parametrize("lang, template, expected", [
    ("en", 0, "a small red circle on the left and two large blue stars on the right"),
    ("en", 1, "On the left there is a small red circle and on the right there are two large blue stars."),
    ("de", 1, "Links ist ein kleiner roter Kreis und rechts sind zwei große blaue Sterne."),
    ("de", 2, "Es gibt einen kleinen roten Kreis links und zwei große blaue Sterne rechts."),
    ("de", 4, "Ein Bild mit einem kleinen roten Kreis links und zwei großen blauen Sternen rechts."),
    ("fr", 1, "À gauche, il y a un petit cercle rouge et à droite, il y a deux grandes étoiles bleues."),
    ("cs", 1, "Vlevo je malý červený kruh a vpravo jsou dvě velké modré hvězdy."),
    ("cs", 3, "Obrázek ukazuje malý červený kruh vlevo a dvě velké modré hvězdy vpravo."),
    ("ja", 1, "左に小さい赤い丸が一つあり、右に大きい青い星が二つあります。"),
    ("zh", 0, "左边有一个红色的小圆形，右边有两个蓝色的大星形"),
])
def test_captions(lang, template, expected):
    assert grammar(lang).caption(SCENE, template) == expected


@pytest.mark.parametrize("lang, phrase, case, expected", [
    ("en", Phrase(1, "circle", "orange"), "nom", "an orange circle"),
    ("en", Phrase(3, "cross", "white", "small"), "nom", "three small white crosses"),
    ("de", Phrase(1, "square", "white", "small"), "nom", "ein kleines weißes Quadrat"),
    ("de", Phrase(1, "diamond", "green", "large"), "dat", "einer großen grünen Raute"),
    ("de", Phrase(1, "star", "orange"), "acc", "einen orangefarbenen Stern"),
    ("fr", Phrase(2, "circle", "orange"), "nom", "deux cercles orange"),
    ("fr", Phrase(3, "cross", "white", "large"), "nom", "trois grandes croix blanches"),
    ("fr", Phrase(1, "star", "purple", "small"), "nom", "une petite étoile violette"),
    ("cs", Phrase(2, "star", "yellow"), "nom", "dvě žluté hvězdy"),
    ("cs", Phrase(1, "star", "red", "small"), "acc", "malou červenou hvězdu"),
    ("cs", Phrase(3, "square", "black"), "acc", "tři černé čtverce"),
    ("ja", Phrase(2, "diamond", "white", "small"), "nom", "二つの小さい白いひし形"),
    ("zh", Phrase(3, "triangle", "green", "large"), "nom", "三个绿色的大三角形"),
])
def test_noun_phrases_agree(lang, phrase, case, expected):
    assert grammar(lang).noun_phrase(phrase, case) == expected


@pytest.mark.parametrize("lang, method, args, expected", [
    ("de", "absent", ("circle",), "Im Bild gibt es keinen Kreis."),
    ("de", "absent", ("square",), "Im Bild gibt es kein Quadrat."),
    ("de", "q_side", ("diamond", False, ("left", "right")), "Ist die Raute links oder rechts?"),
    ("fr", "absent", ("star",), "Il n'y a pas d'étoile dans l'image."),
    ("fr", "q_size", ("star", True), "Est-ce que les étoiles sont petites ou grandes ?"),
    ("fr", "q_side", ("circle", False, ("top", "bottom")), "Est-ce que le cercle est en haut ou en bas ?"),
    ("cs", "absent", ("star",), "Na obrázku není žádná hvězda."),
    ("cs", "q_size", ("star", False), "Je hvězda malá, nebo velká?"),
    ("cs", "s_more", ("left", "star"), "Na levém obrázku je více hvězd než na pravém."),
    ("en", "s_more", ("right", "cross"), "There are more crosses in the right image than in the left image."),
    ("de", "s_contains", ("left", Phrase(1, "circle", "red")), "Das linke Bild enthält einen roten Kreis."),
    ("ja", "s_both", ("star",), "両方の画像に星があります。"),
    ("zh", "q_exists", ("red", "circle"), "图片里有红色的圆形吗？"),
])
def test_statements_and_questions(lang, method, args, expected):
    assert getattr(grammar(lang), method)(*args) == expected


def test_cjk_text_has_no_spaces_and_others_no_double_spaces():
    phrases = [(Phrase(c, s, col, size), pos) for c, s, col, size, pos in
               [(1, "cross", "orange", "small", "centre"), (3, "diamond", "white", None, "top"),
                (2, "triangle", None, "large", "bottom")]]
    for lang, g in GRAMMARS.items():
        texts = [g.caption(phrases[:1], t) for t in range(CAPTION_TEMPLATES)]
        texts += [g.caption(phrases[1:], t) for t in range(CAPTION_TEMPLATES)]
        texts += [g.join_sentences(g.exists(*phrases[2]), g.unverifiable(0)), g.q_colour("centre", True)]
        for text in texts:
            assert text == text.strip() and "  " not in text, (lang, text)
            if lang in ("ja", "zh"):
                assert not any(ch.isspace() for ch in text), (lang, text)


def test_unknown_language_is_named():
    with pytest.raises(ValueError, match="'xx'"):
        grammar("xx")
