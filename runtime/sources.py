"""Where `ddrnet stream` frames come from: what a --source means (file, glob, camera, network URL,
`gst:` GStreamer pipeline), the GStreamer check, and the readers. The threads that read them, with the
stall watchdog and the reconnect backoff, are in runtime/capture.py.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Callable, List, Optional
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.imageio import read_image

LIVE_KINDS = ("camera", "network", "gstreamer")
GLOB_CHARS = re.compile(r"[*?\[]")
DEFAULT_FPS = 15.0  # output / pacing rate when the source does not say (globs, most live streams)
GST_PREFIX = "gst:"
# Appended to a `gst:` pipeline that has no appsink: OpenCV takes BGR frames, and a live view wants
# the newest one, not a queue.
GST_SINK = "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
GST_FIX = ("this OpenCV ({}) was built without GStreamer (pip's opencv-python never has it): use one built "
           "with it, e.g. Debian/Ubuntu's python3-opencv with gstreamer1.0-plugins-good in a venv made with "
           "--system-site-packages and no opencv-python wheel, or JetPack's OpenCV on a Jetson")


class SourceError(Exception):
    """A live source could not be opened or read; the worker retries it."""


# ---------------------------------------------------------------- what --source means


@dataclass
class SourceSpec:
    """What the user asked for, classified: kind is file, glob, camera, network or gstreamer."""

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

    @property
    def display(self) -> str:
        """The source as shown in logs, summaries and the live view: URL passwords hidden."""
        return redact(self.text)

    @property
    def input_file(self) -> Optional[str]:
        """The file this source reads, for the never-overwrite-an-input checks."""
        return self.text if self.kind == "file" else None


def redact(text: str) -> str:
    """rtsp://user:secret@cam/... -> rtsp://user:***@cam/... (anything else unchanged)."""
    if "://" not in text:
        return text
    parts = urlsplit(text)
    if parts.password is None:
        return text
    netloc = "{}:***@{}".format(parts.username or "", parts.netloc.rsplit("@", 1)[1])
    return urlunsplit(parts._replace(netloc=netloc))


def parse_source(text: str, realtime: bool = False) -> SourceSpec:
    """Classify a --source value; a missing file, a glob with no match or a `gst:` pipeline this
    OpenCV cannot run is a DDRNetError now, before the model loads."""
    if text.startswith(GST_PREFIX):
        if not text[len(GST_PREFIX):].strip():
            raise DDRNetError("{}: empty GStreamer pipeline".format(text))
        if not opencv_has_gstreamer():
            raise DDRNetError("{}: {}".format(text, GST_FIX.format(cv2.__version__)))
        return SourceSpec(text, "gstreamer")
    if re.fullmatch(r"\d+", text) or text.startswith("/dev/"):
        return SourceSpec(text, "camera")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        return SourceSpec(text, "network")
    if GLOB_CHARS.search(text) and not os.path.exists(text):
        if not glob_files(text):
            raise DDRNetError("{}: no files match this pattern".format(text))
        return SourceSpec(text, "glob", realtime)
    if not os.path.isfile(text):
        raise DDRNetError("{}: no such file".format(text))
    _check_video(text)
    return SourceSpec(text, "file", realtime)


def opencv_has_gstreamer(build_info: Optional[str] = None) -> bool:
    """From cv2.getBuildInformation()'s Video I/O section: `GStreamer: YES (1.22.0)`."""
    info = cv2.getBuildInformation() if build_info is None else build_info
    match = re.search(r"^\s*GStreamer:\s*(\S+)", info, re.MULTILINE)
    return bool(match) and match.group(1).upper() == "YES"


def gst_pipeline(spec: SourceSpec) -> str:
    """The pipeline OpenCV gets: the user's, ending in an appsink (added when missing)."""
    pipeline = spec.text[len(GST_PREFIX):].strip()
    return pipeline if re.search(r"\bappsink\b", pipeline) else pipeline + " ! " + GST_SINK


def _check_video(path: str) -> None:
    """Decode the first frame now, so a corrupt file fails before the model loads."""
    cap = cv2.VideoCapture(path)
    try:
        ok = cap.isOpened() and cap.read()[0]
    finally:
        cap.release()
    if not ok:
        raise DDRNetError("{}: not a readable video (corrupt, truncated or unsupported)".format(path))


def glob_files(pattern: str) -> List[str]:
    return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))


# ---------------------------------------------------------------- readers


class VideoReader:
    """cv2.VideoCapture over a file, camera, URL or GStreamer pipeline; read() -> BGR frame or None."""

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
        # FFmpeg's interrupt callback honours these, so a network read returns; the watchdog
        # (SourceWorker) covers every other kind of source.
        ms = int(timeout_s * 1000)
        return cv2.VideoCapture(spec.text, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    if spec.kind == "gstreamer":
        return cv2.VideoCapture(gst_pipeline(spec), cv2.CAP_GSTREAMER)
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
        self._paths = iter(glob_files(spec.text))
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
