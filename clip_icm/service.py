"""The thin service layer the dashboard calls: pipeline + evaluation + reduce + figures.

Everything here is plain Python on plain values (no Streamlit), so the dashboard stays a
shell of widgets and caches, and every step can be tested without a browser. Errors a user
can cause (a missing folder, weights not on disk, an empty domain) come out as
:class:`ServiceError` with a message meant to be shown as is.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from clip_icm import defaults, evaluation, methods, reduce
from clip_icm.embeddings import EmbeddingSet, unit_rows
from clip_icm.errors import InvalidInput, UserError
from clip_icm.hashing import digest
from clip_icm.seeding import rng

SOURCES = {
    "demo": "Bundled demo (ToyDomains + toy-clip)",
    "folder": "DomainBed-layout folder",
    "synthetic": "Synthetic SCM (no images)",
}
DATA_ROOTS_VAR = "CLIP_ICM_DATA_ROOTS"
# What a user can get wrong (the project's UserError), plus what the machine refuses (a missing or
# unreadable file, a full disk: OSError); anything else is a bug and surfaces as one.
USER_ERRORS = (UserError, OSError)
Progress = Callable[[str, int, int], None]


class ServiceError(UserError):
    """A problem with the user's choices, with a message fit to show in the page."""


def content_key(*parts: object) -> str:
    """A short stable key of printable parts (frozen configs print all their fields)."""
    return digest(repr(parts))[:16]


# ---------------------------------------------------------------- embeddings

@dataclass(frozen=True)
class InterventionChoice:
    """Which interventional pairs to build (plain values, straight from the controls).

    image_ops: image operations, one drawn at random per pair when several (as in the paper);
    strengths: ((op, ((param, value), ...)), ...); text_banks: ((bank name, (template, ...)), ...);
    true_swaps: factors to re-render (bundled world only); n_pairs: image pairs (0 = one per image);
    look_prompts: also embed the "usual source look" zero-shot prompts (bundled world only);
    intervened_val: which intervened validation sets (pipeline.INTERVENED_VAL_KINDS; None = automatic).
    """

    image_ops: tuple[str, ...] = defaults.IMAGE_OPS
    strengths: tuple = ()
    text_banks: tuple = ()
    true_swaps: tuple[str, ...] = ()
    cross_modal: bool = False
    n_pairs: int = 0
    look_prompts: bool = False
    intervened_val: tuple[str, ...] | None = None
    seed: int = 0


@dataclass(frozen=True)
class EmbeddingRequest:
    """Where the embeddings come from, as plain values: turned into the pipeline's configs
    only when loading, so that the controls need not import torch."""

    source: str = "demo"
    root: str = ""
    dataset: str | None = None
    max_per_domain: int | None = None
    model: str = "toy-clip"
    pretrained: str | None = None
    device: str = "auto"
    precision: str = "auto"
    interventions: InterventionChoice = InterventionChoice()
    synthetic: object = None  # scm.SCMConfig for the synthetic source
    n_per_domain: int = 150

    @property
    def key(self) -> str:
        return content_key(self)

    @property
    def model_label(self) -> str:
        if self.source == "synthetic":
            return "synthetic SCM"
        return self.model + (f" / {self.pretrained}" if self.pretrained else "")


def load_embeddings(request: EmbeddingRequest, progress: Progress | None = None,
                    notes: list[str] | None = None) -> EmbeddingSet:
    """Embeddings for a request; user errors become :class:`ServiceError`. What the scan
    noted (a domain without readable images, a class missing from a domain) and the files
    skipped are appended to ``notes`` when given, so that the page can show them. They come
    from the scan's report, not from capturing warnings: ``warnings.catch_warnings`` is
    process-wide, so it would also catch (and mute) another thread's (the UMAP warm-up's)."""
    found: list[str] = []
    emb = _load(request, progress, found)
    if notes is not None:
        notes.extend(found)
    return emb


def _load(request: EmbeddingRequest, progress: Progress | None, notes: list[str]) -> EmbeddingSet:
    if request.source not in SOURCES:
        raise ServiceError(f"unknown data source {request.source!r}; choose one of {', '.join(SOURCES)}")
    if request.source == "folder" and not request.root:
        raise ServiceError("Enter the folder that holds the DomainBed data sets.")
    try:
        if request.source == "synthetic":
            return _synthetic(request)
        return _pipeline_embeddings(request, progress, notes)
    except ServiceError:
        raise
    except USER_ERRORS as e:
        raise ServiceError(f"Could not build the embeddings: {_message(e)}") from e


def _pipeline_embeddings(request: EmbeddingRequest, progress: Progress | None, notes: list[str]) -> EmbeddingSet:
    from clip_icm import backend, pipeline  # lazy: pulls in torch

    root = None
    if request.source == "folder":
        path = folder_path(request.root, data_roots(exposed=False))
        if request.dataset is None and too_broad(path):
            raise ServiceError(too_broad(path))
        root = str(path)
    data = pipeline.DataConfig(root=root, dataset=request.dataset, max_per_domain=request.max_per_domain)
    model = backend.ModelConfig(request.model, request.pretrained, request.device, request.precision)
    run = pipeline.embed_dataset(data, model, intervention_config(request.interventions), progress=progress)
    notes.extend(run.scan.notes)
    if run.skipped:
        examples = "; ".join(f"{Path(p).name}: {why}" for p, why in run.skipped[:3])
        notes.append(f"{len(run.skipped)} file(s) skipped (e.g. {examples}).")
    return run.embeddings


def text_banks(bundled_world: bool = False) -> dict:
    """The text banks a user can pick: the registered ones, plus the bundled world's own
    vocabulary (toy-clip never read the generic banks' words) when that is the data."""
    from clip_icm.interventions import TEXT_BANKS

    banks = {name: TEXT_BANKS.get(name) for name in TEXT_BANKS.available()}
    if bundled_world:
        from clip_icm.toydomains import text_bank

        banks["toydomains"] = text_bank()
    return banks


def intervention_config(choice: InterventionChoice):
    """The pipeline's InterventionConfig; an edited bank becomes a user bank (anchor "a photo of a {}.")."""
    from clip_icm.interventions import TextBank
    from clip_icm.pipeline import InterventionConfig

    known = text_banks(bundled_world=True)
    banks = []
    for name, templates in choice.text_banks:
        same = name in known and tuple(templates) == known[name].variants
        banks.append(known[name] if same else TextBank.from_strings(name, templates))

    return InterventionConfig(image=tuple(choice.image_ops), text_banks=tuple(banks), true_swaps=choice.true_swaps,
                              cross_modal=choice.cross_modal, n_pairs=choice.n_pairs or None, seed=choice.seed,
                              strengths=choice.strengths, look_prompts=choice.look_prompts,
                              intervened_val=choice.intervened_val)


def _synthetic(request: EmbeddingRequest) -> EmbeddingSet:
    from clip_icm import scm

    return scm.make_embedding_set(request.synthetic or scm.SCMConfig(), n_per_domain=request.n_per_domain)


def _message(error: BaseException) -> str:
    return str(error) or type(error).__name__


def default_target(emb: EmbeddingSet, source: str) -> str:
    """The domain to hold out first: the demo's shifted domain, else the last one
    (the synthetic world shifts its last domain)."""
    if source == "demo":
        from clip_icm.toydomains import DEMO_RECIPE

        if DEMO_RECIPE.target_domain in emb.domain_names:
            return DEMO_RECIPE.target_domain
    return emb.domain_names[-1]


def restrict_domains(emb: EmbeddingSet, keep: tuple[str, ...]) -> EmbeddingSet:
    """The EmbeddingSet without the domains not in ``keep`` (rows and pairs)."""
    for domain in emb.domain_names:
        if domain not in keep:
            emb = evaluation.without_domain(emb, domain)
    return emb


def describe(emb: EmbeddingSet) -> dict[str, object]:
    """Counts for a one-line summary of an EmbeddingSet."""
    return {
        "images": len(emb.labels), "dim": emb.features.shape[1], "classes": len(emb.class_names),
        "domains": len(emb.domain_names), "pairs": {p.name: len(p.z) for p in emb.pairs},
    }


# ---------------------------------------------------------------- fit and evaluation

@dataclass(frozen=True)
class Fit:
    """A fitted projection and its diagnostics (small: K x D, pickles cheaply into caches)."""

    method: str
    K: int
    lam: float
    lam_mode: str
    target: str
    projection: object
    invariance_ratio: float
    full_ratio: float
    ratio_pairs: str
    # ||Delta A|| / ||(Z - mean Z) A||: CLIP's large common mean flatters the uncentred ratio
    centred_ratio: float = float("nan")

    def transform(self, X: np.ndarray) -> np.ndarray:
        return self.projection.transform(X)

    @property
    def eigenvalues(self) -> np.ndarray | None:
        return getattr(self.projection, "eigenvalues_", None)


def eval_config(K: int, lam: float, lam_mode: str = defaults.LAM_MODE, methods: tuple[str, ...] = ("icm",),
                pair_sets: tuple[str, ...] | None = None, prompts: str = "classes", eval_protocol: str = "ours",
                keep_target_styles: bool = False) -> evaluation.EvalConfig:
    return evaluation.EvalConfig(n_components=int(K), lam=float(lam), lam_mode=lam_mode, methods=tuple(methods),
                                 pair_sets=tuple(pair_sets) if pair_sets is not None else None, prompts=prompts,
                                 protocol=eval_protocol, keep_target_styles=keep_target_styles)


def _guard(what: str, call: Callable, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except USER_ERRORS as e:
        raise ServiceError(f"{what}: {_message(e)}") from e


def fit(emb: EmbeddingSet, target: str, method: str, config: evaluation.EvalConfig) -> Fit:
    """Fit ``method`` on the pairs outside ``target``; the invariance ratio is measured on
    held-out pairs (the target domain's image pairs) when there are any."""
    projection = _guard("Could not fit the projection", evaluation.fit_projection, emb, target, method, config)
    Z, Z_do, which = _ratio_pairs(emb, target, config)
    return Fit(
        method=method, K=config.n_components, lam=config.lam, lam_mode=config.lam_mode, target=target,
        projection=projection, invariance_ratio=projection.invariance_ratio(Z, Z_do),
        full_ratio=float(np.linalg.norm(Z - Z_do) / max(np.linalg.norm(Z), 1e-12)), ratio_pairs=which,
        centred_ratio=projection.invariance_ratio(Z, Z_do, centred=True),
    )


def _ratio_pairs(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig) -> tuple[np.ndarray, np.ndarray, str]:
    names = config.pair_sets if config.pair_sets is not None else [p.name for p in emb.pairs]
    sets = [emb.pair_set(n) for n in names]
    held = [(p.z[p.domains == target], p.z_do[p.domains == target]) for p in sets if p.domains is not None]
    held = [h for h in held if len(h[0])]
    if held:
        return np.concatenate([h[0] for h in held]), np.concatenate([h[1] for h in held]), "held-out target-domain pairs"
    return np.concatenate([p.z for p in sets]), np.concatenate([p.z_do for p in sets]), "training pairs (no held-out pairs)"


def evaluate(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig) -> pd.DataFrame:
    """evaluation.evaluate_split, with user errors as ServiceError."""
    return _guard("Could not evaluate", evaluation.evaluate_split, emb, target, config)


def evaluate_open_class(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig) -> pd.DataFrame:
    """evaluation.evaluate_open_class (seeded 50/50 class split), with user errors as ServiceError."""
    return _guard("Could not evaluate the open-class task", evaluation.evaluate_open_class, emb, target, config,
                  config.seed)


def open_class_wide(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    """Open-class rows as one row per method, columns (domain, base / new / harmonic mean)."""
    table = frame.assign(method=frame["method"].map(method_label),
                         domain=[f"{d} (target)" if d == target else d for d in frame["domain"]])
    wide = table.pivot_table(index="method", columns=["domain", "classes"], values="accuracy", sort=False,
                             dropna=False)
    return wide.rename_axis(None)


def method_label(method: str) -> str:
    """A method's display label (MethodSpec.label)."""
    return methods.label(method)


def accuracy_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Merge per-method evaluation frames (each repeats the CLIP rows), label each
    method/protocol, and add the change vs CLIP with the same protocol on the same domain."""
    table = pd.concat(frames, ignore_index=True).drop_duplicates(["domain", "method", "protocol"])
    table["label"] = [f"{method_label(m)} {p}" for m, p in zip(table["method"], table["protocol"])]
    clip = table[table["method"] == evaluation.FULL_SPACE].set_index(["domain", "protocol"])["accuracy"]
    base = [clip.get((d, p), np.nan) for d, p in zip(table["domain"], table["protocol"])]
    table["change_vs_clip"] = table["accuracy"] - np.asarray(base, dtype=float)
    order = {m: i for i, m in enumerate([evaluation.FULL_SPACE, *methods.ALL_METHODS])}
    table["_order"] = table["method"].map(lambda m: order.get(m, len(order)))
    table = table.sort_values(["_order", "protocol"], kind="stable").drop(columns="_order")
    return table.reset_index(drop=True)


def accuracy_wide(table: pd.DataFrame, target: str) -> pd.DataFrame:
    """One row per method/protocol, one column per domain (target marked), plus target change vs CLIP."""
    wide = table.pivot_table(index="label", columns="domain", values="accuracy", sort=False,
                             dropna=False)  # keeps Orth-Cali's n/a probe row
    wide = wide[list(dict.fromkeys(table["domain"]))]
    change = table[table["domain"] == target].set_index("label")["change_vs_clip"]
    wide.columns = [f"{d} (target)" if d == target else d for d in wide.columns]
    wide["target change vs CLIP"] = change.reindex(wide.index)
    return wide.rename_axis(None)


def choose_hyperparameters(emb: EmbeddingSet, target: str, method: str, config: evaluation.EvalConfig,
                           Ks: tuple[int, ...], lams: tuple[float, ...], scoring: str = "source_val",
                           protocol: str = evaluation.LINEAR_PROBE) -> tuple[int, float, pd.DataFrame]:
    """(K, lam) chosen by ``scoring`` on source data only (the target is removed first)."""
    return _guard("Could not choose K and lam", evaluation.select_hyperparameters,
                  emb, target, method, Ks, lams, config, scoring, protocol)


def full_space_score(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig, scoring: str,
                     protocol: str = evaluation.LINEAR_PROBE) -> float:
    """The selection rule's score for CLIP in the full space (to compare with the chosen setting's)."""
    return _guard("Could not score the full space", evaluation.source_score,
                  emb, target, evaluation.FULL_SPACE, config, scoring, protocol)


def sweep(emb: EmbeddingSet, target: str, method: str, config: evaluation.EvalConfig, Ks: tuple[int, ...],
          lams: tuple[float, ...]) -> pd.DataFrame:
    """K x lam grid of source-validation and (peeking, for illustration) target accuracy."""
    return _guard("Sweep failed", evaluation.sweep, emb, target, method, Ks, lams, config)


def projection_defaults(source: str, dim: int) -> dict:
    """Starting settings, as the CLI's (clip_icm.defaults). The demo opens on its story: K and lam
    chosen by the interventional rule, fitted on the true colour and scene swaps, PCA and
    augmentation beside ICM. Elsewhere: the fixed K and relative lam, no selection."""
    common = {"K": defaults.k(dim), "lam": defaults.LAM, "lam_mode": defaults.LAM_MODE}
    if source == "demo":
        return {**common, "selection": defaults.DEMO_SELECTION, "pair_sets": defaults.DEMO_PAIR_SETS,
                "baselines": defaults.DEMO_BASELINES}
    return {**common, "selection": None, "pair_sets": None, "baselines": ()}


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(true class, predicted class) counts."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def target_confusions(emb: EmbeddingSet, target: str, method: str, config: evaluation.EvalConfig,
                      protocol: str = evaluation.LINEAR_PROBE) -> dict[str, np.ndarray]:
    """Confusion matrices on the target domain: CLIP's full space and ``method``'s, one protocol."""
    rows = emb.domains == target
    out = {}
    for name in (evaluation.FULL_SPACE, method):
        predicted = _guard("Could not predict", evaluation.predict_all, emb, target, name, config)[protocol]
        out[name] = confusion(emb.labels[rows], predicted[rows], len(emb.class_names))
    return out


@dataclass(frozen=True)
class PairExample:
    """One interventional pair to show: two images (PIL) or two captions."""

    caption: str
    before: object
    after: object


def pair_examples(request: EmbeddingRequest, emb: EmbeddingSet, pair_set: str, n: int = 4) -> list[PairExample]:
    """A few pairs of ``pair_set`` (or of an intervened validation set) as the pipeline makes
    them: images of different classes with their intervened versions, or prompt pairs."""
    from clip_icm.pipeline import intervened_image

    cfg = intervention_config(request.interventions)
    if pair_set.startswith("text:"):
        return _text_examples(cfg, emb, pair_set, n)
    if emb.paths is None or not str(emb.paths[0]):
        raise ServiceError(f"{pair_set}: these embeddings have no image files to show")
    pool = ~emb.is_train if any(c.name == pair_set for c in emb.intervened_val) else emb.is_train
    rows = [int(np.flatnonzero(pool & (emb.labels == c))[0]) for c in np.unique(emb.labels[pool])][:n]
    return [PairExample(f"{emb.class_names[emb.labels[r]]} / {emb.domains[r]}",
                        thumbnail(emb, r, size=112),
                        _guard(f"Could not show {pair_set}", intervened_image, str(emb.paths[r]), pair_set, cfg)
                        .resize((112, 112)))
            for r in rows]


def _text_examples(cfg, emb: EmbeddingSet, pair_set: str, n: int) -> list[PairExample]:
    from clip_icm.interventions import make_text_pairs, resolve_banks

    banks = [b for b in resolve_banks(cfg.text_banks) if f"text:{b.name}" == pair_set]
    if not banks:
        raise ServiceError(f"no text pair set {pair_set!r} in these interventions")
    texts, texts_do, index = make_text_pairs(emb.class_names, banks, cfg.text_pairs_per_class, cfg.seed)
    first = [int(np.flatnonzero(index == c)[0]) for c in range(len(emb.class_names))][:n]  # one pair per class
    return [PairExample(emb.class_names[index[i]], texts[i], texts_do[i]) for i in first]


# ---------------------------------------------------------------- points, layouts, neighbours

MAP_POINTS = 20_000  # every point on the maps up to this many; a stratified subsample above


def plot_ids(emb: EmbeddingSet, max_points: int = MAP_POINTS, seed: int = 0) -> np.ndarray:
    """Row ids to plot (sorted): all of them, or ``max_points`` drawn so that every (domain,
    class) group keeps its share of the rows (largest remainders; seeded)."""
    n = len(emb.labels)
    if max_points < 1:
        raise InvalidInput(f"max_points must be at least 1, got {max_points}")
    if n <= max_points:
        return np.arange(n)
    groups = {}
    for i, key in enumerate(zip(emb.domains.tolist(), emb.labels.tolist())):
        groups.setdefault(key, []).append(i)
    shares = {key: len(rows) * max_points / n for key, rows in groups.items()}
    counts = {key: int(share) for key, share in shares.items()}
    by_remainder = sorted(groups, key=lambda key: counts[key] - shares[key])  # largest remainder first
    for key in by_remainder[:max_points - sum(counts.values())]:
        counts[key] += 1
    gen = rng("plot sample", seed)
    picked = [gen.choice(rows, size=counts[key], replace=False) for key, rows in groups.items() if counts[key]]
    return np.sort(np.concatenate(picked))


def predictions(emb: EmbeddingSet, projection: object = None, method: str = "icm") -> np.ndarray:
    """Zero-shot class index per row in the full space (no projection) or a projected one
    (a text-only method, Orth-Cali, calibrates the class text and leaves the images as they are)."""
    spec = methods.spec(method)
    if spec.text_only:
        return evaluation.zero_shot_predict_text_only(emb.features, emb.text_features, projection)
    renormalise = spec.zero_shot == "cosine"
    return evaluation.zero_shot_predict(emb.features, emb.text_features, projection, renormalise)


def point_table(emb: EmbeddingSet, ids: np.ndarray, target: str, predicted: np.ndarray) -> pd.DataFrame:
    """The hover/selection metadata of the plotted rows (columns of figures.POINT_COLUMNS)."""
    names = np.asarray(emb.class_names, dtype=object)
    return pd.DataFrame({
        "id": ids,
        "class": names[emb.labels[ids]],
        "domain": emb.domains[ids],
        "role": np.where(emb.domains[ids] == target, "target", "source"),
        "prediction": names[predicted[ids]],
        "correct": predicted[ids] == emb.labels[ids],
    })


def _stored_layout(store, key_parts: tuple, compute: Callable[[], np.ndarray], emb: EmbeddingSet) -> np.ndarray:
    """A layout from the on-disk store when ``store`` is given and the embeddings have a content
    key (a restarted server redraws at once), else computed. Stored as float16, so a computed
    layout is returned rounded the same way: both runs draw the same picture."""
    if store is None or not emb.key:
        return compute()
    from clip_icm.store import make_key

    return np.asarray(store.get_or_compute(make_key("layout", emb.key, *key_parts), compute), dtype=np.float32)


def full_layout(emb: EmbeddingSet, ids: np.ndarray, seed: int = 0, store=None) -> np.ndarray:
    return _stored_layout(store, ("full", ids.tolist(), seed), lambda: reduce.layout_2d(emb.features[ids], seed=seed),
                          emb)


def invariant_layout(emb: EmbeddingSet, ids: np.ndarray, fitted: Fit, full_xy: np.ndarray, seed: int = 0,
                     store=None) -> np.ndarray:
    """Layout of the projected rows, started from (and aligned to) the full-space layout."""
    components = digest(np.ascontiguousarray(fitted.projection.components_).tobytes())
    start = digest(np.ascontiguousarray(full_xy, dtype=np.float32).tobytes())
    return _stored_layout(store, ("invariant", ids.tolist(), components, start, seed),
                          lambda: reduce.layout_2d(fitted.transform(emb.features[ids]), init=full_xy, seed=seed), emb)


def nearest_neighbours(X: np.ndarray, ids: np.ndarray, query: list[int], k: int = 5) -> dict[int, list[int]]:
    """For each queried id, the ``k`` most cosine-similar other ids among ``ids`` (rows of X are all rows)."""
    if k < 1:
        raise InvalidInput(f"k must be at least 1, got {k}")
    pool = np.asarray(ids)
    unit = unit_rows(X[pool])
    out = {}
    for q in query:
        v = unit_rows(X[q])
        order = [int(pool[i]) for i in np.argsort(-(unit @ v), kind="stable") if pool[i] != q]
        out[int(q)] = order[:k]
    return out


def thumbnail(emb: EmbeddingSet, row: int, size: int = 96):
    """A PIL thumbnail of an image row, or None when there is no readable image."""
    if emb.paths is None or not str(emb.paths[row]):
        return None
    try:
        from clip_icm.datasets import load_image

        image = load_image(str(emb.paths[row]))
    except (OSError, ValueError):
        return None
    return image.resize((size, size))


# ---------------------------------------------------------------- exports

def projection_npz(fitted: Fit, emb: EmbeddingSet, model: str) -> bytes:
    """The fitted projection with everything needed to know what it is."""
    buf = io.BytesIO()
    eigen = fitted.eigenvalues
    np.savez(
        buf, components=fitted.projection.components_, eigenvalues=eigen if eigen is not None else np.zeros(0),
        K=fitted.K, lam=fitted.lam, lam_mode=fitted.lam_mode, method=fitted.method, target=fitted.target,
        lam_effective=getattr(fitted.projection, "lam_effective_", fitted.lam),
        model=model, data_key=emb.key, invariance_ratio=fitted.invariance_ratio,
        class_names=np.asarray(emb.class_names), domains=np.asarray(emb.domain_names),
    )
    return buf.getvalue()


def accuracy_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode()


def png_available() -> bool:
    """Static PNG export needs kaleido (and its browser); offline without it we skip PNGs."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return True


def figure_png(fig) -> bytes | None:
    """PNG bytes of a plotly figure, or None when static export does not work here."""
    if not png_available():
        return None
    try:
        return fig.to_image(format="png", scale=2)
    except Exception:  # kaleido failing to find or start a browser has no single error type
        return None


# ---------------------------------------------------------------- model and data choices

def open_clip_architectures() -> list[str]:
    import open_clip

    return list(open_clip.list_models())


def open_clip_tags(arch: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(arch))


def device_and_precision(device: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """What a model config would run on, without building the model."""
    from clip_icm import backend

    chosen = backend.pick_device(device)
    return chosen, backend.pick_precision(precision, chosen)


def has_true_factors(source: str, root: str = "", dataset: str | None = None) -> bool:
    """True do-interventions need the generator's factors.csv: the demo, or a ToyDomains folder."""
    if source == "demo":
        return True
    return source == "folder" and bool(root) and defaults.has_factors(root, dataset)


def data_roots(exposed: bool) -> tuple[Path, ...] | None:
    """The folders a data path must lie in, or None for no limit.

    ``$CLIP_ICM_DATA_ROOTS`` (folders joined by ``os.pathsep``) when set; else, when the page
    is served beyond this machine (``exposed``), the clip-icm cache folder (where the demo world is
    generated) and the user's home, so that whoever reaches the port cannot browse the machine's
    files; else no limit.
    """
    listed = [p for p in os.environ.get(DATA_ROOTS_VAR, "").split(os.pathsep) if p.strip()]
    if listed:
        return tuple(Path(p).expanduser().resolve() for p in listed)
    if exposed:
        from clip_icm.resources import cache_dir

        return (cache_dir().resolve(), Path.home().resolve())
    return None


def folder_path(root: str, roots: tuple[Path, ...] | None = None) -> Path:
    """The folder a user typed, resolved (``~`` expanded, links followed), or a ServiceError
    saying why it may not be read: absent, or outside ``roots`` (see :func:`data_roots`)."""
    if not root or not root.strip():
        raise ServiceError("Folder not found: (empty)")
    path = Path(root.strip()).expanduser().resolve()
    if roots is not None and not any(path == r or r in path.parents for r in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise ServiceError(f"{root} is outside the folders this dashboard may read ({allowed}); "
                           f"the server's operator can list others in ${DATA_ROOTS_VAR}.")
    if not path.is_dir():
        raise ServiceError(f"Folder not found: {root}")
    return path


def too_broad(path: Path) -> str | None:
    """Why scanning ``path`` itself as one data set would walk a whole filesystem or home
    folder (``/``, a top-level folder, the home folder or above it), else None. Looking for
    data sets *inside* such a folder is fine: that reads two levels only."""
    home = Path.home().resolve()
    if len(path.parts) <= 2 or path == home or path in home.parents:
        return (f"{path} is too broad to scan as one data set (it would walk a whole filesystem or home "
                "folder); enter the folder that holds the domain folders.")
    return None


def detect_folder(root: str, roots: tuple[Path, ...] | None = None) -> dict[str, object]:
    """What a folder holds: known DomainBed datasets, or a DomainBed-shaped folder itself (and,
    when it is neither, why not). ``roots``: see :func:`data_roots`."""
    from clip_icm import datasets

    path = folder_path(root, roots)
    try:
        problem = too_broad(path) or (None if datasets.is_domainbed_folder(path) else datasets.layout_problem(path))
        found = datasets.detect_datasets(path)
    except OSError as e:  # a folder in it that may not be listed
        raise ServiceError(f"Could not read {root}: {e}") from e
    return {"datasets": found, "is_dataset": problem is None, "path": str(path), "problem": problem}


# ---------------------------------------------------------------- causal playground

def playground(config: object, shifts: tuple[float, ...], lam: float, n_components: int | None = None
               ) -> pd.DataFrame:
    """scm.run_playground at the CLI's sample sizes (clip_icm.defaults), user errors as ServiceError."""
    from clip_icm import scm

    return _guard("Playground failed", scm.run_playground, config, shifts, defaults.PLAYGROUND_N_TRAIN,
                  defaults.PLAYGROUND_N_TEST, lam, n_components)
