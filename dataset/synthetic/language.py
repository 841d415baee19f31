"""Template grammars of the synthetic world: en, de, fr, cs, ja, zh.

Every sentence is built from a language-neutral description (a ``Phrase`` for "two small red circles", a position
such as ``"left"``), so that the same fact can be said in every language and parallel sentences are translations of
each other. Agreement is handled where the languages need it: German gender, case (nominative, accusative, dative)
and declension; French gender, number and elision; Czech gender, number, case (nominative, accusative, genitive
plural) and numeral forms; Japanese counters; Chinese measure words. Japanese and Chinese text has no spaces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
COUNTS = (1, 2, 3)
CAPTION_TEMPLATES = 5
UNVERIFIABLE_SENTENCES = 4
OPPOSITE_SIDE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
AXIS_OF = {"left": ("left", "right"), "right": ("left", "right"), "top": ("top", "bottom"),
           "bottom": ("top", "bottom")}


@dataclass(frozen=True)
class Phrase:
    """What a noun phrase says: ``count`` objects of ``shape``, optionally with a size and a colour."""

    count: int
    shape: str
    colour: str | None = None
    size: str | None = None


Located = tuple[Phrase, str]  # a phrase and the position ("left", ...) where it is


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _forms(table: str) -> dict[str, tuple[str, str]]:
    """``name  singular form | plural form`` per line (one form: the same for both) -> {name: (singular, plural)}."""
    forms = {}
    for line in table.strip().splitlines():
        name, _, rest = line.strip().partition(" ")
        singular, _, plural = (part.strip() for part in rest.partition("|"))
        forms[name] = (singular, plural or singular)
    return forms


@dataclass(frozen=True)
class About:
    """What a sentence is about: a phrase, a position, a shape, a side, an axis; ``plural`` picks the plural form."""

    p: Phrase | None = None
    position: str | None = None
    shape: str | None = None
    side: str | None = None
    axis: tuple[str, str] | None = None
    plural: bool = False


class _Fields(dict):
    """The fields of a sentence form, each computed when the form names it: a word table of the grammar
    (``TABLES``, keyed by the shape's gender) or its method ``field_<name>(about)``."""

    def __init__(self, grammar: "Grammar", about: About):
        super().__init__()
        self.grammar, self.about = grammar, about

    def __missing__(self, name: str) -> str:
        g, about = self.grammar, self.about
        if name in g.TABLES:
            return g.TABLES[name][g.gender(about.shape)]
        return getattr(g, "field_" + name)(about)


class Grammar:
    """Base class: one subclass per language, holding its words, its noun phrases and captions (code) and its other
    sentences as forms (``SENTENCES``) whose fields the ``field_*`` methods fill in.

    ``NOUNS``: shape -> (singular, gender, plural, ...); ``POS``: position -> words; ``SIDE``: left/right image ->
    the words (or forms) that name it; ``BE``: the copula after a singular / plural subject.
    """

    code = ""
    cjk = False
    NOUNS: dict = {}
    POS: dict[str, str] = {}
    SIDE: dict = {}
    NUM: dict[int, str] = {}
    BE = ("", "")
    UNVERIFIABLE: tuple[str, ...] = ()
    SENTENCES: dict[str, tuple[str, str]] = {}
    TABLES: dict[str, dict[str, str]] = {}

    def join_sentences(self, first: str, second: str) -> str:
        """Two sentences as one text (no space between CJK sentences)."""
        return first + ("" if self.cjk else " ") + second

    def say(self, name: str, about: About) -> str:
        """The sentence form ``name`` (its plural form for a plural subject) with its fields filled in."""
        return self.SENTENCES[name][about.plural].format_map(_Fields(self, about))

    # ---- language-specific code
    def noun_phrase(self, p: Phrase, case: str = "nom") -> str:
        raise NotImplementedError

    def caption(self, groups: Sequence[Located], template: int) -> str:
        raise NotImplementedError

    # ---- words
    def noun_word(self, shape: str, plural: bool = False) -> str:
        """The bare noun of a shape (a CJK noun has no plural)."""
        noun = self.NOUNS[shape]
        return noun if isinstance(noun, str) else noun[2 if plural else 0]

    def gender(self, shape: str) -> str:
        return self.NOUNS[shape][1]

    def concept(self, shape: str) -> str:
        """The word MaRVL's concept folders carry for a shape."""
        return self.noun_word(shape)

    # ---- sentences
    def located_phrase(self, p: Phrase, position: str) -> str:
        return self.say("located", About(p, position))

    def exists(self, p: Phrase, position: str) -> str:
        return self.say("exists", About(p, position, plural=p.count > 1))

    def absent(self, shape: str) -> str:
        return self.say("absent", About(shape=shape))

    def unverifiable(self, k: int) -> str:
        return self.UNVERIFIABLE[k]

    def q_colour(self, position: str, plural: bool) -> str:
        return self.say("q_colour", About(position=position, plural=plural))

    def q_shape(self, position: str) -> str:
        return self.say("q_shape", About(position=position))

    def q_exists(self, colour: str, shape: str) -> str:
        return self.say("q_exists", About(Phrase(1, shape, colour), shape=shape))

    def q_side(self, shape: str, plural: bool, axis: tuple[str, str]) -> str:
        return self.say("q_side", About(shape=shape, axis=axis, plural=plural))

    def q_size(self, shape: str, plural: bool) -> str:
        return self.say("q_size", About(shape=shape, plural=plural))

    def s_contains(self, side: str, p: Phrase) -> str:
        return self.say("s_contains", About(p, side=side))

    def s_both(self, shape: str) -> str:
        return self.say("s_both", About(Phrase(1, shape), shape=shape))

    def s_more(self, side: str, shape: str) -> str:
        return self.say("s_more", About(shape=shape, side=side))

    # ---- the fields every language's forms may use
    def field_pos(self, about: About) -> str:
        return self.POS[about.position]

    def field_Pos(self, about: About) -> str:  # {Pos}: {pos} capitalised, for a sentence that starts with it
        return _cap(self.POS[about.position])

    def field_np(self, about: About) -> str:
        return self.noun_phrase(about.p)

    def field_np_acc(self, about: About) -> str:
        return self.noun_phrase(about.p, "acc")

    def field_be(self, about: About) -> str:
        return self.BE[about.plural]

    def field_num(self, about: About) -> str:
        return self.NUM[about.p.count]

    def field_bare(self, about: About) -> str:
        return self.bare(about.p)

    def field_noun(self, about: About) -> str:
        return self.noun_word(about.shape)

    def field_nouns(self, about: About) -> str:
        return self.noun_word(about.shape, plural=True)

    def field_the_noun(self, about: About) -> str:
        return self.definite(about.shape, about.plural)

    def field_a(self, about: About) -> str:
        return self.POS[about.axis[0]]

    def field_b(self, about: About) -> str:
        return self.POS[about.axis[1]]

    def field_side(self, about: About):
        return self.SIDE[about.side]

    def field_other(self, about: About):
        return self.SIDE[OPPOSITE_SIDE[about.side]]


class English(Grammar):
    code = "en"
    NOUNS = {shape: (shape, "", shape + ("es" if shape.endswith("s") else "s")) for shape in SHAPES}
    NUM = {2: "two", 3: "three"}
    POS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "centre": "in the middle"}
    SIDE = {"left": "left", "right": "right"}
    BE = ("is", "are")
    UNVERIFIABLE = ("The picture was drawn by a child.", "The shapes are made of paper.",
                    "The picture was painted yesterday.", "Someone cut out these shapes with scissors.")
    SENTENCES = _forms("""
        located     {np} {pos}
        exists      There {be} {np} {pos}.
        absent      There is no {noun} in the picture.
        q_colour    What colour is the shape {pos}? | What colour are the shapes {pos}?
        q_shape     What shape is {pos}?
        q_exists    Is there {np}?
        q_side      Is {the_noun} {a} or {b}? | Are {the_noun} {a} or {b}?
        q_size      Is {the_noun} small or large? | Are {the_noun} small or large?
        s_contains  The {side} image contains {np}.
        s_both      Both images contain {np}.
        s_more      There are more {nouns} in the {side} image than in the {other} image.
    """)

    def noun(self, shape: str, plural: bool) -> str:
        return self.noun_word(shape, plural)

    def indefinite(self, body: str) -> str:
        return ("an " if body[0] in "aeiou" else "a ") + body

    def definite(self, shape: str, plural: bool) -> str:
        return "the " + self.noun_word(shape, plural)

    def noun_phrase(self, p, case="nom"):
        body = " ".join([w for w in (p.size, p.colour) if w] + [self.noun(p.shape, p.count > 1)])
        return self.indefinite(body) if p.count == 1 else f"{self.NUM[p.count]} {body}"

    def caption(self, groups, template):
        listed = " and ".join(self.located_phrase(p, pos) for p, pos in groups)
        if template == 0:
            return listed
        if template == 1:
            return _cap(" and ".join(f"{self.POS[pos]} there {self.BE[p.count > 1]} {self.noun_phrase(p)}"
                                     for p, pos in groups)) + "."
        if template == 2:
            return f"There {self.BE[groups[0][0].count > 1]} {listed}."
        if template == 3:
            return f"The picture shows {listed}."
        return f"An image with {listed}."


class German(Grammar):
    code = "de"
    # noun, gender, plural
    NOUNS = {"circle": ("Kreis", "m", "Kreise"), "square": ("Quadrat", "n", "Quadrate"),
             "triangle": ("Dreieck", "n", "Dreiecke"), "star": ("Stern", "m", "Sterne"),
             "cross": ("Kreuz", "n", "Kreuze"), "diamond": ("Raute", "f", "Rauten")}
    ADJ = {"small": "klein", "large": "groß", "red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb",
           "purple": "violett", "orange": "orangefarben", "white": "weiß", "black": "schwarz"}
    NUM = {2: "zwei", 3: "drei"}
    POS = {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten", "centre": "in der Mitte"}
    SIDE = {"left": "linke", "right": "rechte"}
    BE = ("ist", "sind")
    # endings after ein/kein (mixed declension), by case and gender
    MIXED = {"nom": {"m": "er", "n": "es", "f": "e"}, "acc": {"m": "en", "n": "es", "f": "e"},
             "dat": {"m": "en", "n": "en", "f": "en"}}
    ARTICLE = {"nom": {"m": "ein", "n": "ein", "f": "eine"}, "acc": {"m": "einen", "n": "ein", "f": "eine"},
               "dat": {"m": "einem", "n": "einem", "f": "einer"}}
    STRONG_PLURAL = {"nom": "e", "acc": "e", "dat": "en"}
    DEFINITE = {"m": "der", "n": "das", "f": "die"}
    TABLES = {"kein": {gender: "k" + article for gender, article in ARTICLE["acc"].items()}}
    UNVERIFIABLE = ("Das Bild wurde von einem Kind gemalt.", "Die Formen sind aus Papier.",
                    "Das Bild wurde gestern gemalt.", "Jemand hat diese Formen mit einer Schere ausgeschnitten.")
    SENTENCES = _forms("""
        located     {np} {pos}
        exists      {Pos} {be} {np}.
        absent      Im Bild gibt es {kein} {noun}.
        q_colour    Welche Farbe hat die Form {pos}? | Welche Farbe haben die Formen {pos}?
        q_shape     Welche Form ist {pos} zu sehen?
        q_exists    Gibt es {np_acc}?
        q_side      Ist {the_noun} {a} oder {b}? | Sind {the_noun} {a} oder {b}?
        q_size      Ist {the_noun} klein oder groß? | Sind {the_noun} klein oder groß?
        s_contains  Das {side} Bild enthält {np_acc}.
        s_both      Beide Bilder enthalten {np_acc}.
        s_more      Im {side}n Bild gibt es mehr {nouns} als im {other}n Bild.
    """)

    def plural_noun(self, shape: str, case: str) -> str:
        plural = self.NOUNS[shape][2]
        return plural + "n" if case == "dat" and not plural.endswith(("n", "s")) else plural

    def noun_phrase(self, p, case="nom"):
        noun, gender, _ = self.NOUNS[p.shape]
        attributes = [self.ADJ[w] for w in (p.size, p.colour) if w]
        if p.count == 1:
            words = [self.ARTICLE[case][gender]] + [a + self.MIXED[case][gender] for a in attributes] + [noun]
        else:
            words = ([self.NUM[p.count]] + [a + self.STRONG_PLURAL[case] for a in attributes]
                     + [self.plural_noun(p.shape, case)])
        return " ".join(words)

    def caption(self, groups, template):
        case = {0: "nom", 1: "nom", 2: "acc", 3: "acc", 4: "dat"}[template]
        listed = " und ".join(f"{self.noun_phrase(p, case)} {self.POS[pos]}" for p, pos in groups)
        if template == 0:
            return listed
        if template == 1:
            return _cap(" und ".join(f"{self.POS[pos]} {self.BE[p.count > 1]} {self.noun_phrase(p)}"
                                     for p, pos in groups)) + "."
        prefix = {2: "Es gibt", 3: "Das Bild zeigt", 4: "Ein Bild mit"}[template]
        return f"{prefix} {listed}."

    def definite(self, shape: str, plural: bool) -> str:
        noun, gender, plural_noun = self.NOUNS[shape]
        return f"die {plural_noun}" if plural else f"{self.DEFINITE[gender]} {noun}"


class French(Grammar):
    code = "fr"
    NOUNS = {"circle": ("cercle", "m", "cercles"), "square": ("carré", "m", "carrés"),
             "triangle": ("triangle", "m", "triangles"), "star": ("étoile", "f", "étoiles"),
             "cross": ("croix", "f", "croix"), "diamond": ("losange", "m", "losanges")}
    # masculine singular, feminine singular, masculine plural, feminine plural
    ADJ = {"small": ("petit", "petite", "petits", "petites"), "large": ("grand", "grande", "grands", "grandes"),
           "red": ("rouge", "rouge", "rouges", "rouges"), "green": ("vert", "verte", "verts", "vertes"),
           "blue": ("bleu", "bleue", "bleus", "bleues"), "yellow": ("jaune", "jaune", "jaunes", "jaunes"),
           "purple": ("violet", "violette", "violets", "violettes"),
           "orange": ("orange", "orange", "orange", "orange"),
           "white": ("blanc", "blanche", "blancs", "blanches"), "black": ("noir", "noire", "noirs", "noires")}
    NUM = {2: "deux", 3: "trois"}
    POS = {"left": "à gauche", "right": "à droite", "top": "en haut", "bottom": "en bas", "centre": "au milieu"}
    SIDE = {"left": "gauche", "right": "droite"}
    UNVERIFIABLE = ("L'image a été dessinée par un enfant.", "Les formes sont en papier.",
                    "L'image a été peinte hier.", "Quelqu'un a découpé ces formes avec des ciseaux.")
    VOWELS = "aeiouéèêàâîôû"
    SENTENCES = _forms("""
        located     {np} {pos}
        exists      Il y a {np} {pos}.
        absent      Il n'y a pas {de_noun} dans l'image.
        q_colour    De quelle couleur est la forme {pos} ? | De quelle couleur sont les formes {pos} ?
        q_shape     Quelle forme y a-t-il {pos} ?
        q_exists    Y a-t-il {np} ?
        q_side      {ask} est {a} ou {b} ? | {ask} sont {a} ou {b} ?
        q_size      {ask} est {small} ou {large} ? | {ask} sont {small} ou {large} ?
        s_contains  L'image de {side} contient {np}.
        s_both      Les deux images contiennent {np}.
        s_more      Il y a plus {de_nouns} dans l'image de {side} que dans l'image de {other}.
    """)

    def adjective(self, word: str, gender: str, plural: bool) -> str:
        return self.ADJ[word][(2 if plural else 0) + (1 if gender == "f" else 0)]

    def noun_phrase(self, p, case="nom"):
        noun, gender, plural_noun = self.NOUNS[p.shape]
        plural = p.count > 1
        words = [self.NUM[p.count] if plural else ("une" if gender == "f" else "un")]
        if p.size:
            words.append(self.adjective(p.size, gender, plural))
        words.append(plural_noun if plural else noun)
        if p.colour:
            words.append(self.adjective(p.colour, gender, plural))
        return " ".join(words)

    def caption(self, groups, template):
        listed = " et ".join(self.located_phrase(p, pos) for p, pos in groups)
        if template == 0:
            return listed
        if template == 1:
            return _cap(" et ".join(f"{self.POS[pos]}, il y a {self.noun_phrase(p)}" for p, pos in groups)) + "."
        prefix = {2: "Il y a", 3: "L'image montre", 4: "Une image avec"}[template]
        return f"{prefix} {listed}."

    def _elided(self, short: str, word: str) -> str:
        """``short`` (``de``, ``que``) before ``word``, elided before a vowel."""
        return short[:-1] + "'" + word if word[0] in self.VOWELS else short + " " + word

    def definite(self, shape: str, plural: bool) -> str:
        noun, gender, plural_noun = self.NOUNS[shape]
        if plural:
            return f"les {plural_noun}"
        if noun[0] in self.VOWELS:
            return "l'" + noun
        return ("la " if gender == "f" else "le ") + noun

    def field_de_noun(self, about: About) -> str:
        return self._elided("de", self.noun_word(about.shape))

    def field_de_nouns(self, about: About) -> str:
        return self._elided("de", self.noun_word(about.shape, plural=True))

    def field_ask(self, about: About) -> str:
        return "Est-ce " + self._elided("que", self.definite(about.shape, about.plural))

    def field_small(self, about: About) -> str:
        return self.adjective("small", self.gender(about.shape), about.plural)

    def field_large(self, about: About) -> str:
        return self.adjective("large", self.gender(about.shape), about.plural)


class Czech(Grammar):
    code = "cs"
    # nominative singular, gender, nominative plural, accusative singular, genitive plural
    NOUNS = {"circle": ("kruh", "m", "kruhy", "kruh", "kruhů"),
             "square": ("čtverec", "m", "čtverce", "čtverec", "čtverců"),
             "triangle": ("trojúhelník", "m", "trojúhelníky", "trojúhelník", "trojúhelníků"),
             "star": ("hvězda", "f", "hvězdy", "hvězdu", "hvězd"),
             "cross": ("kříž", "m", "kříže", "kříž", "křížů"),
             "diamond": ("kosočtverec", "m", "kosočtverce", "kosočtverec", "kosočtverců")}
    STEMS = {"small": "mal", "large": "velk", "red": "červen", "green": "zelen", "blue": "modr", "yellow": "žlut",
             "purple": "fialov", "orange": "oranžov", "white": "bíl", "black": "čern"}
    # hard adjective endings (masculine inanimate / feminine), by case and number
    ENDINGS = {("nom", False): {"m": "ý", "f": "á"}, ("acc", False): {"m": "ý", "f": "ou"},
               ("nom", True): {"m": "é", "f": "é"}, ("acc", True): {"m": "é", "f": "é"}}
    NUM = {2: {"m": "dva", "f": "dvě"}, 3: {"m": "tři", "f": "tři"}}
    POS = {"left": "vlevo", "right": "vpravo", "top": "nahoře", "bottom": "dole", "centre": "uprostřed"}
    SIDE = {"left": ("Levý", "levém"), "right": ("Pravý", "pravém")}  # nominative, locative
    BE = ("je", "jsou")
    TABLES = {"ending": ENDINGS[("nom", False)], "zadny": {"m": "žádný", "f": "žádná"}}
    UNVERIFIABLE = ("Obrázek nakreslilo dítě.", "Tvary jsou z papíru.", "Obrázek byl namalován včera.",
                    "Někdo tyto tvary vystřihl nůžkami.")
    SENTENCES = _forms("""
        located     {np} {pos}
        exists      {Pos} {be} {np}.
        absent      Na obrázku není {zadny} {noun}.
        q_colour    Jakou barvu má tvar {pos}? | Jakou barvu mají tvary {pos}?
        q_shape     Jaký tvar je {pos}?
        q_exists    Je na obrázku {np}?
        q_side      Je {the_noun} {a}, nebo {b}? | Jsou {the_noun} {a}, nebo {b}?
        q_size      Je {the_noun} mal{ending}, nebo velk{ending}? | Jsou {the_noun} malé, nebo velké?
        s_contains  {side[0]} obrázek obsahuje {np_acc}.
        s_both      Na obou obrázcích je {noun}.
        s_more      Na {side[1]} obrázku je více {nouns_genitive} než na {other[1]}.
    """)

    def noun_phrase(self, p, case="nom"):
        nom_sg, gender, nom_pl, acc_sg, _ = self.NOUNS[p.shape]
        plural = p.count > 1
        ending = self.ENDINGS[(case, plural)][gender]
        words = [self.NUM[p.count][gender]] if plural else []
        words += [self.STEMS[w] + ending for w in (p.size, p.colour) if w]
        words.append(nom_pl if plural else (acc_sg if case == "acc" else nom_sg))
        return " ".join(words)

    def caption(self, groups, template):
        if template == 0:
            return " a ".join(self.located_phrase(p, pos) for p, pos in groups)
        if template == 1:
            return _cap(" a ".join(f"{self.POS[pos]} {self.BE[p.count > 1]} {self.noun_phrase(p)}"
                                   for p, pos in groups)) + "."
        if template == 4:
            return _cap(", ".join(f"{self.POS[pos]} vidíme {self.noun_phrase(p, 'acc')}"
                                  for p, pos in groups)) + "."
        listed = " a ".join(f"{self.noun_phrase(p, 'acc')} {self.POS[pos]}" for p, pos in groups)
        prefix = {2: "Na obrázku vidíme", 3: "Obrázek ukazuje"}[template]
        return f"{prefix} {listed}."

    def definite(self, shape: str, plural: bool) -> str:
        return self.noun_word(shape, plural)

    def field_nouns_genitive(self, about: About) -> str:
        return self.NOUNS[about.shape][4]


class Japanese(Grammar):
    code = "ja"
    cjk = True
    NOUNS = {"circle": "丸", "square": "四角", "triangle": "三角", "star": "星", "cross": "十字", "diamond": "ひし形"}
    ADJ = {"small": "小さい", "large": "大きい", "red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い",
           "purple": "紫の", "orange": "オレンジ色の", "white": "白い", "black": "黒い"}
    NUM = {1: "一つ", 2: "二つ", 3: "三つ"}
    POS = SIDE = {"left": "左", "right": "右", "top": "上", "bottom": "下", "centre": "中央"}
    UNVERIFIABLE = ("この絵は子供が描きました。", "図形は紙でできています。", "この絵は昨日描かれました。",
                    "誰かがはさみでこれらの図形を切り抜きました。")
    SENTENCES = _forms("""
        located     {pos}にある{np}
        exists      {pos}に{bare}が{num}あります。
        absent      画像には{noun}がありません。
        q_colour    {pos}の図形は何色ですか？
        q_shape     {pos}にある図形はどんな形ですか？
        q_exists    {bare}はありますか？
        q_side      {noun}は{a}と{b}のどちらにありますか？
        q_size      {noun}は小さいですか、大きいですか？
        s_contains  {side}の画像には{bare}が{num}あります。
        s_both      両方の画像に{noun}があります。
        s_more      {side}の画像には{other}の画像より多くの{noun}があります。
    """)

    def bare(self, p: Phrase) -> str:
        return "".join(self.ADJ[w] for w in (p.size, p.colour) if w) + self.NOUNS[p.shape]

    def noun_phrase(self, p, case="nom"):
        return self.bare(p) if p.count == 1 else f"{self.NUM[p.count]}の{self.bare(p)}"

    def caption(self, groups, template):
        if template == 0:
            return "、".join(self._clause(p, pos) for p, pos in groups)
        if template == 2:
            return "画像の" + "、".join(self._clause(p, pos, "には") for p, pos in groups) + "あります。"
        if template == 4:
            return "描かれていて、".join(self._clause(p, pos) for p, pos in groups) + "描かれています。"
        body = "あり、".join(self._clause(p, pos) for p, pos in groups) + "あります。"
        return body if template == 1 else "この絵では、" + body

    def _clause(self, p: Phrase, position: str, topic: str = "に") -> str:
        return f"{self.POS[position]}{topic}{self.bare(p)}が{self.NUM[p.count]}"


class Chinese(Grammar):
    code = "zh"
    cjk = True
    NOUNS = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形", "cross": "十字形",
             "diamond": "菱形"}
    COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色",
               "white": "白色", "black": "黑色"}
    SIZES = {"small": "小", "large": "大"}
    NUM = {1: "一个", 2: "两个", 3: "三个"}
    POS = SIDE = {"left": "左边", "right": "右边", "top": "上边", "bottom": "下边", "centre": "中间"}
    UNVERIFIABLE = ("这幅画是一个孩子画的。", "这些图形是用纸做的。", "这幅画是昨天画的。", "有人用剪刀剪下了这些图形。")
    SENTENCES = _forms("""
        located     {pos}的{np}
        exists      {pos}有{np}。
        absent      图片里没有{noun}。
        q_colour    {pos}的图形是什么颜色？
        q_shape     {pos}是什么形状？
        q_exists    图片里有{bare}吗？
        q_side      {noun}在{a}还是{b}？
        q_size      {noun}是小的还是大的？
        s_contains  {side}的图片里有{np}。
        s_both      两张图片里都有{noun}。
        s_more      {side}图片里的{noun}比{other}图片里的多。
    """)

    def bare(self, p: Phrase) -> str:
        colour = self.COLOURS[p.colour] + "的" if p.colour else ""
        return colour + (self.SIZES[p.size] if p.size else "") + self.NOUNS[p.shape]

    def noun_phrase(self, p, case="nom"):
        return self.NUM[p.count] + self.bare(p)

    def caption(self, groups, template):
        if template == 0:
            return self._listed(groups, "有")
        if template == 1:
            return "图片" + self._listed(groups, "有") + "。"
        if template == 2:
            return "这张图片的" + self._listed(groups, "是") + "。"
        if template == 3:
            return "画面中，" + self._listed(groups, "有") + "。"
        return self._listed(groups, "画着") + "。"

    def _listed(self, groups: Sequence[Located], verb: str) -> str:
        return "，".join(f"{self.POS[pos]}{verb}{self.noun_phrase(p)}" for p, pos in groups)


GRAMMARS = {g.code: g for g in (English(), German(), French(), Czech(), Japanese(), Chinese())}
SUPPORTED_LANGUAGES = tuple(GRAMMARS)


def grammar(code: str) -> Grammar:
    """The grammar for a language code; a clear error for languages the world cannot write."""
    try:
        return GRAMMARS[code]
    except KeyError:
        raise ValueError(f"synthetic world: no grammar for language {code!r}; "
                         f"supported: {', '.join(SUPPORTED_LANGUAGES)}") from None
