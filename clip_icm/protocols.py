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
  seed_hash(0, env_i))`` over the domain's images in ImageFolder order;
- forward passes in fp32 (``clip_model.float()``).

What stays ours in the preset (see docs/FAITHFULNESS.md): the source domains' 80/20 split
(stratified per class, seeded by names; the released one is an unstratified shuffle), and the
strengths of the image ops.
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


PROTOCOLS: Registry[Protocol] = Registry("evaluation protocol")
PROTOCOLS.register("ours", Protocol("ours", "this project", None, None, None, "tuned", "whole", True, None))
PROTOCOLS.register("released", Protocol("released", "released code", ("image",), RELEASED_TEMPLATE, "absolute",
                                        "released", "holdout", False, "fp32", 1000.0))


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


def released_holdout(domains: np.ndarray, paths: np.ndarray | None, target: str) -> np.ndarray:
    """Boolean mask of the target's 20 % holdout, as the released converter draws it.

    ``env_i`` is the target's index among the sorted domain names (DomainBed sorts the
    environment folders); ``split_dataset`` shuffles range(n) with ``RandomState(seed)`` and
    the first ``int(0.2 n)`` keys are the holdout ("out") split the released code scores.
    """
    names = sorted(set(np.asarray(domains).tolist()))
    rows = np.flatnonzero(np.asarray(domains) == target)
    order = rows[imagefolder_order(None if paths is None else np.asarray(paths)[rows], len(rows))]
    keys = list(range(len(order)))
    np.random.RandomState(domainbed_seed_hash(0, names.index(target))).shuffle(keys)
    mask = np.zeros(len(domains), bool)
    mask[order[keys[:int(len(order) * RELEASED_HOLDOUT)]]] = True
    return mask


def released_probe(train_X: np.ndarray, train_y: np.ndarray) -> LogisticRegression:
    """The released linear probe: lbfgs (sklearn's default), C = 0.316, max_iter 1000, raw features."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(train_y)) < 2:
        raise InvalidInput("the linear probe needs at least 2 classes in its training rows")
    return LogisticRegression(random_state=0, C=RELEASED_C, max_iter=1000).fit(train_X, train_y)
