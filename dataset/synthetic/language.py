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


class Grammar:
    """Base class: one subclass per language. Methods return finished sentences or phrases."""

    code = ""
    cjk = False

    def join_sentences(self, first: str, second: str) -> str:
        """Two sentences as one text (no space between CJK sentences)."""
        return first + ("" if self.cjk else " ") + second

    # Subclasses implement the following.
    def noun_phrase(self, p: Phrase, case: str = "nom") -> str:
        raise NotImplementedError

    def located_phrase(self, p: Phrase, position: str) -> str:
        raise NotImplementedError

    def caption(self, groups: Sequence[Located], template: int) -> str:
        raise NotImplementedError

    def exists(self, p: Phrase, position: str) -> str:
        raise NotImplementedError

    def absent(self, shape: str) -> str:
        raise NotImplementedError

    def unverifiable(self, k: int) -> str:
        raise NotImplementedError

    def q_colour(self, position: str, plural: bool) -> str:
        raise NotImplementedError

    def q_shape(self, position: str) -> str:
        raise NotImplementedError

    def q_exists(self, colour: str, shape: str) -> str:
        raise NotImplementedError

    def q_side(self, shape: str, plural: bool, axis: tuple[str, str]) -> str:
        raise NotImplementedError

    def q_size(self, shape: str, plural: bool) -> str:
        raise NotImplementedError

    def s_contains(self, side: str, p: Phrase) -> str:
        raise NotImplementedError

    def s_both(self, shape: str) -> str:
        raise NotImplementedError

    def s_more(self, side: str, shape: str) -> str:
        raise NotImplementedError

    def concept(self, shape: str) -> str:
        raise NotImplementedError


class English(Grammar):
    code = "en"
    NUM = {2: "two", 3: "three"}
    POS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "centre": "in the middle"}
    PLURAL = {"cross": "crosses"}
    UNVERIFIABLE = ("The picture was drawn by a child.", "The shapes are made of paper.",
                    "The picture was painted yesterday.", "Someone cut out these shapes with scissors.")

    def noun(self, shape: str, plural: bool) -> str:
        return self.PLURAL.get(shape, shape + "s") if plural else shape

    def indefinite(self, body: str) -> str:
        return ("an " if body[0] in "aeiou" else "a ") + body

    def noun_phrase(self, p, case="nom"):
        body = " ".join([w for w in (p.size, p.colour) if w] + [self.noun(p.shape, p.count > 1)])
        return self.indefinite(body) if p.count == 1 else f"{self.NUM[p.count]} {body}"

    def located_phrase(self, p, position):
        return f"{self.noun_phrase(p)} {self.POS[position]}"

    def _be(self, p: Phrase) -> str:
        return "is" if p.count == 1 else "are"

    def caption(self, groups, template):
        listed = " and ".join(self.located_phrase(p, pos) for p, pos in groups)
        if template == 0:
            return listed
        if template == 1:
            return _cap(" and ".join(f"{self.POS[pos]} there {self._be(p)} {self.noun_phrase(p)}"
                                     for p, pos in groups)) + "."
        if template == 2:
            return f"There {self._be(groups[0][0])} {listed}."
        if template == 3:
            return f"The picture shows {listed}."
        return f"An image with {listed}."

    def exists(self, p, position):
        return f"There {self._be(p)} {self.noun_phrase(p)} {self.POS[position]}."

    def absent(self, shape):
        return f"There is no {shape} in the picture."

    def unverifiable(self, k):
        return self.UNVERIFIABLE[k]

    def q_colour(self, position, plural):
        return f"What colour {'are the shapes' if plural else 'is the shape'} {self.POS[position]}?"

    def q_shape(self, position):
        return f"What shape is {self.POS[position]}?"

    def q_exists(self, colour, shape):
        return f"Is there {self.indefinite(colour + ' ' + shape)}?"

    def q_side(self, shape, plural, axis):
        return f"{'Are' if plural else 'Is'} the {self.noun(shape, plural)} {self.POS[axis[0]]} or {self.POS[axis[1]]}?"

    def q_size(self, shape, plural):
        return f"{'Are' if plural else 'Is'} the {self.noun(shape, plural)} small or large?"

    def s_contains(self, side, p):
        return f"The {side} image contains {self.noun_phrase(p)}."

    def s_both(self, shape):
        return f"Both images contain {self.indefinite(shape)}."

    def s_more(self, side, shape):
        other = OPPOSITE_SIDE[side]
        return f"There are more {self.noun(shape, True)} in the {side} image than in the {other} image."

    def concept(self, shape):
        return shape


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
    # endings after ein/kein (mixed declension), by case and gender
    MIXED = {"nom": {"m": "er", "n": "es", "f": "e"}, "acc": {"m": "en", "n": "es", "f": "e"},
             "dat": {"m": "en", "n": "en", "f": "en"}}
    ARTICLE = {"nom": {"m": "ein", "n": "ein", "f": "eine"}, "acc": {"m": "einen", "n": "ein", "f": "eine"},
               "dat": {"m": "einem", "n": "einem", "f": "einer"}}
    STRONG_PLURAL = {"nom": "e", "acc": "e", "dat": "en"}
    DEFINITE = {"m": "der", "n": "das", "f": "die"}
    UNVERIFIABLE = ("Das Bild wurde von einem Kind gemalt.", "Die Formen sind aus Papier.",
                    "Das Bild wurde gestern gemalt.", "Jemand hat diese Formen mit einer Schere ausgeschnitten.")

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

    def located_phrase(self, p, position):
        return f"{self.noun_phrase(p)} {self.POS[position]}"

    def _be(self, p: Phrase) -> str:
        return "ist" if p.count == 1 else "sind"

    def caption(self, groups, template):
        case = {0: "nom", 1: "nom", 2: "acc", 3: "acc", 4: "dat"}[template]
        listed = " und ".join(f"{self.noun_phrase(p, case)} {self.POS[pos]}" for p, pos in groups)
        if template == 0:
            return listed
        if template == 1:
            return _cap(" und ".join(f"{self.POS[pos]} {self._be(p)} {self.noun_phrase(p)}"
                                     for p, pos in groups)) + "."
        prefix = {2: "Es gibt", 3: "Das Bild zeigt", 4: "Ein Bild mit"}[template]
        return f"{prefix} {listed}."

    def exists(self, p, position):
        return _cap(f"{self.POS[position]} {self._be(p)} {self.noun_phrase(p)}.")

    def absent(self, shape):
        noun, gender, _ = self.NOUNS[shape]
        return f"Im Bild gibt es k{self.ARTICLE['acc'][gender]} {noun}."

    def unverifiable(self, k):
        return self.UNVERIFIABLE[k]

    def q_colour(self, position, plural):
        verb, noun = ("haben", "Formen") if plural else ("hat", "Form")
        return f"Welche Farbe {verb} die {noun} {self.POS[position]}?"

    def q_shape(self, position):
        return f"Welche Form ist {self.POS[position]} zu sehen?"

    def q_exists(self, colour, shape):
        return f"Gibt es {self.noun_phrase(Phrase(1, shape, colour), 'acc')}?"

    def _definite(self, shape: str, plural: bool) -> str:
        noun, gender, plural_noun = self.NOUNS[shape]
        return f"die {plural_noun}" if plural else f"{self.DEFINITE[gender]} {noun}"

    def q_side(self, shape, plural, axis):
        verb = "Sind" if plural else "Ist"
        return f"{verb} {self._definite(shape, plural)} {self.POS[axis[0]]} oder {self.POS[axis[1]]}?"

    def q_size(self, shape, plural):
        return f"{'Sind' if plural else 'Ist'} {self._definite(shape, plural)} klein oder groß?"

    def s_contains(self, side, p):
        adjective = {"left": "linke", "right": "rechte"}[side]
        return f"Das {adjective} Bild enthält {self.noun_phrase(p, 'acc')}."

    def s_both(self, shape):
        return f"Beide Bilder enthalten {self.noun_phrase(Phrase(1, shape), 'acc')}."

    def s_more(self, side, shape):
        this, other = {"left": ("linken", "rechten"), "right": ("rechten", "linken")}[side]
        return f"Im {this} Bild gibt es mehr {self.NOUNS[shape][2]} als im {other} Bild."

    def concept(self, shape):
        return self.NOUNS[shape][0]


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
    UNVERIFIABLE = ("L'image a été dessinée par un enfant.", "Les formes sont en papier.",
                    "L'image a été peinte hier.", "Quelqu'un a découpé ces formes avec des ciseaux.")
    VOWELS = "aeiouéèêàâîôû"

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

    def located_phrase(self, p, position):
        return f"{self.noun_phrase(p)} {self.POS[position]}"

    def _de(self, word: str) -> str:
        return "d'" + word if word[0] in self.VOWELS else "de " + word

    def caption(self, groups, template):
        listed = " et ".join(self.located_phrase(p, pos) for p, pos in groups)
        if template == 0:
            return listed
        if template == 1:
            return _cap(" et ".join(f"{self.POS[pos]}, il y a {self.noun_phrase(p)}" for p, pos in groups)) + "."
        prefix = {2: "Il y a", 3: "L'image montre", 4: "Une image avec"}[template]
        return f"{prefix} {listed}."

    def exists(self, p, position):
        return f"Il y a {self.located_phrase(p, position)}."

    def absent(self, shape):
        return f"Il n'y a pas {self._de(self.NOUNS[shape][0])} dans l'image."

    def unverifiable(self, k):
        return self.UNVERIFIABLE[k]

    def q_colour(self, position, plural):
        subject = "sont les formes" if plural else "est la forme"
        return f"De quelle couleur {subject} {self.POS[position]} ?"

    def q_shape(self, position):
        return f"Quelle forme y a-t-il {self.POS[position]} ?"

    def q_exists(self, colour, shape):
        return f"Y a-t-il {self.noun_phrase(Phrase(1, shape, colour))} ?"

    def _definite(self, shape: str, plural: bool) -> str:
        noun, gender, plural_noun = self.NOUNS[shape]
        if plural:
            return f"les {plural_noun}"
        if noun[0] in self.VOWELS:
            return "l'" + noun
        return ("la " if gender == "f" else "le ") + noun

    def _est_ce_que(self, subject: str) -> str:
        return "Est-ce qu'" + subject if subject[0] in self.VOWELS else "Est-ce que " + subject

    def q_side(self, shape, plural, axis):
        verb = "sont" if plural else "est"
        subject = self._est_ce_que(self._definite(shape, plural))
        return f"{subject} {verb} {self.POS[axis[0]]} ou {self.POS[axis[1]]} ?"

    def q_size(self, shape, plural):
        gender = self.NOUNS[shape][1]
        small, large = (self.adjective(w, gender, plural) for w in ("small", "large"))
        subject = self._est_ce_que(self._definite(shape, plural))
        return f"{subject} {'sont' if plural else 'est'} {small} ou {large} ?"

    def s_contains(self, side, p):
        return f"L'image de {'gauche' if side == 'left' else 'droite'} contient {self.noun_phrase(p)}."

    def s_both(self, shape):
        return f"Les deux images contiennent {self.noun_phrase(Phrase(1, shape))}."

    def s_more(self, side, shape):
        this, other = ("gauche", "droite") if side == "left" else ("droite", "gauche")
        return (f"Il y a plus {self._de(self.NOUNS[shape][2])} dans l'image de {this} "
                f"que dans l'image de {other}.")

    def concept(self, shape):
        return self.NOUNS[shape][0]


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
    UNVERIFIABLE = ("Obrázek nakreslilo dítě.", "Tvary jsou z papíru.", "Obrázek byl namalován včera.",
                    "Někdo tyto tvary vystřihl nůžkami.")

    def noun_phrase(self, p, case="nom"):
        nom_sg, gender, nom_pl, acc_sg, _ = self.NOUNS[p.shape]
        plural = p.count > 1
        ending = self.ENDINGS[(case, plural)][gender]
        words = [self.NUM[p.count][gender]] if plural else []
        words += [self.STEMS[w] + ending for w in (p.size, p.colour) if w]
        words.append(nom_pl if plural else (acc_sg if case == "acc" else nom_sg))
        return " ".join(words)

    def located_phrase(self, p, position):
        return f"{self.noun_phrase(p)} {self.POS[position]}"

    def _be(self, p: Phrase) -> str:
        return "je" if p.count == 1 else "jsou"

    def caption(self, groups, template):
        if template == 0:
            return " a ".join(self.located_phrase(p, pos) for p, pos in groups)
        if template == 1:
            return _cap(" a ".join(f"{self.POS[pos]} {self._be(p)} {self.noun_phrase(p)}"
                                   for p, pos in groups)) + "."
        if template == 4:
            return _cap(", ".join(f"{self.POS[pos]} vidíme {self.noun_phrase(p, 'acc')}"
                                  for p, pos in groups)) + "."
        listed = " a ".join(f"{self.noun_phrase(p, 'acc')} {self.POS[pos]}" for p, pos in groups)
        prefix = {2: "Na obrázku vidíme", 3: "Obrázek ukazuje"}[template]
        return f"{prefix} {listed}."

    def exists(self, p, position):
        return _cap(f"{self.POS[position]} {self._be(p)} {self.noun_phrase(p)}.")

    def absent(self, shape):
        noun, gender = self.NOUNS[shape][:2]
        return f"Na obrázku není žádn{'á' if gender == 'f' else 'ý'} {noun}."

    def unverifiable(self, k):
        return self.UNVERIFIABLE[k]

    def q_colour(self, position, plural):
        verb, noun = ("mají", "tvary") if plural else ("má", "tvar")
        return f"Jakou barvu {verb} {noun} {self.POS[position]}?"

    def q_shape(self, position):
        return f"Jaký tvar je {self.POS[position]}?"

    def q_exists(self, colour, shape):
        return f"Je na obrázku {self.noun_phrase(Phrase(1, shape, colour))}?"

    def _subject(self, shape: str, plural: bool) -> str:
        noun = self.NOUNS[shape][2 if plural else 0]
        return f"{'Jsou' if plural else 'Je'} {noun}"

    def q_side(self, shape, plural, axis):
        return f"{self._subject(shape, plural)} {self.POS[axis[0]]}, nebo {self.POS[axis[1]]}?"

    def q_size(self, shape, plural):
        ending = self.ENDINGS[("nom", plural)][self.NOUNS[shape][1]]
        return f"{self._subject(shape, plural)} mal{ending}, nebo velk{ending}?"

    def s_contains(self, side, p):
        adjective = {"left": "Levý", "right": "Pravý"}[side]
        return f"{adjective} obrázek obsahuje {self.noun_phrase(p, 'acc')}."

    def s_both(self, shape):
        return f"Na obou obrázcích je {self.NOUNS[shape][0]}."

    def s_more(self, side, shape):
        this, other = ("levém", "pravém") if side == "left" else ("pravém", "levém")
        return f"Na {this} obrázku je více {self.NOUNS[shape][4]} než na {other}."

    def concept(self, shape):
        return self.NOUNS[shape][0]


class Japanese(Grammar):
    code = "ja"
    cjk = True
    NOUNS = {"circle": "丸", "square": "四角", "triangle": "三角", "star": "星", "cross": "十字", "diamond": "ひし形"}
    ADJ = {"small": "小さい", "large": "大きい", "red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い",
           "purple": "紫の", "orange": "オレンジ色の", "white": "白い", "black": "黒い"}
    NUM = {1: "一つ", 2: "二つ", 3: "三つ"}
    POS = {"left": "左", "right": "右", "top": "上", "bottom": "下", "centre": "中央"}
    UNVERIFIABLE = ("この絵は子供が描きました。", "図形は紙でできています。", "この絵は昨日描かれました。",
                    "誰かがはさみでこれらの図形を切り抜きました。")

    def bare(self, p: Phrase) -> str:
        return "".join(self.ADJ[w] for w in (p.size, p.colour) if w) + self.NOUNS[p.shape]

    def noun_phrase(self, p, case="nom"):
        return self.bare(p) if p.count == 1 else f"{self.NUM[p.count]}の{self.bare(p)}"

    def located_phrase(self, p, position):
        return f"{self.POS[position]}にある{self.noun_phrase(p)}"

    def _clause(self, p: Phrase, position: str, topic: str = "に") -> str:
        return f"{self.POS[position]}{topic}{self.bare(p)}が{self.NUM[p.count]}"

    def caption(self, groups, template):
        if template == 0:
            return "、".join(self._clause(p, pos) for p, pos in groups)
        if template == 2:
            return "画像の" + "、".join(self._clause(p, pos, "には") for p, pos in groups) + "あります。"
        if template == 4:
            return "描かれていて、".join(self._clause(p, pos) for p, pos in groups) + "描かれています。"
        body = "あり、".join(self._clause(p, pos) for p, pos in groups) + "あります。"
        return body if template == 1 else "この絵では、" + body

    def exists(self, p, position):
        return self._clause(p, position) + "あります。"

    def absent(self, shape):
        return f"画像には{self.NOUNS[shape]}がありません。"

    def unverifiable(self, k):
        return self.UNVERIFIABLE[k]

    def q_colour(self, position, plural):
        return f"{self.POS[position]}の図形は何色ですか？"

    def q_shape(self, position):
        return f"{self.POS[position]}にある図形はどんな形ですか？"

    def q_exists(self, colour, shape):
        return f"{self.ADJ[colour]}{self.NOUNS[shape]}はありますか？"

    def q_side(self, shape, plural, axis):
        return f"{self.NOUNS[shape]}は{self.POS[axis[0]]}と{self.POS[axis[1]]}のどちらにありますか？"

    def q_size(self, shape, plural):
        return f"{self.NOUNS[shape]}は小さいですか、大きいですか？"

    def s_contains(self, side, p):
        return f"{self.POS[side]}の画像には{self.bare(p)}が{self.NUM[p.count]}あります。"

    def s_both(self, shape):
        return f"両方の画像に{self.NOUNS[shape]}があります。"

    def s_more(self, side, shape):
        return (f"{self.POS[side]}の画像には{self.POS[OPPOSITE_SIDE[side]]}の画像より"
                f"多くの{self.NOUNS[shape]}があります。")

    def concept(self, shape):
        return self.NOUNS[shape]


class Chinese(Grammar):
    code = "zh"
    cjk = True
    NOUNS = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形", "cross": "十字形",
             "diamond": "菱形"}
    COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色",
               "white": "白色", "black": "黑色"}
    SIZES = {"small": "小", "large": "大"}
    NUM = {1: "一个", 2: "两个", 3: "三个"}
    POS = {"left": "左边", "right": "右边", "top": "上边", "bottom": "下边", "centre": "中间"}
    UNVERIFIABLE = ("这幅画是一个孩子画的。", "这些图形是用纸做的。", "这幅画是昨天画的。", "有人用剪刀剪下了这些图形。")

    def bare(self, p: Phrase) -> str:
        colour = self.COLOURS[p.colour] + "的" if p.colour else ""
        return colour + (self.SIZES[p.size] if p.size else "") + self.NOUNS[p.shape]

    def noun_phrase(self, p, case="nom"):
        return self.NUM[p.count] + self.bare(p)

    def located_phrase(self, p, position):
        return f"{self.POS[position]}的{self.noun_phrase(p)}"

    def _listed(self, groups: Sequence[Located], verb: str) -> str:
        return "，".join(f"{self.POS[pos]}{verb}{self.noun_phrase(p)}" for p, pos in groups)

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

    def exists(self, p, position):
        return f"{self.POS[position]}有{self.noun_phrase(p)}。"

    def absent(self, shape):
        return f"图片里没有{self.NOUNS[shape]}。"

    def unverifiable(self, k):
        return self.UNVERIFIABLE[k]

    def q_colour(self, position, plural):
        return f"{self.POS[position]}的图形是什么颜色？"

    def q_shape(self, position):
        return f"{self.POS[position]}是什么形状？"

    def q_exists(self, colour, shape):
        return f"图片里有{self.COLOURS[colour]}的{self.NOUNS[shape]}吗？"

    def q_side(self, shape, plural, axis):
        return f"{self.NOUNS[shape]}在{self.POS[axis[0]]}还是{self.POS[axis[1]]}？"

    def q_size(self, shape, plural):
        return f"{self.NOUNS[shape]}是小的还是大的？"

    def s_contains(self, side, p):
        return f"{self.POS[side]}的图片里有{self.noun_phrase(p)}。"

    def s_both(self, shape):
        return f"两张图片里都有{self.NOUNS[shape]}。"

    def s_more(self, side, shape):
        return f"{self.POS[side]}图片里的{self.NOUNS[shape]}比{self.POS[OPPOSITE_SIDE[side]]}图片里的多。"

    def concept(self, shape):
        return self.NOUNS[shape]


GRAMMARS = {g.code: g for g in (English(), German(), French(), Czech(), Japanese(), Chinese())}
SUPPORTED_LANGUAGES = tuple(GRAMMARS)


def grammar(code: str) -> Grammar:
    """The grammar for a language code; a clear error for languages the world cannot write."""
    try:
        return GRAMMARS[code]
    except KeyError:
        raise ValueError(f"synthetic world: no grammar for language {code!r}; "
                         f"supported: {', '.join(SUPPORTED_LANGUAGES)}") from None
