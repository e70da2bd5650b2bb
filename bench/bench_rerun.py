"""A K change in the dashboard at 10,000 images: how long the rerun takes and when the new map is drawn,
this checkout against a git revision in one run (streamlit.testing.v1.AppTest, no browser).

    python -m bench.bench_rerun [--against main] [--n 10000] [--no-speculated] [--moves 1] [--stride 1] [--restart]

Each checkout runs in a fresh process with an empty store: synthetic SCM embeddings (D = 512, 7 classes,
4 domains: bench_refit's), K and λ from the sliders, UMAP's kernels compiled beforehand (reduce.warm_up).
Printed, in seconds:
- first page: the run that draws the accuracy chart, and until both maps are drawn;
- K change (one step), then a λ change (one step), ``--moves`` times each (medians, and the slowest rerun):
  until the rerun returns (the numbers on the page are the new setting's), and until the invariant map of
  the new setting is drawn. Where the layouts run in the background (layout_worker), the map is drawn
  by the first rerun after the worker is done (the page's status polls every second: a browser sees it
  up to a second later); where they do not, by the K change's own rerun;
- every move's rerun, when its numbers were made and when a rerun drew them: where the numbers are made off
  the page (explorer.EVALUATE_AHEAD_FROM and up) a move onto a setting the store lacks returns with the last
  numbers and a status; "made" is when its background job finished, "drawn" the rerun after it (the page's
  status polls every second: a browser sees them up to a second later); elsewhere both are the rerun's own.
  ``--stride 2`` moves K by two (a setting the evaluation ahead did not make); how many reruns showed the
  pending status;
- this checkout only, with the selection rule on: once its speculative layouts are done, a K change
  onto a cell it considered: the rerun, and whether that rerun drew the new map (``--no-speculated``:
  not measured; at 50,000 images the speculative layouts alone take minutes);
- where the layouts run in the background: when the K changes' layouts started and finished (medians,
  seconds after the change);
- ``--restart``: instead, a server restarted on a store that holds the first page (one process fills
  the store, its layouts and model choices, a second, measured, draws the first page from it): that
  first page, then, after RESTART_PAUSE_S seconds (a user reading it), the moves;
- memory, in MB: the peak resident memory of the page's process, of the largest process it started
  (sampled every 0.5 s while it lives: the layout process, or the model choice's) and of the model choice's
  process (spawned at a lowered priority; a checkout that chooses in a thread has none), and the seconds
  the synthetic embeddings take to make (part of the first page's run: the issue's 50k goal counts the first
  table from cached embeddings);
- the first page's accuracy table: when the page had it (``dashboard.cached.accuracy_view`` returned; the
  page writes it next), from the run's start and from the moment its embeddings were made;
- when the model choice of every target (the background worker's) was done, from the first page's start
  (nan where it still ran once the moves were measured: it is not waited for).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in the checkout measured (its dashboard/app.py and clip_icm), argv[1]: the number of images.
CHILD = r'''
import functools, json, os, re, resource, statistics, sys, threading, time
from streamlit.testing.v1 import AppTest
from threadpoolctl import threadpool_limits
from clip_icm import reduce, scm, service

threadpool_limits(1, user_api="blas")  # as the dashboard runs
# the synthetic source at D = 512 and argv[1] rows (its slider stops at 500 per domain)
scm.SCMConfig = functools.partial(scm.SCMConfig, n_invariant=32, n_variant=480, n_classes=7)
make_embedding_set = scm.make_embedding_set
stamps = {}  # when the page's embeddings were made and its first accuracy table was (monotonic seconds)


def embedded(config, n_per_domain, **kw):
    emb = make_embedding_set(config, n_per_domain=int(sys.argv[1]) // 4, **kw)
    stamps.setdefault("embedded", time.monotonic())
    return emb


scm.make_embedding_set = embedded
from dashboard import cached  # noqa: E402  (the module the page calls for its table)

accuracy_view = cached.accuracy_view


def table_view(*args, **kwargs):  # the page writes the table right after this returns
    view = accuracy_view(*args, **kwargs)
    stamps.setdefault("table", time.monotonic())
    return view


cached.accuracy_view = table_view
reduce.warm_up()
worker = getattr(service, "layout_worker", None)
t0 = time.monotonic()
make_embedding_set(scm.SCMConfig(), n_per_domain=int(sys.argv[1]) // 4)
made = time.monotonic() - t0
peaks = {}  # pid -> (peak resident MB, a spawned process of lowered priority) of the processes this one started


def sample_children():
    while True:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/status") as status:
                    fields = dict(line.split(":", 1) for line in status)
                with open(f"/proc/{pid}/stat") as stat:
                    nice = int(stat.read().rsplit(")", 1)[1].split()[16])
                with open(f"/proc/{pid}/cmdline") as cmdline:
                    spawned = "spawn_main" in cmdline.read()
            except (OSError, ValueError, IndexError):
                continue
            if int(fields["PPid"]) == os.getpid() and "VmHWM" in fields:
                peaks[pid] = (int(fields["VmHWM"].split()[0]) / 1024, spawned and nice > 0)
        time.sleep(0.5)


threading.Thread(target=sample_children, daemon=True).start()


def titles(at):
    return [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]


def drawn(at, k, lam=None):
    setting = f"K = {k}, lam = {lam:g}" if lam is not None else f"K = {k},"
    return any(t.startswith("Invariant space") and setting in t for t in titles(at))


def until_drawn(at, k, t0, lam=None):
    while not drawn(at, k, lam):
        if worker is not None:
            worker().wait_idle(600)
        at.run()
    return time.monotonic() - t0


def page(selection):
    at = AppTest.from_file("dashboard/app.py", default_timeout=900)
    at.query_params["page"] = "explorer"  # "/" is the Story (a revision before it ignores this)
    for key, value in {"ctl_source": "synthetic", "ctl_selection": selection}.items():
        at.session_state[key] = value
    return at


out = {}
at, t0 = page("off"), time.monotonic()
first_page_at = t0
at.run()
out["first page: run (s)"] = time.monotonic() - t0
out["first page: accuracy table (s)"] = stamps["table"] - t0
out["first page: accuracy table after the embeddings (s)"] = stamps["table"] - stamps["embedded"]
assert any(c.value.replace(",", "").startswith(f"{sys.argv[1]} images") for c in at.caption), "not the number of images asked for"
k = at.sidebar.slider(key="ctl_K").value
if sys.argv[2] == "restart":
    assert drawn(at, k), "the restarted server's first page did not draw its maps from the store"
    time.sleep(float(sys.argv[4]))
else:
    out["first page: until both maps (s)"] = until_drawn(at, k, t0)
if sys.argv[2] == "fill":  # and the model choices the page asked for in the background, stored too
    if getattr(service, "choice_worker", None) is not None:
        service.choice_worker().wait_idle(900)
    print("RESULT {}")
    sys.exit()
lams = [float(option) for option in at.sidebar.select_slider(key="ctl_lam").options]  # dashboard.controls.LAMS
lam = float(at.sidebar.select_slider(key="ctl_lam").value)
moves = {"K": ([], []), "λ": ([], [])}
layout_times = ([], [])  # of the K changes: when their layouts started and finished, after the change
pending_shown = 0  # moves whose rerun returned with the numbers' pending status (a checkout that has one)


def numbers_shown(at, k, lam):
    return any(t.startswith("Accuracy per domain") and f"K = {k}, lam = {lam:g})" in t for t in titles(at))


def until_numbers(at, k, lam, t0):
    """When the move's numbers were made (its background job finished) and when a rerun drew them, after t0; where
    the rerun itself drew them, both are its own time."""
    if numbers_shown(at, k, lam):
        return (time.monotonic() - t0,) * 2
    ahead = service.ahead_worker()
    job = next(j for j in ahead.jobs() if j.label == f"K = {k}, λ = {lam:g}" and j.priority == 0)
    job.future.exception(timeout=600)
    finished = job.finished_at - t0
    at.run()  # what the page's status, polling every second, does once the job is done
    assert numbers_shown(at, k, lam), "the page did not draw the numbers that landed"
    return finished, time.monotonic() - t0


for i in range(int(sys.argv[3])):  # K up one step (or two: --stride), its map, then λ up one step, its map
    for name in moves:
        t0 = time.monotonic()
        if name == "K":
            k += int(sys.argv[5])
            at.sidebar.slider(key="ctl_K").set_value(k).run()
        else:
            lam = lams[lams.index(lam) + 1]
            at.sidebar.select_slider(key="ctl_lam").set_value(lam).run()
        rerun = time.monotonic() - t0
        moves[name][0].append(rerun)
        pending_shown += any(i.value.startswith("Evaluating") for i in at.info)
        numbers_made, drawn_at = until_numbers(at, k, lam, t0)
        out[f"{name} change {i + 1}: rerun (s)"] = rerun
        out[f"{name} change {i + 1}: its numbers made (s)"] = numbers_made
        out[f"{name} change {i + 1}: its numbers drawn (s)"] = drawn_at
        moves[name][1].append(until_drawn(at, k, t0, lam))
        if name == "K" and worker is not None:
            job = next(job for job in worker().jobs() if f"K = {k}, λ = {lam:g})" in job.label)
            layout_times[0].append(job.started_at - t0)
            layout_times[1].append(job.finished_at - t0)
for name, (reruns, maps) in moves.items():
    out[f"{name} change: rerun (s)"] = statistics.median(reruns)
    if len(reruns) > 1:
        out[f"{name} change: rerun, slowest (s)"] = max(reruns)
    out[f"{name} change: until the new invariant map (s)"] = statistics.median(maps)
out["moves whose rerun showed the numbers pending"] = float(pending_shown)
if layout_times[0]:
    out["K change: its layout started (s)"] = statistics.median(layout_times[0])
    out["K change: its layout finished (s)"] = statistics.median(layout_times[1])
if worker is not None and sys.argv[2] == "speculated":
    at = page("source_val")
    at.run()
    worker().wait_idle(900)  # the speculative layouts too
    at.run()
    k, lam = at.sidebar.slider(key="ctl_K").value, at.sidebar.select_slider(key="ctl_lam").value
    cells = {int(m.group(1)) for job in worker().jobs()
             if (m := re.search(r"K = (\d+), λ = (\S+)\)", job.label)) and float(m.group(2)) == lam}
    other = min((c for c in cells if c != k), key=lambda c: abs(c - k))
    t0 = time.monotonic()
    at.sidebar.slider(key="ctl_K").set_value(other).run()
    out["K change onto a speculated cell: rerun (s)"] = time.monotonic() - t0
    out["K change onto a speculated cell: map drawn by that rerun (1 = yes)"] = float(drawn(at, other))
if getattr(service, "choice_worker", None) is not None:  # not waited for: at 50,000 images it takes many minutes
    done = [job.finished_at for job in service.choice_worker().jobs() if job.finished_at is not None]
    out["every target's model choice: done after the first page started (s; n/a: still running at the end)"] = (
        max(done) - first_page_at if done else float("nan"))
out["synthetic embeddings: made in (s)"] = made
out["peak memory: page process (MB)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
time.sleep(1.0)  # the children's last sample
out["peak memory: largest process it started (MB)"] = max([mb for mb, _ in peaks.values()], default=0.0)
resident = getattr(service, "evaluation_process", None)  # the kept process of the numbers made off the page
resident = set(resident()._resident._process._processes) if resident and resident()._resident._process else set()
resident = {str(pid) for pid in resident}
lowered = [mb for pid, (mb, low) in peaks.items() if low and pid not in resident]  # the model choice's (background.run)
if lowered:
    out["peak memory: the model choice's process (MB)"] = max(lowered)
if resident & set(peaks):
    out["peak memory: the evaluation process (MB)"] = max(peaks[pid][0] for pid in resident & set(peaks))
print("RESULT " + json.dumps(out))
'''


# --restart: the seconds between the restarted server's first page and the K change (a user reading the page).
RESTART_PAUSE_S = 5.0


def measure(root: Path, n: int, speculated: bool = True, moves: int = 1, restart: bool = False,
            stride: int = 1) -> dict[str, float]:
    modes = ["fill", "restart"] if restart else ["speculated" if speculated else "no"]
    with tempfile.TemporaryDirectory() as store:
        env = {**os.environ, "CLIP_ICM_CACHE": store, "PYTHONPATH": str(root), "OPENBLAS_NUM_THREADS": "1"}
        for mode in modes:
            done = subprocess.run([sys.executable, "-c", CHILD, str(n), mode, str(moves), str(RESTART_PAUSE_S),
                                   str(stride)], cwd=root,
                                  env=env, capture_output=True, text=True, check=False)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"the measurement in {root} ({mode}) failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images (synthetic rows), a multiple of 4")
    parser.add_argument("--against", metavar="REV", help="also measure this git revision, after this checkout")
    parser.add_argument("--no-speculated", action="store_true", help="skip the K change onto a speculated cell")
    parser.add_argument("--moves", type=int, default=1, help="K and λ changes, each (medians and the slowest printed)")
    parser.add_argument("--stride", type=int, default=1,
                        help="K steps per K change (2: a setting no evaluation ahead made, from the second move on)")
    parser.add_argument("--restart", action="store_true",
                        help="a server restarted on a filled store: its first page, then the moves")
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{args.n:,} images, D = 512")
    results = {"this checkout": measure(ROOT, args.n, not args.no_speculated, args.moves, args.restart, args.stride)}
    if args.against:
        with tempfile.TemporaryDirectory() as scratch:
            other = Path(scratch) / "other"
            subprocess.run(["git", "worktree", "add", "--detach", str(other), args.against], cwd=ROOT, check=True,
                           capture_output=True)
            try:
                results[args.against] = measure(other, args.n, not args.no_speculated, args.moves, args.restart,
                                          args.stride)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, capture_output=True)
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)\n")
    names = list(results)
    print("| measurement | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for key in results["this checkout"]:
        print(f"| {key} | " + " | ".join(f"{results[name][key]:.2f}" if key in results[name] else "n/a"
                                         for name in names) + " |")


if __name__ == "__main__":
    main()
