"""Scenes of the synthetic world: what is in an image, where, and how it is drawn.

A scene holds one or two groups of identical objects (shape, colour, size, count 1-3) at a position (left, right,
top, bottom, centre; two groups sit on opposite sides), a background colour and texture (plain, stripes, dots, grid,
noise), and the pixel box of every object. Everything random comes from a ``random.Random`` seeded with a string,
so a scene depends only on (seed, split, index), never on hash ordering.
"""
from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from dataset.synthetic.language import COLOURS, COUNTS, POSITIONS, SHAPES, SIZES, Phrase

RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
       "purple": (140, 60, 180), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (25, 25, 25)}
BACKGROUNDS = ((150, 150, 150), (165, 155, 135), (135, 155, 165), (160, 140, 155), (140, 160, 140),
               (120, 120, 130))
TEXTURES = ("plain", "stripes", "dots", "grid", "noise")
TWO_GROUP_LAYOUTS = (("left", "right"), ("top", "bottom"))
# zones as fractions of the image (x0, y0, x1, y1): where a group at that position is drawn
ZONES = {"left": (0.02, 0.05, 0.42, 0.95), "right": (0.58, 0.05, 0.98, 0.95),
         "top": (0.05, 0.02, 0.95, 0.42), "bottom": (0.05, 0.58, 0.95, 0.98),
         "centre": (0.27, 0.27, 0.73, 0.73)}
OBJECT_SIZE = {"small": (0.09, 0.12), "large": (0.17, 0.21)}  # side length as a fraction of the image
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Group:
    """``count`` identical objects (shape, colour, size) drawn at ``position``."""

    shape: str
    colour: str
    size: str
    count: int
    position: str

    def phrase(self) -> Phrase:
        return Phrase(self.count, self.shape, self.colour, self.size)


@dataclass
class Scene:
    """One image's content: groups, background, per-object boxes [x, y, w, h] in pixels and drawing jitter."""

    index: int
    split: str
    groups: tuple[Group, ...]
    background: int
    texture: str
    image_size: int
    boxes: list[list[list[int]]] = field(default_factory=list)  # per group, per object
    drawing: list[list[dict]] = field(default_factory=list)  # per group, per object: centre, side, angle, rgb
    render_seed: int = 0

    def signature(self) -> tuple[Group, ...]:
        """What the captions describe (groups in canonical order); the background is not described."""
        return self.groups

    def count_of(self, shape: str, colour: str | None = None) -> int:
        return sum(g.count for g in self.groups if g.shape == shape and (colour is None or g.colour == colour))

    def group_at(self, position: str) -> Group | None:
        return next((g for g in self.groups if g.position == position), None)

    def metadata(self) -> dict:
        """A JSON-ready description of the scene (written to scenes/<split>.jsonl)."""
        return {"index": self.index, "split": self.split,
                "groups": [{"shape": g.shape, "colour": g.colour, "size": g.size, "count": g.count,
                            "position": g.position, "boxes": boxes}
                           for g, boxes in zip(self.groups, self.boxes)],
                "background": list(BACKGROUNDS[self.background]), "texture": self.texture,
                "image_size": self.image_size}


def scene_rng(seed: int, purpose: str, index: int) -> random.Random:
    """A generator that depends only on its arguments (string seeds are hashed with SHA-512 by ``random``)."""
    return random.Random(f"cclm-synthetic:{seed}:{purpose}:{index}")


def sample_groups(rng: random.Random) -> tuple[Group, ...]:
    """One group anywhere (40%) or two groups on opposite sides (60%), in canonical position order."""
    def group(position: str) -> Group:
        return Group(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), rng.choice(COUNTS), position)

    if rng.random() < 0.4:
        return (group(rng.choice(POSITIONS)),)
    first, second = rng.choice(TWO_GROUP_LAYOUTS)
    return group(first), group(second)


def _cells(position: str, count: int, rng: random.Random) -> list[tuple[float, float, float, float]]:
    """Split a position's zone into ``count`` non-overlapping cells (fractions of the image)."""
    x0, y0, x1, y1 = ZONES[position]
    if position == "centre" and count > 1:
        half_w, half_h = (x1 - x0) / 2, (y1 - y0) / 2
        quads = [(x0 + i * half_w, y0 + j * half_h, x0 + (i + 1) * half_w, y0 + (j + 1) * half_h)
                 for j in range(2) for i in range(2)]
        if count == 2:
            return quads[:2] if rng.random() < 0.5 else quads[2:]
        return sorted(rng.sample(quads, 3))
    if x1 - x0 < y1 - y0:  # tall zone: stack vertically
        step = (y1 - y0) / count
        return [(x0, y0 + k * step, x1, y0 + (k + 1) * step) for k in range(count)]
    step = (x1 - x0) / count
    return [(x0 + k * step, y0, x0 + (k + 1) * step, y1) for k in range(count)]


def _shape_points(shape: str, cx: float, cy: float, side: float, angle: float) -> list[tuple[float, float]]:
    """Polygon (or circle bounding points) of a shape centred at (cx, cy) with the given side length."""
    r = side / 2
    if shape == "circle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 64)[:-1]]
    if shape == "square":
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif shape == "diamond":
        pts = [(0, -r), (0.72 * r, 0), (0, r), (-0.72 * r, 0)]
    elif shape == "triangle":
        pts = [(0, -r), (r, 0.85 * r), (-r, 0.85 * r)]
    elif shape == "star":
        pts = [((r if k % 2 == 0 else 0.45 * r) * math.sin(k * math.pi / 5),
                -(r if k % 2 == 0 else 0.45 * r) * math.cos(k * math.pi / 5)) for k in range(10)]
    elif shape == "cross":
        t = 0.33 * r
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t),
               (-t, -t)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in pts]


def _box_of(points: list[tuple[float, float]], image_size: int) -> list[int]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0 = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
    x1, y1 = min(image_size, math.ceil(max(xs))), min(image_size, math.ceil(max(ys)))
    return [x0, y0, max(1, x1 - x0), max(1, y1 - y0)]


def _jitter_rgb(rgb: tuple[int, int, int], rng: random.Random) -> list[int]:
    return [min(255, max(0, c + rng.randint(-12, 12))) for c in rgb]


def lay_out(scene: Scene, rng: random.Random) -> None:
    """Place every object of every group in its zone; record boxes and drawing parameters."""
    size = scene.image_size
    scene.boxes, scene.drawing = [], []
    for group in scene.groups:
        lo, hi = OBJECT_SIZE[group.size]
        side = rng.uniform(lo, hi)
        boxes, drawing = [], []
        for cx0, cy0, cx1, cy1 in _cells(group.position, group.count, rng):
            slack_x, slack_y = max(0.0, (cx1 - cx0) - side), max(0.0, (cy1 - cy0) - side)
            cx = cx0 + side / 2 + rng.uniform(0, slack_x)
            cy = cy0 + side / 2 + rng.uniform(0, slack_y)
            angle = 0.0 if group.shape in ("square", "diamond") else math.radians(rng.uniform(-12, 12))
            item = {"cx": cx * size, "cy": cy * size, "side": side * size, "angle": angle,
                    "rgb": _jitter_rgb(RGB[group.colour], rng)}
            boxes.append(_box_of(_shape_points(group.shape, item["cx"], item["cy"], item["side"], angle), size))
            drawing.append(item)
        scene.boxes.append(boxes)
        scene.drawing.append(drawing)


def sample_scene(seed: int, split: str, index: int, image_size: int, attempt: int = 0) -> Scene:
    """Draw scene ``index`` of ``split`` (``attempt`` > 0 draws an alternative when a content was rejected)."""
    rng = scene_rng(seed, f"scene:{split}:{attempt}", index)
    scene = Scene(index=index, split=split, groups=sample_groups(rng), background=rng.randrange(len(BACKGROUNDS)),
                  texture=rng.choice(TEXTURES), image_size=image_size, render_seed=rng.getrandbits(32))
    lay_out(scene, rng)
    return scene


def _draw_texture(draw: ImageDraw.ImageDraw, texture: str, base: tuple[int, ...], full: int,
                  rng: random.Random) -> None:
    shade = tuple(max(0, c - 18) for c in base)
    step = full // rng.randint(6, 12)
    if texture == "stripes":
        width = max(1, step // 3)
        for k in range(-full, full, step):
            draw.line([(k, 0), (k + full, full)], fill=shade, width=width)
    elif texture == "grid":
        for k in range(0, full, step):
            draw.line([(k, 0), (k, full)], fill=shade, width=SUPERSAMPLE)
            draw.line([(0, k), (full, k)], fill=shade, width=SUPERSAMPLE)
    elif texture == "dots":
        radius = max(1, step // 6)
        for y in range(step // 2, full, step):
            for x in range(step // 2, full, step):
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=shade)


def render(scene: Scene) -> Image.Image:
    """Draw the scene as an RGB image (supersampled, then reduced, so edges are smooth)."""
    rng = random.Random(scene.render_seed)
    full = scene.image_size * SUPERSAMPLE
    base = BACKGROUNDS[scene.background]
    image = Image.new("RGB", (full, full), base)
    draw = ImageDraw.Draw(image)
    _draw_texture(draw, scene.texture, base, full, rng)
    for group, items in zip(scene.groups, scene.drawing):
        for item in items:
            pts = _shape_points(group.shape, item["cx"] * SUPERSAMPLE, item["cy"] * SUPERSAMPLE,
                                item["side"] * SUPERSAMPLE, item["angle"])
            outline = tuple(max(0, c - 60) for c in item["rgb"])
            draw.polygon(pts, fill=tuple(item["rgb"]), outline=outline)
    image = image.resize((scene.image_size, scene.image_size), Image.Resampling.LANCZOS)
    if scene.texture == "noise":
        noise = np.random.default_rng(scene.render_seed).normal(0, 8, (scene.image_size, scene.image_size, 3))
        pixels = np.asarray(image, dtype=np.int16) + noise.round().astype(np.int16)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image


def encode_jpeg(image: Image.Image) -> bytes:
    """JPEG bytes with fixed options (no metadata, no optimisation pass), so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, subsampling=0, optimize=False, progressive=False)
    return buffer.getvalue()


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes with a fixed compression level and no metadata."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()
