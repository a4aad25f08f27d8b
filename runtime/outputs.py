"""What `ddrnet stream` writes: overlay videos, mask PNGs, the JSON-lines log, the `--show` window,
all on one output thread behind a bounded queue, so encoding overlaps inference.

Overlay videos are H.264 in MP4 (what browsers and players play) when PyAV is installed (`pip install
av`; its wheels bundle FFmpeg with libx264) or OpenCV's FFmpeg has an H.264 encoder (Debian's and
JetPack's do, pip's opencv-python does not); otherwise MPEG-4 Part 2 (`mp4v`), and the run says so.
Each video is written under a hidden `.partial` name and renamed when closed, so a file with the final
name is always complete and playable.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import cv2
import numpy as np

from ddrnet.runtime.capture import Frame
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import (check_output_dir, check_output_file, make_dir, partial_name,
                                   refuse_overwrite)
from ddrnet.runtime.imageio import write_image
from ddrnet.runtime.sources import SourceSpec, glob_files

H264_HINT = "pip install av (its wheels bundle FFmpeg with an H.264 encoder)"


# ---------------------------------------------------------------- video encoders


@dataclass(frozen=True)
class Encoder:
    """How overlay videos are encoded: backend 'pyav' or 'opencv', the codec, and a description."""

    backend: str
    codec: str
    description: str


@functools.lru_cache(maxsize=None)
def choose_encoder() -> Encoder:
    """The best H.264 encoder this install has: PyAV's, then OpenCV's 'avc1', else 'mp4v'."""
    try:
        import av
    except ImportError:
        av = None
    for name in ("libx264", "libopenh264") if av is not None else ():
        if name in av.codecs_available and _pyav_can_encode(av, name):
            return Encoder("pyav", name, "H.264 ({} via PyAV {})".format(name, av.__version__))
    if _opencv_can_write("avc1"):
        return Encoder("opencv", "avc1", "H.264 (OpenCV {} FFmpeg avc1)".format(cv2.__version__))
    return Encoder("opencv", "mp4v", "MPEG-4 Part 2 (mp4v), which browsers do not play; for H.264: " + H264_HINT)


def _pyav_can_encode(av, name: str) -> bool:
    try:
        av.codec.Codec(name, "w")  # raises when FFmpeg has only a decoder of that name
        return True
    except Exception:
        return False


def _opencv_can_write(fourcc: str) -> bool:
    """Try a tiny writer in a temporary folder, with OpenCV's own error lines silenced."""
    folder = tempfile.mkdtemp(prefix="ddrnet_codec_")
    level = cv2.setLogLevel(0)
    try:
        writer = cv2.VideoWriter(os.path.join(folder, "probe.mp4"), cv2.VideoWriter_fourcc(*fourcc), 15, (64, 48))
        ok = writer.isOpened()
        writer.release()
        return ok
    finally:
        cv2.setLogLevel(level)
        shutil.rmtree(folder, ignore_errors=True)


class _PyAvWriter:
    """H.264 yuv420p MP4 through PyAV, moov atom first (plays while downloading)."""

    def __init__(self, path: str, fps: float, size: Tuple[int, int], codec: str) -> None:
        import av

        self._av = av
        self._rate = Fraction(fps).limit_denominator(1001)
        self._container = av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"})
        options = {"preset": "veryfast", "crf": "23"} if codec == "libx264" else {}
        self._stream = self._container.add_stream(codec, rate=self._rate, options=options)
        self._stream.width, self._stream.height = size
        self._stream.pix_fmt = "yuv420p"
        # one encoder thread: the cores belong to inference; 'veryfast' keeps up with it
        self._stream.codec_context.thread_count = 1
        self._count = 0

    def write(self, bgr: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
        frame.pts = self._count
        frame.time_base = 1 / self._rate
        self._count += 1
        self._container.mux(self._stream.encode(frame))

    def release(self) -> None:
        try:
            self._container.mux(self._stream.encode(None))  # flush delayed frames
        finally:
            self._container.close()


class _OpenCvWriter:
    def __init__(self, path: str, fps: float, size: Tuple[int, int], fourcc: str) -> None:
        self._writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if not self._writer.isOpened():
            raise DDRNetError("{}: OpenCV cannot open a {} video writer".format(path, fourcc))

    def write(self, bgr: np.ndarray) -> None:
        self._writer.write(bgr)

    def release(self) -> None:
        self._writer.release()  # writes the mp4 index: without it the file does not play


class VideoSink:
    """One overlay video. Its size is the first frame's (rounded down to even, which the codecs
    need); frames of another size are resized to it, so a source that changes resolution still
    gives one playable file. Written to a partial name, renamed by close(), removed by abort()."""

    def __init__(self, path: str, fps: float, encoder: Encoder) -> None:
        self.path = path
        self.fps = fps
        self.encoder = encoder
        self.frames = 0
        self._tmp: Optional[str] = None
        self._writer = None
        self._size: Optional[Tuple[int, int]] = None

    def write(self, bgr: np.ndarray) -> None:
        if self._writer is None:
            self._open((max(2, bgr.shape[1] // 2 * 2), max(2, bgr.shape[0] // 2 * 2)))
        if (bgr.shape[1], bgr.shape[0]) != self._size:
            bgr = cv2.resize(bgr, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(bgr)
        self.frames += 1

    def _open(self, size: Tuple[int, int]) -> None:
        make_dir(os.path.dirname(os.path.abspath(self.path)))  # folders appear with the first frame
        self._tmp = partial_name(self.path)
        self._size = size
        try:
            if self.encoder.backend == "pyav":
                self._writer = _PyAvWriter(self._tmp, self.fps, size, self.encoder.codec)
            else:
                self._writer = _OpenCvWriter(self._tmp, self.fps, size, self.encoder.codec)
        except Exception:
            self.abort()
            raise

    def close(self) -> None:
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        try:
            writer.release()
            os.replace(self._tmp, self.path)
        except Exception as err:
            self.abort()
            if isinstance(err, OSError):
                raise DDRNetError("{}: cannot write ({})".format(self.path, err.strerror or err)) from None
            raise

    def abort(self) -> None:
        """Drop the partial file (an encoder failure: what it holds may not play)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.release()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(self._tmp)


# ---------------------------------------------------------------- output paths, checked before work


def video_paths(out: Optional[str], count: int) -> List[Optional[str]]:
    """--out FILE.mp4 for one source, --out DIR (DIR/source<i>.mp4) for any number."""
    if out is None:
        return [None] * count
    if not _is_dir_arg(out):
        if count > 1:
            raise DDRNetError("{}: with {} sources --out must be a folder (one source<i>.mp4 each)".format(out, count))
        if not out.lower().endswith(".mp4"):
            raise DDRNetError("{}: the overlay video must be an .mp4".format(out))
        return [out]
    return [os.path.join(out, "source{}.mp4".format(i)) for i in range(count)]


def mask_folders(masks: Optional[str], count: int) -> List[Optional[str]]:
    """--masks DIR: DIR/<frame>.png for one source, DIR/source<i>/<frame>.png for several."""
    if masks is None:
        return [None] * count
    return [masks] if count == 1 else [os.path.join(masks, "source{}".format(i)) for i in range(count)]


def _is_dir_arg(out: str) -> bool:
    return os.path.isdir(out) or os.path.splitext(out)[1] == ""


def input_files(specs: Iterable[SourceSpec]) -> List[str]:
    """Every file the sources read (video files and glob matches)."""
    files: List[str] = []
    for spec in specs:
        if spec.kind == "glob":
            files.extend(glob_files(spec.text))
        elif spec.input_file:
            files.append(spec.input_file)
    return files


def check_outputs(specs: List[SourceSpec], out: Optional[str], masks: Optional[str],
                  jsonl: Optional[str]) -> None:
    """Every output checked before the model loads: writable, and never one of the inputs."""
    inputs = input_files(specs)
    videos = [p for p in video_paths(out, len(specs)) if p]
    if out and _is_dir_arg(out):
        check_output_dir(out, "--out")
    for path in videos:
        check_output_file(path, "--out", inputs)
    check_output_file(jsonl, "--jsonl", inputs)
    if jsonl:
        refuse_overwrite([jsonl], videos, "--jsonl")
    if masks:
        check_output_dir(masks, "--masks")
        folders = {os.path.realpath(f) for f in mask_folders(masks, len(specs)) if f}
        clash = next((f for f in inputs if os.path.dirname(os.path.realpath(f)) in folders), None)
        if clash is not None:
            raise DDRNetError("{}: --masks would write its NNNNNN.png files among the input {}; choose "
                              "another folder".format(masks, clash))


# ---------------------------------------------------------------- the log


class JsonlLog:
    """One JSON object per line, written as it happens (a log is complete line by line)."""

    def __init__(self, path: str) -> None:
        try:
            make_dir(os.path.dirname(os.path.abspath(path)))
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


# ---------------------------------------------------------------- the output thread


@dataclass
class Result:
    frame: Frame
    mask: np.ndarray
    timing: Dict[str, float]
    age_ms: float
    batch: int
    dropped: int


class OutputWorker(threading.Thread):
    """Overlays, videos, mask PNGs, the log and the window, off the inference thread."""

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

    def close(self) -> None:
        """Close every video: each gets its final name (or, if its encoder fails, disappears)."""
        for sink in self.videos:
            if sink is not None:
                sink.close()

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
        folder = self.mask_dirs[f.source]
        if folder is not None:  # write_image makes the folder with the first mask
            write_image(os.path.join(folder, "{:06d}.png".format(f.index)), r.mask)

    def _show(self, source: int, overlay: np.ndarray) -> None:
        cv2.imshow("ddrnet stream: source {}".format(source), overlay)
        if cv2.waitKey(1) & 0xFF in (27, ord("q")):
            self.on_quit()


def has_display() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True
