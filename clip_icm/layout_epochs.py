"""The epochs of a 2-D UMAP layout: umap's stochastic gradient descent, in a faster kernel of our own.

Why: umap's epochs (``umap.layouts.optimize_layout_euclidean``) were two thirds of a 10,000-point
layout pair on the 2-core machine (2.9 + 2.6 s of 7.7 s), single-threaded so that a seed gives the same
layout (bench/RESULTS.md). This is the same descent for a 2-D Euclidean output, step by step: the same
edges, sampled every ``epochs_per_sample`` epochs in the same order; the same negative samples, drawn
by umap's own generator (``tau_rand_int``, a state per point seeded as umap seeds it); the same gradients
of the a/b curve, clipped to +-4; the same learning rate, 1 falling linearly to 1/n_epochs; the tail of
an edge moved too (umap's ``move_other``); one thread. What differs is arithmetic, not the method:

- the gradient coefficients, -2ab d^(b-1) / (1 + a d^b) of an edge and 2b / ((0.001 + d)(1 + a d^b)) of a
  negative sample (d the squared distance), come from tables over d with linear interpolation, indexed by
  d's float32 bits (exponent and top mantissa bits: COEFFICIENT_BITS segments per octave), instead of one or
  two ``pow`` calls per sample; relative error below 3e-6, close to float32's own rounding (outside the
  tables' range, and for d = 0, the formula itself);
- float32 throughout (umap mixes in float64), the moving point's coordinates held in registers across its
  negative samples, and every epoch in one compiled call.

So a layout changes the way a reseeded one does, not its picture (neighbourhood overlap with umap's,
measured: python -m bench.bench_umap; bench/RESULTS.md), and is the same, bit for bit, run to run. The
kernel is compiled by numba; ``umap_cache`` keeps it in numba's on-disk cache with umap's own. A change
here that changes layouts bumps reduce.LAYOUT_VERSION (the layout store's keys carry it).
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic
from umap.utils import tau_rand_int

from clip_icm.errors import InvalidInput

# Table segments per octave of d: 2^9, relative error of the interpolation below 3e-6 (tables of 0.38 MB).
# With 2^7 (error below 5e-5) the invariant layouts kept a little less of umap's pictures than a reseed
# did, over 16 seeds of the demo (0.600 of the 2-D neighbours against 0.609); with 2^9, 0.612, and no
# slower within the noise of the shared machine (bench/RESULTS.md).
COEFFICIENT_BITS = 9
# The tables cover squared distances 2^LOWEST_OCTAVE to 2^HIGHEST_OCTAVE (a layout spans about 30 units;
# umap starts it within 10), the formula the rest.
LOWEST_OCTAVE, HIGHEST_OCTAVE = -30, 16
_SHIFT = 23 - COEFFICIENT_BITS  # float32: 23 mantissa bits
_FIRST = (127 + LOWEST_OCTAVE) << COEFFICIENT_BITS  # the first segment's index in d's bits >> _SHIFT
# umap's negative samples per positive one, and its distance floor in their gradient.
NEGATIVE_SAMPLE_RATE = 5.0
_NEGATIVE_FLOOR = 0.001


@intrinsic
def _float32_bits(typingctx, x):
    """The bits of a float32 as an int32 (no conversion): the table index of d."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@functools.cache
def coefficient_tables(a: np.float32, b: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(attraction, repulsion) tables: per segment of d, the coefficient at its start and the step to the
    next segment's (float32, computed in float64)."""
    a, b = np.float64(a), np.float64(b)
    knots = ((np.arange(((HIGHEST_OCTAVE - LOWEST_OCTAVE) << COEFFICIENT_BITS) + 1) + _FIRST) << _SHIFT)
    d = knots.astype(np.int32).view(np.float32).astype(np.float64)
    curve = a * d**b + 1.0
    attraction = -2.0 * a * b * d ** (b - 1.0) / curve
    repulsion = 2.0 * b / ((_NEGATIVE_FLOOR + d) * curve)
    return tuple(np.ascontiguousarray(np.stack([c[:-1], np.diff(c)], axis=1), dtype=np.float32)
                 for c in (attraction, repulsion))


def optimize_layout(embedding: np.ndarray, head: np.ndarray, tail: np.ndarray, n_epochs: int,
                    epochs_per_sample: np.ndarray, a: np.float32, b: np.float32, rng_state: np.ndarray) -> np.ndarray:
    """What ``umap.layouts.optimize_layout_euclidean(embedding, embedding, head, tail, n_epochs, n,
    epochs_per_sample, a, b, rng_state, move_other=True)`` does with umap's defaults (gamma 1, initial
    learning rate 1, 5 negative samples), for a 2-D ``embedding`` (float32, C order), moved in place and
    returned."""
    if embedding.ndim != 2 or embedding.shape[1] != 2 or embedding.dtype != np.float32 or not embedding.flags.c_contiguous:
        raise InvalidInput(f"the epochs move a C-ordered float32 (n, 2) layout, got {embedding.dtype} {embedding.shape}")
    a, b = np.float32(a), np.float32(b)
    attraction, repulsion = coefficient_tables(a, b)
    # umap's generator state per point: the run's three seeds plus the bits of the point's first coordinate
    states = np.full((len(embedding), len(rng_state)), rng_state, dtype=np.int64) \
        + embedding[:, 0].astype(np.float64).view(np.int64).reshape(-1, 1)
    _epochs(embedding, np.ascontiguousarray(head, dtype=np.int32), np.ascontiguousarray(tail, dtype=np.int32),
            np.ascontiguousarray(epochs_per_sample, dtype=np.float64), a, b, states, int(n_epochs),
            attraction, repulsion)
    return embedding


@numba.njit(inline="always")
def _clip(value):
    return min(max(value, np.float32(-4.0)), np.float32(4.0))


@numba.njit(inline="always")
def _coefficient(table, d):
    """The table's coefficient at d (within the tables' range), linearly interpolated in its segment."""
    bits = _float32_bits(d)
    at = (bits >> _SHIFT) - _FIRST
    within = np.float32(bits & ((1 << _SHIFT) - 1)) * np.float32(1.0 / (1 << _SHIFT))
    return table[at, 0] + table[at, 1] * within


# fastmath as umap's own kernel: it lets the compiler reorder float arithmetic (rounding, not the descent,
# changes); one machine code gives the same layout on every run.
@numba.njit(fastmath=True)
def _epochs(xy, head, tail, epochs_per_sample, a, b, states, n_epochs, attraction, repulsion):
    n_points = xy.shape[0]
    epochs_per_negative_sample = epochs_per_sample / NEGATIVE_SAMPLE_RATE
    next_negative = epochs_per_negative_sample.copy()
    next_sample = epochs_per_sample.copy()
    low, high = np.float32(2.0**LOWEST_OCTAVE), np.float32(2.0**HIGHEST_OCTAVE)
    one, two, floor = np.float32(1.0), np.float32(2.0), np.float32(_NEGATIVE_FLOOR)
    alpha = np.float32(1.0)
    for n in range(n_epochs):
        for i in range(epochs_per_sample.shape[0]):
            if next_sample[i] > n:
                continue
            j, k = head[i], tail[i]
            x, y = xy[j, 0], xy[j, 1]
            dx, dy = x - xy[k, 0], y - xy[k, 1]
            d = dx * dx + dy * dy
            if low <= d < high:
                g = _coefficient(attraction, d)
            elif d > 0:
                power = d**b
                g = -two * a * b * (power / d) / (a * power + one)
            else:
                g = np.float32(0.0)
            gx, gy = _clip(g * dx) * alpha, _clip(g * dy) * alpha
            x, y = x + gx, y + gy
            xy[k, 0] -= gx
            xy[k, 1] -= gy
            next_sample[i] += epochs_per_sample[i]
            n_negative = int((n - next_negative[i]) / epochs_per_negative_sample[i])
            for _ in range(n_negative):
                other = tau_rand_int(states[j]) % n_points
                if other == j:
                    continue
                dx, dy = x - xy[other, 0], y - xy[other, 1]
                d = dx * dx + dy * dy
                if low <= d < high:
                    g = _coefficient(repulsion, d)
                elif d > 0:
                    g = two * b / ((floor + d) * (a * d**b + one))
                else:
                    continue
                x, y = x + _clip(g * dx) * alpha, y + _clip(g * dy) * alpha
            xy[j, 0], xy[j, 1] = x, y
            next_negative[i] += n_negative * epochs_per_negative_sample[i]
        alpha = np.float32(1.0 - n / n_epochs)
    return xy
