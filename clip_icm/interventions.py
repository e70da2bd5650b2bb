"""Interventions on the variant factors (METHOD.md step 1): image ops and text template banks.

Image interventions are small callables with their strengths in ``__init__`` and an explicit
seed per call: ``op(image, seed) -> image``, the same output for the same (image, seed), no
global random state touched. Each is applied with p = 1 so that every pair really differs,
and none crops or flips (those change content and geometry, not style). Default strengths
(the official code publishes none):

=================  ==========================================================
colour_jitter      brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1
                   (torchvision ColorJitter ranges, ops in a seeded order)
grayscale          luminance, 3 channels
gaussian_blur      odd kernel 9..23, sigma 0.5..2.0 (torchvision's usual 0.1 is
                   raised: up to sigma 0.2 an 8-bit blur returns the image
                   unchanged, so the pair would not differ)
invert             255 - x
posterize          keep 2..4 bits per channel
solarize           invert pixels >= 128
equalize           histogram equalisation per channel
random             one of the selected ops per pair, seeded (as in the paper)
=================  ==========================================================

Text interventions are template banks (format strings with one ``{}`` for the class name):
a pair is (anchor, variant) for one class, so the two texts differ only in the variant words.
"""
from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from clip_icm.errors import InvalidInput
from clip_icm.registry import Registry
from clip_icm.seeding import rng


def _tf():
    """torchvision's functional ops, imported on first use (importing torch costs seconds)."""
    from torchvision.transforms import functional

    return functional


def _plain(value: Any) -> Any:
    """Tuples as lists so that params() serialise the same way everywhere (cache keys)."""
    return list(value) if isinstance(value, tuple) else value


def _span(value: Any) -> str:
    return f"{value[0]}-{value[1]}" if isinstance(value, tuple) else str(value)


class ImageIntervention:
    """Base of the image interventions; subclasses are frozen dataclasses of strengths."""

    name: ClassVar[str] = ""
    random: ClassVar[bool] = False  # does the output depend on the seed?

    def __call__(self, image: Image.Image, seed: int) -> Image.Image:
        if image.mode != "RGB":
            image = image.convert("RGB")
        return self.apply(image, rng("intervention", self.name, int(seed)))

    def apply(self, image: Image.Image, g: np.random.Generator) -> Image.Image:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Name and strengths, for cache keys and reports."""
        return {"name": self.name, **{k: _plain(v) for k, v in asdict(self).items()}}

    @property
    def label(self) -> str:
        strengths = ", ".join(f"{k} {_span(v)}" for k, v in asdict(self).items())
        words = self.name.replace("_", " ")
        return f"{words} ({strengths})" if strengths else words


IMAGE_INTERVENTIONS: Registry[type[ImageIntervention]] = Registry("image intervention")


def _register(cls: type[ImageIntervention]) -> type[ImageIntervention]:
    IMAGE_INTERVENTIONS.register(cls.name, cls)
    return cls


def _check_range(name: str, span: tuple, low: float, high: float) -> None:
    if len(span) != 2 or not low <= span[0] <= span[1] <= high:
        raise InvalidInput(f"{name} must be a (min, max) pair within [{low}, {high}], got {span!r}")


@_register
@dataclass(frozen=True)
class ColourJitter(ImageIntervention):
    """Random brightness, contrast, saturation and hue, applied in a seeded order."""

    name: ClassVar[str] = "colour_jitter"
    random: ClassVar[bool] = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1

    def __post_init__(self) -> None:
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise InvalidInput("colour_jitter strengths must be >= 0 (hue within [0, 0.5])")
        if max(self.brightness, self.contrast, self.saturation, self.hue) == 0:
            raise InvalidInput("colour_jitter with all strengths 0 would not change the image")

    def apply(self, image: Image.Image, g: np.random.Generator) -> Image.Image:
        tf = _tf()
        steps = [
            (tf.adjust_brightness, g.uniform(1 - self.brightness, 1 + self.brightness)),
            (tf.adjust_contrast, g.uniform(1 - self.contrast, 1 + self.contrast)),
            (tf.adjust_saturation, g.uniform(1 - self.saturation, 1 + self.saturation)),
            (tf.adjust_hue, g.uniform(-self.hue, self.hue)),
        ]
        for i in g.permutation(len(steps)):
            op, factor = steps[i]
            image = op(image, float(factor))
        return image


@_register
@dataclass(frozen=True)
class Grayscale(ImageIntervention):
    """Luminance only, kept as 3 channels so the model's input is unchanged in shape."""

    name: ClassVar[str] = "grayscale"

    def apply(self, image: Image.Image, g: np.random.Generator) -> Image.Image:
        return _tf().rgb_to_grayscale(image, num_output_channels=3)


@_register
@dataclass(frozen=True)
class GaussianBlur(ImageIntervention):
    """Gaussian blur with a seeded odd kernel size and sigma."""

    name: ClassVar[str] = "gaussian_blur"
    random: ClassVar[bool] = True
    kernel: tuple[int, int] = (9, 23)
    sigma: tuple[float, float] = (0.5, 2.0)

    def __post_init__(self) -> None:
        _check_range("gaussian_blur kernel", self.kernel, 3, 255)
        if self.kernel[0] % 2 == 0 or self.kernel[1] % 2 == 0:
            raise InvalidInput(f"gaussian_blur kernel sizes must be odd, got {self.kernel!r}")
        _check_range("gaussian_blur sigma", self.sigma, 1e-3, 100.0)

    def apply(self, image: Image.Image, g: np.random.Generator) -> Image.Image:
        k = int(g.choice(np.arange(self.kernel[0], self.kernel[1] + 1, 2)))
        sigma = float(g.uniform(*self.sigma))
        # Reflect padding needs the half-kernel to be smaller than the image side.
        return _separable_blur(image, min(k, 2 * min(image.size) - 1), sigma)


def _separable_blur(image: Image.Image, k: int, sigma: float) -> Image.Image:
    """torchvision's gaussian_blur (same kernel, reflect padding) as two 1-D passes.

    torchvision convolves with the full k x k kernel; two passes give the same image
    (within 1 grey level of rounding) about four times faster at k = 23.
    """
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    t = torch.linspace(-(k - 1) / 2, (k - 1) / 2, k)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(x, [k // 2] * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, k).expand(3, 1, 1, k), groups=3)
    x = F.conv2d(x, kernel.view(1, 1, k, 1).expand(3, 1, k, 1), groups=3)
    return Image.fromarray(x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())


@_register
@dataclass(frozen=True)
class Invert(ImageIntervention):
    """Photographic negative."""

    name: ClassVar[str] = "invert"

    def apply(self, image: Image.Image, g: np.random.Generator) -> Image.Image:
        return _tf().invert(image)


@_register
@dataclass(frozen=True)
class Posterize(ImageIntervention):
    """Keep a seeded number of bits per channel."""

    name: ClassVar[str] = "posterize"
    random: ClassVar[bool] = True
    bits: tuple[int, int] = (2, 4)

    def __post_init__(self) -> None:
        _check_range("posterize bits", self.bits, 1, 7)

    def apply(self, image: Image.Image, g: np.random.Generator) -> Image.Image:
        return _tf().posterize(image, int(g.integers(self.bits[0], self.bits[1] + 1)))


@_register
@dataclass(frozen=True)
class Solarize(ImageIntervention):
    """Invert the pixels at or above a threshold (an image darker than it is unchanged)."""

    name: ClassVar[str] = "solarize"
    threshold: int = 128

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 255:
            raise InvalidInput(f"solarize threshold must be within [0, 255], got {self.threshold}")

    def apply(self, image: Image.Image, g: np.random.Generator) -> Image.Image:
        return _tf().solarize(image, self.threshold)


@_register
@dataclass(frozen=True)
class Equalize(ImageIntervention):
    """Histogram equalisation per channel."""

    name: ClassVar[str] = "equalize"

    def apply(self, image: Image.Image, g: np.random.Generator) -> Image.Image:
        return _tf().equalize(image)


def _single(name: str, strengths: Mapping[str, Any]) -> ImageIntervention:
    cls = IMAGE_INTERVENTIONS.get(name)
    try:
        return cls(**strengths)
    except TypeError:
        valid = ", ".join(f.name for f in fields(cls)) or "(none)"
        raise InvalidInput(f"bad strengths {dict(strengths)!r} for {name!r}; its parameters: {valid}") from None


class RandomIntervention:
    """One of the selected interventions per pair, chosen with the pair's seed (as in the paper).

    strengths: optional ``{op name: {parameter: value}}`` overrides of the defaults.
    """

    name = "random"
    random = True

    def __init__(
        self,
        names: Sequence[str] | None = None,
        strengths: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        names = tuple(IMAGE_INTERVENTIONS.available() if names is None else names)
        if not names or len(set(names)) != len(names):
            raise InvalidInput(f"random intervention needs distinct op names, got {names!r}")
        strengths = dict(strengths or {})
        unused = set(strengths) - set(names)
        if unused:
            raise InvalidInput(f"strengths given for ops not selected: {sorted(unused)}")
        self.ops = tuple(_single(n, strengths.get(n, {})) for n in names)

    def choose(self, seed: int) -> ImageIntervention:
        """The op that pair ``seed`` gets (for reports: which op made which pair)."""
        return self.ops[int(rng("random intervention", int(seed)).integers(len(self.ops)))]

    def __call__(self, image: Image.Image, seed: int) -> Image.Image:
        return self.choose(seed)(image, seed)

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "choices": [op.params() for op in self.ops]}

    @property
    def label(self) -> str:
        return "random one of: " + ", ".join(op.name.replace("_", " ") for op in self.ops)


def make_image_intervention(
    name_or_names: str | Sequence[str], **strengths: Any
) -> ImageIntervention | RandomIntervention:
    """An intervention from a name, a list of names (random one of them), or "random" (all).

    For one op name, ``strengths`` are its parameters (``posterize, bits=(3, 3)``); for several
    names or "random", they are per-op dicts (``gaussian_blur={"sigma": (1.0, 1.0)}``).
    """
    names = [name_or_names] if isinstance(name_or_names, str) else list(name_or_names)
    if names == ["random"]:
        return RandomIntervention(None, strengths)
    if len(names) == 1:
        return _single(names[0], strengths)
    return RandomIntervention(names, strengths)


# ---------------------------------------------------------------- text interventions

DEFAULT_TEMPLATE = "a photo of a {}."


def validate_template(template: str) -> str:
    """Return ``template`` if it has exactly one ``{}`` placeholder, else raise ValueError."""
    if not isinstance(template, str):
        raise InvalidInput(f"a template must be a string, got {type(template).__name__}")
    try:
        found = [f + (f"!{c}" if c else "") + (f":{s}" if s else "")
                 for _, f, s, c in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise InvalidInput(f"template {template!r} is not a valid format string ({e}); write literal braces as {{{{ }}}}") from None
    if found != [""]:
        raise InvalidInput(
            f"template {template!r} must contain exactly one plain '{{}}' for the class name "
            f"(found {len(found)} placeholder(s){': ' + repr(found) if found else ''})"
        )
    return template


@dataclass(frozen=True)
class TextBank:
    """An anchor template and variants of it that change only the variant words."""

    name: str
    anchor: str
    variants: tuple[str, ...]
    description: str = ""

    def __post_init__(self) -> None:
        validate_template(self.anchor)
        if not self.variants:
            raise InvalidInput(f"text bank {self.name!r} needs at least one variant template")
        for t in self.variants:
            validate_template(t)
        if self.anchor in self.variants:
            raise InvalidInput(f"text bank {self.name!r}: the anchor {self.anchor!r} is also a variant (a pair would not differ)")

    @classmethod
    def from_strings(cls, name: str, templates: Iterable[str], anchor: str = DEFAULT_TEMPLATE) -> "TextBank":
        """A user bank from a list of format strings (each with one ``{}``)."""
        if isinstance(templates, str):
            raise InvalidInput(f"text bank {name!r}: give a list of templates, not one string")
        return cls(name, anchor, tuple(dict.fromkeys(templates)))


TEXT_BANKS: Registry[TextBank] = Registry("text bank")
for _bank in (
    TextBank(
        "styles",
        DEFAULT_TEMPLATE,
        (
            "a sketch of a {}.",
            "a painting of a {}.",
            "a cartoon of a {}.",
            "a drawing of a {}.",
            "a clipart of a {}.",
            "a sculpture of a {}.",
            "a tattoo of a {}.",
            "an embroidery of a {}.",
            "a pixel art of a {}.",
            "a black and white photo of a {}.",
        ),
        "rendering style: photo -> sketch, painting, cartoon, ...",
    ),
    TextBank(
        "contexts",
        DEFAULT_TEMPLATE,
        (
            "a photo of a {} on a sandy beach.",
            "a photo of a {} in the snow.",
            "a photo of a {} at night.",
            "a photo of a {} in a forest.",
            "a photo of a {} in the rain.",
            "a photo of a {} in the fog.",
            "a photo of a {} on a city street.",
            "a photo of a {} in a living room.",
            "a photo of a {} on green grass.",
            "a photo of a {} in the desert.",
        ),
        "scene: background, weather and lighting appended to the anchor",
    ),
    TextBank(
        "conditions",
        DEFAULT_TEMPLATE,
        (
            "a bright photo of a {}.",
            "a dark photo of a {}.",
            "a blurry photo of a {}.",
            "a low resolution photo of a {}.",
            "a grainy photo of a {}.",
            "an overexposed photo of a {}.",
            "a close-up photo of a {}.",
            "a distant photo of a {}.",
        ),
        "camera and lighting conditions",
    ),
):
    TEXT_BANKS.register(_bank.name, _bank)


def resolve_banks(banks: Mapping[str, Sequence[str] | TextBank] | Iterable[str | TextBank]) -> list[TextBank]:
    """Banks from registered names, TextBank objects, or ``{name: [templates]}`` (user banks)."""
    if isinstance(banks, str):
        banks = [banks]
    if isinstance(banks, Mapping):
        out = [b if isinstance(b, TextBank) else TextBank.from_strings(n, b) for n, b in banks.items()]
    else:
        out = [b if isinstance(b, TextBank) else TEXT_BANKS.get(b) for b in banks]
    if not out:
        raise InvalidInput("no text banks selected")
    return out


def _variant_plan(pool: list, n: int, g: np.random.Generator) -> list:
    """``n`` items: seeded permutations of the pool, repeated only when n exceeds its size."""
    order: list = []
    while len(order) < n:
        order.extend(pool[i] for i in g.permutation(len(pool)))
    return order[:n]


def make_text_pairs(
    class_names: Sequence[str],
    banks: Mapping[str, Sequence[str] | TextBank] | Iterable[str | TextBank] = ("styles", "contexts"),
    n_pairs_per_class: int = 8,
    seed: int = 0,
) -> tuple[list[str], list[str], np.ndarray]:
    """Text pairs (t, t_do) per class: the bank's anchor and one of its variants.

    Both texts name the same class; they differ only in the variant words. Each class
    draws its variants with a seed derived from its own name, so adding a class leaves the
    others' pairs unchanged. Returns (texts, texts_do, class_index).
    """
    if len(class_names) == 0:
        raise InvalidInput("make_text_pairs needs at least one class name")
    if n_pairs_per_class < 1:
        raise InvalidInput(f"n_pairs_per_class must be at least 1, got {n_pairs_per_class}")
    pool = [(b.anchor, v) for b in resolve_banks(banks) for v in b.variants]
    texts, texts_do, index = [], [], []
    for c, name in enumerate(class_names):
        for anchor, variant in _variant_plan(pool, n_pairs_per_class, rng("text pairs", seed, name)):
            texts.append(anchor.format(name))
            texts_do.append(variant.format(name))
            index.append(c)
    return texts, texts_do, np.array(index, dtype=np.int64)


def text_pair_words(
    class_names: Sequence[str],
    banks: Mapping[str, Sequence[str] | TextBank] | Iterable[str | TextBank] = ("styles", "contexts"),
    n_pairs_per_class: int = 8,
    seed: int = 0,
) -> list[str]:
    """The variant words (:func:`variant_words`) of each pair :func:`make_text_pairs` returns, in its
    order: the same seeded plan, so the two line up row for row."""
    pool = [(b.anchor, v) for b in resolve_banks(banks) for v in b.variants]
    return [variant_words(anchor, variant) for name in class_names
            for anchor, variant in _variant_plan(pool, n_pairs_per_class, rng("text pairs", seed, name))]


def words_of(text: str) -> list[str]:
    """Lower-case words of a text; camelCase and ``_`` / ``-`` / spaces split (domain names use all three)."""
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text.replace("{}", " "))
    return re.findall(r"[a-z0-9]+", text.lower())


def variant_words(anchor: str, variant: str) -> str:
    """The words of ``variant`` that ``anchor`` lacks: what a pair changes ("a sketch of a {}." -> "sketch")."""
    common = set(words_of(anchor))
    return " ".join(w for w in words_of(variant) if w not in common)


def names_domain(words: str, domain: str) -> bool:
    """True when a prompt's variant words contain a word of the domain's name ("art_painting" ->
    art, painting). Words under 3 letters are ignored, so that "a" or "of" never match."""
    return bool({w for w in words_of(domain) if len(w) >= 3} & set(words.split()))


# Orth-Cali's spurious prompts describe the spurious attribute without a class; a template filled
# with this neutral noun is that ("a sketch of a thing."), and keeps the template's grammar.
CLASS_FREE_NOUN = "thing"


def spurious_prompts(
    banks: Mapping[str, Sequence[str] | TextBank] | Iterable[str | TextBank] = ("styles", "contexts"),
) -> tuple[list[str], list[str]]:
    """Class-free prompts with every value of each bank's attribute, and their variant words: the
    anchor's value too ("a photo of a thing.", variant words ""), as debias_vl lists both values of
    each attribute (its waterbirds prompts name land and water backgrounds). Duplicates kept once."""
    pairs = [(b.anchor, t) for b in resolve_banks(banks) for t in (b.anchor, *b.variants)]
    texts = {}
    for anchor, template in pairs:
        texts.setdefault(template.format(CLASS_FREE_NOUN), variant_words(anchor, template))
    return list(texts), list(texts.values())


def attribute_prompts(
    class_names: Sequence[str],
    banks: Mapping[str, Sequence[str] | TextBank] | Iterable[str | TextBank] = ("styles", "contexts"),
) -> tuple[list[str], list[int], list[str], list[str]]:
    """Each class under each template of each bank, the anchor first: (texts, class index, bank name,
    variant words), the anchor's variant words "". Orth-Cali pairs the variants of one class within a
    bank (debias_vl's same-class pairs among prompts that name an attribute value); the anchor is the
    zero-shot query ("a photo of a {}.") and never in a pair, as debias_vl keeps its query prompts out
    of its candidate prompts; the class-free variant subtracts it (variant minus anchor)."""
    texts, labels, groups, words = [], [], [], []
    for bank in resolve_banks(banks):
        for c, name in enumerate(class_names):
            for template in (bank.anchor, *bank.variants):
                texts.append(template.format(name))
                labels.append(c)
                groups.append(bank.name)
                words.append(variant_words(bank.anchor, template))
    return texts, labels, groups, words


def cross_modal_texts(
    labels: Sequence[int],
    class_names: Sequence[str],
    banks: Mapping[str, Sequence[str] | TextBank] | Iterable[str | TextBank] = ("styles", "contexts"),
    seed: int = 0,
) -> list[str]:
    """One variant text t_do per image, for optional cross-modal pairs (f_I(x), f_T(t_do)).

    Such a pair's difference also contains CLIP's modality gap (image and text embeddings
    sit in different cones), so the "consistent" term then penalises the gap direction as
    well as the variant factors. Offer it only as an option and flag the PairSet kind
    "cross-modal".
    """
    pool = [v for b in resolve_banks(banks) for v in b.variants]
    g = rng("cross-modal texts", seed)
    picks = g.integers(len(pool), size=len(labels))
    return [pool[p].format(class_names[int(y)]) for p, y in zip(picks, labels)]


def cross_modal_words(
    n: int,
    banks: Mapping[str, Sequence[str] | TextBank] | Iterable[str | TextBank] = ("styles", "contexts"),
    seed: int = 0,
) -> list[str]:
    """The variant words of the ``n`` texts :func:`cross_modal_texts` picks (the same seeded picks)."""
    pool = [(b.anchor, v) for b in resolve_banks(banks) for v in b.variants]
    picks = rng("cross-modal texts", seed).integers(len(pool), size=n)
    return [variant_words(*pool[p]) for p in picks]


# Prompt sets for zero-shot class embeddings (text_features has one row per template).
ZERO_SHOT_TEMPLATES: Registry[tuple[str, ...]] = Registry("zero-shot template set")
ZERO_SHOT_TEMPLATES.register("single", (DEFAULT_TEMPLATE,))
# The seven templates the CLIP authors selected for ImageNet, plus the default.
ZERO_SHOT_TEMPLATES.register(
    "ensemble",
    (
        DEFAULT_TEMPLATE,
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    ),
)
