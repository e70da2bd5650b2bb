"""Faster UMAP layouts, measured against today's picture by neighbourhood overlap (not by eye).

    python -m bench.bench_umap [--against main] [--n 10000] [--world-seed 1] [--no-demo] [--candidates 200/100 ...]
                               [--parallel] [--seeds 4] [--starts own "quick 30"]
    python -m bench.bench_umap --fresh [--n 10000]
    python -m bench.bench_umap --profile [--n 10000] [--against main]
    python -m bench.bench_umap --lanes [--n 10000] [--rounds 2] [--starts own] [--against main]

For the demo world (1,280 images, toy CLIP, ICM K = 32) and synthetic clustered embeddings
(the SCM's, 7 classes, 4 domains, D = 512, ``--n`` rows, ICM K = 64), BLAS on one thread as in
the dashboard, it lays out the full space, then the invariant space started from it: "today"
(the checkout of ``--against``, else this one) with its default epochs and seeds 0 and 1, then
this checkout with seed 0, with each candidate ``FULL/INVARIANT`` epochs and (``--parallel``) in
the opt-in parallel mode; each checkout in a fresh process, one after the other. Per layout:
- seconds, and the pair's against today's seed 0 (ratio);
- "same as today": the mean share of each point's 15 nearest 2-D neighbours that are also
  among its 15 nearest in today's layout (seed 0);
- "embedding": the mean share of its 15 nearest 2-D neighbours that are among its 15 nearest
  in the space laid out (cosine), i.e. how much of the real neighbourhood the picture keeps.
Today's settings with seed 1 are the yardstick: a reseeded layout differs from seed 0 by
itself, so a change whose "same as today" is at least that of seed 1, and whose "embedding"
is no lower, keeps today's picture as well as today's layout keeps its own. One reseed is one
draw: with ``--seeds N`` both checkouts lay out seeds 0..N-1, and a summary compares what this
checkout shares with today at the same seed with what today shares with itself at another seed.
How the two maps of a pair read side by side (``comparability``): a point's median shift between its
full and invariant positions, against random pairs of points, and the 2-D neighbours the maps share.
``--starts``: this checkout's invariant layouts from another start at every seed, Procrustes-aligned
to the full layout after (issue 19: a start that does not wait for the full layout lets the two
layouts run side by side): "own" (umap's spectral start of the invariant space), "quick N" (the full
space laid out in N epochs). ``--world-seed``: the synthetic world's SCM seed; ``--toy-worlds``: seeded toy
worlds of bench.model_choice besides the demo (toy CLIP, their shifted domain the target, ICM K = 32).

``--fresh``: the first layout (full space, ``--n`` synthetic rows) in a new Python process, three
processes one after the other on one new, empty store (so numba's cache starts empty): seconds
of the layout call (umap's import, numba compiling or loading its kernels, the layout) and of the
whole process.

``--profile``: where the time of a pair of synthetic layouts goes, by stage (neighbours, fuzzy simplicial
set, spectral start, epochs, Procrustes), this checkout and ``--against``'s, each in a fresh process.

``--lanes``: the pair as the dashboard's server lays it out, jobs of a LayoutWorker with its own processes
(service.full_layout_job + invariant_layout_job, synthetic ``--n`` rows, no store), with one lane (one
process: the layouts one after the other) and with two, in one fresh process, the lanes warmed first
(``warm()``), this checkout's and (``--against``) that revision's, one after the other; then a K change
(the invariant layout of another fit, the full one done). Seconds from
submission to the layouts, ``--rounds`` times each, whether both give the same layouts, bit for bit,
as reduce.layout_2d in one process, and the lanes' peak resident memory. With ``--starts own``, also the
pair whose invariant layout is a job of its own from its own start, beside the full one (aligned after),
and its K change, and the pair whose invariant job starts from the full space laid out in 30 epochs there.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
K_NEIGHBOURS = 15


def _neighbours_2d(xy: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    ids = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy, return_distance=False)
    return _drop_self(ids, k)


def _drop_self(ids: np.ndarray, k: int) -> np.ndarray:
    rows = np.arange(len(ids))[:, None]
    keep = ids != rows
    return np.stack([row[mask][:k] for row, mask in zip(ids, keep)])


def _neighbours_hd(X: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    from clip_icm.embeddings import unit_rows
    from clip_icm.reduce import exact_neighbours

    return _drop_self(exact_neighbours(unit_rows(np.asarray(X, dtype=np.float32)), k + 1)[0], k)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each row's neighbours in ``a`` that are also in ``b`` (same k)."""
    return float(np.mean([len(np.intersect1d(x, y, assume_unique=True)) / a.shape[1] for x, y in zip(a, b)]))


# Run in the checkout measured: argv[1] the data (.npz), argv[2] the runs (JSON), argv[3] where its layouts go.
CHILD = r'''
import json, os, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
threadpool_limits(1, user_api="blas")  # as the dashboard runs
from clip_icm import reduce
reduce.warm_up()
data, runs, layouts, seconds = np.load(sys.argv[1]), json.loads(sys.argv[2]), {}, {}
fulls = {}
for run in runs:
    extra = {"parallel": True} if run["parallel"] else {}  # an older checkout has no such argument
    if extra and not fulls.get("parallel"):  # its kernel compiled (or loaded) before it is timed; runs last,
        reduce.layout_2d(np.random.default_rng(0).normal(size=(64, 8)), parallel=True)  # its threads idle after
        fulls["parallel"] = True
    X_full, X_inv = data[run["data"] + " full"], data[run["data"] + " invariant"]
    same_full = (run["data"], run["seed"], run["full"], run["parallel"])
    start = time.perf_counter()
    if same_full in fulls:
        full, full_s = fulls[same_full], None
    else:
        full = reduce.layout_2d(X_full, seed=run["seed"], n_epochs=run["full"], **extra)
        full_s = time.perf_counter() - start
        fulls[same_full] = full
    middle = time.perf_counter()
    start = run.get("start", "full")
    if start == "full":  # today's: started from the full layout, aligned to it
        invariant = reduce.layout_2d(X_inv, init=full, seed=run["seed"], n_epochs=run["invariant"], **extra)
    else:  # "own": umap's spectral start of this space; "quick N": the full space laid out in N epochs; aligned after
        begin = None if start == "own" else reduce.layout_2d(X_full, seed=run["seed"], n_epochs=int(start.split()[1]), **extra)
        invariant = reduce.layout_2d(X_inv, init=begin, seed=run["seed"], n_epochs=run["invariant"], **extra)
        invariant = reduce.procrustes_align(invariant, full)
    seconds[run["name"]] = (full_s, time.perf_counter() - middle, os.getloadavg()[0])
    layouts[run["name"] + " full"], layouts[run["name"] + " invariant"] = full, invariant
np.savez(sys.argv[3], **layouts)
print("RESULT " + json.dumps(seconds))
'''


def _run(root: Path, data: Path, runs: list[dict], scratch: Path) -> tuple[dict, dict]:
    """The layouts and seconds of ``runs`` in the checkout at ``root`` (a fresh process)."""
    out = scratch / f"layouts {len(list(scratch.iterdir()))}.npz"
    env = {**os.environ, "PYTHONPATH": str(root), "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(data), json.dumps(runs), str(out)], cwd=root, env=env,
                          capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"the layouts in {root} failed:\n{done.stderr[-3000:]}")
    return dict(np.load(out)), json.loads(line[len("RESULT "):])


def _checkout(rev: str, scratch: Path) -> Path:
    other = scratch / "other"
    subprocess.run(["git", "worktree", "add", "--detach", str(other), rev], cwd=ROOT, check=True, capture_output=True)
    return other


def _results_per_checkout(script: str, args: list[str], scratch: Path, against: str | None, what: str) -> dict:
    """``script``'s RESULT line (JSON), run with ``args`` in a fresh process in this checkout and, with
    ``against``, in that revision's (a worktree in ``scratch``, removed after), by checkout name."""
    roots = {"this checkout": ROOT}
    if against:
        roots[against] = _checkout(against, scratch)
    results = {}
    try:
        for name, root in roots.items():
            env = {**os.environ, "PYTHONPATH": str(root), "OPENBLAS_NUM_THREADS": "1"}
            done = subprocess.run([sys.executable, "-c", script, *args], cwd=root, env=env, capture_output=True,
                                  text=True, check=False)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"{what} in {root} failed:\n{done.stderr[-3000:]}")
            results[name] = json.loads(line[len("RESULT "):])
    finally:
        if against:
            subprocess.run(["git", "worktree", "remove", "--force", str(roots[against])], cwd=ROOT, capture_output=True)
    return results


def comparability(full: np.ndarray, invariant: np.ndarray) -> tuple[float, float, float]:
    """How alike the two maps of a pair read side by side: the median distance between a point's full and
    invariant positions, in units of the full layout's RMS radius; the same for random pairs of points
    (chance: a seeded permutation of the invariant rows); and the mean share of a point's 15 nearest 2-D
    neighbours on the full map that are also its 15 nearest on the invariant one."""
    radius = float(np.sqrt(((full - full.mean(axis=0)) ** 2).sum(axis=1).mean()))
    shuffled = invariant[np.random.default_rng(0).permutation(len(invariant))]
    shift = float(np.median(np.linalg.norm(full - invariant, axis=1))) / radius
    chance = float(np.median(np.linalg.norm(full - shuffled, axis=1))) / radius
    return shift, chance, overlap(_neighbours_2d(full), _neighbours_2d(invariant))


def compare(datasets: dict[str, tuple[np.ndarray, np.ndarray]], candidates: list[tuple[int, int]],
            parallel: bool, against: str | None, seeds: int = 2,
            starts: tuple[str, ...] = ()) -> tuple[list[str], list[str], list[str]]:
    """The table's rows, per data set and space the summary over ``seeds`` seeds, and per data set and path
    the pair's comparability over those seeds. ``starts``: invariant layouts of this checkout from another
    start ("own", "quick N"; see CHILD), aligned to the full layout after, at every seed."""
    import tempfile

    from clip_icm.reduce import DEFAULT_EPOCHS

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        data = scratch / "data.npz"
        np.savez(data, **{f"{name} {space}": X for name, pair in datasets.items()
                          for space, X in zip(("full", "invariant"), pair)})

        def runs(*cells: tuple) -> list[dict]:
            return [{"name": f"{name}: {label}", "data": name, "seed": seed, "full": f, "invariant": i, "parallel": par,
                     "start": start} for name in datasets for label, seed, f, i, par, start in cells]

        mine = runs(*[(f"this checkout, seed {seed}", seed, DEFAULT_EPOCHS, DEFAULT_EPOCHS, False, "full")
                      for seed in range(seeds)],
                    *[(f"this checkout, {start} start, seed {seed}", seed, DEFAULT_EPOCHS, DEFAULT_EPOCHS, False, start)
                      for start in starts for seed in range(seeds)],
                    *[(f"this checkout, {f}/{i} epochs", 0, f, i, False, "full") for f, i in candidates],
                    *([("this checkout, parallel (opt-in)", 0, DEFAULT_EPOCHS, DEFAULT_EPOCHS, True, "full")]
                      if parallel else []))
        today = runs(*[(f"today, seed {seed}", seed, DEFAULT_EPOCHS, DEFAULT_EPOCHS, False, "full") for seed in range(seeds)])
        layouts, seconds = _run(ROOT, data, mine, scratch)
        if against:
            other = _checkout(against, scratch)
            try:
                today_layouts, today_seconds = _run(other, data, today, scratch)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, capture_output=True)
        else:
            today_layouts, today_seconds = _run(ROOT, data, today, scratch)
    layouts.update(today_layouts)
    seconds.update(today_seconds)
    rows, summary, pairs = [], [], []
    for name, (X_full, X_inv) in datasets.items():
        hd = {"full": _neighbours_hd(X_full), "invariant": _neighbours_hd(X_inv)}
        ref = {space: _neighbours_2d(layouts[f"{name}: today, seed 0 {space}"]) for space in hd}
        base = sum(seconds[f"{name}: today, seed 0"][:2])
        for run in [r["name"] for r in today + mine if r["data"] == name]:
            full_s, inv_s, load = seconds[run]
            cells = []
            for space in ("full", "invariant"):
                nn = _neighbours_2d(layouts[f"{run} {space}"])
                cells.append(f"{overlap(nn, ref[space]):.3f} | {overlap(nn, hd[space]):.3f}")
            shift, chance, shared = comparability(layouts[f"{run} full"], layouts[f"{run} invariant"])
            pair = None if full_s is None else full_s + inv_s
            rows.append(f"| {run} | " + ("(reused)" if full_s is None else f"{full_s:.2f}") + f" | {inv_s:.2f} | "
                        + ("" if pair is None else f"{pair:.2f} ({pair / base:.2f}x)") + f" | {cells[0]} | {cells[1]} | "
                        f"{shift:.3f} ({chance:.3f}) | {shared:.3f} | {load:.1f} |")
        paths = ["today", "this checkout", *[f"this checkout, {start} start" for start in starts]]
        nn = {(who, seed, space): _neighbours_2d(layouts[f"{name}: {who}, seed {seed} {space}"])
              for who in paths for seed in range(seeds) for space in hd}
        for space in hd:
            reseeded = [overlap(nn["today", a, space], nn["today", b, space])
                        for a in range(seeds) for b in range(seeds) if a != b]
            kept_today = np.mean([overlap(nn["today", seed, space], hd[space]) for seed in range(seeds)])
            for who in paths[1:]:
                same_seed = [overlap(nn[who, seed, space], nn["today", seed, space]) for seed in range(seeds)]
                kept = np.mean([overlap(nn[who, seed, space], hd[space]) for seed in range(seeds)])
                summary.append(f"| {name} | {space} | {who} | "
                               f"{np.mean(same_seed):.3f} ({min(same_seed):.3f}-{max(same_seed):.3f}) | "
                               f"{np.mean(reseeded):.3f} ({min(reseeded):.3f}-{max(reseeded):.3f}) | "
                               f"{kept:.3f} | {kept_today:.3f} |")
        for who in paths:
            figures = np.array([comparability(layouts[f"{name}: {who}, seed {seed} full"],
                                              layouts[f"{name}: {who}, seed {seed} invariant"]) for seed in range(seeds)])
            shift, chance, shared = figures.T
            pairs.append(f"| {name} | {who} | {shift.mean():.3f} ({shift.min():.3f}-{shift.max():.3f}) | {chance.mean():.3f} | "
                         f"{(chance - shift).mean() / chance.mean():.2f} | {shared.mean():.3f} |")
    return rows, summary, pairs


def _demo(world: str = "demo") -> tuple[np.ndarray, np.ndarray]:
    """The demo's embeddings (toy CLIP) and their ICM projection, or those of a seeded toy world of
    bench.model_choice (``world``: its name there), opened as a folder, its shifted domain the target."""
    from clip_icm import evaluation as ev
    from clip_icm import service

    if world == "demo":
        emb = service.load_embeddings(service.EmbeddingRequest())
        target = service.default_target(emb, "demo")
    else:
        from bench.model_choice import WORLDS, world_args
        from clip_icm.toydomains import DEMO_RECIPE

        emb = service.load_embeddings(service.EmbeddingRequest(source="folder", root=world_args(world)[1]))
        target = WORLDS[world].get("target_domain", DEMO_RECIPE.target_domain)
    fit = service.fit(emb, target, "icm", ev.EvalConfig(n_components=32, lam=1e4, methods=("icm",)))
    return emb.features, fit.transform(emb.features)


def _synthetic(n: int, world_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from clip_icm import evaluation as ev
    from clip_icm import service
    from clip_icm.scm import SCMConfig, make_embedding_set

    emb = make_embedding_set(SCMConfig(n_invariant=32, n_variant=480, n_classes=7, seed=world_seed), n_per_domain=n // 4)
    fit = service.fit(emb, "sketch", "icm", ev.EvalConfig(n_components=64, lam=1e4, methods=("icm",)))
    return emb.features, fit.transform(emb.features)


_FRESH = """
import sys, time
from threadpoolctl import threadpool_limits
from clip_icm.scm import SCMConfig, make_embedding_set
emb = make_embedding_set(SCMConfig(n_invariant=32, n_variant=480, n_classes=7), n_per_domain=int(sys.argv[1]) // 4)
with threadpool_limits(1, user_api="blas"):
    start = time.perf_counter()
    from clip_icm import reduce
    reduce.layout_2d(emb.features)
    print(time.perf_counter() - start)
"""


def fresh(n: int) -> list[str]:
    import tempfile

    root = ROOT
    out = []
    with tempfile.TemporaryDirectory() as store:
        env = {**os.environ, "CLIP_ICM_CACHE": store, "PYTHONPATH": str(root)}
        for run in range(1, 4):
            start = time.perf_counter()
            text = subprocess.run([sys.executable, "-c", _FRESH, str(n)], env=env, cwd=root, check=True,
                                  capture_output=True, text=True).stdout
            total = time.perf_counter() - start
            out.append(f"process {run} ({'empty' if run == 1 else 'filled'} numba cache): first layout of {n:,} rows "
                       f"{float(text.split()[-1]):.1f} s, whole process {total:.1f} s "
                       f"(load average {os.getloadavg()[0]:.1f})")
    return out


# Run in the checkout measured: argv[1] the data (.npz, "full" and "invariant"); prints the seconds of
# each stage of the pair (cProfile's cumulative time of the functions that do them).
_PROFILE = r'''
import cProfile, json, os, pstats, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
threadpool_limits(1, user_api="blas")
from clip_icm import reduce
reduce.warm_up()
data = np.load(sys.argv[1])
STAGES = {"exact_neighbours": "neighbours (matrix products, partial sorts)", "fuzzy_simplicial_set": "fuzzy simplicial set",
          "spectral_layout": "spectral start", "optimize_layout_euclidean": "epochs", "optimize_layout": "epochs",
          "procrustes_align": "Procrustes"}  # epochs: umap's (an older checkout) or layout_epochs' kernel
out = {}
full = None
for space in ("full", "invariant"):
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    xy = reduce.layout_2d(data[space], init=full)
    profile.disable()
    out[f"{space}: whole layout"] = time.perf_counter() - start
    full = xy if full is None else full
    for (_, _, name), row in pstats.Stats(profile).stats.items():
        if name in STAGES:
            out[f"{space}: {STAGES[name]}"] = out.get(f"{space}: {STAGES[name]}", 0.0) + row[3]
out["load average"] = os.getloadavg()[0]
print("RESULT " + json.dumps(out))
'''


def profile(n: int, against: str | None) -> list[str]:
    """Where a pair of ``n``-point layouts spends its time, this checkout (and ``against``'s), in fresh processes."""
    import tempfile

    X_full, X_inv = _synthetic(n)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        np.savez(scratch / "data.npz", full=X_full, invariant=X_inv)
        results = _results_per_checkout(_PROFILE, [str(scratch / "data.npz")], scratch, against, "the profile")
    names = list(results)
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    rows = ["| stage | " + " | ".join(f"{name} (s)" for name in names) + " |", "|---|" + "---|" * len(names)]
    rows += [f"| {key} | " + " | ".join(f"{results[name][key]:.2f}" if key in results[name] else "-" for name in names) + " |"
             for key in keys]
    return rows


# Run in this checkout: argv[1] the number of rows, argv[2] the rounds, argv[3] "own" for the own-start pair too;
# prints seconds per lane count.
_LANES = r'''
import functools, json, os, sys, time
import numpy as np
from threadpoolctl import threadpool_limits
threadpool_limits(1, user_api="blas")
from clip_icm import evaluation as ev, reduce, service
from clip_icm.scm import SCMConfig, make_embedding_set
from clip_icm.service.layout_worker import LayoutWorker

emb = make_embedding_set(SCMConfig(n_invariant=32, n_variant=480, n_classes=7), n_per_domain=int(sys.argv[1]) // 4)
ids = service.plot_ids(emb)
fits = {K: service.fit(emb, "sketch", "icm", ev.EvalConfig(n_components=K, lam=1e4, methods=("icm",))) for K in (64, 65)}
reference = reduce.layout_2d(emb.features[ids])
reference = (reference, reduce.layout_2d(fits[64].transform(emb.features[ids]), init=reference))
if sys.argv[3] == "own":
    reference_own = reduce.procrustes_align(reduce.layout_2d(fits[64].transform(emb.features[ids])), reference[0])
out, peaks = {}, {}


def peak_of_children_mb():
    peaks = [0.0]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as status:
                fields = dict(line.split(":", 1) for line in status)
        except OSError:
            continue
        if int(fields["PPid"]) == os.getpid() and "VmHWM" in fields:
            peaks.append(int(fields["VmHWM"].split()[0]) / 1024)
    return max(peaks)


for lanes in (1, 2):
    worker = LayoutWorker(separate_process=True, processes=lanes)
    worker.warm()
    worker._warming.join()
    for rnd in range(int(sys.argv[2])):
        worker.forget()
        start = time.perf_counter()
        inv = service.invariant_layout_job(emb, ids, "K 64", lambda: fits[64], "invariant", worker=worker)
        full = service.full_layout_job(emb, ids, worker=worker)
        assert worker.wait_idle(600) and inv.error() is None, inv.error()
        out.setdefault(f"{lanes} lane(s): pair (s)", []).append(time.perf_counter() - start)
        same = np.array_equal(full.result(), reference[0]) and np.array_equal(inv.result(), reference[1])
        out[f"{lanes} lane(s): same as reduce.layout_2d"] = [float(same)]
        start = time.perf_counter()
        changed = service.invariant_layout_job(emb, ids, "K 65", lambda: fits[65], "invariant 65", worker=worker)
        assert worker.wait_idle(600) and changed.error() is None, changed.error()
        out.setdefault(f"{lanes} lane(s): K change, invariant layout (s)", []).append(time.perf_counter() - start)
        if sys.argv[3] == "own":  # the invariant layout from its own start beside the full one, aligned after (not the default)
            worker.forget()
            start = time.perf_counter()
            full = service.full_layout_job(emb, ids, worker=worker)
            own = worker.submit("own 64", lambda: worker.lay_out(fits[64].transform(emb.features[ids])), label="own",
                                group=emb.key)
            assert worker.wait_idle(600) and own.error() is None, own.error()
            aligned = reduce.procrustes_align(own.result(), full.result())
            out.setdefault(f"{lanes} lane(s), own start: pair (s)", []).append(time.perf_counter() - start)
            same = np.array_equal(aligned, reference_own)
            out[f"{lanes} lane(s), own start: same as reduce.layout_2d"] = [float(same)]
            start = time.perf_counter()
            own = worker.submit("own 65", lambda: worker.lay_out(fits[65].transform(emb.features[ids])), label="own 65",
                                group=emb.key)
            assert worker.wait_idle(600) and own.error() is None, own.error()
            reduce.procrustes_align(own.result(), full.result())
            out.setdefault(f"{lanes} lane(s), own start: K change, invariant layout (s)", []).append(time.perf_counter() - start)
            worker.forget()  # "quick 30": the invariant layout's job lays the full space out in 30 epochs as its start first
            start = time.perf_counter()
            full = service.full_layout_job(emb, ids, worker=worker)
            quick_start = functools.partial(reduce.layout_2d, n_epochs=30)  # in the job's lane
            quick = worker.submit("quick 64", lambda: worker.lay_out(
                fits[64].transform(emb.features[ids]), init=worker._in_process(worker._lane(), quick_start, emb.features[ids])),
                label="quick", group=emb.key)
            assert worker.wait_idle(600) and quick.error() is None, quick.error()
            reduce.procrustes_align(quick.result(), full.result())
            out.setdefault(f"{lanes} lane(s), quick 30 start: pair (s)", []).append(time.perf_counter() - start)
    out[f"{lanes} lane(s): peak memory of the largest lane (MB)"] = [peak_of_children_mb()]
    out[f"{lanes} lane(s): load average"] = [os.getloadavg()[0]]
print("RESULT " + json.dumps(out))
'''


def lanes(n: int, rounds: int, own: bool = False, against: str | None = None) -> list[str]:
    """``own``: also the pair with the invariant layout from its own start, a job beside the full one's, aligned after.
    ``against``: the same in that revision's checkout, after this one's, in a fresh process (a column each)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch_name:
        results = _results_per_checkout(_LANES, [str(n), str(rounds), "own" if own else "-"], Path(scratch_name),
                                        against, "the lanes' layouts")
    names = list(results)
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    rows = ["| measurement | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    return rows + [f"| {key} | " + " | ".join(" / ".join(f"{v:.2f}" for v in results[name].get(key, [])) or "-"
                                               for name in names) + " |" for key in keys]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="time the first layout in new processes")
    parser.add_argument("--profile", action="store_true", help="where a synthetic pair's time goes, by stage")
    parser.add_argument("--lanes", action="store_true", help="the pair as the server's layout worker lays it out, 1 and 2 lanes")
    parser.add_argument("--rounds", type=int, default=2, help="--lanes: pairs per lane count")
    parser.add_argument("--against", metavar="REV", help="today's layouts from this git revision (default: this checkout)")
    parser.add_argument("--candidates", nargs="*", default=[], metavar="FULL/INVARIANT",
                        help="epochs to try in this checkout, e.g. 200/100")
    parser.add_argument("--parallel", action="store_true", help="also the opt-in parallel layouts of this checkout")
    parser.add_argument("--starts", nargs="*", default=[], metavar="START",
                        help='invariant layouts from another start, aligned after: "own" (its own spectral start), '
                             '"quick N" (the full space laid out in N epochs)')
    parser.add_argument("--toy-worlds", nargs="*", default=[], metavar="NAME",
                        help="also these seeded toy worlds of bench.model_choice (e.g. s7-cartoon-rev), ICM K = 32")
    parser.add_argument("--world-seed", type=int, default=0, help="the synthetic world's SCM seed")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 of today's and this checkout's layouts (N >= 2)")
    args = parser.parse_args()
    candidates = [tuple(int(x) for x in c.split("/")) for c in args.candidates]
    if args.fresh:
        print(f"# {platform.node()}, {os.cpu_count()} CPUs, BLAS 1 thread, load average {os.getloadavg()[0]:.1f}")
        print("\n".join(fresh(args.n)))
        return
    if args.lanes:
        print(f"# {platform.node()}, {os.cpu_count()} CPUs, BLAS 1 thread, load average {os.getloadavg()[0]:.1f}; "
              f"synthetic {args.n:,} x 512, invariant K = 64, then 65; seconds of each round")
        print("\n".join(lanes(args.n, args.rounds, "own" in args.starts, args.against)))
        return
    if args.profile:
        print(f"# {platform.node()}, {os.cpu_count()} CPUs, BLAS 1 thread, load average {os.getloadavg()[0]:.1f}; "
              f"synthetic {args.n:,} x 512, invariant K = 64; full, then invariant started from it")
        print("\n".join(profile(args.n, args.against)))
        return
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, BLAS 1 thread, load average {os.getloadavg()[0]:.1f}; "
          f"today: {args.against or 'this checkout'}; 15 neighbours; overlaps: same as today | embedding")
    with threadpool_limits(1, user_api="blas"):
        datasets = {} if args.no_demo else {"demo 1,280": _demo()}
        for world in args.toy_worlds:
            datasets[f"toy world {world}"] = _demo(world)
        datasets[f"synthetic {args.n:,}" + (f" (world seed {args.world_seed})" if args.world_seed else "")] = \
            _synthetic(args.n, args.world_seed)
    rows, summary, pairs = compare(datasets, candidates, args.parallel, args.against, args.seeds, tuple(args.starts))
    print("\n| layouts | full (s) | invariant (s) | pair (s, against today's) | full: same as today | full: embedding "
          "| invariant: same as today | invariant: embedding | pair: shift (chance) | pair: shared 2-D neighbours | load |"
          "\n|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nOver seeds 0-{args.seeds - 1}: 2-D neighbours a path shares with today at the same seed, against "
          "what today shares with itself at another seed (mean, min-max); embedding neighbours kept (mean)\n")
    print("| data | space | path | this vs today, same seed | today vs today, other seed | embedding: this | embedding: today |"
          "\n|---|---|---|---|---|---|---|")
    print("\n".join(summary))
    print(f"\nThe pair side by side, over seeds 0-{args.seeds - 1}: a point's median shift between its full and invariant "
          "positions (full layout's RMS radius = 1; mean, min-max), the same for random pairs of points (chance), the "
          "share of chance's distance the pair keeps closer ((chance - shift) / chance), 2-D neighbours the two maps share\n")
    print("| data | path | shift | chance | closer than chance | shared 2-D neighbours |\n|---|---|---|---|---|---|")
    print("\n".join(pairs))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
