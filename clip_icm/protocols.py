"""Evaluation protocols: this project's, and the released code's (ML-TASA/CLIP-ICM) as a preset.

A protocol is data (:class:`Protocol`), read by evaluation, the CLI and the dashboard, so that
"what the released pipeline does" is written down once. The released one, from its
``main.py``, ``engine.py``, ``clip_icm.py`` and ``converter_domainbed.py``:

- pairs: image pairs only (x, T(x)), T one of seven photometric ops drawn per image;
- zero-shot: one prompt, "a photo of a {}.", text L2-normalised, projected, not re-normalised;
  images projected; argmax of the dot product;
- lam: absolute (its ``--lamda``; ``estimate_content`` defaults to 1000);
- probe: ``LogisticRegression(random_state=0, C=0.316, max_iter=1000)`` (lbfgs) on the raw
  projected features of the source domains' training rows, no standardisation, no C search;
- target rows: the target's 20 % holdout, DomainBed's ``misc.split_dataset(env, int(0.2 n),
  seed_hash(0, env_i))`` over the domain's images in ImageFolder order (the sources, which the
  released code does not score, are scored on their own 20 % holdouts: the rows its probe did not
  train on);
- forward passes in fp32 (``clip_model.float()``), and everything after them in fp32 torch too:
  M, its ``torch.linalg.eigh``, ``features @ A_inv``, the normalised text, ``softmax(100 * dot)``;
  the probe trains on the fp32 projected features (lbfgs stops at a different point on float64
  ones: 1-2 of 200 target rows differed before this was so);
- the probe's training rows: the sources' released 80 % "in" split (``split_dataset`` as for the
  target), in ``ConcatDataset`` order (the released loader shuffles them, unseeded: lbfgs then
  sums in another order, so "identical" holds for this order);
- class names in prompts: only ``_`` becomes a space (``clip_icm.datasets.released_name``);
- the open-class task: base classes are the first half of the sorted classes.

What stays ours in the preset (see docs/FAITHFULNESS.md): the rows the image pairs come from
(the pipeline draws them from our stratified training rows), the open-class task's source split
(the released code draws base and new classes' 80 % separately), and the strengths of the image ops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from clip_icm.errors import InvalidInput
from clip_icm.hashing import digest
from clip_icm.registry import Registry

if TYPE_CHECKING:  # scikit-learn is imported where it is used: the CLI checks --protocol before it loads
    from sklearn.linear_model import LogisticRegression

RELEASED_TEMPLATE = "a photo of a {}."
RELEASED_C = 0.316
RELEASED_HOLDOUT = 0.2


@dataclass(frozen=True)
class Protocol:
    """What an evaluation protocol fixes. ``None`` leaves the choice to the EvalConfig / data.

    pair_kinds:      PairSet kinds a projection may be fitted on
    template:        the one zero-shot prompt template used
    lam_mode:        the lam scale imposed
    probe:           "tuned" (standardise, C from EvalConfig.probe_Cs on source validation) or "released"
    target_rows:     "whole" (DomainBed convention) or "holdout" (the released 20 %)
    renormalise:     re-normalise projected class text before the cosine (the released code does not)
    precision:       forward-pass precision of the model
    lam:             the default lam (the released ``estimate_content`` default, 1000)
    arithmetic:      "float64" (numpy / scipy) or "fp32" (torch fp32, step for step as the released code)
    class_split:     the open-class task's base classes: "seeded" 50/50 or the released "first_half"
    """

    name: str
    label: str
    pair_kinds: tuple[str, ...] | None
    template: str | None
    lam_mode: str | None
    probe: str
    target_rows: str
    renormalise: bool
    precision: str | None
    lam: float | None = None
    arithmetic: str = "float64"
    class_split: str = "seeded"


PROTOCOLS: Registry[Protocol] = Registry("evaluation protocol")
PROTOCOLS.register("ours", Protocol("ours", "this project", None, None, None, "tuned", "whole", True, None))
PROTOCOLS.register("released", Protocol("released", "released code", ("image",), RELEASED_TEMPLATE, "absolute",
                                        "released", "holdout", False, "fp32", 1000.0, "fp32", "first_half"))


def protocol_label(name: str) -> str:
    return PROTOCOLS.get(name).label


def domainbed_seed_hash(*args: object) -> int:
    """DomainBed's ``misc.seed_hash``: md5 of ``str(args)``, modulo 2**31."""
    return int(digest(str(args), "md5"), 16) % (2**31)


def imagefolder_order(paths: np.ndarray | None, n: int) -> np.ndarray:
    """Row order of torchvision's ImageFolder for one domain's rows: sorted by class folder, then
    file name (its ``make_dataset`` sorts both). Without paths, the rows' own order."""
    if paths is None or not all(str(p) for p in paths):
        return np.arange(n)
    keys = [tuple(str(p).replace("\\", "/").split("/")[-2:]) for p in paths]
    return np.array(sorted(range(n), key=keys.__getitem__), dtype=np.int64)


def _released_split(domains: np.ndarray, paths: np.ndarray | None, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """(out, in) row indices of one domain, each in ``split_dataset``'s key order.

    ``env_i`` is the domain's index among the sorted domain names (DomainBed sorts the
    environment folders); ``split_dataset`` shuffles range(n) with ``RandomState(seed)``: the
    first ``int(0.2 n)`` keys are the holdout ("out"), the rest the training ("in") split.
    """
    names = sorted(set(np.asarray(domains).tolist()))
    rows = np.flatnonzero(np.asarray(domains) == domain)
    order = rows[imagefolder_order(None if paths is None else np.asarray(paths)[rows], len(rows))]
    keys = list(range(len(order)))
    np.random.RandomState(domainbed_seed_hash(0, names.index(domain))).shuffle(keys)
    cut = int(len(order) * RELEASED_HOLDOUT)
    return order[keys[:cut]], order[keys[cut:]]


def released_holdout(domains: np.ndarray, paths: np.ndarray | None, target: str) -> np.ndarray:
    """Boolean mask of the target's 20 % holdout, as the released converter draws it (the rows
    the released code scores)."""
    mask = np.zeros(len(domains), bool)
    mask[_released_split(domains, paths, target)[0]] = True
    return mask


def released_train_rows(domains: np.ndarray, paths: np.ndarray | None, target: str | None) -> np.ndarray:
    """Row indices of the sources' 80 % "in" splits in ``ConcatDataset`` order: the sorted source
    domains one after the other, each in its split's key order (the released probe's rows)."""
    names = sorted(set(np.asarray(domains).tolist()))
    return np.concatenate([_released_split(domains, paths, d)[1] for d in names if d != target]
                          or [np.zeros(0, np.int64)]).astype(np.int64)


def released_class_split(n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The released open-class split: base = the first ``int(0.5 n)`` class indices (sorted folder
    names), new = the rest (``converter_domainbed``: ``keys[:int((1 - open_ratio) * len(keys))]``)."""
    n_base = int(0.5 * n_classes)
    return np.arange(n_base), np.arange(n_base, n_classes)


# ---------------------------------------------------------------- the released arithmetic (torch fp32)
# Each step in the order and dtype of clip_icm.py / engine.py, so that the same inputs give the same
# bits: the probe's lbfgs amplifies a last-bit difference in its features into a different row now and
# then (1-2 of 200 target rows in 3 of 18 settings when the features were float64).

def _fp32(X: np.ndarray):
    import torch

    return torch.as_tensor(np.asarray(X, dtype=np.float32))


def released_eigh(z: np.ndarray, z_do: np.ndarray, lam: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Ascending eigenvalues and eigenvectors of ``clip_icm.estimate_content``'s M, in fp32:
    ``z.T @ z / n - lamda * delta.T @ delta / n`` (Python evaluates ``((lamda * delta.T) @ delta) / n``),
    ``torch.linalg.eigh``. ``lam=None``: of ``delta.T @ delta / n`` (the null-space baseline)."""
    import torch

    z, z_intervene = _fp32(z), _fp32(z_do)
    delta = z - z_intervene
    if lam is None:
        M = delta.T @ delta / delta.shape[0]
    else:
        M = z.T @ z / z.shape[0] - lam * delta.T @ delta / delta.shape[0]
    values, vectors = torch.linalg.eigh(M)
    return values.numpy().astype(np.float64), vectors.numpy().astype(np.float64)


def _a_inv(components: np.ndarray):
    """``A_inv`` (D, K) with the memory layout of the released ``eig_vector[:, :K]`` (column-major)."""
    return _fp32(np.asfortranarray(np.asarray(components).T))


def released_project(X: np.ndarray, components: np.ndarray | None) -> np.ndarray:
    """``features @ A_inv`` in fp32 (engine.py's ``zero_shot`` and ``logistic``); the fp32 features
    themselves for the full space."""
    X = _fp32(X)
    return (X if components is None else X @ _a_inv(components)).numpy()


def released_class_text(text: np.ndarray, components: np.ndarray | None) -> np.ndarray:
    """engine.py's ``get_text_features`` then ``text_features @ A_inv``: fp32, each row divided by its
    norm, projected, not re-normalised. ``text``: (C, D) raw prompt embeddings."""
    text = _fp32(text)
    text = text / text.norm(dim=-1, keepdim=True)
    return (text if components is None else text @ _a_inv(components)).numpy()


def released_zero_shot(projected: np.ndarray, class_text: np.ndarray) -> np.ndarray:
    """engine.py's ``get_predictions``: ``(100.0 * image_features @ text_features.T).softmax(dim=-1)``
    and its argmax (in fp32 the softmax can tie two nearly equal logits; argmax then takes the first)."""
    similarity = (100.0 * _fp32(projected) @ _fp32(class_text).T).softmax(dim=-1)
    return similarity.argmax(dim=-1).numpy()


def released_probe(train_X: np.ndarray, train_y: np.ndarray) -> LogisticRegression:
    """The released linear probe: lbfgs (sklearn's default), C = 0.316, max_iter 1000, raw features
    (fp32 where the released arithmetic made them so; sklearn's lbfgs upcasts to float64 itself)."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(train_y)) < 2:
        raise InvalidInput("the linear probe needs at least 2 classes in its training rows")
    return LogisticRegression(random_state=0, C=RELEASED_C, max_iter=1000).fit(train_X, train_y)
