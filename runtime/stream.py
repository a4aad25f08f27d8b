"""Segment live cameras, RTSP / HTTP MJPEG streams, video files and image globs with bounded latency.

Threads and queues:

* one capture thread per source (`SourceWorker`). A LIVE source (camera, rtsp://, http(s)://) puts
  frames into a one-frame slot that keeps only the newest frame: a frame the model has not taken yet
  is replaced and counted as dropped, so latency never grows however slow the model is. A video file
  or image glob fills a small blocking queue instead (read in order, never dropped) unless
  `realtime=True`, which paces it at its frame rate and treats it like a camera;
* the caller's thread (`StreamRunner.run`) schedules: round-robin over the sources, or one
  `predict_batch` call over the newest frame of every source when the model's batch dimension is
  dynamic. It measures frame age (capture -> inference end), keeps statistics and prints the status line;
* one output thread (`OutputWorker`) draws overlays and writes the mp4, mask PNGs, the JSON-lines log
  and the `--show` window, behind a bounded blocking queue, so encoding overlaps inference.

Live sources reconnect after end of stream, read errors or a stall (the watchdog: no frame for
`stall_timeout` seconds, enforced by FFmpeg's open/read timeouts and by the capture loop) with
exponential backoff and jitter (`Backoff`). A source that returns at another resolution keeps
working: masks follow the frame size and each mp4 keeps the size of its first frame (later frames
are resized to it, so one playable file per source).
"""
from __future__ import annotations

import collections
import glob
import json
import os
import queue
import random
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.imageio import read_image, write_image

LIVE_KINDS = ("camera", "network")
GLOB_CHARS = re.compile(r"[*?\[]")
DEFAULT_FPS = 15.0  # output / pacing rate when the source does not say (globs, most live streams)


class SourceError(Exception):
    """A live source could not be opened or read; the worker retries it."""


# ---------------------------------------------------------------- sources


@dataclass
class SourceSpec:
    """What the user asked for, classified: kind is file, glob, camera or network."""

    text: str
    kind: str
    realtime: bool = False

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS

    @property
    def drops(self) -> bool:
        """Whether frames the model cannot keep up with are dropped (live or paced) or queued."""
        return self.live or self.realtime


def parse_source(text: str, realtime: bool = False) -> SourceSpec:
    """Classify a --source value; a missing file or a glob with no match is a DDRNetError now."""
    if re.fullmatch(r"\d+", text) or text.startswith("/dev/"):
        return SourceSpec(text, "camera")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        return SourceSpec(text, "network")
    if GLOB_CHARS.search(text) and not os.path.exists(text):
        if not _glob_files(text):
            raise DDRNetError("{}: no files match this pattern".format(text))
        return SourceSpec(text, "glob", realtime)
    if not os.path.isfile(text):
        raise DDRNetError("{}: no such file".format(text))
    _check_video(text)
    return SourceSpec(text, "file", realtime)


def _check_video(path: str) -> None:
    """Decode the first frame now, so a corrupt file fails before the model loads."""
    cap = cv2.VideoCapture(path)
    try:
        ok = cap.isOpened() and cap.read()[0]
    finally:
        cap.release()
    if not ok:
        raise DDRNetError("{}: not a readable video (corrupt, truncated or unsupported)".format(path))


def _glob_files(pattern: str) -> List[str]:
    return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))


class VideoReader:
    """cv2.VideoCapture over a file, a camera or a network URL; read() -> BGR frame or None."""

    current_file: Optional[str] = None

    def __init__(self, spec: SourceSpec, timeout_s: float) -> None:
        self.cap = _open_capture(spec, timeout_s)
        if not self.cap.isOpened():
            self.cap.release()
            raise SourceError("cannot open (unreachable, refused, or not a video)")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps <= 240 else None  # live backends often report nonsense

    def read(self) -> Optional[np.ndarray]:
        ok, frame = self.cap.read()
        return frame if ok and frame is not None and frame.size else None

    def close(self) -> None:
        self.cap.release()


def _open_capture(spec: SourceSpec, timeout_s: float) -> cv2.VideoCapture:
    if spec.kind == "network":
        # FFmpeg's interrupt callback honours these; they are the stall watchdog for rtsp/http.
        ms = int(timeout_s * 1000)
        return cv2.VideoCapture(spec.text, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    if spec.kind == "camera":
        cap = (cv2.VideoCapture(int(spec.text)) if spec.text.isdigit()
               else cv2.VideoCapture(spec.text, cv2.CAP_V4L2))
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's queue would add latency
        return cap
    return cv2.VideoCapture(spec.text)


class GlobReader:
    """Images matching a pattern, in sorted order; unreadable ones are skipped and reported."""

    fps: Optional[float] = None

    def __init__(self, spec: SourceSpec, on_skip: Callable[[str], None]) -> None:
        self._paths = iter(_glob_files(spec.text))
        self._on_skip = on_skip
        self.current_file: Optional[str] = None

    def read(self) -> Optional[np.ndarray]:
        for path in self._paths:
            try:
                img = read_image(path)
            except DDRNetError as err:
                self._on_skip(str(err))
                continue
            self.current_file = path
            return img
        return None

    def close(self) -> None:
        pass


def open_ordered_reader(spec: SourceSpec, on_skip: Callable[[str], None]):
    """Open a file or glob in the caller's thread, so a bad one is an error before anything starts."""
    if spec.kind == "glob":
        return GlobReader(spec, on_skip)
    try:
        return VideoReader(spec, timeout_s=0)  # files have no timeouts
    except SourceError:
        raise DDRNetError("{}: not a readable video".format(spec.text)) from None


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
        self._items: Deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._wakeup = wakeup

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        """Add a frame; False when stop was set while waiting for room."""
        with self._cond:
            if self.drop_oldest:
                while len(self._items) >= self.capacity:
                    self._items.popleft()
                    self.dropped += 1
            else:
                while len(self._items) >= self.capacity:
                    if stop.is_set():
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

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


@dataclass
class Backoff:
    """Reconnect delays: initial * factor**(attempt-1), capped at maximum, then shortened by a random
    fraction up to `jitter` so cameras that failed together do not reconnect in lock-step."""

    initial: float = 0.25
    factor: float = 2.0
    maximum: float = 8.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random = random) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        return base * (1.0 - self.jitter * rng.random())


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
    if not len(values):
        return {"p50": None, "p99": None, "mean": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(arr, 50)), 3), "p99": round(float(np.percentile(arr, 99)), 3),
            "mean": round(float(arr.mean()), 3)}


@dataclass
class SourceStats:
    """Counters of one source. The capture thread owns captured..outage_s, the scheduler processed/ages."""

    captured: int = 0
    reconnects: int = 0
    failed_attempts: int = 0
    skipped: int = 0
    outage_s: float = 0.0
    state: str = "starting"
    error: Optional[str] = None
    resolutions: List[Tuple[int, int]] = field(default_factory=list)
    processed: int = 0
    ages: Reservoir = field(default_factory=Reservoir)


# ---------------------------------------------------------------- options and events


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


class JsonlLog:
    """One JSON object per line, written as it happens (a log is complete line by line)."""

    def __init__(self, path: str) -> None:
        try:
            self._file = open(path, "w", encoding="utf-8", buffering=1)
        except OSError as err:
            raise DDRNetError("{}: cannot write ({})".format(path, err.strerror)) from None
        self._lock = threading.Lock()

    def write(self, record: Dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


# ---------------------------------------------------------------- capture thread


class SourceWorker(threading.Thread):
    """Reads one source into its slot; live sources reconnect with backoff until stopped or given up."""

    def __init__(self, index: int, spec: SourceSpec, slot: FrameSlot, options: StreamOptions,
                 stop: threading.Event, report: Callable[..., None], reader=None) -> None:
        super().__init__(name="capture-{}".format(index), daemon=True)
        self.index = index
        self.spec = spec
        self.slot = slot
        self.options = options
        self.stop_event = stop
        self.report = report  # report(source, event, detail, **extra): console + log
        self.reader = reader  # files and globs are opened by the runner
        self.stats = SourceStats()
        self.done = False
        self._rng = random.Random()

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
            self.done = True
            self.slot.notify()

    # files and globs
    def _run_ordered(self) -> None:
        reader = self.reader
        fps = reader.fps or self.options.fps or DEFAULT_FPS
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
        if self.stats.captured == 0 and not self.stop_event.is_set():
            self.stats.state = "failed"
            self.stats.error = "no readable frame" + (" ({} unreadable files)".format(self.stats.skipped)
                                                      if self.stats.skipped else "")
        elif self.stats.state == "reading":
            self.stats.state = "finished"

    # cameras and network streams
    def _run_live(self) -> None:
        failures = 0  # consecutive attempts that produced no frame
        lost_at: Optional[float] = None
        while not self.stop_event.is_set():
            got, reason = self._connect_and_read(lost_at)
            if self.stop_event.is_set():
                break
            if got:  # a connection that delivered frames: the outage and the backoff start afresh
                failures = 0
                lost_at = time.monotonic()
            else:
                self.stats.failed_attempts += 1
            failures += 1
            limit = self.options.max_reconnects
            if limit is not None and failures > limit:
                self.stats.state = "failed"
                self.stats.error = "gave up after {} attempt{}: {}".format(
                    failures, "s" if failures > 1 else "", reason)
                self.report(self.index, "gave_up", self.stats.error)
                return
            delay = self.options.backoff.delay(failures, self._rng)
            self.stats.state = "waiting"
            self.report(self.index, "disconnected" if got else "retry",
                        "{}; retrying in {:.2f} s".format(reason, delay), retry_in_s=round(delay, 3))
            self.stop_event.wait(delay)
        self.stats.state = "stopped"

    def _connect_and_read(self, lost_at: Optional[float]) -> Tuple[int, str]:
        """One connection: (frames read, why it ended)."""
        self.stats.state = "connecting"
        try:
            reader = VideoReader(self.spec, self.options.stall_timeout)
        except SourceError as err:
            return 0, str(err)
        got = 0
        try:
            last = time.monotonic()
            while not self.stop_event.is_set():
                img = reader.read()
                now = time.monotonic()
                if img is None:
                    if now - last >= 0.9 * self.options.stall_timeout:
                        return got, "no frame for {:.1f} s (stalled)".format(now - last)
                    return got, "end of stream or read error"
                last = now
                if got == 0:
                    self._on_connected(img, lost_at)
                got += 1
                self.slot.put(self._frame(img, None), self.stop_event)
            return got, "stopped"
        finally:
            reader.close()

    def _on_connected(self, img: np.ndarray, lost_at: Optional[float]) -> None:
        self.stats.state = "streaming"
        if lost_at is None:  # the first connection is not a reconnect
            return
        self.stats.reconnects += 1
        self.stats.outage_s += time.monotonic() - lost_at
        width, height = int(img.shape[1]), int(img.shape[0])
        self.report(self.index, "reconnected", "{}x{}".format(width, height), width=width, height=height)

    def _track_size(self, size: Tuple[int, int]) -> None:
        if not self.stats.resolutions or self.stats.resolutions[-1] != size:
            self.stats.resolutions.append(size)

    def _frame(self, img: np.ndarray, file: Optional[str]) -> Frame:
        index = self.stats.captured
        self.stats.captured += 1
        self._track_size((int(img.shape[1]), int(img.shape[0])))
        return Frame(self.index, index, img, time.monotonic(), time.time(), file)


# ---------------------------------------------------------------- outputs


class VideoSink:
    """An mp4 ('mp4v') written under a temporary name and renamed on close, so a file with the final
    name is always complete. Its size is the first frame's (rounded down to even, which the codec
    needs); frames of another size are resized to it."""

    def __init__(self, path: str, fps: float) -> None:
        self.path = path
        self.fps = fps
        self.frames = 0
        self._tmp = os.path.splitext(path)[0] + ".partial.mp4"
        self._writer: Optional[cv2.VideoWriter] = None
        self._size: Optional[Tuple[int, int]] = None

    def write(self, bgr: np.ndarray) -> None:
        if self._writer is None:
            self._size = (max(2, bgr.shape[1] // 2 * 2), max(2, bgr.shape[0] // 2 * 2))
            self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise DDRNetError("{}: cannot open a video writer".format(self.path))
        if (bgr.shape[1], bgr.shape[0]) != self._size:
            bgr = cv2.resize(bgr, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(bgr)
        self.frames += 1

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.release()  # writes the mp4 index: without it the file does not play
        self._writer = None
        os.replace(self._tmp, self.path)


@dataclass
class Result:
    frame: Frame
    mask: np.ndarray
    timing: Dict[str, float]
    age_ms: float
    batch: int
    dropped: int


class OutputWorker(threading.Thread):
    """Overlays, mp4, mask PNGs, the log and the window, off the inference thread."""

    def __init__(self, predictor, videos: List[Optional[VideoSink]], mask_dirs: List[Optional[str]],
                 log: Optional[JsonlLog], show: bool, depth: int, on_quit: Callable[[], None]) -> None:
        super().__init__(name="outputs", daemon=True)
        self.predictor = predictor
        self.videos = videos
        self.mask_dirs = mask_dirs
        self.log = log
        self.show = show
        self.on_quit = on_quit
        self.queue: "queue.Queue[Optional[Result]]" = queue.Queue(maxsize=depth)
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # keep draining so the scheduler never blocks on a dead writer
            try:
                self._write(item)
            except Exception as err:
                self.error = err
                self.on_quit()

    def _write(self, r: Result) -> None:
        f = r.frame
        if self.log is not None:
            record = {"type": "frame", "source": f.source, "frame": f.index, "capture_time": round(f.wall_time, 6),
                      "age_ms": round(r.age_ms, 3), "dropped": r.dropped, "batch": r.batch,
                      "width": int(f.image.shape[1]), "height": int(f.image.shape[0])}
            record.update({k: round(float(v), 3) for k, v in r.timing.items()})
            if f.file is not None:
                record["file"] = f.file
            self.log.write(record)
        video = self.videos[f.source]
        if video is not None or self.show:
            overlay = self.predictor.overlay(f.image, r.mask)
            if video is not None:
                video.write(overlay)
            if self.show:
                self._show(f.source, overlay)
        if self.mask_dirs[f.source] is not None:
            write_image(os.path.join(self.mask_dirs[f.source], "{:06d}.png".format(f.index)), r.mask)

    def _show(self, source: int, overlay: np.ndarray) -> None:
        cv2.imshow("ddrnet stream: source {}".format(source), overlay)
        if cv2.waitKey(1) & 0xFF in (27, ord("q")):
            self.on_quit()


def has_display() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def output_paths(out: Optional[str], count: int) -> List[Optional[str]]:
    """--out FILE for one source, --out DIR (source<i>.mp4) for any number; parent folders are made."""
    if out is None:
        return [None] * count
    is_file = os.path.splitext(out)[1] != "" and not os.path.isdir(out)
    if is_file and count > 1:
        raise DDRNetError("{}: with {} sources --out must be a folder (one source<i>.mp4 each)".format(out, count))
    if is_file and not out.lower().endswith(".mp4"):
        raise DDRNetError("{}: the overlay video must be an .mp4".format(out))
    folder = (os.path.dirname(out) or ".") if is_file else out
    _ensure_writable_dir(folder)
    return [out] if is_file else [os.path.join(out, "source{}.mp4".format(i)) for i in range(count)]


def mask_folders(masks: Optional[str], count: int) -> List[Optional[str]]:
    """--masks DIR: DIR/<frame>.png for one source, DIR/source<i>/<frame>.png for several."""
    if masks is None:
        return [None] * count
    folders = [masks] if count == 1 else [os.path.join(masks, "source{}".format(i)) for i in range(count)]
    for folder in folders:
        _ensure_writable_dir(folder)
    return folders


def _ensure_writable_dir(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise DDRNetError("{}: cannot create folder ({})".format(folder, err.strerror)) from None
    if not os.access(folder, os.W_OK):
        raise DDRNetError("{}: folder is not writable".format(folder))


# ---------------------------------------------------------------- the runner


class StreamRunner:
    """Runs a predictor over sources until they end, `max_frames`, or stop(); returns the summary."""

    def __init__(self, predictor, sources: List[SourceSpec], options: Optional[StreamOptions] = None,
                 console: Optional[Console] = None) -> None:
        if not sources:
            raise DDRNetError("no --source given")
        self.predictor = predictor
        self.specs = sources
        self.options = options or StreamOptions()
        self.console = console or Console()
        self.stop_reason: Optional[str] = None
        self.workers: List[SourceWorker] = []  # made by run(), one per source
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._log: Optional[JsonlLog] = None
        self._recent: Deque[Tuple[float, float]] = collections.deque(maxlen=256)  # (end time, age ms)
        self._ages = Reservoir()
        self._model_ms = Reservoir()
        self._next_source = 0
        self._batch = self._decide_batching()

    def stop(self, reason: str = "stopped") -> None:
        """Thread- and signal-safe: the run loop ends after the current inference."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()
        self._wakeup.set()

    def run(self) -> Dict[str, Any]:
        opts = self.options
        videos = output_paths(opts.out, len(self.specs))
        masks = mask_folders(opts.masks, len(self.specs))
        if opts.jsonl:
            self._log = JsonlLog(opts.jsonl)
        show = opts.show and has_display()
        if opts.show and not show:
            self.console.message("warning: --show ignored: no display (DISPLAY/WAYLAND_DISPLAY unset)")
        try:
            self.workers = self._make_workers()
            sinks = [VideoSink(p, self._output_fps(w)) if p else None for p, w in zip(videos, self.workers)]
            self.outputs = OutputWorker(self.predictor, sinks, masks, self._log, show,
                                        2 * opts.queue_depth, lambda: self.stop("quit"))
            self._start = time.monotonic()
            self._last_status = self._start
            self.outputs.start()
            for w in self.workers:
                w.start()
            try:
                self._loop()
            finally:
                self._shutdown(sinks)
            summary = self.summary()
            if self._log is not None:
                self._log.write(dict(summary, type="summary"))
        finally:
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
        """Round-robin: the next source with a frame. Batch: the newest frame of every source."""
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
        for frame, mask in zip(frames, masks):
            age_ms = (end - frame.captured) * 1000.0
            worker = self.workers[frame.source]
            worker.stats.processed += 1
            worker.stats.ages.add(age_ms)
            self._ages.add(age_ms)
            self._recent.append((end, age_ms))
            self.outputs.queue.put(Result(frame, mask, timing, age_ms, len(frames), worker.slot.dropped))

    def _all_done(self) -> bool:
        # Workers first: a worker sets done after its last put, so an empty slot seen later is final.
        return all(w.done for w in self.workers) and all(len(w.slot) == 0 for w in self.workers)

    # setup and teardown
    def _make_workers(self) -> List[SourceWorker]:
        workers = []
        for i, spec in enumerate(self.specs):
            slot = FrameSlot(1 if spec.drops else self.options.queue_depth, spec.drops, self._wakeup)
            reader = None if spec.live else open_ordered_reader(spec, self._skipper(i))
            workers.append(SourceWorker(i, spec, slot, self.options, self._stop, self._report, reader))
        return workers

    def _skipper(self, index: int) -> Callable[[str], None]:
        def skip(detail: str) -> None:
            self.workers[index].stats.skipped += 1
            self._report(index, "skipped", detail)
        return skip

    def _output_fps(self, worker: SourceWorker) -> float:
        native = getattr(worker.reader, "fps", None)
        return self.options.fps or native or DEFAULT_FPS

    def _report(self, source: int, event: str, detail: str, **extra: Any) -> None:
        self.console.message("source {} ({}): {}: {}".format(source, self.specs[source].text, event, detail))
        if self._log is not None:
            self._log.write(dict({"type": "event", "time": round(time.time(), 6), "source": source,
                                  "event": event, "detail": detail}, **extra))

    def _shutdown(self, sinks: List[Optional[VideoSink]]) -> None:
        self._stop.set()
        for w in self.workers:
            w.join(timeout=max(1.0, self.options.stall_timeout + 1.0))
        self.outputs.queue.put(None)  # drain what was inferred, then close the writers
        self.outputs.join()
        self._end = time.monotonic()
        for sink in sinks:
            if sink is not None:
                sink.close()
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
        recent = [r for r in self._recent if now - r[0] <= 5.0]  # the last 5 s at most
        span = recent[-1][0] - recent[0][0] if recent else 0.0
        fps = (len(recent) - 1) / span if span > 0 else 0.0
        age = percentiles([a for _, a in recent])
        parts = ["{:6.1f} s  {:5.1f} FPS  age p50 {} p99 {} ms".format(
            now - self._start, fps, _fmt(age["p50"]), _fmt(age["p99"]))]
        for i, w in enumerate(self.workers):
            parts.append("s{} {} {} fr {} drop {} reconn".format(
                i, w.stats.state, w.stats.processed, w.slot.dropped, w.stats.reconnects))
        return " | ".join(parts)

    def summary(self) -> Dict[str, Any]:
        end = getattr(self, "_end", time.monotonic())
        seconds = max(1e-9, end - self._start)
        total = sum(w.stats.processed for w in self.workers)
        sources = []
        for i, w in enumerate(self.workers):
            s = w.stats
            sources.append({
                "source": i, "uri": w.spec.text, "kind": w.spec.kind, "state": s.state, "error": s.error,
                "captured": s.captured, "processed": s.processed, "dropped": w.slot.dropped,
                "skipped": s.skipped, "reconnects": s.reconnects, "failed_attempts": s.failed_attempts,
                "outage_s": round(s.outage_s, 3), "resolutions": [list(r) for r in s.resolutions],
                "fps": round(s.processed / seconds, 3), "age_ms": s.ages.percentiles(),
            })
        return {"frames": total, "seconds": round(seconds, 3), "fps": round(total / seconds, 3),
                "stopped_by": self.stop_reason, "batched": self._batch, "age_ms": self._ages.percentiles(),
                "model_ms": self._model_ms.percentiles(), "sources": sources}


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else "{:.0f}".format(value)


def format_summary(summary: Dict[str, Any]) -> str:
    lines = ["stream summary: {} frames in {:.1f} s ({:.1f} FPS), stopped by {}; frame age p50 {} p99 {} ms".format(
        summary["frames"], summary["seconds"], summary["fps"], summary["stopped_by"],
        _fmt(summary["age_ms"]["p50"]), _fmt(summary["age_ms"]["p99"]))]
    for s in summary["sources"]:
        sizes = ", ".join("{}x{}".format(*r) for r in s["resolutions"]) or "-"
        lines.append("  source {} {}: {} processed, {} captured, {} dropped, {} reconnects, {} skipped, "
                     "age p50 {} p99 {} ms, sizes {}, {}{}".format(
                         s["source"], s["uri"], s["processed"], s["captured"], s["dropped"], s["reconnects"],
                         s["skipped"], _fmt(s["age_ms"]["p50"]), _fmt(s["age_ms"]["p99"]), sizes, s["state"],
                         ": " + s["error"] if s["error"] else ""))
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
