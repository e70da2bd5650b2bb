"""ToyDomains: a procedurally drawn, PACS-like multi-domain world whose true factors are known.

Every image is rendered from a :class:`Factors` record: the invariant factor is the object's
shape (the class); the variant factors are style (the domain), object colour, background,
position, size and rotation, plus ``seed`` for the texture noise. Because the renderer is a
pure function of the factors, a *true* do-intervention is simply a re-render with one factor
changed (:func:`render_counterfactual`), which real data sets cannot offer.

Styles (the four domains, named as in PACS):

- ``photo``: shaded object with a soft drop shadow on a textured gradient background;
- ``art_painting``: saturated palette, brush-stroke clutter over background and object;
- ``cartoon``: flat colours, thick black outline, flat two-band background;
- ``sketch``: pencil lines on paper, no fill. The object colour is *not visible* in a sketch
  (as in PACS sketches), so do(colour) is a null intervention there; the background shows as
  pencil hatching whose direction and spacing identify the scene.

The downstream task (:func:`generate_toydomains`) is ColoredMNIST-like: in the source domains
the object colour and the background agree with the class with probability
``spurious_correlation``; in the target domain that link is reversed (or broken), so a predictor
that uses colour/background as a shortcut loses accuracy there, one that uses shape does not.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clip_icm import background
from clip_icm.errors import InvalidInput
from clip_icm.resources import demo_dir
from clip_icm.seeding import rng

CLASSES = ("circle", "square", "triangle", "star", "cross", "heart", "arrow", "crescent")
STYLES = ("photo", "art_painting", "cartoon", "sketch")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (45, 80, 215),
    "yellow": (240, 205, 35),
    "purple": (135, 55, 185),
    "orange": (245, 130, 25),
    "pink": (245, 125, 185),
    "brown": (120, 75, 35),
}
# (top colour, bottom colour) of each scene; sketches show it as hatching instead.
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "sky": ((120, 180, 245), (225, 240, 255)),
    "grass": ((160, 215, 120), (50, 125, 45)),
    "sand": ((250, 235, 185), (205, 170, 105)),
    "snow": ((250, 250, 255), (195, 210, 225)),
    "night": ((20, 25, 70), (5, 5, 25)),
    "brick": ((175, 80, 60), (120, 50, 40)),
    "water": ((70, 165, 200), (20, 80, 140)),
    "forest": ((40, 95, 50), (85, 60, 35)),
}
# Which colour / background goes with class k in the source domains. Background is offset so
# that the correlated object colour does not vanish into a same-coloured scene.
SPURIOUS_COLOUR = {c: list(COLOURS)[k] for k, c in enumerate(CLASSES)}
SPURIOUS_BACKGROUND = {c: list(BACKGROUNDS)[(k + 3) % len(BACKGROUNDS)] for k, c in enumerate(CLASSES)}
CHANGEABLE = ("colour", "background", "style")
DEFAULT_IMAGE_SIZE = 48
_SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges at small sizes

# The world's words for its styles and scenes: toy-clip's captions were written in them
# (clip_icm.toyclip_train.caption), so prompts and text banks in these words are ones it has read.
STYLE_WORDS = {
    "photo": ("photo", "photograph", "snapshot"),
    "art_painting": ("painting", "oil painting", "artwork"),
    "cartoon": ("cartoon", "cartoon drawing", "clipart"),
    "sketch": ("sketch", "pencil sketch", "pencil drawing"),
}
BACKGROUND_WORDS = {
    "sky": ("in the sky", "against a blue sky"),
    "grass": ("on the grass", "on a lawn"),
    "sand": ("on the sand", "on a beach"),
    "snow": ("in the snow", "on snow"),
    "night": ("at night", "in the dark"),
    "brick": ("in front of a brick wall", "by a brick wall"),
    "water": ("on the water", "above the sea"),
    "forest": ("in the forest", "among trees"),
}


def with_article(word: str) -> str:
    """``word`` with its indefinite article: "an orange", "a star"."""
    return ("an " if word[0] in "aeiou" else "a ") + word


@dataclass(frozen=True)
class Factors:
    """The true generative factors of one image (``cls`` is the invariant one)."""

    cls: str
    style: str
    colour: str
    background: str
    x: float  # object centre, fraction of the width
    y: float
    size: float  # object radius, fraction of the width
    rotation: float  # degrees
    seed: int  # texture noise; kept fixed under counterfactuals

    def __post_init__(self) -> None:
        for name, value, valid in (
            ("cls", self.cls, CLASSES),
            ("style", self.style, STYLES),
            ("colour", self.colour, COLOURS),
            ("background", self.background, BACKGROUNDS),
        ):
            if value not in valid:
                raise InvalidInput(f"unknown {name} {value!r}; valid: {', '.join(valid)}")

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> "Factors":
        """Build from a factors.csv row (dict / pandas Series; extra columns are ignored)."""
        return cls(
            cls=str(row["cls"]), style=str(row["style"]), colour=str(row["colour"]),
            background=str(row["background"]), x=float(row["x"]), y=float(row["y"]),
            size=float(row["size"]), rotation=float(row["rotation"]), seed=int(row["seed"]),
        )


def sample_pose(gen: np.random.Generator) -> dict[str, float]:
    """Position, size and rotation, drawn independently of everything else."""
    return {
        "x": round(float(gen.uniform(0.36, 0.64)), 4),
        "y": round(float(gen.uniform(0.36, 0.64)), 4),
        "size": round(float(gen.uniform(0.22, 0.32)), 4),
        "rotation": round(float(gen.uniform(-30.0, 30.0)), 2),
    }


def sample_factors(gen: np.random.Generator, cls: str | None = None, style: str | None = None) -> Factors:
    """Uniform, independent factors (the pretraining distribution: no class-style/colour link)."""
    return Factors(
        cls=cls or str(gen.choice(CLASSES)),
        style=style or str(gen.choice(STYLES)),
        colour=str(gen.choice(list(COLOURS))),
        background=str(gen.choice(list(BACKGROUNDS))),
        seed=int(gen.integers(2**31 - 1)),
        **sample_pose(gen),
    )


# --------------------------------------------------------------------------- shapes
def _arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in np.linspace(a0, a1, n)]


def _shape(name: str) -> np.ndarray:
    """Outline of a class shape in unit coordinates (about [-1, 1]^2, y pointing down)."""
    if name == "circle":
        pts = _arc(0, 0, 1.0, 0, 2 * math.pi, 48)[:-1]
    elif name == "square":
        pts = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    elif name == "triangle":
        pts = [(math.cos(a), -math.sin(a)) for a in np.radians([90, 210, 330])]
    elif name == "star":
        pts = [
            ((1.0 if i % 2 == 0 else 0.42) * math.cos(a), -(1.0 if i % 2 == 0 else 0.42) * math.sin(a))
            for i, a in enumerate(np.radians(90 + 36 * np.arange(10)))
        ]
    elif name == "cross":
        w = 0.3
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    elif name == "heart":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        hx = 16 * np.sin(t) ** 3 / 17
        hy = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 17
        pts = list(zip(hx, hy + 0.1))
    elif name == "arrow":
        pts = [(-1, -0.25), (0.1, -0.25), (0.1, -0.75), (1, 0), (0.1, 0.75), (0.1, 0.25), (-1, 0.25)]
    elif name == "crescent":
        # outer circle r=1 minus a circle r=0.8 centred at (0.5, 0); they meet at x=0.61
        a = math.atan2(0.79, 0.61)
        b = math.atan2(0.79, 0.11)
        outer = _arc(0, 0, 1.0, a, 2 * math.pi - a, 32)
        inner = _arc(0.5, 0, 0.8, 2 * math.pi - b, b, 24)
        pts = [(px - 0.2, py) for px, py in outer + inner]
    else:
        raise InvalidInput(f"unknown class {name!r}; valid: {', '.join(CLASSES)}")
    return np.asarray(pts, dtype=float)


def _outline(f: Factors, canvas: int, offset: float = 0.0) -> list[tuple[float, float]]:
    """The object's outline in pixels, shifted by ``offset`` canvas widths along both axes (a shadow)."""
    pts = _shape(f.cls)
    a = math.radians(f.rotation)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = pts @ rot.T * (f.size * canvas) + np.array([f.x * canvas, f.y * canvas])
    return list(map(tuple, (pts + offset * canvas).tolist()))


# --------------------------------------------------------------------------- rendering helpers
def _gradient(top: tuple[int, int, int], bottom: tuple[int, int, int], n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    col = (1 - t) * np.asarray(top, float) + t * np.asarray(bottom, float)
    return np.broadcast_to(col, (n, n, 3)).copy()


def _smooth_noise(gen: np.random.Generator, n: int, cells: int = 6) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = Image.fromarray(((gen.random((cells, cells)) * 255)).astype(np.uint8))
    return np.asarray(coarse.resize((n, n), Image.BICUBIC), float) / 127.5 - 1.0


def _mask(f: Factors, n: int, offset: float = 0.0) -> np.ndarray:
    img = Image.new("L", (n, n), 0)
    ImageDraw.Draw(img).polygon(_outline(f, n, offset), fill=255)
    return np.asarray(img, float) / 255.0


def _saturate(rgb: Iterable[float], amount: float) -> tuple[int, int, int]:
    c = np.asarray(list(rgb), float)
    grey = c.mean()
    return tuple(int(v) for v in np.clip(grey + (c - grey) * amount, 0, 255))


def _jitter(gen: np.random.Generator, rgb: Iterable[float], amount: float) -> tuple[int, int, int]:
    # plain floats: the same sums and clipping as NumPy's, without an array per stroke
    noise = gen.normal(0, amount, 3).tolist()
    return tuple(int(min(max(float(c) + d, 0.0), 255.0)) for c, d in zip(rgb, noise))


def _strokes(draw: ImageDraw.ImageDraw, gen: np.random.Generator, n_strokes: int, n: int, palette, width: float) -> None:
    for _ in range(n_strokes):
        x0, y0 = gen.uniform(-0.1, 1.1, 2) * n
        ang = gen.uniform(0, math.pi)
        length = gen.uniform(0.15, 0.45) * n
        x1, y1 = x0 + length * math.cos(ang), y0 + length * math.sin(ang)
        colour = _jitter(gen, palette[int(gen.integers(len(palette)))], 25)
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=max(1, int(width * gen.uniform(0.6, 1.4))))


# --------------------------------------------------------------------------- the four styles
def _photo(f: Factors, n: int, gen: np.random.Generator) -> np.ndarray:
    top, bottom = BACKGROUNDS[f.background]
    img = _gradient(top, bottom, n) * (1 + 0.12 * _smooth_noise(gen, n, 8)[..., None])
    img += gen.normal(0, 6, img.shape)  # sensor-like grain
    shadow = np.asarray(Image.fromarray((_mask(f, n, 0.04) * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(n * 0.03)), float)[..., None] / 255.0
    img *= 1 - 0.45 * shadow
    # light from the top-left: brighter there, darker bottom-right, across the object
    ramp = np.arange(n) / n
    yy, xx = ramp[:, None], ramp[None, :]
    shade = 1.15 - 1.6 * ((xx - f.x) + (yy - f.y)) / 2 / (f.size * 2)
    obj = np.asarray(COLOURS[f.colour], float) * np.clip(shade, 0.55, 1.35)[..., None]
    mask = _mask(f, n)[..., None]
    return img * (1 - mask) + obj * mask


def _art_painting(f: Factors, n: int, gen: np.random.Generator) -> np.ndarray:
    top, bottom = (_saturate(c, 1.5) for c in BACKGROUNDS[f.background])
    canvas = Image.fromarray(np.clip(_gradient(top, bottom, n), 0, 255).astype(np.uint8))
    clutter = [top, bottom, (230, 60, 90), (250, 200, 40), (60, 90, 220), (40, 180, 140)]
    _strokes(ImageDraw.Draw(canvas), gen, 28, n, [top, bottom, top, bottom] + clutter, n * 0.05)
    colour = _saturate(COLOURS[f.colour], 1.6)
    obj = Image.new("RGB", (n, n), colour)
    light = tuple(min(255, int(v * 1.35) + 20) for v in colour)
    dark = tuple(int(v * 0.6) for v in colour)
    _strokes(ImageDraw.Draw(obj), gen, 30, n, [light, dark, colour], n * 0.05)
    mask = Image.fromarray((_mask(f, n) * 255).astype(np.uint8))
    canvas.paste(obj, (0, 0), mask)
    # a few strokes over everything: paint clutter crosses the object's edge
    _strokes(ImageDraw.Draw(canvas), gen, 4, n, clutter, n * 0.035)
    return np.asarray(canvas, float)


def _cartoon(f: Factors, n: int, gen: np.random.Generator) -> np.ndarray:
    top, bottom = (_saturate(c, 1.3) for c in BACKGROUNDS[f.background])
    canvas = Image.new("RGB", (n, n), top)
    horizon = int(n * gen.uniform(0.55, 0.75))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, horizon, n, n], fill=bottom)
    draw.polygon(_outline(f, n), fill=_saturate(COLOURS[f.colour], 1.3), outline=(0, 0, 0), width=max(2, int(n * 0.05)))
    return np.asarray(canvas, float)


def _sketch(f: Factors, n: int, gen: np.random.Generator) -> np.ndarray:
    paper = np.full((n, n, 3), (244.0, 240.0, 228.0)) + gen.normal(0, 4, (n, n, 1))
    canvas = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    # the scene as hatching: direction and spacing are the background's "pencil signature"
    k = list(BACKGROUNDS).index(f.background)
    ang = math.radians(22.5 * k)
    spacing = n * (0.07 if k % 2 == 0 else 0.12)
    dx, dy = math.cos(ang), math.sin(ang)
    for off in np.arange(-1.5 * n, 1.5 * n, spacing):
        cx, cy = n / 2 - dy * off, n / 2 + dx * off
        grey = int(gen.uniform(175, 205))
        draw.line([(cx - dx * 2 * n, cy - dy * 2 * n), (cx + dx * 2 * n, cy + dy * 2 * n)], fill=(grey,) * 3, width=1)
    # clear the paper inside the object, then retrace the outline a few times like a pencil
    mask = Image.fromarray((_mask(f, n) * 255).astype(np.uint8))
    canvas.paste(Image.new("RGB", (n, n), (244, 240, 228)), (0, 0), mask)
    pts = _outline(f, n)
    for _ in range(3):
        wobble = [(x + gen.normal(0, n * 0.008), y + gen.normal(0, n * 0.008)) for x, y in pts]
        grey = int(gen.uniform(40, 90))
        draw.line(wobble + [wobble[0]], fill=(grey,) * 3, width=max(1, int(n * 0.02)), joint="curve")
    return np.asarray(canvas, float)


_STYLE_RENDERERS = {"photo": _photo, "art_painting": _art_painting, "cartoon": _cartoon, "sketch": _sketch}


def render(factors: Factors, image_size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    """Draw one RGB image from its factors. Pure: same factors and size, same pixels."""
    if image_size < 8:
        raise InvalidInput(f"image_size must be >= 8, got {image_size}")
    n = image_size * _SUPERSAMPLE
    # the texture stream depends on the seed only, so a counterfactual keeps its grain/strokes
    gen = rng("toydomains-texture", factors.seed, factors.style)
    pixels = _STYLE_RENDERERS[factors.style](factors, n, gen)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return img.resize((image_size, image_size), Image.LANCZOS)


def counterfactual_factors(factors: Factors, change: str | tuple[str, ...], seed: int = 0) -> Factors:
    """The same image with factor ``change`` set to another value (drawn with ``seed``); a tuple
    of factors changes each in turn (``("colour", "background")``: both re-drawn)."""
    if isinstance(change, tuple):
        for one in change:
            factors = counterfactual_factors(factors, one, seed)
        return factors
    if change not in CHANGEABLE:
        raise InvalidInput(f"unknown change {change!r}; valid: {', '.join(CHANGEABLE)}")
    options = {"colour": list(COLOURS), "background": list(BACKGROUNDS), "style": list(STYLES)}[change]
    others = [o for o in options if o != getattr(factors, change)]  # factor names are field names
    gen = rng("toydomains-counterfactual", change, seed, asdict(factors))
    return replace(factors, **{change: others[int(gen.integers(len(others)))]})


def render_counterfactual(
    row: Factors | Mapping[str, object], change: str | tuple[str, ...], seed: int = 0, image_size: int | None = None
) -> Image.Image:
    """A true do-intervention: the same object and pose, with one variant factor changed.

    This is what the pipeline calls to build a ``PairSet`` of kind ``"true"``:
    for each image i with factors ``row_i`` (a row of ``factors.csv``, see :func:`load_factors`,
    or a :class:`Factors`), x_i is the image on disk and
    ``x_do_i = render_counterfactual(row_i, change, seed)``, then both go through the same
    encoder. ``change`` is one of ``CHANGEABLE`` = ("colour", "background", "style"), or a tuple
    of them (each changed in turn); the new
    value is drawn uniformly from the *other* values with a seed derived from ``seed`` and the
    factors, so it is reproducible. Class, position, size, rotation and texture noise are kept.
    ``image_size`` defaults to the row's ``image_size`` column, else ``DEFAULT_IMAGE_SIZE``.
    Note: in the sketch style the object colour is not drawn, so do(colour) leaves a sketch
    unchanged (a null pair, as a real pencil sketch would be).
    """
    factors = row if isinstance(row, Factors) else Factors.from_row(row)
    if image_size is None:
        image_size = int(row["image_size"]) if isinstance(row, Mapping) and "image_size" in row else DEFAULT_IMAGE_SIZE
    return render(counterfactual_factors(factors, change, seed), image_size)


# --------------------------------------------------------------------------- the data set on disk
FACTOR_COLUMNS = ["path", "domain", "cls", "style", "colour", "background", "x", "y", "size", "rotation",
                  "seed", "image_size", "role"]


def _spurious_value(gen: np.random.Generator, cls: str, table: dict[str, str], options: list[str],
                    strength: float, mode: str) -> str:
    """Value that agrees with the class with probability ``strength`` (or a reversed/broken link)."""
    k = CLASSES.index(cls)
    if mode == "broken":
        return options[int(gen.integers(len(options)))]
    if mode == "reversed":  # the shortcut now points at the *next* class: a trap, not just noise
        linked = table[CLASSES[(k + 1) % len(CLASSES)]]
    else:
        linked = table[cls]
    if gen.random() < strength:
        return linked
    others = [o for o in options if o != linked]
    return others[int(gen.integers(len(others)))]


@dataclass(frozen=True)
class ToyDomainsRecipe:
    """What a downstream ToyDomains data set is drawn from (written to ``recipe.json``).

    In source domains the object colour (and background) of class k is its spurious partner
    (``SPURIOUS_COLOUR`` / ``SPURIOUS_BACKGROUND``) with probability ``spurious_correlation``;
    in ``target_domain`` the partner is the next class's (``target_mode="reversed"``) or the
    value is uniform (``"broken"``). Factors not in ``spurious_factors`` are uniform everywhere.
    """

    n_per_class_per_domain: int = 40
    spurious_correlation: float = 0.9
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = 0
    target_domain: str = "cartoon"
    target_mode: str = "reversed"
    spurious_factors: tuple[str, ...] = ("colour", "background")

    def __post_init__(self) -> None:
        if not 0.0 <= self.spurious_correlation <= 1.0:
            raise InvalidInput(f"spurious_correlation must be in [0, 1], got {self.spurious_correlation}")
        if self.target_domain not in STYLES:
            raise InvalidInput(f"unknown target_domain {self.target_domain!r}; valid: {', '.join(STYLES)}")
        if self.target_mode not in ("reversed", "broken"):
            raise InvalidInput(f"target_mode must be 'reversed' or 'broken', got {self.target_mode!r}")
        bad = set(self.spurious_factors) - {"colour", "background"}
        if bad:
            raise InvalidInput(f"spurious_factors may hold 'colour' and 'background', got {sorted(bad)}")
        if self.n_per_class_per_domain < 1:
            raise InvalidInput(f"n_per_class_per_domain must be >= 1, got {self.n_per_class_per_domain}")

    def to_json(self) -> dict[str, object]:
        """The ``recipe.json`` form (``spurious_factors`` as a list, as JSON reads it back)."""
        return {**asdict(self), "spurious_factors": list(self.spurious_factors)}


def toydomains_factors(recipe: ToyDomainsRecipe) -> list[dict[str, object]]:
    """The factor table of the downstream data set, without rendering (see generate_toydomains)."""
    rows = []
    for domain in STYLES:
        role = "target" if domain == recipe.target_domain else "source"
        mode = recipe.target_mode if role == "target" else "aligned"
        for cls in CLASSES:
            gen = rng("toydomains", recipe.seed, domain, cls)
            for i in range(recipe.n_per_class_per_domain):
                colour = (_spurious_value(gen, cls, SPURIOUS_COLOUR, list(COLOURS), recipe.spurious_correlation, mode)
                          if "colour" in recipe.spurious_factors else str(gen.choice(list(COLOURS))))
                background = (_spurious_value(gen, cls, SPURIOUS_BACKGROUND, list(BACKGROUNDS),
                                              recipe.spurious_correlation, mode)
                              if "background" in recipe.spurious_factors else str(gen.choice(list(BACKGROUNDS))))
                rows.append({
                    "path": f"{domain}/{cls}/{cls}_{i:04d}.png", "domain": domain, "cls": cls, "style": domain,
                    "colour": colour, "background": background, **sample_pose(gen),
                    "seed": int(gen.integers(2**31 - 1)), "image_size": recipe.image_size, "role": role,
                })
    return rows


def generate_toydomains(
    root: str | os.PathLike, recipe: ToyDomainsRecipe = ToyDomainsRecipe(), processes: int = 1,
    **changes: object,
) -> Path:
    """Render the data set of ``recipe`` (with ``changes`` to its fields, e.g. ``seed=1``) into
    the DomainBed layout ``root/<domain>/<class>/*.png``.

    Also writes ``root/factors.csv`` (one row per image: relative ``path``, ``domain``, the true
    factors, ``image_size`` and ``role`` = source/target) and ``root/recipe.json`` (the recipe).
    Deterministic by the recipe's seed (each image by its row's, so ``processes`` > 1, which renders
    in that many processes, draws the same bytes). Writes into a temporary sibling folder and renames
    it, so readers never see half a data set.
    """
    root = Path(root)
    recipe = replace(recipe, **changes)
    rows = toydomains_factors(recipe)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        _draw_in(tmp, rows, recipe.image_size, processes)
        with open(tmp / "factors.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FACTOR_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "recipe.json").write_text(json.dumps(recipe.to_json(), indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _draw(folder: Path, rows: list[dict], image_size: int) -> None:
    for row in rows:
        out = folder / str(row["path"])
        out.parent.mkdir(parents=True, exist_ok=True)
        render(Factors.from_row(row), image_size).save(out, optimize=False)


def _draw_in(folder: Path, rows: list[dict], image_size: int, processes: int) -> None:
    """Every ``processes``-th row in each of ``processes`` processes: this one and fresh ones (spawned,
    not forked: a caller may have threads)."""
    if processes <= 1:
        return _draw(folder, rows, image_size)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(processes - 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        others = [pool.submit(_draw, folder, rows[i::processes], image_size) for i in range(1, processes)]
        _draw(folder, rows[::processes], image_size)
        for drawn in others:
            drawn.result()


def load_factors(root: str | os.PathLike) -> "pandas.DataFrame":  # noqa: F821 (lazy import)
    """``root/factors.csv`` as a DataFrame indexed by the image path relative to ``root``; a file
    of that name that is not the generator's table (another tool's, damaged) is an InvalidInput."""
    return load_factor_table(Path(root) / "factors.csv")


def load_factor_table(path: str | os.PathLike) -> "pandas.DataFrame":  # noqa: F821 (lazy import)
    """A table of the true factors indexed by image path: the generator's factors.csv, or a data set
    manifest (.csv, .parquet, .jsonl) that carries the same columns (:func:`has_factor_columns`)."""
    import pandas as pd

    path = Path(path)
    readers = {".parquet": pd.read_parquet, ".jsonl": lambda p: pd.read_json(p, lines=True)}
    try:
        table = readers.get(path.suffix.lower(), pd.read_csv)(path)
    except (ValueError, UnicodeDecodeError) as e:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise InvalidInput(f"{path} is not a ToyDomains factors table ({e}); {_NOT_FACTORS}") from None
    missing = [c for c in _NEEDED_COLUMNS if c not in table.columns]
    if missing:
        raise InvalidInput(f"{path} is not a ToyDomains factors table: it lacks the column(s) {', '.join(missing)}; "
                           f"{_NOT_FACTORS}")
    return table.set_index("path", drop=False)


def has_factor_columns(manifest: str | os.PathLike) -> bool:
    """True when a data set manifest also holds every factor column of factors.csv (a ToyDomains
    world listed in a table): it then stands for factors.csv (true swaps, counterfactual validation)."""
    from clip_icm.tables import read_table

    try:
        return all(c in read_table(manifest, ()).columns for c in _NEEDED_COLUMNS)
    except InvalidInput:  # the scan says what is wrong with the table
        return False


# What Factors.from_row and the pipeline read of a row; the other columns are optional.
_NEEDED_COLUMNS = ("path", "cls", "style", "colour", "background", "x", "y", "size", "rotation", "seed")
_NOT_FACTORS = ("a folder holding a factors.csv is read as a ToyDomains world (true swaps, usual-look prompts); "
                "rename the file to use the folder as plain images")


# The bundled demo: what `python -m clip_icm evaluate` and the dashboard use by default.
DEMO_RECIPE = ToyDomainsRecipe(
    n_per_class_per_domain=40, spurious_correlation=0.9, image_size=DEFAULT_IMAGE_SIZE, seed=0,
    target_domain="cartoon", target_mode="reversed", spurious_factors=("colour", "background"),
)


def ensure_demo_data(root: str | os.PathLike | None = None, processes: int = 1) -> Path:
    """The demo data set, generated on first use (a few seconds; ``processes``: generate_toydomains')
    into ``root`` (default: the user's cache, :func:`clip_icm.resources.demo_dir`) and reused while
    its recipe matches."""
    root = Path(root) if root is not None else demo_dir()
    if _has_demo(root):
        return root
    try:
        return generate_toydomains(root, DEMO_RECIPE, processes)
    except OSError:
        # another process (dashboard + CLI) finished the same deterministic data set first
        if _has_demo(root):
            return root
        raise


# Processes that draw the demo world in the background: rendering its 1,280 images takes about 4 s on one
# core, and a cold demo page served from its seed store waits for little else (bench/RESULTS.md).
DEMO_DRAW_PROCESSES = max(1, min(4, os.cpu_count() or 1))
_DRAWING: dict[str, subprocess.Popen] = {}  # this process's drawings of the demo world, by folder
_DRAWING_LOCK = threading.Lock()


def draw_demo_data_elsewhere(root: str | os.PathLike | None = None) -> subprocess.Popen | None:
    """Start :func:`ensure_demo_data` in a separate process (rendering in DEMO_DRAW_PROCESSES) when the
    demo world is missing, so that the caller can go on meanwhile; None when the world is there
    already (or no process could start). A caller that asks while this process's drawing of that
    world still runs gets the same process to wait for. A later ensure_demo_data() finds the world
    drawn, or draws it itself if that process failed."""
    root = Path(root) if root is not None else demo_dir()
    if _has_demo(root):
        return None
    with _DRAWING_LOCK:
        drawing = _DRAWING.get(os.fspath(root))
        if drawing is None or drawing.poll() is not None:
            drawing = _DRAWING[os.fspath(root)] = background.start(
                "import sys\nfrom clip_icm.toydomains import ensure_demo_data\n"
                "ensure_demo_data(sys.argv[1], int(sys.argv[2]))", os.fspath(root), str(DEMO_DRAW_PROCESSES))
        return drawing


def _has_demo(root: Path) -> bool:
    try:
        recipe = json.loads((root / "recipe.json").read_text())
    except (OSError, ValueError):  # absent, or damaged (a full disk, an editor): the world is drawn again
        return False
    return (root / "factors.csv").is_file() and recipe == DEMO_RECIPE.to_json()


__all__ = [
    "CLASSES", "STYLES", "COLOURS", "BACKGROUNDS", "CHANGEABLE", "Factors", "render", "render_counterfactual",
    "counterfactual_factors", "generate_toydomains", "toydomains_factors", "load_factors", "ensure_demo_data",
    "draw_demo_data_elsewhere",
    "sample_factors", "text_bank", "usual_look_prompts", "usual_looks", "ToyDomainsRecipe", "DEMO_RECIPE",
]


def usual_look_prompts(factor_rows: list[Mapping[str, object]], class_names: list[str]) -> list[str]:
    """Zero-shot prompts that name each class with its usual look: its most frequent colour and
    scene among ``factor_rows`` (the caller passes source *training* rows only), one prompt per
    class and per style seen in those rows, in toy-clip's caption words:
    "a photo of a red circle in the snow.". Returns T x C prompts, style-major (as
    ``ZERO_SHOT_TEMPLATES`` are laid out); a class absent from the rows is named plainly."""
    styles = [s for s in STYLES if any(r["style"] == s for r in factor_rows)]
    if not styles:
        raise InvalidInput("usual_look_prompts needs at least one factor row")
    looks = usual_looks(factor_rows, class_names)
    named = {c: f"{with_article(looks[c][0])} {c} {BACKGROUND_WORDS[looks[c][1]][0]}" if c in looks
             else with_article(c) for c in class_names}
    return [f"{with_article(STYLE_WORDS[s][0])} of {named[c]}." for s in styles for c in class_names]


def usual_looks(factor_rows: list[Mapping[str, object]], class_names: list[str]) -> dict[str, tuple[str, str]]:
    """Each class's most frequent (colour, background) among ``factor_rows`` (ties: first seen);
    classes absent from the rows are left out."""
    from collections import Counter

    looks = {}
    for cls in class_names:
        rows = [r for r in factor_rows if r["cls"] == cls]
        if rows:
            looks[cls] = (Counter(str(r["colour"]) for r in rows).most_common(1)[0][0],
                          Counter(str(r["background"]) for r in rows).most_common(1)[0][0])
    return looks


def text_bank() -> "TextBank":  # noqa: F821 (lazy import: interventions pulls in torchvision on use)
    """Text interventions in toy-clip's own caption vocabulary (style, scene and colour words).

    The generic banks ("styles", "contexts") use words toy-clip never read in pretraining
    ("sculpture", "city street"), whose embeddings are close to noise; this bank's pairs differ
    only in words it did read. Anchor: "a photo of a {}." as for the other banks.
    """
    from clip_icm.interventions import TextBank
    styles = [f"{with_article(words[0])} of a {{}}." for s, words in STYLE_WORDS.items() if s != "photo"]
    scenes = [f"a photo of a {{}} {words[0]}." for words in BACKGROUND_WORDS.values()]
    colours = [f"a photo of {with_article(c)} {{}}." for c in COLOURS]
    return TextBank("toydomains", "a photo of a {}.", tuple(styles + scenes + colours),
                    "ToyDomains style, scene and colour words (toy-clip's caption vocabulary)")
