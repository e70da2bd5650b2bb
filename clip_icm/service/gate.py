"""A cap on the heavy jobs that a server's sessions run at once, with a queue in order of arrival.

Why: thirty students on one server each asking for a selection grid, a model-choice overview or a sweep
of another setting would start thirty computations on two cores; each then takes thirty times as long,
memory grows with every one, and nobody sees why. Behind the gate at most ``cap`` run; the others wait
their turn and are told their place ("queued: 2 ahead of you"). Layouts do not pass here: they have
their own queue (layout_worker), in processes of their own.

A waiter is told its place every ``poll_s`` through ``on_wait``; whatever ``on_wait`` raises (the
dashboard's placeholder raises Streamlit's stop or rerun when its session goes away or reruns) ends
the wait and gives the place up, and a job that raises gives its slot back, so no slot leaks.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from typing import Callable, Iterator

from clip_icm.errors import InvalidInput
from clip_icm.service.base import positive_int_from_env

CAP_VAR = "CLIP_ICM_HEAVY_JOBS"


def default_cap() -> int:
    """``$CLIP_ICM_HEAVY_JOBS`` if set, else half the CPUs (at least one): the other half is left to the
    pages' own reruns and the layout process."""
    return positive_int_from_env(CAP_VAR, max(1, (os.cpu_count() or 2) // 2), "jobs")


class Gate:
    """At most ``cap`` holders at once; the rest wait first come, first served."""

    def __init__(self, cap: int) -> None:
        if not isinstance(cap, int) or cap < 1:
            raise InvalidInput(f"a gate needs a cap of at least 1 job, not {cap!r}")
        self.cap = cap
        self._running = 0
        self._queue: deque[object] = deque()
        self._changed = threading.Condition()
        self._holders = threading.local()

    @contextlib.contextmanager
    def slot(self, on_wait: Callable[[int], None] | None = None, poll_s: float = 0.5) -> Iterator[None]:
        """Hold one of the ``cap`` slots for the ``with`` block. While waiting, ``on_wait(ahead)`` is called
        at once and then every ``poll_s`` seconds, ``ahead`` being the waiters before this one. A thread
        that already holds a slot enters at once (a heavy job calling another must not wait for itself)."""
        if self.holds():
            yield
            return
        self._enter(on_wait, poll_s)
        self._holders.count = 1
        try:
            yield
        finally:
            self._holders.count = 0
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def holds(self) -> bool:
        """Whether this thread holds a slot now."""
        return getattr(self._holders, "count", 0) > 0

    def running(self) -> int:
        with self._changed:
            return self._running

    def waiting(self) -> int:
        with self._changed:
            return len(self._queue)

    def _enter(self, on_wait: Callable[[int], None] | None, poll_s: float) -> None:
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
        try:
            while True:
                with self._changed:
                    if self._queue[0] is ticket and self._running < self.cap:
                        self._queue.popleft()
                        self._running += 1
                        self._changed.notify_all()  # the next in line may fit too
                        return
                    ahead = self._queue.index(ticket)
                if on_wait is not None:
                    on_wait(ahead)  # outside the lock: it may draw, or raise to give the place up
                with self._changed:
                    if not (self._queue[0] is ticket and self._running < self.cap):
                        self._changed.wait(poll_s)
        except BaseException:
            with self._changed:
                if ticket in self._queue:
                    self._queue.remove(ticket)
                self._changed.notify_all()
            raise


_shared: Gate | None = None
_shared_lock = threading.Lock()


def heavy_jobs() -> Gate:
    """The process's gate (every session of a server shares it), its cap from :func:`default_cap`."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Gate(default_cap())
        return _shared
