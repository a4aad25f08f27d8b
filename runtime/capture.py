"""The capture side of `ddrnet stream`: one `SourceWorker` thread per source, its frame slot, its
counters, and for live sources the watched `Connection` threads and the reconnect backoff.

A LIVE source (camera, rtsp:// or http(s):// URL, `gst:` pipeline) is read by a `Connection` thread
that puts every frame into a one-frame slot keeping only the newest (`FrameSlot`). The source's
`SourceWorker` watches it: a connection that delivers no frame for `stall_timeout` seconds, while
opening or while streaming, is abandoned, because a read from a frozen camera or a dead pipeline may
never return (OpenCV has no timeout for local devices or GStreamer). The worker then reconnects after a
backoff that is capped low (`Backoff`), so a camera that comes back is streaming again within about a
second, while a dead one is probed about once a second, not hammered.

Video files and image globs are read in order by the worker itself into a small blocking queue: nothing
is dropped unless `realtime`, which paces them at their frame rate and drops like a camera.

Accounting, per source: every frame read (or file tried) is `captured` and ends up exactly once as
processed (by the runner), dropped (replaced by a newer frame, or still waiting when the run stopped) or
skipped (an unreadable file), so captured == processed + dropped + skipped once the run has ended.
"""
from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional, Tuple

import numpy as np

from ddrnet.runtime.sources import DEFAULT_FPS, SourceSpec, VideoReader

MAX_STUCK_READS = 2  # abandoned connections still blocked in OpenCV, per source, before new ones wait


# ---------------------------------------------------------------- frames, slots, backoff


@dataclass
class Frame:
    source: int
    index: int  # per source, counting every captured frame, so gaps show drops
    image: np.ndarray
    captured: float  # time.monotonic() when the frame was read
    wall_time: float  # time.time() at the same moment, for the log
    file: Optional[str] = None


class FrameSlot:
    """Frames from one source. drop_oldest: a bounded slot that replaces (and counts) unread frames;
    otherwise a bounded queue whose put() waits, so nothing is lost."""

    def __init__(self, capacity: int, drop_oldest: bool, wakeup: threading.Event) -> None:
        self.capacity = capacity
        self.drop_oldest = drop_oldest
        self.dropped = 0
        self.dropped_at_stop = 0  # of those, frames refused or left over because the run stopped
        self._items: Deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._wakeup = wakeup

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        """Add a frame; False (the frame counted as dropped) when stop was set while waiting for room."""
        with self._cond:
            if self.drop_oldest:
                while len(self._items) >= self.capacity:
                    self._items.popleft()
                    self.dropped += 1
            else:
                while len(self._items) >= self.capacity:
                    if stop.is_set():
                        self.dropped += 1
                        self.dropped_at_stop += 1
                        return False
                    self._cond.wait(0.05)
            self._items.append(frame)
        self._wakeup.set()
        return True

    def notify(self) -> None:
        """Wake the scheduler without a frame (the source ended)."""
        self._wakeup.set()

    def take(self) -> Optional[Frame]:
        with self._cond:
            if not self._items:
                return None
            frame = self._items.popleft()
            self._cond.notify()
            return frame

    def discard(self) -> None:
        """At the end of a run: frames never taken count as dropped."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self.dropped += n
            self.dropped_at_stop += n
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


@dataclass
class Backoff:
    """Reconnect delays: initial * factor**(attempt-1), capped at maximum, then shortened by a random
    fraction up to `jitter` so cameras that failed together do not reconnect in lock-step. The cap is
    low on purpose: a camera that returns must stream again within ~2 s (the cap plus one connect),
    and a connection attempt to a dead camera costs little (a refused connect, or a timed-out open)."""

    initial: float = 0.25
    factor: float = 2.0
    maximum: float = 1.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random = random) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        return base * (1.0 - self.jitter * rng.random())


@dataclass
class SourceStats:
    """Capture-side counters of one source, written by its capture threads (see the module doc)."""

    captured: int = 0
    skipped: int = 0
    attempts: int = 0  # connection attempts of a live source, the first included
    reconnects: int = 0  # attempts after the first that delivered frames
    failed_attempts: int = 0  # attempts that delivered no frame
    outage_s: float = 0.0  # closed outages; see SourceWorker.outage_s for the running total
    state: str = "starting"
    error: Optional[str] = None
    resolutions: List[Tuple[int, int]] = field(default_factory=list)

    @property
    def reconnect_attempts(self) -> int:
        return max(0, self.attempts - 1)


# ---------------------------------------------------------------- a live connection


class Connection(threading.Thread):
    """Opens a live source and reads it on its own thread, handing each frame to `on_frame`; the
    worker abandons it when it stalls. An abandoned connection hands over nothing more and releases
    its capture if its blocked call ever returns."""

    def __init__(self, spec: SourceSpec, timeout_s: float, on_frame: Callable[[np.ndarray, bool], None],
                 open_reader: Callable[[SourceSpec, float], VideoReader] = VideoReader) -> None:
        super().__init__(name="read-" + spec.display, daemon=True)
        self.spec = spec
        self.timeout_s = timeout_s
        self.on_frame = on_frame  # (image, first) -> None
        self.open_reader = open_reader
        self.frames = 0
        self.last_progress = time.monotonic()  # start, then every frame: what the watchdog watches
        self.last_frame_at: Optional[float] = None
        self.reason = "stopped"
        self.ended = threading.Event()
        self._lock = threading.Lock()
        self._cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True

    def run(self) -> None:
        try:
            reader = self.open_reader(self.spec, self.timeout_s)
        except Exception as err:  # SourceError, or OpenCV refusing the pipeline
            self.reason = str(err)
            self.ended.set()
            return
        try:
            while True:
                img = reader.read()
                with self._lock:  # after cancel() nothing reaches the slot or the counters
                    if self._cancelled:
                        return
                    now = time.monotonic()
                    if img is None:
                        stalled = now - self.last_progress >= 0.9 * self.timeout_s
                        self.reason = ("no frame for {:.1f} s (stalled)".format(now - self.last_progress)
                                       if stalled else "end of stream or read error")
                        return
                    self.frames += 1
                    self.last_progress = self.last_frame_at = now
                    self.on_frame(img, self.frames == 1)
        finally:
            reader.close()
            self.ended.set()


# ---------------------------------------------------------------- the capture thread of a source


class SourceWorker(threading.Thread):
    """Reads one source into its slot; live sources reconnect with backoff until stopped or given up.

    `report(source, event, detail, **extra)` tells the console and the log; `reader` is the opened
    file or glob reader (None for live sources); `open_reader(spec, timeout_s)` opens a live source
    (VideoReader; tests put a frozen device there)."""

    def __init__(self, index: int, spec: SourceSpec, slot: FrameSlot, stop: threading.Event,
                 report: Callable[..., None], stall_timeout: float, backoff: Backoff,
                 max_reconnects: Optional[int] = None, fps: Optional[float] = None, reader=None,
                 open_reader: Callable[[SourceSpec, float], VideoReader] = VideoReader) -> None:
        super().__init__(name="capture-{}".format(index), daemon=True)
        self.index = index
        self.spec = spec
        self.slot = slot
        self.stop_event = stop
        self.report = report
        self.stall_timeout = stall_timeout
        self.backoff = backoff
        self.max_reconnects = max_reconnects
        self.fps = fps
        self.reader = reader
        self.open_reader = open_reader
        self.stats = SourceStats()
        self.done = False
        self._down_since: Optional[float] = None  # start of the outage in progress
        self._stuck: List[Connection] = []
        self._rng = random.Random()

    def outage_s(self, now: Optional[float] = None) -> float:
        """Time this source has been without a connection, the outage in progress included."""
        down = self._down_since
        now = time.monotonic() if now is None else now
        return self.stats.outage_s + (max(0.0, now - down) if down is not None else 0.0)

    def run(self) -> None:
        try:
            if self.spec.live:
                self._run_live()
            else:
                self._run_ordered()
        except Exception as err:  # a worker must never die silently: the runner reports it
            self.stats.state = "failed"
            self.stats.error = "{}: {}".format(type(err).__name__, err)
        finally:
            self._close_outage()
            self.done = True
            self.slot.notify()

    # files and globs
    def _run_ordered(self) -> None:
        reader = self.reader
        fps = reader.fps or self.fps or DEFAULT_FPS
        start = time.monotonic()
        self.stats.state = "reading"
        try:
            while not self.stop_event.is_set():
                img = reader.read()
                if img is None:
                    break
                if self.spec.realtime:  # release each frame at its own time, like a camera would
                    self.stop_event.wait(max(0.0, start + self.stats.captured / fps - time.monotonic()))
                if not self.slot.put(self._frame(img, reader.current_file), self.stop_event):
                    break
        finally:
            reader.close()
        readable = self.stats.captured - self.stats.skipped
        if readable == 0 and not self.stop_event.is_set():
            self.stats.state = "failed"
            self.stats.error = "no readable frame" + (" ({} unreadable files)".format(self.stats.skipped)
                                                      if self.stats.skipped else "")
        elif self.stats.state == "reading":
            self.stats.state = "stopped" if self.stop_event.is_set() else "finished"

    def skip(self) -> None:
        """An unreadable file of a glob: tried (captured) and skipped."""
        self.stats.captured += 1
        self.stats.skipped += 1

    # cameras, network streams and GStreamer pipelines
    def _run_live(self) -> None:
        failures = 0  # consecutive attempts that produced no frame
        while not self.stop_event.is_set():
            got, reason = self._attempt()
            if self.stop_event.is_set():
                break
            if got:  # a connection that delivered frames: the backoff starts afresh
                failures = 0
            else:
                self.stats.failed_attempts += 1
            failures += 1
            if self.max_reconnects is not None and failures > self.max_reconnects:
                self.stats.state = "failed"
                self.stats.error = "gave up after {} attempt{}: {}".format(
                    failures, "s" if failures > 1 else "", reason)
                self.report(self.index, "gave_up", self.stats.error)
                return
            delay = self.backoff.delay(failures, self._rng)
            self.stats.state = "waiting"
            self.report(self.index, "disconnected" if got else "retry",
                        "{}; retrying in {:.2f} s".format(reason, delay), retry_in_s=round(delay, 3))
            self.stop_event.wait(delay)
        self.stats.state = "stopped"

    def _attempt(self) -> Tuple[int, str]:
        """One connection, watched: (frames it delivered, why it ended)."""
        self._stuck = [c for c in self._stuck if not c.ended.is_set()]
        self.stats.attempts += 1
        self.stats.state = "connecting"
        if len(self._stuck) >= MAX_STUCK_READS:  # a frozen device: opening it again cannot help yet
            self._begin_outage(time.monotonic())
            return 0, "{} earlier reads are still blocked in the driver".format(len(self._stuck))
        started = time.monotonic()
        conn = Connection(self.spec, self.stall_timeout, self._on_frame, self.open_reader)
        conn.start()
        poll = min(0.1, self.stall_timeout / 10.0)
        while not conn.ended.wait(poll):
            if self.stop_event.is_set():
                conn.cancel()
                conn.ended.wait(1.0)  # let a returning read release the capture before exit
                return conn.frames, "stopped"
            idle = time.monotonic() - conn.last_progress
            if idle >= self.stall_timeout:  # the watchdog: no frame (or no open) in time
                conn.cancel()
                self._stuck.append(conn)
                what = "no frame" if conn.frames else "could not open, no answer"
                self._begin_outage(conn.last_frame_at or started)
                return conn.frames, "{} for {:.1f} s (stalled)".format(what, idle)
        self._begin_outage(conn.last_frame_at or started)
        return conn.frames, conn.reason

    def _on_frame(self, img: np.ndarray, first: bool) -> None:
        if first:
            self._on_connected(img)
        self.slot.put(self._frame(img, None), self.stop_event)

    def _on_connected(self, img: np.ndarray) -> None:
        self.stats.state = "streaming"
        reconnect = self.stats.attempts > 1
        self._close_outage()
        if not reconnect:
            return
        self.stats.reconnects += 1
        width, height = int(img.shape[1]), int(img.shape[0])
        self.report(self.index, "reconnected", "{}x{}".format(width, height), width=width, height=height)

    def _begin_outage(self, since: float) -> None:
        if self._down_since is None:
            self._down_since = since

    def _close_outage(self) -> None:
        if self._down_since is not None:
            self.stats.outage_s += max(0.0, time.monotonic() - self._down_since)
            self._down_since = None

    def _track_size(self, size: Tuple[int, int]) -> None:
        if not self.stats.resolutions or self.stats.resolutions[-1] != size:
            self.stats.resolutions.append(size)

    def _frame(self, img: np.ndarray, file: Optional[str]) -> Frame:
        index = self.stats.captured
        self.stats.captured += 1
        self._track_size((int(img.shape[1]), int(img.shape[0])))
        return Frame(self.index, index, img, time.monotonic(), time.time(), file)
