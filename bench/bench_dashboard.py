"""Dashboard timings in a real browser: first full page from a cold start, then a K change.

    python -m bench.bench_dashboard [--source demo|synthetic]

Starts `streamlit run dashboard/app.py` with an EMPTY embedding store (CLIP_ICM_CACHE in a temp
dir: a fresh clone's, which reads the checkout's demo seed, dashboard/demo_store.py, unless
CLIP_ICM_DEMO_STORE=off) in a fresh process (so UMAP pays numba compilation when it lays out),
opens it in headless Chromium and prints:
- first page: seconds from opening the URL to the accuracy chart, and to every plot drawn;
- K change: seconds from pressing the K slider's arrow key to the accuracy chart showing the
  new K, and to the invariant-space UMAP showing it;
- a restart: a fresh server process on the same store, first page again (the first server is
  stopped once its processes are idle: speculative layouts and the UMAP kernels' compilation done);
- for both first pages, the CPU seconds that the server (with the processes it started) and the
  browser (every Chromium process) spent until the accuracy chart showed: on a 2-core machine
  their sum over 2 bounds how soon the chart can come (Linux: read from /proc).

    python -m bench.bench_dashboard --runs 10

the same ten times in turn, then medians and how many runs met issue 19's goals (GOALS).

    python -m bench.bench_dashboard --folder PATH [--store DIR]

the same with a DomainBed-layout folder of your own, chosen in the sidebar as a user would (its
parent is allowed through CLIP_ICM_DATA_ROOTS); ``--store DIR`` starts each server from a copy of
that store instead of an empty one (e.g. one filled by ``python -m clip_icm embed --root PATH``,
which embeds what the dashboard would: then the first page computes no embeddings).

    python -m bench.bench_dashboard --images 50000

the Explorer on N synthetic images (bench_rerun's world: D = 512, 7 classes, 4 domains; the server's
synthetic source made N rows), an empty store, the default K and λ in the address (the selection rule off): seconds to the accuracy chart (the embeddings' making
included, and printed apart) and to both maps; how many points each map draws (every one up to
service.MAP_POINTS, else the stratified sample its title announces) and whether its title says so; then K
moved by one (a neighbour evaluated ahead), to its smallest value (Home: a setting nothing made ahead), and
by one from there, each once the last move's invariant map was drawn:
seconds until the page shows the move (the new numbers, or the status naming the setting being evaluated),
until the new numbers and until the new invariant map; the peak resident memory of the server's process,
of the largest process it started, and of the browser's processes together (sampled every 0.5 s).

    python -m bench.bench_dashboard --against REV [--rounds N]

serves this checkout and git revision REV (checked out into a temporary worktree) in turn, N
rounds interleaved so that both see the same machine, and prints each measurement's median for
both and their ratio (this VM's speed drifts by tens of percent within an hour: only runs side by
side compare).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_browser import CHROMIUM, PLOT_TITLES, _free_port, _wait_http  # noqa: E402


def _title(page, prefix: str) -> str:
    return page.locator(".js-plotly-plot .gtitle", has_text=prefix).first.text_content()


def _wait_title(page, prefix: str, pattern: str, timeout_s: float = 120) -> float:
    start = time.monotonic()
    page.wait_for_function(
        "([p, r]) => [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
        ".some(t => t.textContent.startsWith(p) && new RegExp(r).test(t.textContent))",
        arg=[prefix, pattern], timeout=timeout_s * 1000, polling=50)
    return time.monotonic() - start


def _serve(cache: str, root: Path = ROOT, folder: str | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "CLIP_ICM_CACHE": cache, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    if folder:
        env["CLIP_ICM_DATA_ROOTS"] = str(Path(folder).parent)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.port",
                             str(port), "--server.address", "127.0.0.1"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait_http(url, proc)
    return proc, url


def _processes() -> dict[int, tuple[int, str, float]]:
    """{pid: (parent pid, name, CPU seconds)} of every process; the CPU seconds are user + system,
    its own and those of the children it has waited for (so a process that ended still counts,
    in its parent). Empty where there is no /proc."""
    tick, out = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        name, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        out[int(stat.parent.name)] = (int(fields[1]), name, sum(int(v) for v in fields[11:15]) / tick)
    return out


def _cpu_seconds(root_pid: int) -> tuple[float, float]:
    """CPU seconds so far of the server (``root_pid`` and its descendants) and of every Chromium
    process under this one."""
    procs, children = _processes(), {}
    for pid, (parent, _, _) in procs.items():
        children.setdefault(parent, []).append(pid)

    def tree(pid: int) -> list[int]:
        return [pid] + [q for child in children.get(pid, []) for q in tree(child)]

    server = sum(procs[pid][2] for pid in tree(root_pid) if pid in procs)
    browser = sum(procs[pid][2] for pid in tree(os.getpid()) if "chrom" in procs[pid][1].lower())
    return server, browser


def _type_folder(page, folder: str, tries: int = 3) -> None:
    """Type ``folder`` into the sidebar's path box; typed while the page's first run redraws the
    box, the text can be lost, so retype until the page offers the folder's data sets."""
    for _ in range(tries):
        path = page.get_by_label("DomainBed root folder", exact=True)
        path.fill(folder)
        path.press("Enter")
        try:
            page.get_by_text("Data set", exact=True).wait_for(timeout=15_000)
            return
        except Exception:  # playwright's TimeoutError: type it again
            continue
    raise RuntimeError(f"the dashboard did not take the folder {folder} after {tries} tries")


# Issue 19's goals for the demo (fresh clone, empty caches, headless Chromium, idle machine), by the end
# of a measurement's name: the accuracy chart and both maps of the first page, the chart of a restart.
GOALS = {"(empty store, fresh process) -> accuracy chart": 15, "(empty store, fresh process) -> every plot": 25,
         "restart (store kept, fresh process) -> accuracy chart": 5}


def _first_page(page, url: str, source: str, server_pid: int, folder: str | None = None
                ) -> tuple[float, float, float, float]:
    """Seconds from opening the URL to the accuracy chart, and to every plot drawn; the CPU seconds
    of the server and of the browser until the chart. With ``folder``, the clock includes typing
    its path into the sidebar."""
    cpu_before = _cpu_seconds(server_pid)
    start = time.monotonic()
    page.goto(url + ("/explorer" if source == "demo" else f"/explorer?source={source}"))  # "/" is the Story
    if folder:
        _type_folder(page, folder)
    page.locator(".js-plotly-plot .gtitle", has_text="Accuracy per domain").first.wait_for(timeout=600_000)
    accuracy = time.monotonic() - start
    server, browser = (after - before for after, before in zip(_cpu_seconds(server_pid), cpu_before))
    for title in PLOT_TITLES:
        page.locator(".js-plotly-plot .gtitle", has_text=title).first.wait_for(timeout=600_000)
    return accuracy, time.monotonic() - start, server, browser


def _settle(server_pid: int, quiet_s: float = 3.0, limit_s: float = 180.0) -> None:
    """Wait until the server's processes have spent no CPU for ``quiet_s`` (its background work done:
    speculative layouts, the compilation of UMAP's kernels into the store's numba cache), at most
    ``limit_s``: the state a person restarts a server from, rather than one stopped mid-compilation."""
    deadline, last, quiet_since = time.monotonic() + limit_s, _cpu_seconds(server_pid)[0], time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
        time.sleep(0.5)
        now = _cpu_seconds(server_pid)[0]
        if now - last > 0.05:
            quiet_since = time.monotonic()
        last = now


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=20)


def run(source: str, root: Path = ROOT, folder: str | None = None, store: str | None = None) -> dict[str, float]:
    """The measurements of the module docstring, with the dashboard of the checkout at ``root``."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as scratch, sync_playwright() as p:
        cache = str(Path(scratch) / "store")
        if store:
            shutil.copytree(store, cache)
        else:
            os.mkdir(cache)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        proc, url = _serve(cache, root, folder)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 2000})
            cold_accuracy, cold_all, cold_server, cold_browser = _first_page(page, url, source, proc.pid, folder)
            page.wait_for_timeout(3000)
            k = int(re.search(r"K = (\d+)", _title(page, "Accuracy per domain")).group(1))
            slider = page.locator('[data-testid="stSlider"]', has_text="K (invariant").get_by_role("slider")
            slider.focus()
            page.keyboard.press("ArrowRight")
            t0 = time.monotonic()
            accuracy = _wait_title(page, "Accuracy per domain", f"K = {k + 1},")
            umap = time.monotonic() - t0 + _wait_title(page, "Invariant space", f"K = {k + 1},")
            _settle(proc.pid)
        finally:
            _stop(proc)
        proc, url = _serve(cache, root, folder)  # a restarted server: fresh process, the store kept
        try:
            warm_accuracy, warm_all, warm_server, warm_browser = _first_page(
                browser.new_page(viewport={"width": 1600, "height": 2000}), url, source, proc.pid, folder)
        finally:
            _stop(proc)
        browser.close()
    first = "first page (given store, fresh process)" if store else "first page (empty store, fresh process)"
    return {f"{first} -> accuracy chart": cold_accuracy,
            f"{first} -> every plot": cold_all,
            "K change -> accuracy chart": accuracy, "K change -> invariant UMAP": umap,
            "restart (store kept, fresh process) -> accuracy chart": warm_accuracy,
            "restart (store kept, fresh process) -> every plot": warm_all,
            "first page: CPU seconds to the chart, server": cold_server,
            "first page: CPU seconds to the chart, browser": cold_browser,
            "restart: CPU seconds to the chart, server": warm_server,
            "restart: CPU seconds to the chart, browser": warm_browser}


# Serves the checkout at its working directory with the synthetic source making argv[1] images at D = 512
# (bench_rerun's world; the dashboard's own slider stops at 500 a domain); the rest of argv: streamlit's.
LARGE_SERVER = r'''
import functools, sys, time
from clip_icm import scm

scm.SCMConfig = functools.partial(scm.SCMConfig, n_invariant=32, n_variant=480, n_classes=7)
make_embedding_set, images = scm.make_embedding_set, int(sys.argv[1])


def embedded(config, n_per_domain, **kw):
    start = time.monotonic()
    emb = make_embedding_set(config, n_per_domain=images // 4, **kw)
    print(f"EMBEDDED {time.monotonic() - start:.2f}", flush=True)
    return emb


scm.make_embedding_set = embedded
sys.argv = ["streamlit", "run", "dashboard/app.py", *sys.argv[2:]]
from streamlit.web.cli import main

main()
'''


def _peaks(pids: list[int]) -> dict[int, float]:
    """{pid: peak resident MB (VmHWM)} of those of ``pids`` still alive."""
    out = {}
    for pid in pids:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
            out[pid] = int(fields["VmHWM"].split()[0]) / 1024
        except (OSError, KeyError, ValueError):
            continue
    return out


def run_large(images: int, root: Path = ROOT) -> dict[str, float]:
    """The measurements of ``--images`` (module docstring)."""
    import threading

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as scratch, sync_playwright() as p:
        port, log = _free_port(), Path(scratch) / "server.log"
        env = {**os.environ, "CLIP_ICM_CACHE": str(Path(scratch) / "store"), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(root), "OPENBLAS_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-c", LARGE_SERVER, str(images), "--server.port", str(port),
                                 "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=root, env=env,
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        peaks: dict[str, float] = {"server": 0.0, "started": 0.0, "browser": 0.0}
        sampling = True

        def sample() -> None:
            while sampling:
                procs, children = _processes(), {}
                for pid, (parent, _, _) in procs.items():
                    children.setdefault(parent, []).append(pid)

                def tree(pid: int) -> list[int]:
                    return [pid] + [q for child in children.get(pid, []) for q in tree(child)]

                server = _peaks(tree(proc.pid))
                peaks["server"] = max(peaks["server"], server.pop(proc.pid, 0.0))
                peaks["started"] = max([peaks["started"], *server.values()])
                browser = [pid for pid in tree(os.getpid()) if "chrom" in procs.get(pid, (0, "", 0))[1].lower()]
                rss = 0.0
                for pid in browser:
                    try:
                        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
                        rss += int(fields["VmRSS"].split()[0]) / 1024
                    except (OSError, KeyError, ValueError):
                        continue
                peaks["browser"] = max(peaks["browser"], rss)
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()
        out: dict[str, float] = {}
        try:
            _wait_http(url, proc)
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1600, "height": 2000})
            start = time.monotonic()
            from clip_icm import defaults

            # K and λ in the address, as a shared link has them: the selection rule off, as in bench_rerun
            page.goto(url + f"/explorer?source=synthetic&K={defaults.k(512)}&lam={defaults.LAM:g}")
            page.locator(".js-plotly-plot .gtitle", has_text="Accuracy per domain").first.wait_for(timeout=900_000)
            out["first page -> accuracy chart (s)"] = time.monotonic() - start
            made = [float(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("EMBEDDED")]
            out["of which the synthetic embeddings made in (s)"] = made[0] if made else float("nan")
            for title in ("Full CLIP space", "Invariant space"):
                page.locator(".js-plotly-plot .gtitle", has_text=title).first.wait_for(timeout=900_000)
            out["first page -> both maps (s)"] = time.monotonic() - start
            for title in ("Full CLIP space", "Invariant space"):
                drawn = page.evaluate(
                    "(p) => { const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => "
                    "(g.querySelector('.gtitle') || {}).textContent?.startsWith(p)); "
                    "return gd ? [(gd._fullData || gd.data || []).reduce((n, t) => n + (t.x ? t.x.length : 0), 0), "
                    "gd.querySelector('.gtitle').textContent] : [-1, ''] }", title)
                out[f"{title}: points drawn"] = float(drawn[0])
                out[f"{title}: title names the sample (1 = yes)"] = float("stratified sample" in drawn[1]
                                                                           or drawn[0] >= images)
            page.wait_for_timeout(5000)  # a user reading the page; the settings next to it evaluated ahead meanwhile
            k = int(re.search(r"K = (\d+)", _title(page, "Accuracy per domain")).group(1))
            slider = page.locator('[data-testid="stSlider"]', has_text="K (invariant").get_by_role("slider")
            smallest = 1  # where dashboard.controls' K slider starts
            for name, key, new_k in (("K + 1", "ArrowRight", k + 1), ("K to its smallest (Home)", "Home", smallest),
                                     ("then K + 1", "ArrowRight", smallest + 1)):
                slider.focus()
                t0 = time.monotonic()
                page.keyboard.press(key)
                shown = page.wait_for_function(
                    "(k) => [...document.querySelectorAll('[data-testid=\"stAlert\"]')].some(a => "
                    "a.textContent.includes('Evaluating K = ' + k + ',')) ? 'status' : "
                    "[...document.querySelectorAll('.js-plotly-plot .gtitle')].some(t => "
                    "t.textContent.startsWith('Accuracy per domain') && t.textContent.includes('K = ' + k + ',')) "
                    "&& 'numbers'", arg=new_k, timeout=600_000, polling=50).json_value()
                shown_at = time.monotonic() - t0
                out[f"{name}: the page shows the move (s)"] = shown_at
                out[f"{name}: ... with the status, numbers pending (1 = yes)"] = float(shown == "status")
                # (waited for only behind the status: a chart drawn again for a later rerun, the maps', lacks its
                # title for a moment, which a second wait would count)
                out[f"{name}: the new numbers (s)"] = (time.monotonic() - t0 + _wait_title(
                    page, "Accuracy per domain", f"K = {new_k},", 600) if shown == "status" else shown_at)
                out[f"{name}: the new invariant map (s)"] = time.monotonic() - t0 + _wait_title(
                    page, "Invariant space", f"K = {new_k},", 900)
            browser.close()
        finally:
            sampling = False
            time.sleep(0.6)
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    out["peak memory: server process (MB)"] = peaks["server"]
    out["peak memory: largest process it started (MB)"] = peaks["started"]
    out["peak memory: the browser's processes together (MB)"] = peaks["browser"]
    return out


def against(source: str, rev: str, rounds: int, folder: str | None = None, store: str | None = None) -> None:
    """This checkout and ``rev`` interleaved, ``rounds`` times; medians and ratios."""
    with tempfile.TemporaryDirectory() as scratch:
        other = Path(scratch) / "other"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {"this": [], rev: []}
            for _ in range(rounds):
                for name, root in (("this", ROOT), (rev, other)):
                    runs[name].append(run(source, root, folder, store))
                    print(f"{name} (load average {os.getloadavg()[0]:.1f} after it): "
                          + ", ".join(f"{v:.1f}" for v in runs[name][-1].values()), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, capture_output=True)
    print(f"\n| {source}: median of {rounds} | this checkout (s) | {rev} (s) | ratio |\n|---|---|---|---|")
    for key in runs["this"][0]:
        new, old = (statistics.median(r[key] for r in runs[name]) for name in ("this", rev))
        print(f"| {key} | {new:.1f} | {old:.1f} | {new / old:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["demo", "synthetic"], default="demo")
    parser.add_argument("--folder", metavar="PATH", help="open this DomainBed-layout folder instead of --source")
    parser.add_argument("--store", metavar="DIR", help="start each server from a copy of this store, not an empty one")
    parser.add_argument("--against", metavar="REV", help="also serve this git revision, interleaved")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, help="the Explorer on this many synthetic images (a multiple of 4)")
    parser.add_argument("--runs", type=int, default=1,
                        help="without --against: this many runs in turn, then medians and how many met issue 19's goals")
    args = parser.parse_args()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.images:
        for name, value in run_large(args.images).items():
            print(f"{args.images:,} images: {name}: {value:.2f}", flush=True)
        print(f"(load average {os.getloadavg()[0]:.1f} at the end)")
        return
    source = "folder" if args.folder else args.source
    if args.against:
        against(source, args.against, args.rounds, args.folder, args.store)
        return
    label = f"folder {args.folder}" if args.folder else source
    if args.runs == 1:
        for name, seconds in run(source, folder=args.folder, store=args.store).items():
            print(f"{label}: {name}: {seconds:.1f}{'' if 'CPU' in name else ' s'}")
        return
    runs = []
    for i in range(args.runs):
        runs.append(run(source, folder=args.folder, store=args.store))
        print(f"run {i + 1} (load average {os.getloadavg()[0]:.1f} after it): "
              + ", ".join(f"{v:.1f}" for v in runs[-1].values()), flush=True)
    print(f"\n| {label}: {args.runs} runs | median | min | max | goal met |\n|---|---|---|---|---|")
    for key in runs[0]:
        values = [r[key] for r in runs]
        goal = next((f"{sum(v <= limit for v in values)} of {len(values)} (<= {limit} s)"
                     for end, limit in GOALS.items() if key.endswith(end)), "")
        print(f"| {key} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} | {goal} |")


if __name__ == "__main__":
    main()
