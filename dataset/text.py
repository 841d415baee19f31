"""Text preprocessing shared by pre-training and fine-tuning: caption/question cleaning, tokenisation to XLM-R ids,
padding, and the left/right word swap that a horizontal flip needs."""
from __future__ import annotations

import re

# Characters the reference turns into spaces (besides '-' and '/').
_PUNCTUATION = re.compile(r"[,.'!?\"()*#:;~]")
_MULTI_SPACE = re.compile(r"\s{2,}")


def _clean(text: str) -> str:
    """Lowercase; punctuation, '-' and '/' to spaces (common to captions and questions)."""
    return _PUNCTUATION.sub(" ", text.lower()).replace("-", " ").replace("/", " ")


def pre_caption(text: str, max_words: int) -> str:
    """Clean a caption as the reference does and keep at most ``max_words`` words; ValueError if nothing is left."""
    if not isinstance(text, str):
        raise ValueError(f"pre_caption: expected a string, got {type(text).__name__}")
    caption = _MULTI_SPACE.sub(" ", _clean(text).replace("<person>", "person")).rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    if not caption.strip():
        raise ValueError("pre_caption: the caption is empty after cleaning")
    return caption


def pre_question(text: str, max_words: int) -> str:
    """Clean a question as the reference does (no whitespace collapsing, right strip only), at most ``max_words``."""
    if not isinstance(text, str):
        raise ValueError(f"pre_question: expected a string, got {type(text).__name__}")
    question = _clean(text).rstrip(" ")
    words = question.split(" ")
    if len(words) > max_words:
        question = " ".join(words[:max_words])
    return question


def tokenize_to_ids(tokenizer, text: str, max_tokens: int, pretokenized: bool = False) -> list[int]:
    """``[<s>] + pieces + [</s>]`` as ids, at most ``max_tokens`` long; ValueError when there is no piece.

    ``pretokenized``: ``text`` already holds space-separated vocabulary pieces (the reference's ``tokenized: True``).
    """
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be at least 3 (<s>, one piece, </s>), got {max_tokens}")
    pieces = text.strip().split() if pretokenized else tokenizer.tokenize(text)
    if not pieces:
        raise ValueError("the text has no token")
    ids = tokenizer.convert_tokens_to_ids(pieces[:max_tokens - 2])
    return [tokenizer.cls_token_id] + list(ids) + [tokenizer.sep_token_id]


def pad_ids(ids: list[int], length: int, pad_id: int) -> tuple[list[int], list[int]]:
    """Pad ``ids`` to ``length`` with ``pad_id``; return (padded ids, attention mask)."""
    if len(ids) > length:
        raise ValueError(f"pad_ids: {len(ids)} ids do not fit in {length}")
    n_pad = length - len(ids)
    return list(ids) + [pad_id] * n_pad, [1] * len(ids) + [0] * n_pad


# Left/right words per language for the careful horizontal flip. "word" languages are matched on whole
# space-separated words of the cleaned (lowercased, punctuation-free) caption; "char" languages (no spaces) on
# substrings. Words with a common second meaning that a swap would corrupt are left out on purpose
# (French "droit" = straight/law, Vietnamese "phải" = must), and so are languages nobody here could check.
_LEFT_RIGHT_WORDS: dict[str, list[tuple[str, str]]] = {
    "en": [("left", "right"), ("leftmost", "rightmost"), ("lefthand", "righthand")],
    "de": [("links", "rechts"), ("linke", "rechte"), ("linken", "rechten"), ("linker", "rechter"),
           ("linkes", "rechtes"), ("linkem", "rechtem")],
    "fr": [("gauche", "droite"), ("gauches", "droites")],
    "es": [("izquierda", "derecha"), ("izquierdo", "derecho"), ("izquierdas", "derechas"),
           ("izquierdos", "derechos")],
    "it": [("sinistra", "destra"), ("sinistro", "destro"), ("sinistre", "destre"), ("sinistri", "destri")],
    "pt": [("esquerda", "direita"), ("esquerdo", "direito"), ("esquerdas", "direitas"),
           ("esquerdos", "direitos")],
    "cs": [("vlevo", "vpravo"), ("nalevo", "napravo"), ("levý", "pravý"), ("levá", "pravá"), ("levé", "pravé"),
           ("levou", "pravou"), ("levém", "pravém"), ("levého", "pravého"), ("levému", "pravému"),
           ("levých", "pravých"), ("levými", "pravými"), ("levým", "pravým"), ("zleva", "zprava")],
    "id": [("kiri", "kanan")],
    "tr": [("sol", "sağ"), ("solda", "sağda"), ("soldaki", "sağdaki"), ("sola", "sağa"), ("soldan", "sağdan")],
    "ru": [("левый", "правый"), ("левая", "правая"), ("левое", "правое"), ("левые", "правые"),
           ("левой", "правой"), ("левом", "правом"), ("левую", "правую"), ("левого", "правого"),
           ("слева", "справа"), ("налево", "направо")],
    "zh": [("左", "右")],
    "ja": [("左", "右")],
    "ko": [("왼쪽", "오른쪽")],
}
_CHAR_LANGUAGES = {"zh", "ja", "ko"}


def _swap_table(pairs: list[tuple[str, str]]) -> dict[str, str]:
    table = {}
    for a, b in pairs:
        table[a], table[b] = b, a
    return table


_SWAP = {lang: _swap_table(pairs) for lang, pairs in _LEFT_RIGHT_WORDS.items()}
_CHAR_PATTERNS = {lang: re.compile("|".join(map(re.escape, sorted(_SWAP[lang], key=len, reverse=True))))
                  for lang in _CHAR_LANGUAGES}
_ANY_DIRECTION_WORD = {w for table in _SWAP.values() for w in table}


def base_language(lang: str | None) -> str | None:
    """'zh-CN', 'pt_BR' -> 'zh', 'pt' (the key of the left/right tables)."""
    if not lang:
        return None
    return re.split(r"[-_]", lang.strip().lower(), maxsplit=1)[0]


def can_swap_left_right(lang: str | None) -> bool:
    """True when :func:`swap_left_right` knows the left/right words of ``lang``."""
    return base_language(lang) in _SWAP


def mentions_left_or_right(text: str) -> bool:
    """True if the cleaned ``text`` holds a left/right word of any known language (used for unknown languages)."""
    if any(word in _ANY_DIRECTION_WORD for word in text.split(" ")):
        return True
    return any(pattern.search(text) for pattern in _CHAR_PATTERNS.values())


def swap_left_right(text: str, lang: str | None) -> str:
    """Exchange left and right words of a cleaned caption in language ``lang`` (ValueError for an unknown one)."""
    key = base_language(lang)
    if key not in _SWAP:
        raise ValueError(f"no left/right word table for language {lang!r}")
    table = _SWAP[key]
    if key in _CHAR_LANGUAGES:
        return _CHAR_PATTERNS[key].sub(lambda m: table[m.group(0)], text)
    return " ".join(table.get(word, word) for word in text.split(" "))
