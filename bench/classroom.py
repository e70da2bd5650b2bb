"""A classroom on one server: N students open the demo at once and move the same controls.

    python -m bench.classroom --sessions 10 [--sessions 30 ...] [--client ws|browser] [--store DIR]

Serves `streamlit run dashboard/app.py` (one server, started on a fresh copy of the store in
$CLIP_ICM_CACHE, or --store: so that one run's layouts do not warm the next) and opens N sessions at
once, each a Streamlit session of its own:
- ``--client ws`` (the default): each speaks Streamlit's own websocket protocol as its frontend does
  (StreamlitClient: rerun requests with widget states, the fragments' timed auto-reruns), with no
  browser. On a classroom server the browsers run on the students' machines: this measures the server.
- ``--client browser``: each is a context of one headless Chromium (its own cookies and websocket),
  key presses and clicks on the real page; on this 2-core machine that measures the browsers more
  than the server (bench/RESULTS.md, "A classroom on one server").
Session i then
- waits for its first page, both maps drawn;
- picks a target domain other than the default (the targets taken in turn), waits for the page to settle;
- moves the K slider 1 + (j mod 4) steps and the λ slider 1 + j // 4 steps (j = i // targets), one
  step at a time, waiting for the page to settle after each, so that no two sessions end on the same
  (target, K, λ);
- waits for both maps of its final setting.

"Settled": the accuracy chart's title names the session's K and λ, the summary caption its target,
and the run is over (browser: no spinner shows, the script is not running and no element is marked
stale; websocket: a full run finished with that page). A rerun's time runs from the key press, the
option click or the widget state sent to that. At every settled point and at the end the page must
show exactly the session's own target, K and λ (caption, accuracy chart, invariant map) and no error
box, and two sessions that showed the same setting must show the same headline numbers. A setting the
session never had is a leak; one it had before is a stale read (the page redrawing: Streamlit can leave
the old chart beside the new one for a moment), counted apart.

Prints rerun p50/p95/max, time to the first page's maps and to the final setting's maps, errors,
leaks, the largest queue place a page showed (service.gate), the server's peak memory (RSS of its
process tree, sampled every 0.2 s) and the CPU seconds of the server and of the clients (the
browsers, or this process's websocket clients).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.bench_dashboard import _cpu_seconds, _processes, _serve, _stop  # noqa: E402
from tests.test_browser import CHROMIUM  # noqa: E402

CLIENTS = {"ws": "websocket clients (no browser)", "browser": "browsers (headless Chromium)"}
TIMEOUT_MS = 300_000  # a step that takes longer is counted as an error (with what the page showed)
KEY_TRIES = 5
STATE_JS = """() => {
  const texts = sel => [...document.querySelectorAll(sel)].map(e => e.textContent);
  return {
    titles: texts('.js-plotly-plot .gtitle'),
    captions: texts('[data-testid="stCaptionContainer"]'),
    metrics: texts('[data-testid="stMetric"]'),
    errors: texts('[data-testid="stException"], [data-testid="stAlertContentError"]'),
    queued: window.largestQueuePlace ?? -1,
    notes: texts('[data-testid="stAlertContentInfo"]'),
    spinners: document.querySelectorAll('[data-testid="stSpinner"]').length,
    running: document.querySelector('[data-test-script-state="running"], [data-stale="true"]') !== null,
  };
}"""
SETTLED_JS = """([target, K, lam]) => {
  for (const box of document.querySelectorAll('[data-testid="stAlertContentInfo"]')) {  // seen while it waits
    const place = box.textContent.match(/queued: (?:(\\d+) ahead|next in line)/);
    if (place) window.largestQueuePlace = Math.max(window.largestQueuePlace ?? -1, Number(place[1] ?? 0));
  }
  const titles = [...document.querySelectorAll('.js-plotly-plot .gtitle')].map(t => t.textContent);
  const captions = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')].map(e => e.textContent);
  const setting = K === null ? '' : `K = ${K}, lam = ${lam})`;
  return titles.some(t => t.startsWith('Accuracy per domain') && t.endsWith(setting))
    && captions.some(c => c.endsWith(`target: ${target}`) || c.endsWith(`target (held out): ${target}`))
    && document.querySelectorAll('[data-testid="stSpinner"]').length === 0
    && document.querySelector('[data-test-script-state="running"], [data-stale="true"]') === null;
}"""
MAPS_JS = """([K, lam]) => {
  const titles = [...document.querySelectorAll('.js-plotly-plot .gtitle')].map(t => t.textContent);
  return titles.some(t => t.startsWith('Full CLIP space'))
    && titles.some(t => t.startsWith('Invariant space') && (K === null || t.endsWith(`K = ${K}, lam = ${lam})`)));
}"""
SETTING = re.compile(r"K = (\d+), lam = ([^)]+)\)$")
QUEUE_PLACE = re.compile(r"queued: (?:(\d+) ahead|next in line)")


@dataclass
class Session:
    index: int
    target: str
    k_steps: int
    lam_steps: int
    reruns: list[float] = field(default_factory=list)  # the target change's, then each slider move's
    first_maps: float | None = None
    final_maps: float | None = None
    errors: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    queued: int = -1  # the largest place it was told (-1: never queued)
    seen: dict = field(default_factory=dict)  # (target, K, lam) -> headline metrics shown
    history: set = field(default_factory=set)  # every (target, K, lam) it has had
    stale_reads: list[str] = field(default_factory=list)
    lost_presses: int = 0  # key presses the slider did not take (pressed again)


class Memory(threading.Thread):
    """The peak RSS of a process tree, sampled until stopped."""

    def __init__(self, root_pid: int, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root_pid, self.every_s, self.peak_mb, self.done = root_pid, every_s, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.peak_mb = max(self.peak_mb, tree_rss_mb(self.root_pid))


def tree_rss_mb(root_pid: int) -> float:
    procs, children = _processes(), {}
    for pid, (parent, _, _) in procs.items():
        children.setdefault(parent, []).append(pid)
    pids, total = [root_pid], 0
    while pids:
        pid = pids.pop()
        pids.extend(children.get(pid, []))
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue  # ended meanwhile
        total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) if "VmRSS" in status else 0
    return total / 1024


TARGET = re.compile(r"target(?: \(held out\))?: (.+)$")


def _targets(captions: list[str]) -> list[str]:
    return [m.group(1) for m in map(TARGET.search, captions) if m]


def _judge(s: Session, state: dict, target: str, K: int | None, lam: str | None, maps: bool = False) -> None:
    """The page (``state``: its plot titles, captions, metrics, error boxes and the largest queue place
    seen, however read) shows this session's own setting, and no error box; its headline numbers match
    what any other session showed for the same setting. A setting this session had earlier (read while a
    rerun redraws: the old chart still beside the new) is a stale read; one it never had is a leak."""
    s.errors += [e for e in state["errors"] if e not in s.errors]
    s.queued = max(s.queued, state["queued"])
    s.history.add((target, K, lam))
    targets = _targets(state["captions"])
    shown = [(target, K, lam)] if K is None else [(target, int(k), x) for k, x in
                                                  (SETTING.search(t).groups() for t in state["titles"]
                                                   if t.startswith("Accuracy per domain") or
                                                   (maps and t.startswith("Invariant space")))]
    problems = [f"target {t}" for t in targets if t != target] + [f"K = {k}, lam = {x}" for _, k, x in shown
                                                                    if (k, x) != (K, lam)]
    if targets != [target] or not shown:
        problems.append(f"targets {targets}, settings {shown}")
    if not problems:
        if K is not None:
            s.seen[(target, K, lam)] = tuple(state["metrics"])
        return
    own = {t for t, _, _ in s.history} >= set(targets) and all(
        any((k, x) == (hk, hx) for _, hk, hx in s.history) for _, k, x in shown)
    (s.stale_reads if own else s.leaks).append(f"own {target}, K = {K}, lam = {lam}; shown {', '.join(problems)}")


async def _check(page, s: Session, target: str, K: int | None, lam: str | None, maps: bool = False) -> None:
    _judge(s, await page.evaluate(STATE_JS), target, K, lam, maps)


async def _shown(page) -> str:
    """What the page shows, in short (for an error)."""
    try:
        state = await page.evaluate(STATE_JS)
    except Exception as error:  # noqa: BLE001 - the page itself may be gone
        return f"nothing readable ({type(error).__name__})"
    targets = _targets(state["captions"])
    return (f"titles {state['titles']}, targets {targets}, spinners {state['spinners']}, running {state['running']}, "
            f"errors {state['errors']}, notes {[n[:160] for n in state['notes']]}")


async def _settle(page, target: str, K: int | None = None, lam: str | None = None) -> float:
    start = time.monotonic()
    await page.wait_for_function(SETTLED_JS, arg=[target, K, lam], timeout=TIMEOUT_MS, polling=100)
    return time.monotonic() - start


async def _setting(page) -> tuple[int, str]:
    """The K and lam the page shows, once it shows one accuracy chart (not an old one beside a new)."""
    handle = await page.wait_for_function(
        "() => { const t = [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
        ".map(e => e.textContent).filter(x => x.startsWith('Accuracy per domain'));"
        " return t.length === 1 ? t[0] : null; }", timeout=TIMEOUT_MS, polling=100)
    K, lam = SETTING.search(await handle.json_value()).groups()
    return int(K), lam


async def _step(page, s: Session, label: str, key: str, target: str, expected) -> None:
    """One arrow key on the slider labelled ``label``; the page settles on ``expected()`` of the old setting."""
    old = await _setting(page)
    K, lam = expected(*old)
    slider = page.locator('[data-testid="stSlider"]', has_text=label).get_by_role("slider")  # an input, type range
    before = await slider.input_value()
    start = time.monotonic()
    for _ in range(KEY_TRIES):  # a press on a slider that a rerun redraws meanwhile can be lost: the
        await slider.focus()    # slider's own value (set in the browser at once) says whether it was taken
        await page.keyboard.press(key)
        try:
            await page.wait_for_function("([el, v]) => el.value !== v", arg=[await slider.element_handle(), before],
                                         timeout=5000, polling=100)
            break
        except Exception:  # noqa: BLE001 - Playwright's TimeoutError: press again
            s.lost_presses += 1
    await page.wait_for_function(SETTLED_JS, arg=[target, K, lam], timeout=TIMEOUT_MS, polling=100)
    s.reruns.append(time.monotonic() - start)
    await _check(page, s, target, K, lam)


def _say(s: Session, what: str) -> None:
    """Progress on stderr, so that a slow run shows where it is."""
    print(f"  [{time.strftime('%H:%M:%S')}] session {s.index}: {what}", file=sys.stderr, flush=True)


def _lam_text(lam: float) -> str:
    return f"{lam:g}"


async def _student(browser, url: str, s: Session, default_target: str, lams: list[str]) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1800})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)  # a focus or a click waits as long as a rerun may take here
    try:
        start = time.monotonic()
        await page.goto(url + "/explorer", timeout=TIMEOUT_MS)  # "/" is the Story
        await page.wait_for_function(MAPS_JS, arg=[None, None], timeout=TIMEOUT_MS, polling=100)
        s.first_maps = time.monotonic() - start
        _say(s, f"first page's maps after {s.first_maps:.1f} s")
        await _settle(page, default_target)
        await _check(page, s, default_target, *await _setting(page))

        await page.get_by_role("combobox", name="Target domain (held out)").click()
        start = time.monotonic()
        await page.get_by_role("option", name=s.target, exact=True).click()
        await _settle(page, s.target)
        s.reruns.append(time.monotonic() - start)
        await _check(page, s, s.target, *await _setting(page))
        _say(s, f"target {s.target} after {s.reruns[-1]:.1f} s")

        for _ in range(s.k_steps):
            await _step(page, s, "K (invariant", "ArrowRight", s.target, lambda K, lam: (K + 1, lam))
        K, lam = await _setting(page)
        key = "ArrowRight" if lams.index(lam) + s.lam_steps < len(lams) else "ArrowLeft"
        move = 1 if key == "ArrowRight" else -1
        for _ in range(s.lam_steps):
            await _step(page, s, "lam (intervention", key, s.target,
                        lambda K, lam: (K, lams[lams.index(lam) + move]))
        K, lam = await _setting(page)
        _say(s, f"K = {K}, lam = {lam}: reruns {', '.join(f'{t:.1f}' for t in s.reruns[1:])} s")
        start = time.monotonic()
        await page.wait_for_function(MAPS_JS, arg=[K, lam], timeout=TIMEOUT_MS, polling=100)
        s.final_maps = time.monotonic() - start
        await _settle(page, s.target, K, lam)
        await _check(page, s, s.target, K, lam, maps=True)
        _say(s, f"its maps after {s.final_maps:.1f} s")
    except Exception as error:  # noqa: BLE001 - a session that fails is counted, the others go on
        s.errors.append(f"{type(error).__name__}: {str(error).splitlines()[0]}; the page showed {await _shown(page)}")
    finally:
        await context.close()


# ---------------------------------------------------------------- the server alone: its own websocket protocol

class StreamlitClient:
    """One session spoken to as Streamlit's frontend speaks to the server, with no browser: BackMsg
    protobufs up its websocket (``rerun_script`` with the widget states this session set, and the
    fragments' auto-reruns every ``run_every`` seconds, as the frontend's timers send them: dropped at
    a full run's start, re-armed by the ``auto_rerun`` messages of that run, stopped by
    ``stop_auto_rerun``), ForwardMsg protobufs down. The page is the elements of the last full run
    that finished (with the fragment runs since), by delta path, as the frontend shows it once the
    run is over; a queue place is read from every info box as it arrives."""

    def __init__(self, url: str, page: str) -> None:
        self.ws_url = "ws" + url[len("http"):] + "/_stcore/stream"
        self.query, self.page_hash = f"page={page}", ""
        self.widget_ids: dict[str, str] = {}  # label -> id, as the runs drew them
        self.widget_states: dict[str, object] = {}  # id -> the WidgetState this session set
        self.page: dict[tuple, object] = {}  # delta path -> Element
        self.running: dict[tuple, object] | None = None  # the elements of the run under way
        self.timers: dict[str, asyncio.Task] = {}  # fragment id -> its auto-rerun timer
        self.full_runs, self.queued, self.closed = 0, -1, None
        self.last_message = time.monotonic()
        self.finished = asyncio.Event()  # set at every full run's end (and when the socket closes)

    async def open(self) -> None:
        import websockets

        self.socket = await websockets.connect(self.ws_url, subprotocols=["streamlit"], max_size=None,
                                               open_timeout=TIMEOUT_MS / 1000, ping_timeout=None)
        self.reader = asyncio.create_task(self._read())
        await self.rerun()

    async def close(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.reader.cancel()
        await self.socket.close()

    async def rerun(self, fragment_id: str = "", auto: bool = False) -> None:
        from streamlit.proto.BackMsg_pb2 import BackMsg

        msg = BackMsg()
        state = msg.rerun_script
        state.query_string, state.page_script_hash = self.query, self.page_hash
        state.fragment_id, state.is_auto_rerun = fragment_id, auto
        state.widget_states.widgets.extend(self.widget_states.values())
        await self.socket.send(msg.SerializeToString())

    async def set_widget(self, label: str, kind: str, value) -> int:
        """Set the widget labelled ``label`` (``kind``: the WidgetState field its serde writes) and ask
        for a rerun, as a browser does on a change; returns the number of full runs finished before."""
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        state = WidgetState(id=self.widget_ids[label])
        if kind.endswith("_array_value"):
            getattr(state, kind).data.extend(value)
        else:
            setattr(state, kind, value)
        self.widget_states[state.id] = state
        before = self.full_runs
        await self.rerun()
        return before

    async def until(self, shows, after: int = -1) -> dict:
        """The page's state once a full run finished after the ``after``-th shows what ``shows(state)`` asks."""
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while True:
            if self.full_runs > after and shows(state := self.state()):
                return state
            if self.closed:
                raise ConnectionError(f"the websocket closed: {self.closed}")
            self.finished.clear()
            try:
                await asyncio.wait_for(self.finished.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise TimeoutError(f"{TIMEOUT_MS / 1000:.0f} s without it") from None

    def state(self) -> dict:
        """What the page shows, in the shape of the browser's STATE_JS."""
        from streamlit.proto.Alert_pb2 import Alert
        from streamlit.proto.Markdown_pb2 import Markdown

        out = {"titles": [], "captions": [], "metrics": [], "errors": [], "notes": [], "queued": self.queued}
        for _, element in sorted(self.page.items()):
            kind = element.WhichOneof("type")
            if kind == "plotly_chart":
                title = json.loads(element.plotly_chart.spec).get("layout", {}).get("title", "")
                out["titles"].append(title.get("text", "") if isinstance(title, dict) else str(title))
            elif kind == "markdown" and element.markdown.element_type == Markdown.CAPTION:
                out["captions"].append(_as_text(element.markdown.body))
            elif kind == "metric":
                out["metrics"].append(" ".join((element.metric.label, element.metric.body, element.metric.delta)))
            elif kind == "exception":
                out["errors"].append(f"{element.exception.type}: {element.exception.message}")
            elif kind == "alert" and element.alert.format == Alert.ERROR:
                out["errors"].append(element.alert.body)
            elif kind == "alert" and element.alert.format == Alert.INFO:
                out["notes"].append(element.alert.body)
        return out

    def shown(self) -> str:
        """What the page shows, in short, and where the session stands (for an error)."""
        state = self.state()
        return (f"titles {state['titles']}, targets {_targets(state['captions'])}, errors {state['errors']}, "
                f"notes {[n[:160] for n in state['notes']]}, a run under way {self.running is not None}, "
                f"auto-rerun timers {len(self.timers)}, last message {time.monotonic() - self.last_message:.0f} s ago")

    async def _read(self) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        try:
            async for data in self.socket:
                msg = ForwardMsg()
                msg.ParseFromString(data)
                self.last_message = time.monotonic()
                self._take(msg)
        except Exception as error:  # noqa: BLE001 - said by until() to whoever waits
            self.closed = f"{type(error).__name__}: {error}"
        finally:
            self.closed = self.closed or "by the server"
            self.finished.set()

    def _take(self, msg) -> None:
        from streamlit.proto.Alert_pb2 import Alert
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.page_hash = msg.new_session.page_script_hash
            if not msg.metadata.run.fragment_ids:  # a full run: the frontend drops its timers and its page
                for fragment_id in list(self.timers):
                    self.timers.pop(fragment_id).cancel()
                self.running = {}
            else:
                self.running = self.page  # a fragment run redraws its part in place
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            element = msg.delta.new_element
            (self.page if self.running is None else self.running)[tuple(msg.metadata.delta_path)] = element
            widget = element.WhichOneof("type")
            if widget in ("slider", "selectbox"):
                self.widget_ids[getattr(element, widget).label] = getattr(element, widget).id
            elif widget == "alert" and element.alert.format == Alert.INFO:
                place = QUEUE_PLACE.search(element.alert.body)
                if place:
                    self.queued = max(self.queued, int(place.group(1) or 0))
        elif kind == "script_finished":
            if msg.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY and self.running is not None:
                self.page, self.full_runs = self.running, self.full_runs + 1
                self.finished.set()
            self.running = None
        elif kind == "auto_rerun":
            fragment_id = msg.auto_rerun.fragment_id
            if fragment_id in self.timers:
                self.timers.pop(fragment_id).cancel()
            self.timers[fragment_id] = asyncio.create_task(self._tick(fragment_id, msg.auto_rerun.interval))
        elif kind == "stop_auto_rerun":
            for fragment_id in msg.stop_auto_rerun.fragment_ids:
                if fragment_id in self.timers:
                    self.timers.pop(fragment_id).cancel()
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string

    async def _tick(self, fragment_id: str, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.rerun(fragment_id, auto=True)


def _as_text(markdown: str) -> str:
    """Markdown as the page reads (bold marks and backslash escapes gone), for the checks shared with the browser."""
    return re.sub(r"\\(.)", r"\1", markdown.replace("**", ""))


def _settled_on(target: str, K: int | None = None, lam: str | None = None):
    """SETTLED_JS of a finished run: one accuracy chart, of this K and lam, and the caption's target."""
    def shows(state: dict) -> bool:
        charts = [t for t in state["titles"] if t.startswith("Accuracy per domain")]
        return (_targets(state["captions"]) == [target] and len(charts) == 1
                and (K is None or charts[0].endswith(f"K = {K}, lam = {lam})")))
    return shows


def _maps_of(K: int | None = None, lam: str | None = None):
    """MAPS_JS of a finished run."""
    def shows(state: dict) -> bool:
        return any(t.startswith("Full CLIP space") for t in state["titles"]) and any(
            t.startswith("Invariant space") and (K is None or t.endswith(f"K = {K}, lam = {lam})"))
            for t in state["titles"])
    return shows


def _setting_of(state: dict) -> tuple[int, str]:
    K, lam = SETTING.search(next(t for t in state["titles"] if t.startswith("Accuracy per domain"))).groups()
    return int(K), lam


async def _ws_student(url: str, s: Session, default_target: str, lams: list[float]) -> None:
    """_student's path, over the websocket: the same changes, settled points and checks."""
    page = StreamlitClient(url, "explorer")
    try:
        start = time.monotonic()
        await page.open()
        state = await page.until(_maps_of())
        s.first_maps = time.monotonic() - start
        _say(s, f"first page's maps after {s.first_maps:.1f} s")
        state = await page.until(_settled_on(default_target))
        _judge(s, state, default_target, *_setting_of(state))

        start = time.monotonic()
        before = await page.set_widget("Target domain (held out)", "string_value", s.target)
        state = await page.until(_settled_on(s.target), before)
        s.reruns.append(time.monotonic() - start)
        K, lam = _setting_of(state)
        _judge(s, state, s.target, K, lam)
        _say(s, f"target {s.target} after {s.reruns[-1]:.1f} s")

        texts = [_lam_text(x) for x in lams]
        move = 1 if texts.index(lam) + s.lam_steps < len(lams) else -1
        steps = [("K (invariant dimensions)", lambda K, lam: (K + 1, lam))] * s.k_steps + [
            ("lam (intervention weight)", lambda K, lam: (K, texts[texts.index(lam) + move]))] * s.lam_steps
        for label, expected in steps:
            K, lam = expected(K, lam)
            start = time.monotonic()
            if label.startswith("K"):
                before = await page.set_widget(label, "double_array_value", [K])
            else:
                before = await page.set_widget(label, "string_array_value", [str(lams[texts.index(lam)])])
            state = await page.until(_settled_on(s.target, K, lam), before)
            s.reruns.append(time.monotonic() - start)
            _judge(s, state, s.target, K, lam)
        _say(s, f"K = {K}, lam = {lam}: reruns {', '.join(f'{t:.1f}' for t in s.reruns[1:])} s")
        start = time.monotonic()
        state = await page.until(_maps_of(K, lam))
        s.final_maps = time.monotonic() - start
        _judge(s, state, s.target, K, lam, maps=True)
        _say(s, f"its maps after {s.final_maps:.1f} s")
    except Exception as error:  # noqa: BLE001 - a session that fails is counted, the others go on
        s.errors.append(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}; "
                        f"the page showed {page.shown()}")
    finally:
        with contextlib.suppress(Exception):
            await page.close()


async def _classroom(url: str, n: int, server_pid: int, client: str) -> tuple[list[Session], float, float]:
    """The sessions, and the CPU seconds the server and the clients (the browsers, or this process's
    websockets) spent meanwhile (read before the browser closes: an ended process's time is gone from /proc)."""
    import streamlit.logger

    streamlit.logger.set_log_level("error")  # dashboard.controls imported here has no runtime: say nothing
    from clip_icm import service
    from dashboard.controls import LAMS

    emb = service.load_embeddings(service.EmbeddingRequest(source="demo"), None, [])
    default = service.default_target(emb, "demo")
    others = [d for d in emb.domain_names if d != default]
    sessions = [Session(i, others[i % len(others)], 1 + (i // len(others)) % 4, 1 + (i // len(others)) // 4)
                for i in range(n)]
    if client == "ws":
        cpu_before, own_before = _cpu_seconds(server_pid), time.process_time()
        await asyncio.gather(*(_ws_student(url, s, default, list(LAMS)) for s in sessions))
        return sessions, _cpu_seconds(server_pid)[0] - cpu_before[0], time.process_time() - own_before
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        cpu_before = _cpu_seconds(server_pid)
        await asyncio.gather(*(_student(browser, url, s, default, [_lam_text(x) for x in LAMS]) for s in sessions))
        server_cpu, browser_cpu = (a - b for a, b in zip(_cpu_seconds(server_pid), cpu_before))
        await browser.close()
    return sessions, server_cpu, browser_cpu


def _inconsistent(sessions: list[Session]) -> list[str]:
    """Settings two sessions both showed with different headline numbers."""
    shown: dict = {}
    for s in sessions:
        for setting, metrics in s.seen.items():
            shown.setdefault(setting, set()).add(metrics)
    return [f"{setting}: {len(m)} different headlines" for setting, m in shown.items() if len(m) > 1]


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1] if len(values) > 1 else values[0]


def run(n: int, store: str, client: str = "ws") -> None:
    with tempfile.TemporaryDirectory() as scratch:
        cache = str(Path(scratch) / "store")
        shutil.copytree(store, cache)
        load_before = os.getloadavg()
        proc, url = _serve(cache)
        memory = Memory(proc.pid)
        memory.start()
        start = time.monotonic()
        try:
            sessions, server_cpu, client_cpu = asyncio.run(_classroom(url, n, proc.pid, client))
            wall = time.monotonic() - start
        finally:
            memory.done.set()
            memory.join()
            _stop(proc)
    reruns = [t for s in sessions for t in s.reruns]
    slider_moves = [t for s in sessions for t in s.reruns[1:]]
    firsts = [s.first_maps for s in sessions if s.first_maps is not None]
    finals = [s.final_maps for s in sessions if s.final_maps is not None]
    errors = [f"session {s.index}: {e}" for s in sessions for e in s.errors]
    leaks = [f"session {s.index}: {leak}" for s in sessions for leak in s.leaks] + _inconsistent(sessions)
    print(f"\n== {n} sessions, {CLIENTS[client]} (load average before {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}, "
          f"after {' '.join(f'{x:.1f}' for x in os.getloadavg())}), {wall:.0f} s in all")
    if reruns:
        print(f"reruns: {len(reruns)}, p50 {_quantile(reruns, 0.5):.2f} s, p95 {_quantile(reruns, 0.95):.2f} s, "
              f"max {max(reruns):.2f} s")
    if slider_moves:  # the goal: a slider change's rerun (a target change first computes that target)
        print(f"of which slider moves (K, λ): {len(slider_moves)}, p50 {_quantile(slider_moves, 0.5):.2f} s, "
              f"p95 {_quantile(slider_moves, 0.95):.2f} s, max {max(slider_moves):.2f} s")
    if firsts:
        print(f"first page to both maps: p50 {_quantile(firsts, 0.5):.1f} s, max {max(firsts):.1f} s")
    if finals:
        print(f"last change to both maps: p50 {_quantile(finals, 0.5):.1f} s, p95 {_quantile(finals, 0.95):.1f} s, "
              f"max {max(finals):.1f} s ({len(finals)}/{n} sessions)")
    queued = [s.queued for s in sessions if s.queued >= 0]
    print(f"queued: {len(queued)} sessions saw a queue place (largest {max(queued) if queued else '-'} ahead)")
    print(f"server peak RSS (process tree): {memory.peak_mb:.0f} MB; CPU seconds: server {server_cpu:.0f}, "
          f"{CLIENTS[client].split(' ')[0]} {client_cpu:.0f}")
    print(f"errors: {len(errors)}")
    for line in errors[:20]:
        print("  " + line)
    print(f"key presses the slider did not take (pressed again): {sum(s.lost_presses for s in sessions)}")
    stale = [f"session {s.index}: {read}" for s in sessions for read in s.stale_reads]
    print(f"stale reads (the session's own earlier setting, read mid-rerun): {len(stale)}")
    for line in stale[:10]:
        print("  " + line)
    print(f"leaks: {len(leaks)}")
    for line in leaks[:20]:
        print("  " + line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, action="append", help="N (repeat for several runs); default 10")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="ws",
                        help="ws: Streamlit's websocket protocol, no browser (the server alone); browser: "
                        "headless Chromium (default ws)")
    parser.add_argument("--store", default=os.environ.get("CLIP_ICM_CACHE"),
                        help="the store each server starts from a copy of (default $CLIP_ICM_CACHE)")
    args = parser.parse_args()
    if not args.store:
        from clip_icm.store import default_root

        args.store = str(default_root())
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"heavy-job cap {os.environ.get('CLIP_ICM_HEAVY_JOBS', 'default')}")
    for n in args.sessions or [10]:
        run(n, args.store, args.client)


if __name__ == "__main__":
    main()
