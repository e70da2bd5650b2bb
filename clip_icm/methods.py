"""One spec per method: everything the library and both front ends need to know about it.

DomainBed keeps one ``hparams_registry`` entry per algorithm and scikit-learn one estimator with
its ``get_params``; here a :class:`MethodSpec` names the estimator and its fixed arguments, which
constructor arguments K and lam set, how evaluation treats it (fits on image pairs or on text,
zero-shot scoring, what the probe trains on), its label and colour, and whether it has an
eigenvalue spectrum. Evaluation, selection, figures, the Diagnostics page, the CLI and the
playground read the specs; adding a method is adding one entry to :data:`SPECS`.

Estimators (and the grid's defaults) are imported on first use, so that ``python -m clip_icm
--help`` can list the methods without importing numpy, scipy and scikit-learn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from clip_icm.errors import InvalidInput
from clip_icm.registry import Registry

if TYPE_CHECKING:
    from clip_icm.projection import LinearProjection

# The hyperparameters a front end sets, by the estimator constructor argument each one fills.
HYPERPARAMETERS = ("n_components", "lam", "lam_mode")


@dataclass(frozen=True)
class MethodSpec:
    """How one method is built, evaluated and shown.

    estimator:        class name in :mod:`clip_icm.projection`; None for the full space (CLIP)
    fixed:            constructor arguments the method fixes, as ((name, value), ...)
    hyperparameters:  constructor arguments filled from K / lam / lam scale (:data:`HYPERPARAMETERS`);
                      the sliders, the selection grid and the sweep act on these only
    fits_on:          "pairs" (the interventional pair sets) or "text" (calibrates the class text only,
                      images untouched: no projected image space, so no linear probe)
    zero_shot:        "cosine" (projected class text re-normalised) or "dot" (the released code's
                      plain dot product, kept for its named variant)
    probe_rows:       "source" (the source training rows) or "source+intervened" (plus the intervened
                      images of the pair sets, with their source image's class: data augmentation)
    spectrum:         which eigenvalues of M are kept, for the spectrum plot: "top", "as_released"
                      (the K smallest), or None (no spectrum of M to show)
    spurious:         for a text method (Orth-Cali), what its P0 removes: "prompts" (the embeddings of
                      the class-free spurious prompts, as debias_vl) or "class_free" (per bank template,
                      the class-averaged difference variant prompt minus anchor prompt)
    choice_rank:      where the method stands among the models the model choice (clip_icm.choice)
                      weighs, simplest first; None: not a candidate
    """

    name: str
    label: str
    description: str
    colour: str
    estimator: str | None
    fixed: tuple[tuple[str, object], ...] = ()
    hyperparameters: tuple[str, ...] = ()
    fits_on: str = "pairs"
    zero_shot: str = "cosine"
    probe_rows: str = "source"
    spectrum: str | None = None
    spurious: str = "prompts"
    choice_rank: int | None = None

    def __post_init__(self) -> None:
        for field, value, valid in (("fits_on", self.fits_on, ("pairs", "text")),
                                    ("zero_shot", self.zero_shot, ("cosine", "dot")),
                                    ("probe_rows", self.probe_rows, ("source", "source+intervened")),
                                    ("spectrum", self.spectrum, (None, "top", "as_released")),
                                    ("spurious", self.spurious, ("prompts", "class_free"))):
            if value not in valid:
                raise InvalidInput(f"method {self.name!r}: {field} must be one of {valid}, got {value!r}")
        unknown = set(self.hyperparameters) - set(HYPERPARAMETERS)
        if unknown:
            raise InvalidInput(f"method {self.name!r}: unknown hyperparameters {sorted(unknown)}; "
                               f"available: {', '.join(HYPERPARAMETERS)}")

    @property
    def tunes_k(self) -> bool:
        return "n_components" in self.hyperparameters

    @property
    def tunes_lam(self) -> bool:
        return "lam" in self.hyperparameters

    @property
    def text_only(self) -> bool:
        return self.fits_on == "text"

    @property
    def choice_heads(self) -> tuple[str, ...]:
        """The heads the model choice weighs: an augmented probe changes the probe only (its zero-shot
        is that of the space it probes, another candidate's), and a text-only method has no probe."""
        if self.probe_rows == "source+intervened":
            return ("linear probe",)
        return ("zero-shot",) if self.text_only else ("zero-shot", "linear probe")

    def build(self, K: int, lam: float, lam_mode: str = "absolute") -> LinearProjection:
        """The unfitted estimator at K / lam (each passed only where the method takes it)."""
        if self.estimator is None:
            raise InvalidInput(f"{self.label} is the full space: it has no projection to build")
        from clip_icm import projection

        given = dict(zip(HYPERPARAMETERS, (K, lam, lam_mode)))
        return getattr(projection, self.estimator)(
            **dict(self.fixed), **{name: given[name] for name in self.hyperparameters})

    def grid(self, dim: int, lam_mode: str, K: int, lam: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The K x lam grid that selection and the sweep search (defaults.grid); a hyperparameter
        the method does not take stays at the given K or lam (one value), so no cell repeats another."""
        from clip_icm import defaults

        Ks, lams = defaults.grid(dim, lam_mode)
        return (Ks if self.tunes_k else (K,)), (lams if self.tunes_lam else (lam,))


# Display order: the method, its released variant, then the baselines.
SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("icm", "ICM", "Invariant Causal Mechanism: the top-K eigenvectors of Z'Z - lam D'D",
               "#1f77b4", "InvariantProjection", (("selection", "top"),), HYPERPARAMETERS, spectrum="top",
               choice_rank=2),
    MethodSpec("icm_as_released", "ICM (as released)",
               "the slice the released code keeps (the K smallest eigenvectors), scored as it scores zero-shot",
               "#d62728", "InvariantProjection", (("selection", "as_released"),), HYPERPARAMETERS, zero_shot="dot",
               spectrum="as_released"),
    MethodSpec("pca", "PCA", "the top-K eigenvectors of Z'Z (ICM with lam = 0): dimension reduction alone",
               "#2ca02c", "PCAProjection", (), ("n_components",), spectrum="top"),
    MethodSpec("null_space", "Null space",
               "the K directions that move least under intervention (ICM's lam -> infinity limit)",
               "#9467bd", "NullSpaceProjection", (), ("n_components",)),
    MethodSpec("orth_cali", "Orth-Cali",
               "Orth-Cali as published (Chuang et al. 2023, built as debias_vl builds it): calibrates the class "
               "text from the text banks' class-free prompts and same-class prompt pairs",
               "#ff7f0e", "OrthCaliProjection", fits_on="text"),
    MethodSpec("orth_cali_class_free", "Orth-Cali (class-free directions)",
               "Orth-Cali whose P0 removes class-averaged differences (variant prompt minus anchor prompt) "
               "instead of the class-free prompts themselves",
               "#bcbd22", "OrthCaliProjection", fits_on="text", spurious="class_free"),
    MethodSpec("augmentation", "Augmentation",
               "no projection; the probe also trains on the intervened images (what a practitioner tries first)",
               "#8c564b", "IdentityProjection", probe_rows="source+intervened", choice_rank=1),
)
FULL_SPACE = MethodSpec("CLIP", "CLIP", "the full embedding space, no projection", "#7f7f7f", None, choice_rank=0)

METHODS: Registry[MethodSpec] = Registry("projection method")
for _spec in SPECS:
    METHODS.register(_spec.name, _spec)
ALL_METHODS: tuple[str, ...] = tuple(spec.name for spec in SPECS)


def spec(name: str) -> MethodSpec:
    """The spec of a method name, the full space (CLIP) included; UnknownName lists the valid ones."""
    return FULL_SPACE if name == FULL_SPACE.name else METHODS.get(name)


def label(name: str) -> str:
    """A method's display label; a name that is no method is shown as it is."""
    return spec(name).label if name == FULL_SPACE.name or name in METHODS else name


def make_projection(method: str, n_components: int, lam: float, lam_mode: str = "absolute") -> LinearProjection:
    """An unfitted estimator for a registered method name (UnknownName lists the valid ones)."""
    return METHODS.get(method).build(n_components, lam, lam_mode)
