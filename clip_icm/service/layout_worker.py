"""Layouts computed off the page: background threads per server process, shared by its sessions.

Why: a UMAP layout of 10,000 points takes 2-4 s on the 2-core machine (bench/RESULTS.md), while a K
change's accuracy table takes 0.1 s; a page that computed the layout itself froze for the length of the layout. The
page submits a job, keyed by content (the same parts as the layout store's key), draws what it has
and polls; a job another session submitted with the same key is the same job.

The server's worker (``shared()``) runs up to ``layout_processes()`` jobs at once (``$CLIP_ICM_LAYOUT_PROCESSES``,
default min(2, CPUs - 1), at least 1), each thread with a UMAP process of its own (a "lane", spawned on its first
layout): umap's numba code holds the GIL, and in this process's thread it slowed a 10,000-image K
change's rerun from 3.7 to 5.4 s (bench/RESULTS.md). Each layout stays single-threaded, so a seed gives
the same layout run to run (``CLIP_ICM_PARALLEL_LAYOUTS=1`` opts in to UMAP's epochs on every core
instead, not reproducible: reduce.PARALLEL_VAR); two lanes let a page's layout start while a speculative
one runs, lay out the pair's invariant space's neighbours while its full space is laid out, and search
one layout's exact neighbours in two halves when the other lane is free (the same rows, bit for bit).
A job alone runs in the first lane (a lane takes a job only while those before it are busy), whose
process has umap loaded. The processes import umap, and this one never does; ``warm()`` starts them
and loads umap's kernels there before the first layout needs them (a page drawn from the store).

Jobs run by priority, then in order of submission: what a page is waiting for (NOW) before
speculative layouts (SPECULATIVE: K and λ cells the page may show next), which are bounded in
number, dropped when a page asks for a layout of another data set (``group``), and run only while
no other job runs: a lane is always left for the page's own.
"""
from __future__ import annotations

import heapq
import itertools
import multiprocessing
import os
import threading
import time
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from clip_icm import background
from clip_icm.errors import InvalidInput
from clip_icm.service.base import positive_int_from_env

NOW, SPECULATIVE = 0, 1
# Finished jobs kept in memory (the store keeps them on disk): 64 layouts of 20,000 points are 10 MB.
MAX_KEPT = 64
# Speculative jobs waiting at once; more are refused until some have run.
MAX_SPECULATIVE = 8
PROCESSES_VAR = "CLIP_ICM_LAYOUT_PROCESSES"
# Exact neighbours of at least this many rows are searched in two halves, one per lane, when the other
# lane is free: 0.7 s of a 10,000 x 512 layout's 1.4 s (bench/RESULTS.md); below, the transfer costs more.
SPLIT_ROWS = 4096


def layout_processes() -> int:
    """How many layouts the server's worker runs at once, each in a UMAP process of its own (about 0.2 GB
    of its own once umap is loaded, 0.45 GB resident while it lays out 10,000 points; bench/RESULTS.md):
    ``$CLIP_ICM_LAYOUT_PROCESSES`` if set, else min(2, CPUs - 1), at least 1: a core is left to the server's
    own page runs, which a classroom's sessions share (on 2 cores a second lane took it: slider reruns
    p95 4.2-5.3 s instead of 3.6-4.3 s at 10 sessions, and 0.37 GB more; bench/RESULTS.md)."""
    return positive_int_from_env(PROCESSES_VAR, max(1, min(2, (os.cpu_count() or 1) - 1)), "processes")


@dataclass(eq=False)
class Job:
    """One layout: what it is (``label``, for the page's status), its data set (``group``) and its result."""

    key: str
    label: str
    group: str
    priority: int
    compute: Callable[[], np.ndarray] | None = field(repr=False)
    future: Future = field(default_factory=Future, repr=False)
    started_at: float | None = None
    finished_at: float | None = None
    order: int = 0  # of its latest place in the queue (a job moved up has an older, dead one)
    after: Job | None = field(default=None, repr=False)  # the layout it starts from (the full space's)

    @property
    def pending(self) -> bool:
        return not self.future.done()

    def error(self) -> BaseException | None:
        """What the layout raised (a cancelled job counts as an error), None if it succeeded or runs."""
        if not self.future.done():
            return None
        if self.future.cancelled():
            return CancelledError("the layout was cancelled")
        return self.future.exception()

    def result(self) -> np.ndarray | None:
        """The layout, or None while it is pending or when it failed."""
        return self.future.result() if self.future.done() and self.error() is None else None

    def progress(self, ahead: int) -> str:
        """Where it stands, in words: queued (behind ``ahead`` jobs), waiting for the layout it starts
        from (which another thread lays out), or running for how long."""
        if self.started_at is None:
            return f"queued behind {ahead} layout{'s' if ahead != 1 else ''}" if ahead else "starting"
        if self.after is not None and self.after.pending:
            return f"waiting for the {self.after.label} layout"
        return f"running for {time.monotonic() - self.started_at:.0f} s"


def ready(job: Job | None) -> bool:
    return job is not None and job.result() is not None


def _layout_2d(X: np.ndarray, init: np.ndarray | None, seed: int,
               neighbours: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    from clip_icm import reduce

    return reduce.layout_2d(X, init=init, seed=seed, neighbours=neighbours)


def _layout_neighbours(X: np.ndarray, rows: range) -> tuple[np.ndarray, np.ndarray]:
    from clip_icm import reduce

    return reduce.layout_neighbours(X, rows=rows)


def _warm_up() -> None:
    from clip_icm import reduce

    reduce.warm_up()


class _Lane:
    """One UMAP process (spawned on first use: the server has threads; one that died is replaced at
    the next call), whether it is busy with a layout (then no half of a search is sent to it) and whether
    umap's kernels are loaded there (``warm``)."""

    def __init__(self) -> None:
        self.process: ProcessPoolExecutor | None = None
        self.laying_out = False
        self.warm = False


class LayoutWorker:
    """A priority queue of layout jobs and the threads that run them (started on the first job):
    ``processes`` of them with ``separate_process`` (each lays out in a process of its own), else one,
    which runs UMAP itself."""

    def __init__(self, max_kept: int = MAX_KEPT, max_speculative: int = MAX_SPECULATIVE,
                 separate_process: bool = False, processes: int = 1) -> None:
        if processes < 1:
            raise InvalidInput(f"a layout worker needs at least 1 process, not {processes}")
        self.max_kept, self.max_speculative, self.separate_process = max_kept, max_speculative, separate_process
        self.slots = processes if separate_process else 1
        self._lanes = [_Lane() for _ in range(self.slots)]
        self._lane_of_thread = threading.local()
        self._jobs: dict[str, Job] = {}
        self._queue: list[tuple[int, int, Job]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._running: set[Job] = set()
        self._busy_lanes: set[int] = set()  # the lanes whose thread runs a job
        self._warming: threading.Thread | None = None

    def submit(self, key: str, compute: Callable[[], np.ndarray], *, label: str, group: str,
               priority: int = NOW, after: Job | None = None) -> Job | None:
        """The job of ``key``: the existing one (moved up if asked for sooner), or a new one queued.
        A job asked for NOW drops the waiting speculative jobs of other data sets. None: a speculative
        job refused because MAX_SPECULATIVE are waiting. ``after``: the job whose layout this one starts
        from (its status says so while it waits for it: ``compute`` calls outcome())."""
        with self._wake:
            if priority == NOW:
                self._drop_speculative(lambda job: job.group != group)
            job = self._jobs.get(key)
            if job is not None and not job.future.cancelled():
                if priority < job.priority and job.started_at is None:
                    job.priority = priority
                    self._push(job)  # its old entry is skipped: a dead one
                return job
            if priority == SPECULATIVE and self._waiting(SPECULATIVE) >= self.max_speculative:
                return None
            job = Job(key, label, group, priority, compute, after=after)
            self._jobs[key] = job
            self._push(job)
            while len(self._threads) < self.slots:
                lane = len(self._threads)
                thread = threading.Thread(target=self._work, args=(lane,), name=f"clip-icm layouts {lane}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._wake.notify_all()
            return job

    def outcome(self, job: Job) -> np.ndarray:
        """The layout of ``job``, which another job needs (the invariant layout starts from the full one):
        waited for while another thread runs it, run in this thread if none has taken it up yet (so a
        job never waits for one queued behind it). Raises what the job raised (CancelledError if it was
        cancelled)."""
        with self._wake:
            mine = job.started_at is None and not job.future.done() and job.future.set_running_or_notify_cancel()
            if mine:
                job.started_at = time.monotonic()
                self._running.add(job)
        if mine:
            self._run(job)
        return job.future.result()

    def lay_out(self, X: np.ndarray, *, init: np.ndarray | None = None, seed: int = 0,
                neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """reduce.layout_2d of ``X``: in the calling thread's lane's process when the worker has processes
        (a process that died is replaced at the next layout), else here. Its exact neighbours, unless
        given, are searched by ``neighbours()`` first."""
        from clip_icm import reduce

        if not self.separate_process:
            return reduce.layout_2d(X, init=init, seed=seed, neighbours=neighbours)
        if neighbours is None:
            neighbours = self.neighbours(X)
        lane = self._lane()
        lane.laying_out = True
        try:
            xy = self._in_process(lane, _layout_2d, X, init, seed, neighbours)
        finally:
            lane.laying_out = False
        lane.warm = True  # umap and its kernels loaded there
        return xy

    def neighbours(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """reduce.layout_neighbours of ``X`` from the worker's processes: in two halves (the same rows,
        bit for bit) when ``X`` has SPLIT_ROWS rows or more and another lane is not laying out, else
        in this thread's lane. None where a layout of ``X`` searches no exact neighbours, or the worker
        has no processes."""
        from clip_icm import reduce

        if not self.separate_process or not reduce.searches_exactly(len(X)):
            return None
        lane = self._lane()
        free = [other for other in self._lanes if other is not lane and not other.laying_out]
        if len(X) < SPLIT_ROWS or not free:
            return self._in_process(lane, _layout_neighbours, X, range(len(X)))
        block = reduce.EXACT_BLOCK
        middle = (len(X) // 2 + block - 1) // block * block  # a multiple of the block: the whole search's products
        other = self._submit_to(free[0], _layout_neighbours, X, range(middle, len(X)))
        first = self._in_process(lane, _layout_neighbours, X, range(middle))
        second = self._result_of(free[0], other)
        return np.concatenate([first[0], second[0]]), np.concatenate([first[1], second[1]])

    def warm_lane(self) -> None:
        """Load umap's kernels in the calling thread's lane's process now, if no layout or warm-up has
        (a job waiting for the layout it starts from, so that its own layout does not pay the import)."""
        lane = self._lane()
        if self.separate_process and not lane.warm:
            self._in_process(lane, _warm_up)
            lane.warm = True

    def warm(self, after_s: float = 0.0) -> None:
        """Start every lane's process and load umap's kernels there, one lane after the other, in the
        background (once; a page drawn from the store calls this, so that its first K change finds a
        process ready instead of starting one: a few seconds), ``after_s`` seconds from now: a layout
        asked for meanwhile starts its lane's process itself. Nothing with no processes."""
        if not self.separate_process:
            return
        with self._wake:
            if self._warming is not None:
                return
            self._warming = threading.Thread(target=self._warm_lanes, args=(after_s,), name="clip-icm layouts warm-up",
                                             daemon=True)
        self._warming.start()

    def finished(self, key: str, xy: np.ndarray, *, label: str, group: str) -> Job:
        """Hold ``xy`` as the finished job of ``key`` (a layout read from the store), so that the next
        rerun finds it here."""
        job = Job(key, label, group, NOW, compute=None)
        job.future.set_result(xy)
        with self._wake:
            job.started_at = job.finished_at = time.monotonic()
            self._jobs[key] = job
            self._trim()
        return job

    def demote(self, job: Job) -> None:
        """Run ``job`` after everything asked for now, if it has not started (a page moved on from it)."""
        with self._wake:
            waiting = job.started_at is None and not job.future.done()
            if waiting and job.priority == NOW and self._jobs.get(job.key) is job:
                job.priority = SPECULATIVE
                self._push(job)

    def get(self, key: str) -> Job | None:
        with self._wake:
            return self._jobs.get(key)

    def jobs(self) -> list[Job]:
        """Every job it holds (waiting, running and the finished ones it keeps), in no order."""
        with self._wake:
            return list(self._jobs.values())

    def ahead_of(self, job: Job) -> int:
        """Jobs that run before ``job`` (the running ones included)."""
        with self._wake:
            if job.started_at is not None:
                return 0
            first = sum(1 for j in self._waiting_jobs() if (j.priority, j.order) < (job.priority, job.order))
            return first + len(self._running)

    def forget(self) -> None:
        """Forget every job (dashboard.cached.clear, between tests): waiting ones are cancelled, a
        running one finishes unseen."""
        with self._wake:
            for job in list(self._jobs.values()):
                job.future.cancel()
                del self._jobs[job.key]

    def forget_failed(self) -> int:
        """Forget every failed job, so that the page asks for it again; how many."""
        with self._wake:
            failed = [job for job in self._jobs.values() if job.future.done() and job.error() is not None]
            for job in failed:
                del self._jobs[job.key]
            return len(failed)

    def drop_speculative(self) -> int:
        """Cancel every speculative job that waits (a page that moved on asks for others); how many."""
        with self._wake:
            return self._drop_speculative(lambda job: True)

    def waiting(self, priority: int | None = None) -> int:
        with self._wake:
            return self._waiting(priority)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no job waits or runs (tests, benches); whether that happened in time."""
        end = time.monotonic() + timeout_s
        with self._wake:
            while self._running or self._waiting(None):
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
            return True

    # ------------------------------------------------------------ under the lock

    def _push(self, job: Job) -> None:
        job.order = next(self._order)
        heapq.heappush(self._queue, (job.priority, job.order, job))

    def _waiting_jobs(self) -> list[Job]:
        """The queued jobs still to run (each once: a moved-up job's older entry is dead)."""
        return [j for _, order, j in self._queue if order == j.order and j.started_at is None and not j.future.done()]

    def _waiting(self, priority: int | None) -> int:
        return sum(1 for j in self._waiting_jobs() if priority is None or j.priority == priority)

    def _drop_speculative(self, which: Callable[[Job], bool]) -> int:
        dropped = 0
        for job in self._waiting_jobs():
            if job.priority == SPECULATIVE and which(job) and job.future.cancel():
                self._jobs.pop(job.key, None)
                dropped += 1
        return dropped

    def _trim(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.finished_at is not None), key=lambda j: j.finished_at)
        for job in finished[:max(0, len(finished) - self.max_kept)]:
            del self._jobs[job.key]

    # ------------------------------------------------------------ the processes

    def _lane(self) -> _Lane:
        """The calling thread's lane (the first for a thread that is not the worker's: a test, a bench)."""
        return self._lanes[getattr(self._lane_of_thread, "index", 0)]

    def _submit_to(self, lane: _Lane, function: Callable, *args) -> tuple[ProcessPoolExecutor, Future]:
        from clip_icm import reduce

        reduce.wait_for_compilation()  # the kernels this server compiles in the background, loaded there
        with self._wake:
            if lane.process is None:
                lane.process = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"),
                                                   initializer=background.one_blas_thread)
            process = lane.process
        try:
            return process, process.submit(function, *args)
        except BrokenProcessPool as error:
            self._replace(lane, process, error)

    def _result_of(self, lane: _Lane, submitted: tuple[ProcessPoolExecutor, Future]):
        process, future = submitted
        try:
            return future.result()
        except BrokenProcessPool as error:
            self._replace(lane, process, error)

    def _in_process(self, lane: _Lane, function: Callable, *args):
        return self._result_of(lane, self._submit_to(lane, function, *args))

    def _replace(self, lane: _Lane, process: ProcessPoolExecutor, error: BaseException):
        with self._wake:
            if lane.process is process:
                lane.process, lane.warm = None, False
        raise RuntimeError("the layout process ended before the layout did (out of memory?); "
                           "the next layout starts a new one") from error

    def _warm_lanes(self, after_s: float) -> None:
        time.sleep(after_s)
        for lane in self._lanes:
            if not lane.warm:
                try:
                    self._in_process(lane, _warm_up)
                except Exception:  # noqa: BLE001 - a layout there meets the same failure and reports it
                    return
                lane.warm = True

    # ------------------------------------------------------------ the threads

    def _next(self, lane: int) -> Job:
        """The next job to run in ``lane``: the first asked for NOW, or the first speculative one once no job
        runs (a lane stays free for the page's own); taken only while every lane before it is busy, so a
        job alone runs in the first lane, whose process is warm (a second one imports umap on its first layout)."""
        with self._wake:
            while True:
                while self._queue and self._busy_lanes >= set(range(lane)):
                    _, order, job = self._queue[0]
                    if order == job.order and job.started_at is None and not job.future.done():
                        if job.priority == SPECULATIVE and self._running:
                            break  # and waits until no job runs
                        if job.future.set_running_or_notify_cancel():
                            heapq.heappop(self._queue)
                            job.started_at = time.monotonic()
                            self._running.add(job)
                            self._busy_lanes.add(lane)
                            self._wake.notify_all()  # the next lane may take a job now
                            return job
                    heapq.heappop(self._queue)  # a dead entry: moved up, taken by outcome(), or cancelled
                self._wake.notify_all()  # wait_idle
                self._wake.wait()

    def _run(self, job: Job) -> None:
        try:
            result = job.compute()
        except BaseException as error:  # noqa: BLE001 - every failure reaches the page as its message
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
        with self._wake:
            # what it computed from (the embeddings, a fit, the job it started from) is not kept alive by a finished job
            job.compute, job.after, job.finished_at = None, None, time.monotonic()
            self._running.discard(job)
            self._trim()
            self._wake.notify_all()

    def _work(self, lane: int) -> None:
        self._lane_of_thread.index = lane
        while True:
            self._run(self._next(lane))
            with self._wake:
                self._busy_lanes.discard(lane)
                self._wake.notify_all()


_shared: dict[str, LayoutWorker] = {}
_shared_lock = threading.Lock()


def shared() -> LayoutWorker:
    """The process's layout worker (every session of a server uses this one)."""
    return _shared_worker("layouts", separate_process=True, processes=layout_processes())


def shared_choices() -> LayoutWorker:
    """The process's worker for the model choices of every target (the same queue, in a thread of its
    own): at 20,000 images they take minutes (bench/RESULTS.md), and on the layouts' worker one would hold
    up every map asked for after it; in the page's rerun, the maps and every control."""
    return _shared_worker("choices")


def shared_ahead() -> LayoutWorker:
    """The process's worker for what a slider move next to the page's setting would read (service.evaluate_ahead),
    a thread of its own: behind the minutes of the model choices, they would come after the move."""
    return _shared_worker("ahead")


def _shared_worker(name: str, **kwargs) -> LayoutWorker:
    with _shared_lock:
        if name not in _shared:
            _shared[name] = LayoutWorker(**kwargs)
        return _shared[name]
