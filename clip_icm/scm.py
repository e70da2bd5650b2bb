"""The causal playground: a linear structural causal model where the truth is known.

Latent factors: invariant ``z_inv`` (n_invariant dims) and variant ``z_var``
(n_variant dims). The class y determines z_inv (class mean + unit noise), so
P(y | z_inv) is the same everywhere. z_var is drawn around the mean of a class
c' plus an environment offset; in training environments c' = y with
probability ``spurious_correlation`` (a shortcut), at test time a growing
``shift`` sends c' to the wrong class (pi(y), a fixed derangement) and moves the
offset. Both kinds are mixed into D-dim "image" embeddings by one invertible,
non-orthogonal matrix W (x = W [z_inv; z_var] + noise); class "text" embeddings
use the same W on [class mean; template style]. A do-intervention resamples
z_var with z_inv fixed, so every delta lies in span(W_var).

Ground truth: a projection A ignores z_var iff A W_var = 0, so the true
invariant subspace (as rows of A) is span(W) with span(W_var) removed; it is
spanned by the first n_invariant rows of pinv(W).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from typing import TYPE_CHECKING

import numpy as np

from clip_icm import defaults
from clip_icm.embeddings import EmbeddingSet, PairSet, PromptSet, unit_rows
from clip_icm.errors import InvalidInput
from clip_icm.seeding import rng, seed_hash

# pandas and scikit-learn (through projection) are imported where they are used: the CLI reads
# SCMConfig's defaults for its --help, which must not pay their import (about 2 s).
if TYPE_CHECKING:
    import pandas as pd

PLAYGROUND_METHODS = ("CLIP", "icm", "icm_as_released")  # names in clip_icm.methods (CLIP: the full space)


@dataclass(frozen=True)
class SCMConfig:
    """Knobs of the synthetic world (see the module docstring for the model).

    dim: embedding dimension; None = n_invariant + n_variant (square, invertible W).
    spurious_correlation: P(c' = y) in training environments.
    shift: P(c' = pi(y)) in the shifted (test) environment; 0 = no shift, 1 = reversed.
    noise: std of isotropic observation noise added to every embedding.
    mixing_condition: condition number of W (1 = orthogonal up to scale).
    invariant_separation / variant_separation: norm of the class means in each block
        (unit noise on z_inv, ``variant_noise`` on z_var: the variant shortcut is the
        cleaner signal, so a full-space predictor leans on it).
    domain_offset: std of each environment's offset of z_var.
    n_templates / text_spurious: prompt templates per class; how much of the class's
        typical variant features the class text carries (captions mention context).
    """

    n_invariant: int = 8
    n_variant: int = 8
    dim: int | None = None
    n_classes: int = 4
    spurious_correlation: float = 0.9
    shift: float = 1.0
    noise: float = 0.0
    mixing_condition: float = 5.0
    invariant_separation: float = 2.0
    variant_separation: float = 3.0
    variant_noise: float = 0.5
    domain_offset: float = 1.0
    n_templates: int = 4
    text_spurious: float = 0.5
    seed: int = 0

    @property
    def embedding_dim(self) -> int:
        return self.dim if self.dim is not None else self.n_invariant + self.n_variant

    def __post_init__(self) -> None:
        for name in ("n_invariant", "n_variant", "n_templates"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_classes < 2:
            raise InvalidInput(f"n_classes must be >= 2, got {self.n_classes}")
        if self.embedding_dim < self.n_invariant + self.n_variant:
            raise InvalidInput(
                f"dim={self.embedding_dim} must be >= n_invariant + n_variant = "
                f"{self.n_invariant + self.n_variant} so that the mixing is invertible"
            )
        for name in ("spurious_correlation", "shift"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidInput(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("noise", "variant_noise", "domain_offset", "invariant_separation", "variant_separation"):
            if not getattr(self, name) >= 0:
                raise InvalidInput(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.mixing_condition >= 1:
            raise InvalidInput(f"mixing_condition must be >= 1, got {self.mixing_condition}")


@dataclass(frozen=True)
class Environment:
    """How z_var is drawn: c' = pi(y) w.p. ``reverse``, else c' = y w.p. ``follow``, else uniform."""

    follow: float
    reverse: float
    offset: np.ndarray


@dataclass(frozen=True)
class Sample:
    x: np.ndarray
    y: np.ndarray
    z_inv: np.ndarray
    z_var: np.ndarray


def _random_orthogonal(gen: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(gen.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def _unit_rows(gen: np.random.Generator, n: int, dim: int, scale: float) -> np.ndarray:
    rows = gen.normal(size=(n, dim))
    return scale * unit_rows(rows)


class LinearSCM:
    """One draw of the world for a config: mixing, class means, derangement, template styles."""

    def __init__(self, config: SCMConfig) -> None:
        self.config = config
        gen = rng("scm", config.seed)
        d, D = config.n_invariant + config.n_variant, config.embedding_dim
        singular = np.geomspace(1.0, config.mixing_condition, d)
        self.mixing = _random_orthogonal(gen, D)[:, :d] * singular @ _random_orthogonal(gen, d)  # (D, d)
        self.mu_inv = _unit_rows(gen, config.n_classes, config.n_invariant, config.invariant_separation)
        self.mu_var = _unit_rows(gen, config.n_classes, config.n_variant, config.variant_separation)
        self.derangement = np.roll(np.arange(config.n_classes), 1)
        self.template_styles = gen.normal(size=(config.n_templates, config.n_variant))

    def environment(self, name: str, follow: float, reverse: float = 0.0, offset_scale: float = 1.0) -> Environment:
        offset = rng("scm-offset", self.config.seed, name).normal(size=self.config.n_variant)
        return Environment(follow, reverse, offset_scale * self.config.domain_offset * offset)

    def train_environments(self) -> list[Environment]:
        p = self.config.spurious_correlation
        return [self.environment("train-a", p), self.environment("train-b", p)]

    def test_environment(self, shift: float) -> Environment:
        """Shift both the class->style link (reversal) and the style offset."""
        return self.environment("test", self.config.spurious_correlation, shift, offset_scale=shift)

    def _variant(self, y: np.ndarray, env: Environment, gen: np.random.Generator) -> np.ndarray:
        u = gen.random(len(y))
        c = np.where(u < env.reverse, self.derangement[y], y)
        follows = gen.random(len(y)) < env.follow
        c = np.where((u >= env.reverse) & ~follows, gen.integers(self.config.n_classes, size=len(y)), c)
        return self.mu_var[c] + env.offset + self.config.variant_noise * gen.normal(size=(len(y), self.config.n_variant))

    def embed(self, z_inv: np.ndarray, z_var: np.ndarray, gen: np.random.Generator) -> np.ndarray:
        x = np.c_[z_inv, z_var] @ self.mixing.T
        return x + self.config.noise * gen.normal(size=x.shape) if self.config.noise > 0 else x

    def sample(self, n: int, envs: list[Environment], gen: np.random.Generator) -> Sample:
        """n samples spread evenly over ``envs``."""
        env_of = np.arange(n) % len(envs)
        y = gen.integers(self.config.n_classes, size=n)
        z_inv = self.mu_inv[y] + gen.normal(size=(n, self.config.n_invariant))
        z_var = np.empty((n, self.config.n_variant))
        for i, env in enumerate(envs):
            rows = env_of == i
            z_var[rows] = self._variant(y[rows], env, gen)
        return Sample(self.embed(z_inv, z_var, gen), y, z_inv, z_var)

    def intervene(self, sample: Sample, envs: list[Environment], gen: np.random.Generator) -> np.ndarray:
        """do(z_var := fresh draw, any class, any of ``envs``) with z_inv fixed: the x_do rows."""
        n = len(sample.y)
        random_class = gen.integers(self.config.n_classes, size=n)
        z_var = np.empty((n, self.config.n_variant))
        env_of = gen.integers(len(envs), size=n)
        for i, env in enumerate(envs):
            rows = env_of == i
            z_var[rows] = self._variant(random_class[rows], Environment(1.0, 0.0, env.offset), gen)
        return self.embed(sample.z_inv, z_var, gen)

    def invariant_basis(self) -> np.ndarray:
        """(n_invariant, D) orthonormal rows spanning the true invariant subspace."""
        rows = np.linalg.pinv(self.mixing)[: self.config.n_invariant]
        q, _ = np.linalg.qr(rows.T)
        return q.T

    def text_features(self, gen: np.random.Generator) -> np.ndarray:
        """(T, C, D) class prompts: W [mu_inv[c]; text_spurious * mu_var[c] + style_t]."""
        cfg = self.config
        z_var = cfg.text_spurious * self.mu_var[None, :, :] + self.template_styles[:, None, :]
        z_inv = np.broadcast_to(self.mu_inv, (cfg.n_templates, *self.mu_inv.shape))
        flat = self.embed(z_inv.reshape(-1, cfg.n_invariant), z_var.reshape(-1, cfg.n_variant), gen)
        return flat.reshape(cfg.n_templates, cfg.n_classes, -1)


def principal_angles(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the row spaces of A (k1, D) and B (k2, D).

    scipy's subspace_angles takes the small angles from sines (Knyazev and Argentati), not
    ``arccos`` of the cosines, which cannot resolve an angle below about 2e-8 rad: an exact
    recovery reads ~1e-15, not ~2e-8."""
    from scipy.linalg import subspace_angles

    return np.sort(subspace_angles(np.asarray(A, dtype=np.float64).T, np.asarray(B, dtype=np.float64).T))


def subspace_distance(A: np.ndarray, B: np.ndarray) -> float:
    """The largest principal angle: 0 = same subspace, pi/2 = some direction is missed entirely."""
    return float(principal_angles(A, B).max())


def r2_recovery(features: np.ndarray, factors: np.ndarray) -> float:
    """Held-out R^2 of a linear map (with intercept) from features to factors.

    Fitted on the first half of the rows, scored on the second (rows are i.i.d.),
    averaged over factor columns. Chance level is 0 when factors and features are
    independent.
    """
    half = len(features) // 2
    design = np.c_[np.ones(len(features)), features]
    coef, *_ = np.linalg.lstsq(design[:half], factors[:half], rcond=None)
    residual = factors[half:] - design[half:] @ coef
    total = factors[half:] - factors[half:].mean(axis=0)
    return float(np.mean(1.0 - np.sum(residual**2, axis=0) / np.sum(total**2, axis=0)))


def _classifier(X: np.ndarray, y: np.ndarray) -> object:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500)).fit(X, y)


def run_playground(
    config: SCMConfig = SCMConfig(),
    shifts: tuple[float, ...] = defaults.PLAYGROUND_SHIFTS,
    n_train: int = defaults.PLAYGROUND_N_TRAIN,
    n_test: int = defaults.PLAYGROUND_N_TEST,
    lam: float = defaults.PLAYGROUND_LAM,
    n_components: int | None = None,
) -> pd.DataFrame:
    """Full space vs ICM top-K vs ICM as released, as the test-time shift grows.

    Projections are fitted once on training-environment pairs (true interventions);
    K defaults to the true invariant dimension. R^2 is measured on a sample where z_var
    is drawn independently of the class, so that R^2(z_var) = 0 means "no variant
    information" rather than "no class information".
    """
    import pandas as pd

    from clip_icm import methods

    if not shifts or any(not 0.0 <= s <= 1.0 for s in shifts):
        raise InvalidInput(f"shifts must be a non-empty list of values in [0, 1], got {list(shifts)}")
    if n_train < 2 or n_test < 4:  # r2_recovery fits on half the test rows and scores the other half
        raise InvalidInput(f"n_train must be >= 2 and n_test >= 4, got n_train={n_train}, n_test={n_test}")
    scm = LinearSCM(config)
    gen = rng("playground", config.seed)
    train_envs = scm.train_environments()
    train = scm.sample(n_train, train_envs, gen)
    k = config.n_invariant if n_components is None else n_components
    maps = {}
    for method in PLAYGROUND_METHODS:
        spec = methods.spec(method)
        maps[method] = None if spec.estimator is None else spec.build(k, lam).fit(
            train.x, scm.intervene(train, train_envs, gen))
    id_test = scm.sample(n_test, train_envs, gen)
    decorrelated = scm.sample(n_test, [scm.environment(name, 0.0) for name in ("train-a", "train-b")], gen)
    ood = {s: scm.sample(n_test, [scm.test_environment(s)], gen) for s in shifts}
    truth = scm.invariant_basis()
    rows = []
    for method, proj in maps.items():
        project = (lambda x: x) if proj is None else proj.transform
        clf = _classifier(project(train.x), train.y)
        features = project(decorrelated.x)
        fixed = {
            "id_accuracy": clf.score(project(id_test.x), id_test.y),
            "max_angle": float("nan") if proj is None else subspace_distance(proj.components_, truth),
            "r2_inv": r2_recovery(features, decorrelated.z_inv),
            "r2_var": r2_recovery(features, decorrelated.z_var),
        }
        for s in shifts:
            ood_acc = clf.score(project(ood[s].x), ood[s].y)
            rows.append({"shift": s, "method": method, "ood_accuracy": ood_acc, **fixed})
    table = pd.DataFrame(rows)
    table["ood_gap"] = table["id_accuracy"] - table["ood_accuracy"]
    cols = ["shift", "method", "id_accuracy", "ood_accuracy", "ood_gap", "max_angle", "r2_inv", "r2_var"]
    return table[cols].sort_values(["shift", "method"], key=_method_order).reset_index(drop=True)


def _method_order(column: pd.Series) -> pd.Series:
    return column.map(PLAYGROUND_METHODS.index) if column.name == "method" else column


def make_embedding_set(
    config: SCMConfig = SCMConfig(),
    n_per_domain: int = 200,
    domains: tuple[str, ...] = ("photo", "art_painting", "cartoon", "sketch"),
    val_fraction: float = 0.3,
) -> EmbeddingSet:
    """A synthetic multi-domain EmbeddingSet, so that evaluation and the dashboard run without a model.

    Every domain has its own style offset; all but the last keep the training-time
    shortcut, the last is the shifted one (``config.shift``). Pairs: "true" (do on z_var of
    the TRAINING rows only, as the pipeline builds pairs; the new z_var comes from the
    environments of the source domains, never from the shifted last one) and "text" (same
    class, two templates). The validation rows' true do-interventions are ``intervened_val``
    (scored by the interventional selection rule, never fitted). ``spurious`` holds each template's class-free embedding
    (W [0; style_t]), Orth-Cali's spurious prompts; ``attribute_prompts`` every class under every template.
    """
    if len(domains) < 2 or len(set(domains)) != len(domains):
        raise InvalidInput(f"need at least 2 distinct domain names, got {list(domains)}")
    if n_per_domain < 2 or not 0.0 < val_fraction < 1.0:
        raise InvalidInput("n_per_domain must be >= 2 and val_fraction in (0, 1)")
    scm = LinearSCM(config)
    gen = rng("scm-embeddings", config.seed, n_per_domain, domains)
    p = config.spurious_correlation
    envs = [scm.environment(d, p) for d in domains[:-1]]
    envs.append(scm.environment(domains[-1], p, config.shift))
    samples = [scm.sample(n_per_domain, [env], gen) for env in envs]
    x = np.concatenate([s.x for s in samples])
    labels = np.concatenate([s.y for s in samples])
    x_do = np.concatenate([scm.intervene(s, envs[:-1], gen) for s in samples])
    domain_col = np.repeat(np.array(domains), n_per_domain)
    is_train = np.concatenate([gen.permutation(n_per_domain) >= round(val_fraction * n_per_domain) for _ in domains])
    text = scm.text_features(gen)
    train, val = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    return EmbeddingSet(
        features=x,
        labels=labels,
        domains=domain_col,
        is_train=is_train,
        class_names=[f"class {c}" for c in range(config.n_classes)],
        text_features=text,
        pairs=[PairSet("true", "true", x[train], x_do[train], domain_col[train], labels[train])] + _text_pairs(text),
        paths=np.full(len(x), ""),
        key=f"scm-{seed_hash(asdict(config), n_per_domain, domains, val_fraction):08x}",
        intervened_val=[PairSet("do(z_var) of validation rows", "intervened validation", x[val], x_do[val],
                                domain_col[val], labels[val])],
        spurious=_class_free(scm, gen),
        attribute_prompts=_attribute_prompts(text),
        origin={"dataset": "synthetic SCM", "folder": "", "model": "(no model)"},
    )


def _attribute_prompts(text: np.ndarray) -> PromptSet:
    """Every class under every template, template 0 the anchor (the query; variant words ""), the
    others its variants: Orth-Cali's prompts, one bank ("templates")."""
    T, C, _ = text.shape
    words = np.array(["" if t == 0 else f"template {t}" for t in range(T) for _ in range(C)])
    order = np.arange(T * C).reshape(T, C).T.ravel()  # class-major, anchor first, as the pipeline lists them
    texts = np.array([f"template {t}, class {c}" for t in range(T) for c in range(C)])
    labels = np.tile(np.arange(C), T)
    flat = text.reshape(T * C, -1)
    return PromptSet(texts[order], flat[order], words[order], labels[order], np.full(T * C, "templates")[order])


def _class_free(scm: LinearSCM, gen: np.random.Generator) -> PromptSet:
    """Each template's style without a class: W [0; style_t] (the synthetic spurious prompts)."""
    z_inv = np.zeros((scm.config.n_templates, scm.config.n_invariant))
    names = np.array([f"template {t}" for t in range(scm.config.n_templates)])
    return PromptSet(names, scm.embed(z_inv, scm.template_styles, gen), names)


def _text_pairs(text: np.ndarray) -> list[PairSet]:
    """Every class under every ordered pair of different templates: deltas are pure style."""
    pairs = [(a, b) for a in range(len(text)) for b in range(len(text)) if a != b]
    if not pairs:
        return []
    i, j = np.array(pairs).T
    labels = np.tile(np.arange(text.shape[1]), len(pairs))  # row order of text[i].reshape: pair, then class
    return [PairSet("text", "text", text[i].reshape(-1, text.shape[2]), text[j].reshape(-1, text.shape[2]),
                    labels=labels)]
