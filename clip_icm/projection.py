"""Closed-form projections fitted on interventional pairs: ICM and its baselines.

Every estimator here follows one contract (scikit-learn style): ``fit(Z, Z_do)``
with row i of ``Z_do`` the intervened counterpart of row i of ``Z``; learned
``components_`` such that ``transform(X) = X @ components_.T``; no reference to
the training data is kept. Eigen-decompositions run in float64 with
``scipy.linalg.eigh`` (D up to 1024 takes well under a second).

The methods (their specs: :data:`clip_icm.methods.METHODS`):

- ``icm``: the Invariant Causal Mechanism projection as intended (top-K).
- ``icm_as_released``: the slice the released code takes (the K smallest).
- ``pca``: top-K eigenvectors of ``Z^T Z / n`` (ICM with lam = 0, uncentred).
- ``null_space``: the K directions that move least under intervention
  (ICM's lam -> infinity limit).
- ``orth_cali``: Orth-Cali as published (Chuang et al. 2023): fitted on prompt
  pairs and class-free spurious prompts, applied to class text embeddings only.
- ``augmentation``: no projection (identity); evaluation trains its probe on the source rows
  plus the intervened images (data augmentation with the same pairs).
"""
from __future__ import annotations

import numbers
import warnings
from typing import Iterable

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from clip_icm import defaults
from clip_icm.embeddings import PairSet, unit_rows
from clip_icm.errors import InvalidInput

SELECTIONS = ("top", "as_released")
LAM_MODES = ("absolute", "relative")


class RankDeficientWarning(UserWarning):
    """Fewer pairs than dimensions: the D x D moment matrices are rank-deficient."""


class NegativeLamWarning(UserWarning):
    """A negative lam rewards directions that move under intervention (only the released slice accepts it)."""


def as_matrix(X: object, name: str) -> np.ndarray:
    """``X`` as a 2-D float64 array of finite numbers, or an :class:`InvalidInput` naming ``name``."""
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:  # strings, None, ragged rows
        raise InvalidInput(f"{name} must be a 2-D array of numbers ({e})") from None
    if X.ndim != 2:
        raise InvalidInput(f"{name} must be a 2-D array (rows, dims), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise InvalidInput(f"{name} contains NaN or inf values")
    return X


def _check_pairs(Z: object, Z_do: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair stack; every problem is a ValueError that names it."""
    Z, Z_do = as_matrix(Z, "Z"), as_matrix(Z_do, "Z_do")
    if Z.shape != Z_do.shape:
        raise InvalidInput(f"Z {Z.shape} and Z_do {Z_do.shape} must have the same shape (row i pairs with row i)")
    _check_stack(*Z.shape, bool(Z.any()))
    return Z, Z_do


def _check_stack(n: int, dim: int, has_energy: bool) -> None:
    """What a pair stack of ``n`` rows of ``dim`` needs to be fitted (``has_energy``: Z is not all zeros)."""
    if n < 2:
        raise InvalidInput(f"need at least 2 pairs to fit a projection, got {n}")
    if not has_energy:
        raise InvalidInput("Z is all zeros: no direction carries any energy, so there is no subspace to keep")
    if n < dim:
        warnings.warn(
            f"only {n} pairs for {dim} dimensions: the estimate is rank-deficient", RankDeficientWarning, stacklevel=5
        )


def _check_lam(lam: float, selection: str = "top") -> float:
    """lam >= 0, except for the released slice: the released code accepts any float, so the
    hypothesis "the authors ran a negative lam" can be tried there (with a warning)."""
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not np.isfinite(lam):
        raise InvalidInput(f"lam must be a finite number, got {lam!r}")
    if lam < 0 and selection != "as_released":
        raise InvalidInput(f"lam must be >= 0 with selection={selection!r}, got {lam!r}; a negative lam is "
                           "accepted only with selection='as_released' (the released code's slice)")
    if lam < 0:
        warnings.warn(f"lam={lam:g} < 0: M = Z'Z/n + {-lam:g} Delta'Delta/n then rewards the directions that "
                      "move under intervention, and the released slice keeps the K smallest eigenvalues of that",
                      NegativeLamWarning, stacklevel=4)
    return float(lam)


def _check_choice(value: str, name: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise InvalidInput(f"{name} must be one of {', '.join(valid)}; got {value!r}")


def _check_n_components(k: object, dim: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= dim:
        raise InvalidInput(f"n_components={k!r} must be an integer between 1 and D={dim}")
    return int(k)


def _check_n_removed(r: object, dim: int) -> int:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r < dim:
        raise InvalidInput(f"n_removed={r!r} must be an integer between 0 and D-1={dim - 1}")
    return int(r)


def _flip_signs(rows: np.ndarray) -> np.ndarray:
    """Make each row's largest-magnitude entry positive (sklearn ``svd_flip`` on V)."""
    idx = np.argmax(np.abs(rows), axis=1)
    signs = np.sign(rows[np.arange(len(rows)), idx])
    signs[signs == 0] = 1.0
    return rows * signs[:, None]


# Rows summed at a time by PairMoments.streamed: 8,192 x D = 768 (ViT-L) in float64 is 50 MB per array.
STREAM_BLOCK = 8192


def _add_block(sums: list[np.ndarray], Z: np.ndarray, Z_do: np.ndarray) -> None:
    """Add one block's Z^T Z and Delta^T Delta to ``sums`` (empty: start them)."""
    if Z.shape != Z_do.shape:
        raise InvalidInput(f"Z {Z.shape} and Z_do {Z_do.shape} must have the same shape (row i pairs with row i)")
    if sums and Z.shape[1] != sums[0].shape[0]:
        raise InvalidInput(f"a part of dimension {Z.shape[1]} after parts of dimension {sums[0].shape[0]}")
    delta = Z - Z_do
    if not sums:
        sums += [np.zeros((Z.shape[1],) * 2), np.zeros((Z.shape[1],) * 2)]
    sums[0] += Z.T @ Z
    sums[1] += delta.T @ delta


def _moment(X: np.ndarray) -> np.ndarray:
    """Uncentred second moment ``X^T X / n``: the paper's formula centres nothing."""
    return X.T @ X / len(X)


class PairMoments:
    """What every estimator here reads of a pair stack: ``zz = Z^T Z / n`` and
    ``dd = Delta^T Delta / n`` (D x D) and ``n``. Computed once per stack, they serve every K
    and lam: a lam change is one eigendecomposition (kept, a few per stack), a K change a slice.
    """

    _KEEP = 8  # eigendecompositions kept per stack (D = 1024: 8 MB each)

    def __init__(self, zz: np.ndarray, dd: np.ndarray, n: int) -> None:
        if not (np.isfinite(zz).all() and np.isfinite(dd).all()):
            raise InvalidInput("Z and Z_do are so large that they overflow their second moments; rescale them "
                               "(CLIP embeddings are near unit norm)")
        self.zz, self.dd, self.n = zz, dd, n
        self._spectra: dict[object, tuple[np.ndarray, np.ndarray]] = {}
        self._touched: np.ndarray | None | bool = False  # False: not computed yet

    @classmethod
    def of(cls, Z: object, Z_do: object) -> "PairMoments":
        Z, Z_do = _check_pairs(Z, Z_do)
        with np.errstate(over="ignore", invalid="ignore"):  # refused in __init__, in the caller's terms
            return cls(_moment(Z), _moment(Z - Z_do), len(Z))

    @classmethod
    def streamed(cls, parts: Iterable[tuple[object, object]], block: int = STREAM_BLOCK) -> "PairMoments":
        """The moments of a pair stack given in parts, ``(Z, Z_do)`` at a time: e.g. the memory-mapped
        entries of the store (:func:`clip_icm.store.stored_pairs`). Z^T Z and Delta^T Delta are summed
        in float64 over at most ``block`` rows at a time, so the stack is never in memory whole: a
        fit holds two D x D sums and one block, whatever the number of pairs. Equal to :meth:`of` on
        the stacked parts up to the order of the sums (``tests/test_streamed.py``: within 1e-6)."""
        if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 1:
            raise InvalidInput(f"block must be a positive integer, got {block!r}")
        sums: list[np.ndarray] = []
        n, has_energy = 0, False
        with np.errstate(over="ignore", invalid="ignore"):  # refused in __init__, in the caller's terms
            for Z_part, Z_do_part in parts:
                if len(Z_part) != len(Z_do_part):
                    raise InvalidInput(f"a part of {len(Z_part)} rows of Z came with {len(Z_do_part)} rows of Z_do")
                for start in range(0, len(Z_part), block):
                    Z = as_matrix(Z_part[start:start + block], "Z")
                    Z_do = as_matrix(Z_do_part[start:start + block], "Z_do")
                    _add_block(sums, Z, Z_do)
                    n, has_energy = n + len(Z), has_energy or bool(Z.any())
        if not sums:
            raise InvalidInput("no pairs to fit a projection: every part was empty")
        _check_stack(n, sums[0].shape[0], has_energy)
        return cls(sums[0] / n, sums[1] / n, n)

    @property
    def dim(self) -> int:
        return self.zz.shape[0]

    def relative_lam_scale(self) -> float:
        """trace(Z^T Z) / trace(Delta^T Delta): the factor that makes lam = 1 balance both energies."""
        delta_energy = float(np.trace(self.dd))
        if delta_energy == 0.0:
            raise InvalidInput("all pairs are identical (Delta = 0): a relative lam is undefined; "
                               "use lam_mode='absolute'")
        return float(np.trace(self.zz)) / delta_energy

    def touched_basis(self) -> np.ndarray | None:
        """Orthonormal basis (D, r) of the row span of [Z; Delta] when r < D, else None (full rank).
        From the Gram matrix zz + dd (an SVD of the 2n x D stack would cost several times the
        fit); an eigenvalue under D * eps of the largest counts as zero, i.e. a direction with less
        than ~sqrt(D * eps) of the largest singular value is untouched. Kept: it serves every K, lam."""
        if self._touched is False:
            gram, floor = self.zz + self.dd, self.dim * np.finfo(np.float64).eps
            values = scipy.linalg.eigh(gram, eigvals_only=True)  # the common full-rank case stops here
            if (values > values[-1] * floor).all():
                self._touched = None
            else:
                values, vectors = scipy.linalg.eigh(gram)
                self._touched = vectors[:, values > values[-1] * floor]
        return self._touched

    def matrix(self, lam: float | None) -> np.ndarray:
        """``M = zz - lam * dd`` (``dd`` for ``lam=None``), refused where a huge lam overflows it."""
        with np.errstate(over="ignore", invalid="ignore"):
            matrix = self.dd if lam is None else self.zz - lam * self.dd
        if not np.isfinite(matrix).all():
            raise InvalidInput(f"lam={lam:g} times the pairs' Delta'Delta/n overflows float64; use a smaller lam")
        return matrix

    def eigh(self, lam: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (ascending) and eigenvectors of ``zz - lam * dd``; ``lam=None``: of ``dd``."""
        if lam not in self._spectra:
            if len(self._spectra) >= self._KEEP:
                self._spectra.pop(next(iter(self._spectra)))
            self._spectra[lam] = scipy.linalg.eigh(self.matrix(lam))
        return self._spectra[lam]


class ReleasedMoments(PairMoments):
    """A pair stack's moments as the released code computes them: fp32 torch, M formed in its order
    for each lam, ``torch.linalg.eigh`` on the full D x D matrix (no span restriction, see
    :func:`clip_icm.protocols.released_eigh`). Keeps the fp32 stack itself (M depends on lam in a
    way the two moments alone cannot reproduce to the last bit)."""

    def __init__(self, Z: object, Z_do: object) -> None:
        Z, Z_do = _check_pairs(Z, Z_do)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused in PairMoments.__init__
            self.z, self.z_do = Z.astype(np.float32), Z_do.astype(np.float32)
            z, delta = self.z.astype(np.float64), (self.z - self.z_do).astype(np.float64)
            super().__init__(_moment(z), _moment(delta), len(Z))

    def touched_basis(self) -> None:
        return None  # the released code solves the full D x D eigenproblem

    def eigh(self, lam: float | None) -> tuple[np.ndarray, np.ndarray]:
        from clip_icm.protocols import released_eigh

        if lam not in self._spectra:
            if len(self._spectra) >= self._KEEP:
                self._spectra.pop(next(iter(self._spectra)))
            self._spectra[lam] = released_eigh(self.z, self.z_do, lam)
        return self._spectra[lam]


class LinearProjection(TransformerMixin, BaseEstimator):
    """Shared contract: ``components_`` (rows) map D-dim inputs to the projected space."""

    _orthonormal = True

    def fit(self, Z: object, Z_do: object) -> "LinearProjection":
        return self.fit_moments(PairMoments.of(Z, Z_do))

    def fit_moments(self, moments: PairMoments) -> "LinearProjection":
        """Fit from a pair stack's moments (the same result as ``fit`` on that stack)."""
        self._fit_moments(moments)
        self.n_features_in_ = moments.dim
        return self

    def _fit_moments(self, moments: PairMoments) -> None:
        raise NotImplementedError

    def fit_transform(self, Z: object, Z_do: object) -> np.ndarray:
        return self.fit(Z, Z_do).transform(Z)

    def _check_input(self, X: object, name: str = "X") -> np.ndarray:
        check_is_fitted(self, "components_")
        X = as_matrix(X, name)
        if X.shape[1] != self.n_features_in_:
            raise InvalidInput(f"{name} has {X.shape[1]} features, the projection was fitted on {self.n_features_in_}")
        return X

    def transform(self, X: object) -> np.ndarray:
        return self._check_input(X) @ self.components_.T

    def inverse_transform(self, Y: object) -> np.ndarray:
        """Map projected rows back to D dims (least-squares preimage for a non-orthogonal map)."""
        check_is_fitted(self, "components_")
        Y = as_matrix(Y, "Y")
        if Y.shape[1] != self.components_.shape[0]:
            raise InvalidInput(f"Y has {Y.shape[1]} columns, the projection has {self.components_.shape[0]} outputs")
        if self._orthonormal:
            return Y @ self.components_
        return Y @ np.linalg.pinv(self.components_.T)

    def invariance_ratio(self, Z: object, Z_do: object, centred: bool = False) -> float:
        """||Delta A^T||_F / ||Z A^T||_F on the given pairs: small = the subspace ignores interventions.

        ``centred=True`` divides by ||(Z - mean Z) A^T|| instead: CLIP embeddings share a large
        common mean, so any subspace that keeps the mean direction looks invariant by the
        uncentred ratio; the centred one compares the movement with the spread between rows.
        Delta is never centred (a shift common to all pairs is an effect of the intervention)."""
        Z, Z_do = self._check_pairs(Z, Z_do)
        return self._ratio(self._moved(Z, Z_do), Z - Z.mean(axis=0) if centred else Z)

    def invariance_ratios(self, Z: object, Z_do: object) -> tuple[float, float]:
        """(``invariance_ratio(Z, Z_do)``, ``invariance_ratio(Z, Z_do, centred=True)``), the same numbers with
        the movement projected once: the dashboard reports both after every K or lam change, and on 12,500
        held-out pairs at D = 512 the second projection was a third of the fit's time (bench/RESULTS.md)."""
        Z, Z_do = self._check_pairs(Z, Z_do)
        moved = self._moved(Z, Z_do)
        return self._ratio(moved, Z), self._ratio(moved, Z - Z.mean(axis=0))

    def _check_pairs(self, Z: object, Z_do: object) -> tuple[np.ndarray, np.ndarray]:
        Z, Z_do = self._check_input(Z, "Z"), self._check_input(Z_do, "Z_do")
        if Z.shape != Z_do.shape:
            raise InvalidInput(f"Z {Z.shape} and Z_do {Z_do.shape} must have the same shape")
        return Z, Z_do

    def _moved(self, Z: np.ndarray, Z_do: np.ndarray) -> float:
        return np.linalg.norm((Z - Z_do) @ self.components_.T)

    def _ratio(self, moved: float, spread: np.ndarray) -> float:
        denom = np.linalg.norm(spread @ self.components_.T)
        return float(moved / denom) if denom > 0 else float("nan")


class InvariantProjection(LinearProjection):
    """The ICM projection: eigenvectors of ``M = Z^T Z/n - lam * Delta^T Delta/n``.

    ``selection="top"`` keeps the K largest eigenvalues: directions that carry the
    embedding's energy and move little under intervention (the closed-form solution
    of the paper's reconstruct + consistency objective). ``selection="as_released"``
    reproduces the released code: ``torch.linalg.eigh`` returns eigenvalues ascending
    and the code keeps ``eigvec[:, :K]``, i.e. the K *smallest*; with a large lam those
    are the most intervention-sensitive directions, the opposite of the intent. Neither
    selection centres or normalises the embeddings (the released code does neither).

    ``lam_mode="relative"`` uses ``lam * trace(Z^T Z) / trace(Delta^T Delta)`` so that
    lam = 1 weighs the two energies equally whatever the scale of the deltas; the
    value used is stored in ``lam_effective_``. A negative lam is accepted only with
    ``selection="as_released"`` (as the released code does; with a warning).

    Rank deficiency (fewer independent pair rows than D): the directions that no row of Z
    or Delta touches have eigenvalue 0 in M, so with a large lam they outrank every touched
    direction (whose eigenvalues go negative) and a plain top-K would keep directions the
    data never saw. ``selection="top"`` therefore solves the eigenproblem inside the span
    of the rows of [Z; Delta] (the untouched directions are dropped); when K exceeds that
    rank it keeps the rank-many touched directions (fewer than K, with a RankDeficientWarning)
    rather than pad with directions no pair saw. ``eigenvalues_`` then holds the rank-many
    eigenvalues of that span.
    ``as_released`` keeps the released code's full D x D eigenproblem.

    Attributes: ``components_`` (K, D) orthonormal rows, in the order selected;
    ``eigenvalues_`` (D,) all eigenvalues of M, descending; ``lam_effective_``;
    ``n_features_in_``. Signs are fixed as sklearn's ``svd_flip`` does.
    """

    def __init__(
        self, n_components: int = defaults.MAX_K, lam: float = defaults.ABSOLUTE_LAM, selection: str = "top",
        lam_mode: str = "absolute"
    ) -> None:
        self.n_components = n_components
        self.lam = lam
        self.selection = selection
        self.lam_mode = lam_mode

    def _fit_moments(self, moments: PairMoments) -> None:
        k = _check_n_components(self.n_components, moments.dim)
        _check_choice(self.selection, "selection", SELECTIONS)
        lam = _check_lam(self.lam, self.selection)
        _check_choice(self.lam_mode, "lam_mode", LAM_MODES)
        if self.lam_mode == "relative":
            lam *= moments.relative_lam_scale()
        basis = moments.touched_basis() if self.selection == "top" else None
        if basis is None:
            values, vectors = moments.eigh(lam)  # ascending
        else:
            if k > basis.shape[1]:
                warnings.warn(f"n_components={k} asks for more directions than the {basis.shape[1]} that the pairs "
                              f"touch (rank of [Z; Delta]): keeping those {basis.shape[1]}", RankDeficientWarning,
                              stacklevel=4)
                k = basis.shape[1]
            values, inner = scipy.linalg.eigh(basis.T @ moments.matrix(lam) @ basis)
            vectors = basis @ inner
        chosen = vectors[:, -k:][:, ::-1] if self.selection == "top" else vectors[:, :k]
        self.components_ = _flip_signs(chosen.T)
        self.eigenvalues_ = values[::-1].copy()
        self.lam_effective_ = lam


class PCAProjection(LinearProjection):
    """Top-K eigenvectors of the uncentred ``Z^T Z / n``: ICM with lam = 0.

    Uncentred on purpose, so that the only difference from ``icm`` is the intervention
    term. ``Z_do`` is validated (same contract) but not used.
    """

    def __init__(self, n_components: int = defaults.MAX_K) -> None:
        self.n_components = n_components

    def _fit_moments(self, moments: PairMoments) -> None:
        k = _check_n_components(self.n_components, moments.dim)
        values, vectors = moments.eigh(0.0)  # Z^T Z / n
        self.components_ = _flip_signs(vectors[:, -k:][:, ::-1].T)
        self.eigenvalues_ = values[::-1].copy()


class NullSpaceProjection(LinearProjection):
    """Remove the top-r eigenvectors of the intervention covariance ``Delta^T Delta / n``.

    Give exactly one of ``n_removed`` (r) or ``n_components`` (keep K = D - r). The
    output is an orthonormal basis of the kept complement, not the D x D projector
    ``I - U_r U_r^T``: the two give the same cosines and distances, and a basis keeps
    the output K-dimensional like the other methods. Rows are ordered from the
    direction that moves least under intervention; this is ICM's lam -> infinity limit.
    ``eigenvalues_`` are those of ``Delta^T Delta / n``, descending.
    """

    def __init__(self, n_removed: int | None = None, n_components: int | None = None) -> None:
        self.n_removed = n_removed
        self.n_components = n_components

    def _kept(self, dim: int) -> int:
        if (self.n_removed is None) == (self.n_components is None):
            raise InvalidInput("give exactly one of n_removed or n_components")
        if self.n_components is not None:
            return _check_n_components(self.n_components, dim)
        return dim - _check_n_removed(self.n_removed, dim)

    def _fit_moments(self, moments: PairMoments) -> None:
        k = self._kept(moments.dim)
        values, vectors = moments.eigh(None)  # Delta^T Delta / n
        self.components_ = _flip_signs(vectors[:, :k].T)
        self.eigenvalues_ = values[::-1].copy()


class OrthCaliProjection(LinearProjection):
    """Orth-Cali as published (Chuang et al. 2023, "Debiasing Vision-Language Models via Biased
    Prompts"; their code: chingyaoc/debias_vl, discriminative/main.py).

    ``fit(Z, Z_do, spurious)``: rows of Z / Z_do are positive prompt pairs (same class, different
    spurious attribute), ``spurious`` the embeddings of class-free spurious prompts; all are
    L2-normalised first, as in their code. Then

        P0 = I - V (V^T V)^-1 V^T          (V: D x S, the normalised spurious prompts as columns)
        M  = mean over pairs of (z_i - z_j)(z_i - z_j)^T
        P  = P0 (I + lam M)^-1,            lam = 1000 by default (theirs)

    ``components_`` is P, and ``transform(X) = X P^T``. The method is meant for the class
    TEXT embeddings only (then re-normalised); images stay untouched, so evaluation scores it
    zero-shot only. V (V^T V)^-1 V^T is computed as V pinv(V), the same projector, which also
    holds when two spurious prompts coincide. Without spurious prompts P0 = I; without pairs
    M = 0 (each half of the method alone); with neither there is nothing to fit.

    Diagnostics: ``n_spurious_`` prompts, ``n_removed_`` directions P0 removes (their rank),
    ``n_pairs_``, and :meth:`spurious_span` of the class prompts.
    """

    _orthonormal = False

    def __init__(self, lam: float = defaults.ORTH_CALI_LAM) -> None:
        self.lam = lam

    def fit(self, Z: object, Z_do: object, spurious: object = None) -> "OrthCaliProjection":
        lam = _check_lam(self.lam)
        Z, Z_do = as_matrix(Z, "Z"), as_matrix(Z_do, "Z_do")
        if Z.shape != Z_do.shape:
            raise InvalidInput(f"Z {Z.shape} and Z_do {Z_do.shape} must have the same shape (row i pairs with row i)")
        dim = Z.shape[1]
        V = np.zeros((0, dim)) if spurious is None else as_matrix(spurious, "spurious")
        if V.shape[1] != dim:
            raise InvalidInput(f"spurious prompts have {V.shape[1]} dims, the pairs {dim}")
        if len(Z) == 0 and len(V) == 0:
            raise InvalidInput("Orth-Cali needs positive prompt pairs or spurious prompts (text banks); got neither")
        removed = unit_rows(V).T @ np.linalg.pinv(unit_rows(V).T) if len(V) else np.zeros((dim, dim))
        delta = unit_rows(Z) - unit_rows(Z_do)
        M = _moment(delta) if len(delta) else np.zeros((dim, dim))
        self.components_ = (np.eye(dim) - removed) @ np.linalg.inv(np.eye(dim) + lam * M)
        self.spurious_projector_ = removed
        self.n_spurious_ = len(V)
        self.n_removed_ = int(round(np.trace(removed)))  # the rank of V: the directions P0 removes
        self.n_pairs_ = len(Z)
        self.n_features_in_ = dim
        self.lam_effective_ = lam
        return self

    def spurious_span(self, class_text: object) -> float:
        """The share of the class prompts' between-class energy that P0 removes:
        ||(I - P0) C||^2 / ||C||^2, C the L2-normalised class prompts (rows) minus their mean. Near 1,
        the spurious prompts span what tells the classes apart, and P0 takes it away; a random
        subspace of the same size takes about n_removed_ / D."""
        check_is_fitted(self, "components_")
        C = unit_rows(as_matrix(class_text, "class_text"))
        C = C - C.mean(axis=0)
        energy = float(np.sum(C * C))
        return float(np.sum((C @ self.spurious_projector_) ** 2) / energy) if energy > 0 else float("nan")


class IdentityProjection(LinearProjection):
    """The full space itself (``components_ = I``): for a method that changes what the probe is
    trained on (the augmentation baseline), not the space it predicts in."""

    def __init__(self) -> None:
        pass

    def _fit_moments(self, moments: PairMoments) -> None:
        self.components_ = np.eye(moments.dim)


def stack_pairs(pair_sets: list[PairSet], weights: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack several pair sets into one (Z, Z_do); ``weights`` (by set name, default 1)
    scale rows by sqrt(w) so that each set's share of both moment matrices is weighted by w.
    Sets with weight 0 are left out."""
    if not pair_sets:
        raise InvalidInput("no pair sets to stack")
    weights = dict(weights or {})
    unknown = set(weights) - {p.name for p in pair_sets}
    if unknown:
        raise InvalidInput(f"weights for unknown pair sets: {', '.join(sorted(unknown))}")
    dims = {p.z.shape[1] for p in pair_sets}
    if len(dims) > 1:
        raise InvalidInput(f"pair sets have different dimensions: {sorted(dims)}")
    zs, zdos = [], []
    for pairs in pair_sets:
        w = weights.get(pairs.name, 1.0)
        if not np.isfinite(w) or w < 0:
            raise InvalidInput(f"weight for pair set {pairs.name!r} must be finite and >= 0, got {w!r}")
        if w > 0:
            zs.append(np.sqrt(w) * np.asarray(pairs.z, dtype=np.float64))
            zdos.append(np.sqrt(w) * np.asarray(pairs.z_do, dtype=np.float64))
    if not zs:
        raise InvalidInput("every pair set has weight 0")
    return np.concatenate(zs), np.concatenate(zdos)
