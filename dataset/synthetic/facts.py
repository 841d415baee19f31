"""Language-neutral facts about synthetic scenes: captions, NLI hypotheses, GQA questions, two-image statements.

Each fact is drawn from a scene, carries its label or answer, and is rendered into any language by a grammar.
The labels are computed from the scene (``hypothesis_label``, ``statement_truth``, ``question_answer``) and the
generators check that the label they intended is the one the scene gives.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from dataset.synthetic.language import (AXIS_OF, CAPTION_TEMPLATES, COLOURS, COUNTS, OPPOSITE_SIDE, SHAPES, SIZES,
                                        UNVERIFIABLE_SENTENCES, English, Grammar, Phrase)
from dataset.synthetic.scenes import Scene

NLI_LABELS = ("entailment", "neutral", "contradiction")
GQA_ANSWERS = (("yes", "no") + COLOURS + SHAPES + ("left", "right", "top", "bottom") + SIZES)
ENGLISH = English()


def caption(scene: Scene, g: Grammar, template: int) -> str:
    """A full description of the scene (every group, with count, size, colour, shape and position)."""
    return g.caption([(group.phrase(), group.position) for group in scene.groups], template % CAPTION_TEMPLATES)


# ---------------------------------------------------------------------------------------------------------------
# XVNLI hypotheses

@dataclass(frozen=True)
class Hypothesis:
    """An existence claim ("there are two red circles on the left"), or an absence claim, plus an optional
    unverifiable sentence that makes it neutral."""

    kind: str  # "exists" or "absent"
    phrase: Phrase | None = None
    position: str | None = None
    shape: str | None = None
    extra: int | None = None

    def render(self, g: Grammar) -> str:
        text = g.exists(self.phrase, self.position) if self.kind == "exists" else g.absent(self.shape)
        return text if self.extra is None else g.join_sentences(text, g.unverifiable(self.extra))


def claim_holds(scene: Scene, h: Hypothesis) -> bool:
    """Whether the claim (without its unverifiable sentence) is true of the scene."""
    if h.kind == "absent":
        return scene.count_of(h.shape) == 0
    group = scene.group_at(h.position)
    p = h.phrase
    return (group is not None and group.shape == p.shape and group.count == p.count
            and p.colour in (None, group.colour) and p.size in (None, group.size))


def hypothesis_label(scene: Scene, h: Hypothesis) -> str:
    """entailment / contradiction from the scene; neutral when a true claim carries an unverifiable sentence."""
    if not claim_holds(scene, h):
        return "contradiction"
    return "entailment" if h.extra is None else "neutral"


def _partial(rng: random.Random, group) -> Phrase:
    """The group's phrase, sometimes without its size or colour (still true)."""
    return Phrase(group.count, group.shape, None if rng.random() < 0.3 else group.colour,
                  None if rng.random() < 0.4 else group.size)


def _true_claim(rng: random.Random, scene: Scene) -> Hypothesis:
    absent_shapes = [s for s in SHAPES if scene.count_of(s) == 0]
    if rng.random() < 0.25:
        return Hypothesis("absent", shape=rng.choice(absent_shapes))
    group = rng.choice(scene.groups)
    return Hypothesis("exists", _partial(rng, group), group.position)


def _false_claim(rng: random.Random, scene: Scene) -> Hypothesis:
    group = rng.choice(scene.groups)
    choice = rng.random()
    if choice < 0.2:
        return Hypothesis("absent", shape=group.shape)
    if choice < 0.3 and len(scene.groups) == 1 and group.position in OPPOSITE_SIDE:
        return Hypothesis("exists", _partial(rng, group), OPPOSITE_SIDE[group.position])
    p = _partial(rng, group)
    attribute = rng.choice(["colour", "shape", "size", "count"])
    if attribute == "count" and group.count < max(COUNTS):  # only more than shown: "two" is not false of three
        p = Phrase(rng.randint(group.count + 1, max(COUNTS)), p.shape, p.colour, p.size)
    elif attribute == "size":
        p = Phrase(p.count, p.shape, p.colour, next(s for s in SIZES if s != group.size))
    elif attribute == "shape":
        p = Phrase(p.count, rng.choice([s for s in SHAPES if s != group.shape]), p.colour, p.size)
    else:
        p = Phrase(p.count, p.shape, rng.choice([c for c in COLOURS if c != group.colour]), p.size)
    return Hypothesis("exists", p, group.position)


def scene_hypotheses(rng: random.Random, scene: Scene) -> list[tuple[str, Hypothesis]]:
    """One hypothesis per NLI label, in the order entailment, neutral, contradiction."""
    neutral = _true_claim(rng, scene)
    neutral = Hypothesis(neutral.kind, neutral.phrase, neutral.position, neutral.shape,
                         rng.randrange(UNVERIFIABLE_SENTENCES))
    pairs = [("entailment", _true_claim(rng, scene)), ("neutral", neutral), ("contradiction", _false_claim(rng, scene))]
    for label, h in pairs:
        if hypothesis_label(scene, h) != label:
            raise AssertionError(f"synthetic XVNLI: scene {scene.index}: {h} is not {label}")
    return pairs


# ---------------------------------------------------------------------------------------------------------------
# GQA questions

@dataclass(frozen=True)
class Question:
    """A question about one scene with an English answer from ``GQA_ANSWERS``."""

    kind: str  # colour, shape, exists, side, size
    answer: str
    position: str | None = None
    shape: str | None = None
    colour: str | None = None
    plural: bool = False
    axis: tuple[str, str] | None = None

    def render(self, g: Grammar) -> str:
        if self.kind == "colour":
            return g.q_colour(self.position, self.plural)
        if self.kind == "shape":
            return g.q_shape(self.position)
        if self.kind == "exists":
            return g.q_exists(self.colour, self.shape)
        if self.kind == "side":
            return g.q_side(self.shape, self.plural, self.axis)
        return g.q_size(self.shape, self.plural)

    def full_answer(self) -> str:
        """The English sentence GQA stores as ``fullAnswer``."""
        noun = ENGLISH.noun(self.shape, self.plural) if self.shape else ""
        be = "are" if self.plural else "is"
        if self.kind == "colour":
            return f"The {'shapes' if self.plural else 'shape'} {be} {self.answer}."
        if self.kind == "shape":
            return f"They are {ENGLISH.noun(self.answer, True)}." if self.plural else f"It is a {self.answer}."
        if self.kind == "exists":
            thing = ENGLISH.indefinite(f"{self.colour} {self.shape}")
            return f"Yes, there is {thing}." if self.answer == "yes" else f"No, there is no {self.colour} {self.shape}."
        if self.kind == "side":
            return f"The {noun} {be} {ENGLISH.POS[self.answer]}."
        return f"The {noun} {be} {self.answer}."

    def semantic(self, object_id: int) -> list[dict]:
        """A GQA-style functional program for the question."""
        if self.kind in ("colour", "shape"):
            return [{"operation": "select", "dependencies": [], "argument": f"shape ({object_id})"},
                    {"operation": "filter hposition", "dependencies": [0], "argument": self.position},
                    {"operation": "query", "dependencies": [1], "argument": "color" if self.kind == "colour"
                     else "name"}]
        if self.kind == "exists":
            return [{"operation": "select", "dependencies": [], "argument": f"{self.shape} (-) "},
                    {"operation": "filter color", "dependencies": [0], "argument": self.colour},
                    {"operation": "exist", "dependencies": [1], "argument": "?"}]
        attribute = "hposition" if self.kind == "side" else "size"
        argument = "|".join(self.axis) if self.kind == "side" else "small|large"
        return [{"operation": "select", "dependencies": [], "argument": f"{self.shape} ({object_id})"},
                {"operation": f"choose {attribute}", "dependencies": [0], "argument": argument}]

    def types(self) -> dict:
        structural = {"colour": "query", "shape": "query", "exists": "verify", "side": "choose", "size": "choose"}
        semantic = {"colour": "attr", "shape": "cat", "exists": "obj", "side": "rel", "size": "attr"}
        detailed = {"colour": "queryAttr", "shape": "categoryRel", "exists": "existAttr", "side": "positionChoose",
                    "size": "chooseAttr"}
        return {"detailed": detailed[self.kind], "semantic": semantic[self.kind],
                "structural": structural[self.kind]}


def semantic_str(semantic: list[dict]) -> str:
    """GQA's one-line rendering of a program: ``op: arg [deps]`` joined by ``->``."""
    return "->".join(f"{s['operation']}: {s['argument']}" + (f" {s['dependencies']}" if s["dependencies"] else "")
                     for s in semantic)


def question_answer(scene: Scene, q: Question) -> str:
    """The answer the scene gives to the question."""
    if q.kind in ("colour", "shape"):
        group = scene.group_at(q.position)
        return group.colour if q.kind == "colour" else group.shape
    if q.kind == "exists":
        return "yes" if scene.count_of(q.shape, q.colour) > 0 else "no"
    group = next(g for g in scene.groups if g.shape == q.shape)
    return group.position if q.kind == "side" else group.size


def scene_questions(rng: random.Random, scene: Scene) -> list[Question]:
    """Three to five questions with unambiguous answers."""
    group = rng.choice(scene.groups)
    questions = [Question("colour", group.colour, position=group.position, plural=group.count > 1),
                 Question("shape", group.shape, position=group.position)]
    if rng.random() < 0.5:
        questions.append(Question("exists", "yes", shape=group.shape, colour=group.colour))
    else:
        missing = [(c, s) for c in COLOURS for s in SHAPES if scene.count_of(s, c) == 0]
        colour, shape = rng.choice(missing)
        questions.append(Question("exists", "no", shape=shape, colour=colour))
    unique = [g for g in scene.groups if scene.count_of(g.shape) == g.count]
    if unique:
        target = rng.choice(unique)
        if target.position in AXIS_OF:
            questions.append(Question("side", target.position, shape=target.shape, plural=target.count > 1,
                                      axis=AXIS_OF[target.position]))
        questions.append(Question("size", target.size, shape=target.shape, plural=target.count > 1))
    for q in questions:
        if question_answer(scene, q) != q.answer:
            raise AssertionError(f"synthetic GQA: scene {scene.index}: {q} does not answer {q.answer}")
    return questions


# ---------------------------------------------------------------------------------------------------------------
# NLVR2 / MaRVL statements about two images

@dataclass(frozen=True)
class PairStatement:
    """A statement about a (left, right) pair of scenes."""

    kind: str  # contains, both, more
    side: str | None = None
    phrase: Phrase | None = None
    shape: str | None = None

    def render(self, g: Grammar) -> str:
        if self.kind == "contains":
            return g.s_contains(self.side, self.phrase)
        if self.kind == "both":
            return g.s_both(self.shape)
        return g.s_more(self.side, self.shape)


def statement_truth(left: Scene, right: Scene, s: PairStatement) -> bool:
    """Whether the statement is true of the pair (``contains`` means exactly that many of that colour)."""
    scenes = {"left": left, "right": right}
    if s.kind == "contains":
        return scenes[s.side].count_of(s.phrase.shape, s.phrase.colour) == s.phrase.count
    if s.kind == "both":
        return left.count_of(s.shape) > 0 and right.count_of(s.shape) > 0
    return scenes[s.side].count_of(s.shape) > scenes[OPPOSITE_SIDE[s.side]].count_of(s.shape)


def _contains(rng: random.Random, scene: Scene, side: str, want: bool) -> PairStatement | None:
    if want:  # counts above three (two equal groups) have no number word in the grammars
        groups = [g for g in scene.groups if scene.count_of(g.shape, g.colour) <= max(COUNTS)]
        if not groups:
            return None
        group = rng.choice(groups)
        return PairStatement("contains", side, Phrase(scene.count_of(group.shape, group.colour), group.shape,
                                                      group.colour))
    # false: more objects than shown (possibly none shown); "two" is never claimed of three
    colour, shape = rng.choice([(c, s) for c in COLOURS for s in SHAPES
                                if scene.count_of(s, c) < max(COUNTS)])
    count = rng.randint(max(1, scene.count_of(shape, colour) + 1), max(COUNTS))
    return PairStatement("contains", side, Phrase(count, shape, colour))


def pair_statement(rng: random.Random, left: Scene, right: Scene, want: bool) -> PairStatement:
    """A statement about the pair whose truth is ``want`` (tries several kinds until one fits)."""
    for _ in range(50):
        kind = rng.choice(["contains", "contains", "both", "more"])
        side = rng.choice(["left", "right"])
        if kind == "contains":
            statement = _contains(rng, left if side == "left" else right, side, want)
        else:
            statement = PairStatement(kind, side, shape=rng.choice(SHAPES))
        if statement is not None and statement_truth(left, right, statement) == want:
            return statement
    raise RuntimeError(f"synthetic NLVR: no {want} statement found for scenes {left.index}, {right.index}")


def caption_templates(rng: random.Random, k: int) -> list[int]:
    """``k`` distinct caption templates in random order (k <= CAPTION_TEMPLATES)."""
    return rng.sample(range(CAPTION_TEMPLATES), k)
