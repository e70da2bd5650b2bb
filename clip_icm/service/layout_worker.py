"""Layouts computed off the page: one background thread per server process, shared by its sessions.

Why: a UMAP layout of 10,000 points takes 5-12 s on the 2-core machine, while a K change's accuracy
table takes 0.1 s; a page that computed the layout itself froze for the length of the layout. The
page submits a job, keyed by content (the same parts as the layout store's key), draws what it has
and polls; a job another session submitted with the same key is the same job.

One thread, not a pool: UMAP runs single-threaded so that a seed gives the same layout run to run,
and a second layout at once would only take the core the page's own work needs (``CLIP_ICM_PARALLEL_LAYOUTS=1``
opts in to UMAP's epochs on every core instead, not reproducible: reduce.PARALLEL_VAR). The thread keeps the
queue and the store; the UMAP itself (``lay_out``) runs, for the server's worker (``shared()``), in a
separate process of its own, started on the first layout: umap's numba code holds the GIL, and in
this process's thread it slowed a 10,000-image K change's rerun from 3.7 to 5.4 s (bench/RESULTS.md).
That process imports umap, and this one never does.

Jobs run by priority, then in order of submission: what a page is waiting for (NOW) before
speculative layouts (SPECULATIVE: K and λ cells the page may show next), which are bounded in
number and dropped when a page asks for a layout of another data set (``group``).
"""
from __future__ import annotations

import heapq
import itertools
import multiprocessing
import threading
import time
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

NOW, SPECULATIVE = 0, 1
# Finished jobs kept in memory (the store keeps them on disk): 64 layouts of 20,000 points are 10 MB.
MAX_KEPT = 64
# Speculative jobs waiting at once; more are refused until some have run.
MAX_SPECULATIVE = 8


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
        """Where it stands, in words: queued (behind ``ahead`` jobs) or running for how long."""
        if self.started_at is None:
            return f"queued behind {ahead} layout{'s' if ahead != 1 else ''}" if ahead else "starting"
        return f"running for {time.monotonic() - self.started_at:.0f} s"


def ready(job: Job | None) -> bool:
    return job is not None and job.result() is not None


def _limit_blas() -> None:
    """In the layout process: one BLAS thread, as the dashboard's own process runs (app.py), so that
    the neighbours' matrix products round as they did there."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def _layout_2d(X: np.ndarray, init: np.ndarray | None, seed: int) -> np.ndarray:
    from clip_icm import reduce

    return reduce.layout_2d(X, init=init, seed=seed)


class LayoutWorker:
    """A priority queue of layout jobs and the one thread that runs them (started on the first job);
    ``separate_process``: ``lay_out`` runs UMAP in a process of its own rather than in this thread."""

    def __init__(self, max_kept: int = MAX_KEPT, max_speculative: int = MAX_SPECULATIVE,
                 separate_process: bool = False) -> None:
        self.max_kept, self.max_speculative, self.separate_process = max_kept, max_speculative, separate_process
        self._process: ProcessPoolExecutor | None = None
        self._jobs: dict[str, Job] = {}
        self._queue: list[tuple[int, int, Job]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running: Job | None = None

    def submit(self, key: str, compute: Callable[[], np.ndarray], *, label: str, group: str,
               priority: int = NOW) -> Job | None:
        """The job of ``key``: the existing one (moved up if asked for sooner), or a new one queued.
        A job asked for NOW drops the waiting speculative jobs of other data sets. None: a speculative
        job refused because MAX_SPECULATIVE are waiting."""
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
            job = Job(key, label, group, priority, compute)
            self._jobs[key] = job
            self._push(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="clip-icm layouts", daemon=True)
                self._thread.start()
            self._wake.notify()
            return job

    def lay_out(self, X: np.ndarray, *, init: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        """reduce.layout_2d of ``X``: in the worker's own process when it has one (started on first
        use, spawned: this process has threads; one that died is replaced at the next layout), else here."""
        if not self.separate_process:
            from clip_icm import reduce

            return reduce.layout_2d(X, init=init, seed=seed)
        from clip_icm import reduce

        reduce.wait_for_compilation()  # the kernels this server compiles in the background, loaded there
        with self._wake:
            if self._process is None:
                self._process = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), initializer=_limit_blas)
            process = self._process
        try:
            return process.submit(_layout_2d, X, init, seed).result()
        except BrokenProcessPool as error:
            with self._wake:
                if self._process is process:
                    self._process = None
            raise RuntimeError("the layout process ended before the layout did (out of memory?); "
                               "the next layout starts a new one") from error

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
        """Jobs that run before ``job`` (the running one included)."""
        with self._wake:
            if job.started_at is not None:
                return 0
            first = sum(1 for j in self._waiting_jobs() if (j.priority, j.order) < (job.priority, job.order))
            return first + (self._running is not None)

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

    def waiting(self, priority: int | None = None) -> int:
        with self._wake:
            return self._waiting(priority)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no job waits or runs (tests, benches); whether that happened in time."""
        end = time.monotonic() + timeout_s
        with self._wake:
            while self._running is not None or self._waiting(None):
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

    # ------------------------------------------------------------ the thread

    def _next(self) -> Job:
        with self._wake:
            while True:
                while self._queue:
                    _, order, job = heapq.heappop(self._queue)
                    if order == job.order and job.started_at is None and job.future.set_running_or_notify_cancel():
                        job.started_at, self._running = time.monotonic(), job
                        return job
                self._wake.notify_all()  # wait_idle
                self._wake.wait()

    def _work(self) -> None:
        while True:
            job = self._next()
            try:
                result = job.compute()
            except BaseException as error:  # noqa: BLE001 - every failure reaches the page as its message
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
            with self._wake:
                # what it computed from (the embeddings, a fit) is not kept alive by a finished job
                job.compute, job.finished_at, self._running = None, time.monotonic(), None
                self._trim()
                self._wake.notify_all()


_shared: dict[str, LayoutWorker] = {}
_shared_lock = threading.Lock()


def shared() -> LayoutWorker:
    """The process's layout worker (every session of a server uses this one)."""
    return _shared_worker("layouts", separate_process=True)


def shared_choices() -> LayoutWorker:
    """The process's worker for the model choices of every target (the same queue, in a thread of its
    own): at 20,000 images they take minutes (bench/RESULTS.md), and on the layouts' worker one would hold
    up every map asked for after it; in the page's rerun, the maps and every control."""
    return _shared_worker("choices")


def _shared_worker(name: str, **kwargs) -> LayoutWorker:
    with _shared_lock:
        if name not in _shared:
            _shared[name] = LayoutWorker(**kwargs)
        return _shared[name]
