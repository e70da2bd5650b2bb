"""Fitting and evaluation for the pages: the fitted projection with its diagnostics, accuracy tables,
selection of K and lam, sweeps, confusion matrices and the causal playground."""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from clip_icm import choice, defaults, evaluation, methods
from clip_icm.embeddings import EmbeddingSet
from clip_icm.service.base import guard, is_kept, keeps, kept

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


def fit(emb: EmbeddingSet, target: str, method: str, config: evaluation.EvalConfig) -> Fit:
    """Fit ``method`` on the pairs outside ``target``; the invariance ratio is measured on
    held-out pairs (the target domain's image pairs) when there are any."""
    projection = guard("Could not fit the projection", evaluation.fit_projection, emb, target, method, config)
    Z, Z_do, which = evaluation.ratio_pairs(emb, target, config.pair_sets)
    invariance_ratio, centred_ratio = projection.invariance_ratios(Z, Z_do)
    return Fit(
        method=method, K=config.n_components, lam=config.lam, lam_mode=config.lam_mode, target=target,
        projection=projection, invariance_ratio=invariance_ratio,
        full_ratio=float(np.linalg.norm(Z - Z_do) / max(np.linalg.norm(Z), 1e-12)), ratio_pairs=which,
        centred_ratio=centred_ratio,
    )


def orth_cali_summary(emb: EmbeddingSet, target: str, method: str, config: evaluation.EvalConfig) -> tuple[str, bool]:
    """The sentence on what an Orth-Cali method's P0 removes, and whether it warrants a warning."""
    emb_view, config = evaluation.apply_protocol(emb, config)
    projection = guard("Could not fit Orth-Cali", evaluation.fit_projection, emb, target, method, config)
    diagnostics = evaluation.orth_cali_diagnostics(evaluation.with_prompts(emb_view, target, config.prompts),
                                                   projection, config)
    return evaluation.spurious_span_text(methods.label(method), diagnostics)


def evaluate(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig, store=None) -> pd.DataFrame:
    """evaluation.evaluate_split, with user errors as ServiceError; kept in ``store`` (see base.kept)."""
    return kept(store, emb, _table_parts(target, config),
                lambda: guard("Could not evaluate", evaluation.evaluate_split, emb, target, config),
                _frame_json, _json_frame)


def _table_parts(target: str, config: evaluation.EvalConfig) -> tuple:
    return ("evaluate", target, config)


def _frame_json(frame: pd.DataFrame) -> dict:
    return {"columns": list(frame.columns), "data": frame.to_dict("list")}


def _json_frame(kept_frame: dict) -> pd.DataFrame:
    return pd.DataFrame(kept_frame["data"], columns=kept_frame["columns"])


def evaluate_open_class(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig) -> pd.DataFrame:
    """evaluation.evaluate_open_class (seeded 50/50 class split), with user errors as ServiceError."""
    return guard("Could not evaluate the open-class task", evaluation.evaluate_open_class, emb, target, config,
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
    """One row per method/protocol (its label), one column per domain (target marked), both in the table's
    order, plus target change vs CLIP; a cell the table lacks or leaves empty (Orth-Cali's probe) is NaN.
    Filled by index rather than pandas' pivot_table, which took 15-19 ms of every new setting's page run."""
    labels, domains = list(dict.fromkeys(table["label"])), list(dict.fromkeys(table["domain"]))
    rows = table["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
    columns = table["domain"].map({domain: j for j, domain in enumerate(domains)}).to_numpy()
    grid, change = np.full((len(labels), len(domains)), np.nan), np.full(len(labels), np.nan)
    grid[rows, columns] = table["accuracy"].to_numpy(dtype=float)
    on_target = (table["domain"] == target).to_numpy()
    change[rows[on_target]] = table["change_vs_clip"].to_numpy(dtype=float)[on_target]
    wide = pd.DataFrame(grid, index=labels, columns=[f"{d} (target)" if d == target else d for d in domains])
    wide["target change vs CLIP"] = change
    return wide


def choose_hyperparameters(emb: EmbeddingSet, target: str, method: str, config: evaluation.EvalConfig,
                           Ks: tuple[int, ...], lams: tuple[float, ...], scoring: str = "source_val",
                           protocol: str = evaluation.LINEAR_PROBE, store=None) -> tuple[int, float, pd.DataFrame]:
    """(K, lam) chosen by ``scoring`` on source data only (the target is removed first); kept in
    ``store`` (see base.kept): a restarted server does not fit the grid again (about 1 s on the demo)."""
    return kept(store, emb, ("selection", target, method, config, Ks, lams, scoring, protocol),
                lambda: guard("Could not choose K and lam", evaluation.select_hyperparameters,
                              emb, target, method, Ks, lams, config, scoring, protocol),
                lambda choice: {"K": int(choice[0]), "lam": float(choice[1]), "scores": _frame_json(choice[2])},
                lambda choice: (choice["K"], choice["lam"], _json_frame(choice["scores"])))


def evaluate_and_choose(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig, store=None,
                        mode: str = defaults.CHOICE) -> tuple[pd.DataFrame, choice.Choice]:
    """choice.evaluate_and_choose with the default rule (K and lam for the probe, then the model to
    deploy, ``mode`` saying what it reads): what the CLI's evaluate prints for ``target``; kept in
    ``store`` (see base.kept)."""
    def compute():
        return guard("Could not choose the model", choice.evaluate_and_choose, emb, target, config,
                     defaults.SELECTION, evaluation.LINEAR_PROBE, mode)

    return kept(store, emb, _choice_parts(target, config, mode), compute,
                lambda done: {"frame": _frame_json(done[0]), "table": _frame_json(done[1].table), "why": done[1].why,
                              "shortfall": done[1].shortfall, "versus_clip": _frame_json(done[1].versus_clip),
                              "mode": done[1].mode},
                lambda done: (_json_frame(done["frame"]),
                              choice.Choice(target, _json_frame(done["table"]), done["why"], done["shortfall"],
                                            _json_frame(done["versus_clip"]), done["mode"])))


def _choice_parts(target: str, config: evaluation.EvalConfig, mode: str) -> tuple:
    return ("evaluate and choose", target, config, mode)


def evaluate_and_choose_every_target(emb: EmbeddingSet, targets: list[str], config: evaluation.EvalConfig, store,
                                     mode: str = defaults.CHOICE, separate_process: bool = True) -> None:
    """evaluate_and_choose of each of ``targets`` in turn (those ``store`` does not hold yet), kept in ``store``,
    where the pages read them. ``separate_process``: in a process of its own at a lowered priority, which
    ends with the last choice (background.run), wherever the store can keep them (else here): at 50,000
    images these are minutes of probes, and in the server's process they cost every slider move about
    0.3 s of its interpreter and 1.1 GB of its peak memory (bench/RESULTS.md). The same numbers either way:
    one BLAS thread in both, and JSON floats round-trip exactly."""
    missing = [target for target in targets if not is_kept(store, emb, _choice_parts(target, config, mode))]
    if not missing:
        return
    if separate_process and keeps(store, emb):
        from clip_icm import background

        background.run(_evaluate_and_choose_each, emb, missing, config, store, mode, low_priority=True)
    else:
        _evaluate_and_choose_each(emb, missing, config, store, mode)


def _evaluate_and_choose_each(emb: EmbeddingSet, targets: list[str], config: evaluation.EvalConfig, store,
                              mode: str) -> None:
    for target in targets:
        evaluate_and_choose(emb, target, config, store=store, mode=mode)


def full_space_score(emb: EmbeddingSet, target: str, config: evaluation.EvalConfig, scoring: str,
                     protocol: str = evaluation.LINEAR_PROBE, store=None) -> float:
    """The selection rule's score for CLIP in the full space (to compare with the chosen setting's);
    kept in ``store`` beside the choice (see base.kept)."""
    return kept(store, emb, ("full space score", target, config, scoring, protocol),
                lambda: guard("Could not score the full space", evaluation.source_score,
                              emb, target, evaluation.FULL_SPACE, config, scoring, protocol),
                float, float)


def sweep(emb: EmbeddingSet, target: str, method: str, config: evaluation.EvalConfig, Ks: tuple[int, ...],
          lams: tuple[float, ...]) -> pd.DataFrame:
    """K x lam grid of source-validation and (peeking, for illustration) target accuracy."""
    return guard("Sweep failed", evaluation.sweep, emb, target, method, Ks, lams, config)


def projection_defaults(source: str, dim: int) -> dict:
    """Starting settings, as the CLI's (clip_icm.defaults): K and lam chosen by the interventional
    rule for every data set. The demo opens on its story: fitted on the true colour and scene
    swaps, PCA and augmentation beside ICM. Elsewhere: every pair set built, augmentation beside ICM
    (the model choice weighs it)."""
    common = {"K": defaults.k(dim), "lam": defaults.LAM, "lam_mode": defaults.LAM_MODE,
              "selection": defaults.SELECTION}
    if source == "demo":
        return {**common, "pair_sets": defaults.DEMO_PAIR_SETS, "baselines": defaults.DEMO_BASELINES}
    return {**common, "pair_sets": None, "baselines": ("augmentation",)}


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(true class, predicted class) counts."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def with_unused_fixed(method: str, config: evaluation.EvalConfig) -> evaluation.EvalConfig:
    """``config`` with the K and lam that ``method`` does not read (CLIP and the augmentation baseline
    read neither) set to 1: its results are then one entry of every cache, whatever the sliders say.
    A K change at 10,000 images refitted the augmentation baseline (1.7 s) and CLIP's confusions
    (0.7 s) that it leaves as they were (bench/RESULTS.md)."""
    spec = methods.spec(method)
    return replace(config, n_components=config.n_components if spec.tunes_k else 1,
                   lam=config.lam if spec.tunes_lam else 1.0)


def target_confusions(emb: EmbeddingSet, target: str, method: str, config: evaluation.EvalConfig,
                      protocol: str = evaluation.LINEAR_PROBE, store=None) -> dict[str, np.ndarray]:
    """Confusion matrices on the target domain: CLIP's full space and ``method``'s, one protocol;
    each kept in ``store`` (see base.kept) under what it reads of ``config``."""
    rows = emb.domains == target

    def matrix(name: str) -> np.ndarray:
        named = with_unused_fixed(name, config)

        def compute() -> np.ndarray:
            predicted = guard("Could not predict", evaluation.predict_all, emb, target, name, named)[protocol]
            return confusion(emb.labels[rows], predicted[rows], len(emb.class_names))

        return kept(store, emb, _confusion_parts(target, name, config, protocol), compute, lambda m: m.tolist(),
                    lambda m: np.asarray(m, dtype=np.int64))

    return {name: matrix(name) for name in (evaluation.FULL_SPACE, method)}


def _confusion_parts(target: str, name: str, config: evaluation.EvalConfig, protocol: str) -> tuple:
    return ("confusion", target, name, with_unused_fixed(name, config), protocol)


def evaluated(emb: EmbeddingSet, target: str, method: str, configs: tuple[evaluation.EvalConfig, ...], protocol: str,
              store) -> bool:
    """Whether ``store`` holds what a page at one setting reads (kept results, base.kept): the accuracy tables of
    ``configs`` (``method``'s first, then its baselines') and the target confusions of CLIP and ``method`` under
    ``protocol``. False without a store that keeps results of ``emb``."""
    return (keeps(store, emb) and all(is_kept(store, emb, _table_parts(target, config)) for config in configs)
            and all(is_kept(store, emb, _confusion_parts(target, name, configs[0], protocol))
                    for name in (evaluation.FULL_SPACE, method)))


def evaluate_ahead(emb: EmbeddingSet, target: str, method: str, settings: list[tuple[evaluation.EvalConfig, ...]],
                   protocol: str, store) -> None:
    """What a page at each of ``settings`` reads (see evaluated()), made and kept in ``store``, those it does not
    hold yet, in the server's evaluation process (evaluation_process(): one, kept, at a lowered priority, which
    holds the data set between calls). At 50,000 images a setting's probes took 0.5-0.6 s of a rerun
    (bench/RESULTS.md); read from the store, the numbers are the same (one BLAS thread there as here, and JSON
    floats round-trip exactly). Nothing without a store to keep them in (what the process computed would be lost)."""
    if not keeps(store, emb):
        return
    missing = [configs for configs in settings if not evaluated(emb, target, method, configs, protocol, store)]
    if missing:
        evaluation_process().run(emb, _evaluate_each, target, method, missing, protocol, store)


def _evaluate_each(emb: EmbeddingSet, target: str, method: str, settings: list[tuple[evaluation.EvalConfig, ...]],
                   protocol: str, store) -> None:
    for configs in settings:
        for config in configs:
            evaluate(emb, target, config, store=store)
        target_confusions(emb, target, method, configs[0], protocol, store=store)


class _NotHeld(Exception):
    """In the evaluation process: asked for a data set it does not hold (a new process, or another set since)."""


# In the evaluation process: the data set it was handed last, by key (one: a second would double its memory).
_held: dict[str, EmbeddingSet] = {}


def _on_held(emb_key: str, emb: EmbeddingSet | None, function, *args):
    """In the evaluation process: ``function(the data set of emb_key, *args)``, holding ``emb`` (when given) in
    place of the one held before."""
    if emb is not None:
        _held.clear()
        _held[emb_key] = emb
    if emb_key not in _held:
        raise _NotHeld(emb_key)
    return function(_held[emb_key], *args)


class EvaluationProcess:
    """A process kept for the evaluations made ahead of the page (background.Resident, lowered priority): it is
    handed a data set once (its arrays mapped from temporary files, 0.6 GB at 50,000 images) and keeps it, with
    clip_icm.evaluation's memos of it (CLIP's probe predictions, the invariance ratios' pairs), until another
    comes; a process per call imported, mapped the data and fitted CLIP's 512-dimension probe again each time
    (4-5 s at 50,000 images; bench/RESULTS.md)."""

    def __init__(self) -> None:
        from clip_icm import background

        self._resident = background.Resident(low_priority=True)
        self._handed: str | None = None  # the key of the data set last handed over (the process may have died since)

    def run(self, emb: EmbeddingSet, function, *args):
        """``function(emb, *args)`` (module-level) in the process, ``emb`` handed over only when it does not hold it."""
        if self._handed == emb.key:
            try:
                return self._resident.call(_on_held, emb.key, None, function, *args)
            except _NotHeld:
                pass
        self._handed = None
        result = self._resident.call(_on_held, emb.key, emb, function, *args)
        self._handed = emb.key
        return result

    def close(self) -> None:
        self._resident.close()
        self._handed = None


_evaluation_process: list[EvaluationProcess] = []
_evaluation_lock = threading.Lock()


def evaluation_process() -> EvaluationProcess:
    """The server's evaluation process (started on its first call)."""
    with _evaluation_lock:
        if not _evaluation_process:
            _evaluation_process.append(EvaluationProcess())
        return _evaluation_process[0]


def playground(config: object, shifts: tuple[float, ...], lam: float, n_components: int | None = None
               ) -> pd.DataFrame:
    """scm.run_playground at the CLI's sample sizes (clip_icm.defaults), user errors as ServiceError."""
    from clip_icm import scm

    return guard("Playground failed", scm.run_playground, config, shifts, defaults.PLAYGROUND_N_TRAIN,
                  defaults.PLAYGROUND_N_TEST, lam, n_components)
