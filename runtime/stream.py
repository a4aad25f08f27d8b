"""Segment live cameras, RTSP / HTTP MJPEG streams, GStreamer pipelines, video files and image globs
with bounded latency: the runner, its statistics and the summary.

Threads:

* one capture thread per source (runtime/sources.py: `SourceWorker`, plus a `Connection` thread per
  live connection, watched for stalls). Live sources keep only their newest frame, so latency never
  grows however slow the model is; files and globs fill a small blocking queue (nothing dropped);
* the caller's thread (`StreamRunner.run`) schedules: round-robin over the sources, or one
  `predict_batch` call over the newest frame of every source when the model's batch dimension is
  dynamic (in chunks of at most the backend's `max_batch`). It measures frame age (capture ->
  inference end), keeps statistics, prints the status line and hands frames to the live view;
* one output thread (runtime/outputs.py: `OutputWorker`) draws overlays and writes the videos, mask
  PNGs, the JSON-lines log and the `--show` window, behind a bounded blocking queue;
* with `--serve`, the live view's HTTP and JPEG threads (runtime/liveview.py), which never make the
  runner wait.

Per source, captured == processed + dropped + skipped in the summary (see runtime/sources.py).
"""
from __future__ import annotations

import collections
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.liveview import LiveView
from ddrnet.runtime.outputs import (JsonlLog, OutputWorker, Result, VideoSink, check_outputs, choose_encoder,
                                    has_display, mask_folders, video_paths)
from ddrnet.runtime.capture import Backoff, Frame, FrameSlot, SourceWorker
from ddrnet.runtime.timing import latency_stats
from ddrnet.runtime.sources import (DEFAULT_FPS, LIVE_KINDS, SourceSpec, VideoReader, open_ordered_reader,
                                    parse_source)

__all__ = ["Backoff", "Console", "StreamOptions", "StreamRunner", "format_summary", "parse_source",
           "raise_for_failed_sources", "stop_on_signals"]

RECENT_S = 5.0  # window of the status line's and the live view's FPS and frame age


# ---------------------------------------------------------------- statistics


class Reservoir:
    """A uniform sample of at most `size` values (algorithm R): whole-run percentiles in constant memory."""

    def __init__(self, size: int = 20000, seed: int = 0) -> None:
        self.size = size
        self.count = 0
        self._values: List[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        if len(self._values) < self.size:
            self._values.append(value)
        else:
            j = self._rng.randrange(self.count)
            if j < self.size:
                self._values[j] = value

    def percentiles(self) -> Dict[str, Optional[float]]:
        return percentiles(self._values)


def percentiles(values) -> Dict[str, Optional[float]]:
    """p50, p99 and mean of the stream's samples (runtime/timing.latency_stats), rounded; None when empty."""
    if not len(values):
        return {"p50": None, "p99": None, "mean": None}
    stats = latency_stats(values)
    return {key: round(stats[key], 3) for key in ("p50", "p99", "mean")}


class Tally:
    """The scheduler's counters of one source: frames processed, their ages, the recent window."""

    def __init__(self) -> None:
        self.processed = 0
        self.ages = Reservoir()
        self._recent: Deque[Tuple[float, float]] = collections.deque(maxlen=512)  # (end time, age ms)
        self._lock = threading.Lock()  # the live view reads from its own threads

    def add(self, end: float, age_ms: float) -> None:
        self.processed += 1
        self.ages.add(age_ms)
        with self._lock:
            self._recent.append((end, age_ms))

    def recent(self, now: float) -> List[Tuple[float, float]]:
        with self._lock:
            return [r for r in self._recent if now - r[0] <= RECENT_S]


def recent_rates(recent: List[Tuple[float, float]]) -> Tuple[float, Dict[str, Optional[float]]]:
    """(FPS, age percentiles) of (end time, age ms) pairs."""
    ends = sorted(e for e, _ in recent)
    span = ends[-1] - ends[0] if ends else 0.0
    return ((len(ends) - 1) / span if span > 0 else 0.0), percentiles([a for _, a in recent])


# ---------------------------------------------------------------- options and console


@dataclass
class StreamOptions:
    max_frames: Optional[int] = None  # over all sources
    stall_timeout: float = 5.0
    max_reconnects: Optional[int] = None  # consecutive failed attempts before a live source gives up
    schedule: str = "auto"  # auto | round-robin | batch
    backoff: Backoff = field(default_factory=Backoff)
    out: Optional[str] = None  # mp4 file (one source) or folder (source<i>.mp4)
    masks: Optional[str] = None
    jsonl: Optional[str] = None
    show: bool = False
    fps: Optional[float] = None  # glob pacing and output rate; default: the video's rate, else 15
    status_interval: float = 1.0
    queue_depth: int = 4  # files/globs read ahead; outputs wait in a queue twice this deep


class Console:
    """Status line and messages on stderr; one lock so that threads never interleave half lines."""

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._status_shown = False

    def message(self, text: str) -> None:
        with self._lock:
            self._clear_status()
            self.stream.write(text + "\n")
            self.stream.flush()

    def status(self, text: str) -> None:
        with self._lock:
            if self.tty:  # rewrite one line in place
                self.stream.write("\r" + text + "\033[K")
                self._status_shown = True
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            self._clear_status()

    def _clear_status(self) -> None:
        if self._status_shown:
            self.stream.write("\r\033[K")
            self._status_shown = False


# ---------------------------------------------------------------- the runner


class StreamRunner:
    """Runs a predictor over sources until they end, `max_frames`, or stop(); returns the summary.
    `open_reader` opens live sources (tests inject faulty devices there); `live_view` is a bound
    LiveView (`--serve`) that the run starts and closes."""

    def __init__(self, predictor, sources: List[SourceSpec], options: Optional[StreamOptions] = None,
                 console: Optional[Console] = None, live_view: Optional[LiveView] = None,
                 open_reader: Callable[[SourceSpec, float], VideoReader] = VideoReader) -> None:
        if not sources:
            raise DDRNetError("no --source given")
        self.predictor = predictor
        self.specs = sources
        self.options = options or StreamOptions()
        self.console = console or Console()
        self.live_view = live_view
        self.open_reader = open_reader
        self.stop_reason: Optional[str] = None
        self.workers: List[SourceWorker] = []  # made by run(), one per source
        self.tallies = [Tally() for _ in sources]
        self.encoder = None
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._log: Optional[JsonlLog] = None
        self._ages = Reservoir()
        self._model_ms = Reservoir()
        self._next_source = 0
        self._start = self._end = None  # type: Optional[float]
        self._batch = self._decide_batching()
        self._max_batch = getattr(getattr(predictor, "backend", None), "max_batch", None)

    def stop(self, reason: str = "stopped") -> None:
        """Thread- and signal-safe: the run loop ends after the current inference."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()
        self._wakeup.set()

    def run(self) -> Dict[str, Any]:
        opts = self.options
        check_outputs(self.specs, opts.out, opts.masks, opts.jsonl)
        videos = video_paths(opts.out, len(self.specs))
        show = opts.show and has_display()
        if opts.show and not show:
            self.console.message("warning: --show ignored: no display (DISPLAY/WAYLAND_DISPLAY unset)")
        if opts.out:
            self.encoder = choose_encoder()
            self.console.message("overlay video: " + self.encoder.description)
        if opts.jsonl:
            self._log = JsonlLog(opts.jsonl)
        try:
            self.workers = self._make_workers()
            sinks = [VideoSink(p, self._output_fps(w), self.encoder) if p else None
                     for p, w in zip(videos, self.workers)]
            self.outputs = OutputWorker(self.predictor, sinks, mask_folders(opts.masks, len(self.specs)),
                                        self._log, show, 2 * opts.queue_depth, lambda: self.stop("quit"))
            self._start = time.monotonic()
            self._last_status = self._start
            self._start_live_view()
            self.outputs.start()
            for w in self.workers:
                w.start()
            try:
                self._loop()
            finally:
                self._shutdown()
            summary = self.summary()
            if self._log is not None:
                self._log.write(dict(summary, type="summary"))
        finally:
            if self.live_view is not None:
                self.live_view.close()
            if self._log is not None:
                self._log.close()
        return summary

    # scheduling
    def _decide_batching(self) -> bool:
        schedule = self.options.schedule
        if schedule not in ("auto", "round-robin", "batch"):
            raise DDRNetError("schedule must be auto, round-robin or batch, not {!r}".format(schedule))
        shape = list(getattr(self.predictor, "input_shape", None) or [1])
        dynamic_batch = shape[0] in (-1, None)
        if schedule == "batch" and not dynamic_batch:
            raise DDRNetError("--schedule batch needs a model with a dynamic batch dimension "
                              "(its input shape is {})".format(shape))
        return dynamic_batch and len(self.specs) > 1 and schedule != "round-robin"

    def _loop(self) -> None:
        limit = self.options.max_frames
        processed = 0
        while not self._stop.is_set():
            if limit is not None and processed >= limit:
                self.stop("max-frames")
                break
            self._wakeup.clear()
            frames = self._take_frames(None if limit is None else limit - processed)
            if not frames:
                if self._all_done():
                    self.stop("end of sources")
                    break
                self._wakeup.wait(0.1)
                continue
            for group in self._same_size_groups(frames):
                self._infer(group)
            processed += len(frames)
            if self.outputs.error is not None:
                break
            self._maybe_status()

    def _take_frames(self, room: Optional[int]) -> List[Frame]:
        """Round-robin: the next source with a frame. Batch: the newest frame of every source, at
        most the backend's max_batch (the next round starts after the last source served, so the
        others' slots meanwhile refill with fresher frames)."""
        if self._max_batch is not None:
            room = self._max_batch if room is None else min(room, self._max_batch)
        n = len(self.workers)
        frames: List[Frame] = []
        for k in range(n):
            i = (self._next_source + k) % n
            frame = self.workers[i].slot.take()
            if frame is None:
                continue
            frames.append(frame)
            if not self._batch or (room is not None and len(frames) >= room):
                self._next_source = (i + 1) % n
                break
        return frames

    @staticmethod
    def _same_size_groups(frames: List[Frame]) -> List[List[Frame]]:
        groups: Dict[Tuple[int, ...], List[Frame]] = {}
        for f in frames:
            groups.setdefault(f.image.shape, []).append(f)
        return list(groups.values())

    def _infer(self, frames: List[Frame]) -> None:
        if len(frames) == 1:
            masks = [self.predictor(frames[0].image)]
        else:
            masks = self.predictor.predict_batch([f.image for f in frames])
        end = time.monotonic()
        timing = dict(getattr(self.predictor, "last_timing", None) or {})
        self._model_ms.add(sum(timing.get(k, 0.0) for k in ("pre_ms", "infer_ms", "post_ms")))
        view = self.live_view
        for frame, mask in zip(frames, masks):
            age_ms = (end - frame.captured) * 1000.0
            self.tallies[frame.source].add(end, age_ms)
            self._ages.add(age_ms)
            if view is not None:
                view.offer(frame.source, frame.image, mask)
            self.outputs.queue.put(Result(frame, mask, timing, age_ms, len(frames),
                                          self.workers[frame.source].slot.dropped))

    def _all_done(self) -> bool:
        # Workers first: a worker sets done after its last put, so an empty slot seen later is final.
        return all(w.done for w in self.workers) and all(len(w.slot) == 0 for w in self.workers)

    # setup and teardown
    def _make_workers(self) -> List[SourceWorker]:
        workers = []
        opts = self.options
        for i, spec in enumerate(self.specs):
            slot = FrameSlot(1 if spec.drops else opts.queue_depth, spec.drops, self._wakeup)
            reader = None if spec.live else open_ordered_reader(spec, self._skipper(i))
            workers.append(SourceWorker(i, spec, slot, self._stop, self._report, opts.stall_timeout, opts.backoff,
                                        opts.max_reconnects, opts.fps, reader, self.open_reader))
        return workers

    def _skipper(self, index: int) -> Callable[[str], None]:
        def skip(detail: str) -> None:
            self.workers[index].skip()
            self._report(index, "skipped", detail)
        return skip

    def _output_fps(self, worker: SourceWorker) -> float:
        native = getattr(worker.reader, "fps", None)
        return self.options.fps or native or DEFAULT_FPS

    def _start_live_view(self) -> None:
        view = self.live_view
        if view is None:
            return
        view.start([s.display for s in self.specs], self.live_status, self.predictor.overlay)
        self.console.message("live view: {}{}".format(view.url, " (token required)" if view.token else ""))
        if view.exposed and not view.token:
            self.console.message("warning: the live view on {} has no token: anyone on that network can "
                                 "watch (--token or {})".format(view.url, "DDRNET_STREAM_TOKEN"))

    def _report(self, source: int, event: str, detail: str, **extra: Any) -> None:
        self.console.message("source {} ({}): {}: {}".format(source, self.specs[source].display, event, detail))
        if self._log is not None:
            self._log.write(dict({"type": "event", "time": round(time.time(), 6), "source": source,
                                  "event": event, "detail": detail}, **extra))

    def _shutdown(self) -> None:
        self._stop.set()
        for w in self.workers:
            w.join(timeout=max(1.0, self.options.stall_timeout + 1.0))
        for w in self.workers:  # frames read but never inferred count as dropped, so the counts add up
            w.slot.discard()
        self.outputs.queue.put(None)  # drain what was inferred, then close the writers
        self.outputs.join()
        self._end = time.monotonic()
        self.outputs.close()
        self.console.close()
        if self.outputs.error is not None:
            raise self.outputs.error

    # reporting
    def _maybe_status(self) -> None:
        now = time.monotonic()
        if now - self._last_status < self.options.status_interval:
            return
        self._last_status = now
        self.console.status(self.status_line(now))

    def status_line(self, now: float) -> str:
        recent = [r for t in self.tallies for r in t.recent(now)]
        fps, age = recent_rates(recent)
        parts = ["{:6.1f} s  {:5.1f} FPS  age p50 {} p99 {} ms".format(
            now - self._start, fps, _fmt(age["p50"]), _fmt(age["p99"]))]
        for i, (w, t) in enumerate(zip(self.workers, self.tallies)):
            parts.append("s{} {} {} fr {} drop {} reconn".format(
                i, w.stats.state, t.processed, w.slot.dropped, w.stats.reconnects))
        return " | ".join(parts)

    def _source_counts(self, i: int, now: float) -> Dict[str, Any]:
        w, t = self.workers[i], self.tallies[i]
        s = w.stats
        return {"source": i, "uri": w.spec.display, "kind": w.spec.kind, "state": s.state, "error": s.error,
                "captured": s.captured, "processed": t.processed, "dropped": w.slot.dropped,
                "dropped_at_stop": w.slot.dropped_at_stop,
                "skipped": s.skipped, "reconnects": s.reconnects, "reconnect_attempts": s.reconnect_attempts,
                "failed_attempts": s.failed_attempts, "outage_s": round(w.outage_s(now), 3),
                "resolutions": [list(r) for r in s.resolutions]}

    def live_status(self) -> Dict[str, Any]:
        """Counters now (the live view's /status): totals, and per source the recent FPS and age."""
        now = time.monotonic()
        sources = []
        for i, t in enumerate(self.tallies):
            fps, age = recent_rates(t.recent(now))
            sources.append(dict(self._source_counts(i, now), fps=round(fps, 3), age_ms=age))
        fps, age = recent_rates([r for t in self.tallies for r in t.recent(now)])
        return {"uptime_s": round(now - self._start, 3), "frames": sum(t.processed for t in self.tallies),
                "fps": round(fps, 3), "age_ms": age, "recent_s": RECENT_S, "sources": sources}

    def summary(self) -> Dict[str, Any]:
        end = self._end or time.monotonic()
        seconds = max(1e-9, end - self._start)
        sources = [dict(self._source_counts(i, end), fps=round(t.processed / seconds, 3), age_ms=t.ages.percentiles())
                   for i, t in enumerate(self.tallies)]
        totals = {k: sum(s[k] for s in sources) for k in ("captured", "dropped", "skipped")}
        total = sum(t.processed for t in self.tallies)
        return dict({"frames": total, "seconds": round(seconds, 3), "fps": round(total / seconds, 3),
                     "stopped_by": self.stop_reason, "batched": self._batch, "max_batch": self._max_batch,
                     "video": self.encoder.description if self.encoder else None,
                     "age_ms": self._ages.percentiles(), "model_ms": self._model_ms.percentiles(),
                     "sources": sources}, **totals)


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else "{:.0f}".format(value)


def format_summary(summary: Dict[str, Any]) -> str:
    lines = ["stream summary: {} frames in {:.1f} s ({:.1f} FPS), stopped by {}; frame age p50 {} p99 {} ms".format(
        summary["frames"], summary["seconds"], summary["fps"], summary["stopped_by"],
        _fmt(summary["age_ms"]["p50"]), _fmt(summary["age_ms"]["p99"]))]
    for s in summary["sources"]:
        sizes = ", ".join("{}x{}".format(*r) for r in s["resolutions"]) or "-"
        left = " ({} left at the stop)".format(s["dropped_at_stop"]) if s["dropped_at_stop"] else ""
        live = ("; {} reconnects of {} attempts, outage {:.1f} s".format(
            s["reconnects"], s["reconnect_attempts"], s["outage_s"]) if s["kind"] in LIVE_KINDS else "")
        lines.append("  source {} {}: {} captured = {} processed + {} dropped{} + {} skipped{}; age p50 {} p99 {} "
                     "ms, sizes {}, {}{}".format(
                         s["source"], s["uri"], s["captured"], s["processed"], s["dropped"], left, s["skipped"],
                         live, _fmt(s["age_ms"]["p50"]), _fmt(s["age_ms"]["p99"]), sizes, s["state"],
                         ": " + s["error"] if s["error"] else ""))
    if summary.get("video"):
        lines.append("  overlay video: " + summary["video"])
    return "\n".join(lines)


def raise_for_failed_sources(summary: Dict[str, Any]) -> None:
    """A source that gave up (or whose reader crashed) makes the command fail, after outputs are closed."""
    for s in summary["sources"]:
        if s["state"] == "failed":
            raise DDRNetError("{}: {}".format(s["uri"], s["error"]))


@contextmanager
def stop_on_signals(runner: StreamRunner) -> Iterator[None]:
    """SIGINT/SIGTERM stop the runner cleanly (writers closed, summary printed); a second one is
    handled by the default handler, so a stuck shutdown can still be interrupted."""
    names = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
    previous = {sig: signal.getsignal(sig) for sig in names}

    def handler(signum, _frame) -> None:
        runner.stop(names.get(signum, str(signum)))
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in names:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
