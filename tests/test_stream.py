"""`ddrnet stream` with real parts, all on loopback: the real Predictor on a tiny exported ONNX model
(delays injected into its backend where a slow model is needed), a video file and images made here,
a local MJPEG server that stalls, cuts and restarts at another size, a frozen capture device, several
sources, and SIGINT/SIGTERM on a real `python -m ddrnet stream` process.

No assertion depends on how fast this machine is: speeds are checked by benchmarks/soak_stream.py.
Assertions use counts and orderings (what was captured, processed, dropped; the order of frames and
events; lower bounds that injected sleeps guarantee), and every wait is bounded by a generous timeout
that only catches a hang."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from ddrnet import cli
from ddrnet.runtime import Predictor, outputs, sources
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.capture import Backoff, Frame, FrameSlot
from ddrnet.runtime.sources import SourceError, parse_source
from ddrnet.runtime.stream import Console, StreamOptions, StreamRunner, raise_for_failed_sources

sys.path.insert(0, os.path.dirname(__file__))
from runtime_fixtures import assert_mask_matches, make_model_dir, reference_logits  # noqa: E402
from stream_fixtures import MjpegServer, synthetic_frame  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_BACKOFF = Backoff(initial=0.05, factor=2.0, maximum=0.2, jitter=0.5)
HANG = 30.0  # seconds: a bounded wait that only a hang exceeds


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A real exported model dir: 1x1 conv 3 -> 19 classes + argmax, dynamic N/H/W."""
    return make_model_dir(str(tmp_path_factory.mktemp("stream") / "model"), shape=(-1, 3, -1, -1))


def predictor(model_dir: str, delay: float = 0.0, max_batch=None) -> Predictor:
    """The real Predictor; `delay` seconds are added to each backend call (a slow model), and
    `max_batch` is what a backend such as TensorRT declares."""
    p = Predictor(model_dir)
    run = p.backend.run
    p.calls = []  # frames per backend call

    def slow_run(tensor):
        p.calls.append(int(tensor.shape[0]))
        time.sleep(delay)
        return run(tensor)

    p.backend.run = slow_run
    p.backend.max_batch = max_batch
    return p


def make_video(path: str, frames: int, width: int = 64, height: int = 48, fps: float = 20.0) -> str:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for i in range(frames):
        writer.write(synthetic_frame(width, height, i))
    writer.release()
    return path


def decode(path: str):
    """Every frame of a video as OpenCV plays it back."""
    cap = cv2.VideoCapture(path)
    assert cap.isOpened(), path
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def count_frames(path: str):
    """(frames, width) of a video as OpenCV plays it back."""
    frames = decode(path)
    return len(frames), (frames[0].shape[1] if frames else 0)


def read_jsonl(path: str):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_until(condition, what: str, timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after {} s waiting for {}".format(timeout, what))
        time.sleep(0.02)


def assert_counts_add_up(summary) -> None:
    for s in summary["sources"]:
        assert s["captured"] == s["processed"] + s["dropped"] + s["skipped"], s
        assert 0 <= s["dropped_at_stop"] <= s["dropped"], s
    assert summary["frames"] == sum(s["processed"] for s in summary["sources"])


def dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:{}/stream.mjpg".format(s.getsockname()[1])


class Background:
    """Runs a StreamRunner in a thread so the test can inject faults while it streams."""

    def __init__(self, runner: StreamRunner) -> None:
        self.runner = runner
        self.summary = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.summary = self.runner.run()
        except BaseException as err:  # handed to the test thread
            self.error = err

    def finish(self):
        self.runner.stop("test")
        self.thread.join(HANG)
        assert not self.thread.is_alive(), "runner did not stop"
        if self.error is not None:
            raise self.error
        return self.summary

    def stats(self, source: int = 0):
        workers = self.runner.workers
        return workers[source].stats if workers else None

    def processed(self, source: int = 0) -> int:
        return self.runner.tallies[source].processed


def quiet() -> Console:
    return Console(io.StringIO())


# ------------------------------------------------------------------ units


def test_parse_source_kinds_and_errors(tmp_path, monkeypatch):
    video = make_video(str(tmp_path / "a.mp4"), 2)
    assert parse_source("0").kind == "camera"
    assert parse_source("/dev/video2").kind == "camera"
    assert parse_source("rtsp://10.0.0.2/live").kind == "network"
    assert parse_source("http://127.0.0.1:1/stream.mjpg").kind == "network"
    assert parse_source(video).kind == "file"
    assert parse_source(str(tmp_path / "*.mp4")).kind == "glob"
    assert parse_source("0").live and not parse_source(video).drops
    assert parse_source(video, realtime=True).drops
    assert parse_source("rtsp://admin:hunter2@10.0.0.2/live").display == "rtsp://admin:***@10.0.0.2/live"
    with pytest.raises(DDRNetError, match="no such file"):
        parse_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(DDRNetError, match="no files match"):
        parse_source(str(tmp_path / "*.png"))
    monkeypatch.setattr(sources.cv2, "getBuildInformation", lambda: "  Video I/O:\n    GStreamer:  NO\n")
    with pytest.raises(DDRNetError, match="gst:videotestsrc: this OpenCV .* without GStreamer.*python3-opencv"):
        parse_source("gst:videotestsrc")


def test_gstreamer_detection_and_pipeline():
    assert sources.opencv_has_gstreamer("  Video I/O:\n    FFMPEG:   YES\n    GStreamer:   YES (1.22.0)\n")
    assert not sources.opencv_has_gstreamer("  Video I/O:\n    FFMPEG:   YES\n    GStreamer:   NO\n")
    assert not sources.opencv_has_gstreamer("  Video I/O:\n    FFMPEG:   YES\n")
    # what this process's OpenCV says, parsed the same way (pip's wheel: NO)
    info = cv2.getBuildInformation()
    assert sources.opencv_has_gstreamer() == ("GStreamer:" in info and
                                              info.split("GStreamer:")[1].split()[0] == "YES")
    spec = sources.SourceSpec("gst:videotestsrc is-live=true", "gstreamer")
    assert spec.live and sources.gst_pipeline(spec) == "videotestsrc is-live=true ! " + sources.GST_SINK
    own_sink = sources.SourceSpec("gst:v4l2src ! videoconvert ! appsink name=s", "gstreamer")
    assert sources.gst_pipeline(own_sink) == "v4l2src ! videoconvert ! appsink name=s"


def test_backoff_grows_is_capped_and_jittered():
    backoff = Backoff(initial=0.25, factor=2.0, maximum=2.0, jitter=0.5)
    rng = random.Random(3)
    for attempt, base in [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (9, 2.0)]:
        delays = [backoff.delay(attempt, rng) for _ in range(20)]
        assert all(base * 0.5 <= d <= base for d in delays), (attempt, delays)
        assert len(set(delays)) > 1  # jittered, not lock-step
    # the default never waits more than a second between probes, however long the outage
    assert max(Backoff().delay(a, rng) for a in range(1, 50)) <= 1.0


def test_frame_slot_keeps_newest_or_waits():
    stop, wake = threading.Event(), threading.Event()
    frames = [Frame(0, i, np.zeros((2, 2, 3), np.uint8), 0.0, 0.0) for i in range(5)]
    live = FrameSlot(1, drop_oldest=True, wakeup=wake)
    for f in frames:
        assert live.put(f, stop)
    assert live.take().index == 4 and live.dropped == 4 and live.take() is None
    ordered = FrameSlot(2, drop_oldest=False, wakeup=wake)
    assert ordered.put(frames[0], stop) and ordered.put(frames[1], stop)
    stop.set()  # full: put waits for room, and gives up only because of stop (the frame is dropped)
    assert not ordered.put(frames[2], stop) and ordered.dropped == 1
    assert ordered.take().index == 0
    ordered.discard()
    assert (ordered.dropped, ordered.dropped_at_stop, len(ordered)) == (2, 2, 0)


# ------------------------------------------------------------------ files and globs


def test_video_file_is_read_in_order_without_drops(tmp_path, model_dir):
    video = make_video(str(tmp_path / "in.mp4"), 24)
    out, masks, log = str(tmp_path / "out" / "out.mp4"), str(tmp_path / "masks"), str(tmp_path / "log.jsonl")
    opts = StreamOptions(out=out, masks=masks, jsonl=log)
    # a model slower than the reader: a file must still lose nothing
    summary = StreamRunner(predictor(model_dir, delay=0.01), [parse_source(video)], opts, quiet()).run()
    src = summary["sources"][0]
    assert (summary["frames"], src["captured"], src["processed"], src["dropped"]) == (24, 24, 24, 0)
    assert summary["stopped_by"] == "end of sources" and src["state"] == "finished"
    frames = [r for r in read_jsonl(log) if r["type"] == "frame"]
    assert [r["frame"] for r in frames] == list(range(24))
    assert all(r["dropped"] == 0 and r["age_ms"] >= r["infer_ms"] >= 10.0 for r in frames)
    assert read_jsonl(log)[-1]["type"] == "summary"
    assert count_frames(out) == (24, 64)
    assert [n for n in os.listdir(os.path.dirname(out))] == ["out.mp4"]  # no partial file left
    # the masks are the model's: the tiny model's argmax on the decoded input frames
    assert sorted(os.listdir(masks)) == ["{:06d}.png".format(i) for i in range(24)]
    for i, frame in enumerate(decode(video)):
        mask = cv2.imread(os.path.join(masks, "{:06d}.png".format(i)), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (48, 64)
        assert_mask_matches(mask, reference_logits(frame))


def test_overlay_video_is_h264_that_browsers_play(tmp_path, model_dir):
    av = pytest.importorskip("av", reason="PyAV (pip install av, in the dev extra) writes H.264")
    video = make_video(str(tmp_path / "in.mp4"), 12)
    out = str(tmp_path / "out.mp4")
    summary = StreamRunner(predictor(model_dir), [parse_source(video)], StreamOptions(out=out), quiet()).run()
    assert summary["video"].startswith("H.264")
    with av.open(out) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (stream.codec_context.width, stream.codec_context.height) == (64, 48)
        assert sum(1 for _ in container.decode(stream)) == 12
    assert count_frames(out) == (12, 64)  # and OpenCV plays it too


def test_overlay_video_falls_back_and_says_what_it_wrote(tmp_path, model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    monkeypatch.setattr(outputs, "_opencv_can_write", lambda fourcc: fourcc == "mp4v")  # pip's OpenCV
    outputs.choose_encoder.cache_clear()
    try:
        console = quiet()
        video = make_video(str(tmp_path / "in.mp4"), 5)
        out = str(tmp_path / "out.mp4")
        summary = StreamRunner(predictor(model_dir), [parse_source(video)], StreamOptions(out=out), console).run()
    finally:
        outputs.choose_encoder.cache_clear()
    assert "mp4v" in summary["video"] and "browsers do not play" in summary["video"]
    assert "overlay video: MPEG-4 Part 2 (mp4v)" in console.stream.getvalue()
    assert "pip install av" in console.stream.getvalue()
    assert count_frames(out) == (5, 64)


def test_max_frames_leaves_read_ahead_frames_counted(tmp_path, model_dir):
    video = make_video(str(tmp_path / "in.mp4"), 30)
    summary = StreamRunner(predictor(model_dir, delay=0.02), [parse_source(video)],
                           StreamOptions(max_frames=5), quiet()).run()
    src = summary["sources"][0]
    assert (summary["stopped_by"], src["processed"], src["state"]) == ("max-frames", 5, "stopped")
    assert src["captured"] > 5 and src["dropped"] == src["dropped_at_stop"] == src["captured"] - 5
    assert_counts_add_up(summary)


def test_realtime_file_is_paced_and_drops_like_a_camera(tmp_path, model_dir):
    fps, delay = 40.0, 0.2
    video = make_video(str(tmp_path / "in.mp4"), 20, fps=fps)
    log = str(tmp_path / "log.jsonl")
    started = time.time()
    summary = StreamRunner(predictor(model_dir, delay=delay), [parse_source(video, realtime=True)],
                           StreamOptions(jsonl=log), quiet()).run()
    src = summary["sources"][0]
    assert src["captured"] == 20 and src["dropped"] > 0  # 20 frames in 0.5 s for a 0.2 s model
    assert_counts_add_up(summary)
    frames = [r for r in read_jsonl(log) if r["type"] == "frame"]
    indices = [r["frame"] for r in frames]
    assert indices == sorted(indices) and max(np.diff(indices)) > 1
    # paced: frame i is released no earlier than i / fps after the start (sleeps never end early; a late
    # reader catches up); the last frame always stays in the slot until the model takes it
    assert indices[-1] == 19
    assert all(r["capture_time"] - started >= r["frame"] / fps - 0.002 for r in frames)


def test_glob_in_order_skips_unreadable_and_follows_size_change(tmp_path, model_dir):
    frames = tmp_path / "frames"
    frames.mkdir()
    sizes = [(64, 48)] * 3 + [(80, 60)] * 3
    for i, (w, h) in enumerate(sizes):
        cv2.imwrite(str(frames / "f{:03d}.png".format(i)), synthetic_frame(w, h, i))
    (frames / "f002b.png").write_bytes(b"not a png")  # sorts between f002 and f003
    out, log = str(tmp_path / "out.mp4"), str(tmp_path / "log.jsonl")
    summary = StreamRunner(predictor(model_dir), [parse_source(str(frames / "*.png"))],
                           StreamOptions(out=out, jsonl=log), quiet()).run()
    src = summary["sources"][0]
    assert (src["captured"], src["processed"], src["dropped"], src["skipped"]) == (7, 6, 0, 1)
    assert_counts_add_up(summary)
    assert src["resolutions"] == [[64, 48], [80, 60]]
    records = read_jsonl(log)
    seen = [os.path.basename(r["file"]) for r in records if r["type"] == "frame"]
    assert seen == ["f{:03d}.png".format(i) for i in range(6)]
    assert [r["width"] for r in records if r["type"] == "frame"] == [w for w, _ in sizes]
    assert any(r["type"] == "event" and r["event"] == "skipped" and "f002b.png" in r["detail"] for r in records)
    assert count_frames(out) == (6, 64)  # the video keeps its first size


# ------------------------------------------------------------------ live sources


def test_slow_model_drops_frames_instead_of_queueing(tmp_path, model_dir):
    log = str(tmp_path / "log.jsonl")
    with MjpegServer(64, 48, fps=60) as server:
        opts = StreamOptions(max_frames=8, stall_timeout=5.0, jsonl=log)
        summary = StreamRunner(predictor(model_dir, delay=0.1), [parse_source(server.url)], opts, quiet()).run()
    src = summary["sources"][0]
    assert src["processed"] == 8 and summary["stopped_by"] == "max-frames"
    # 8 inferences of >= 0.1 s each while a 60 FPS camera streams: frames were replaced, not queued;
    # the slot holds one frame, so at most one is left when the run stops
    assert src["dropped"] > 0 and src["dropped_at_stop"] <= 1
    assert_counts_add_up(summary)
    frames = [r for r in read_jsonl(log) if r["type"] == "frame"]
    indices = [r["frame"] for r in frames]
    assert indices == sorted(indices) and max(np.diff(indices)) > 1
    # the age includes the frame's own inference (capture comes before the model sees it)
    assert all(r["age_ms"] >= r["infer_ms"] >= 100.0 for r in frames)


def test_mjpeg_stall_cut_and_resize_recover(tmp_path, model_dir):
    out, log = str(tmp_path / "live.mp4"), str(tmp_path / "log.jsonl")
    opts = StreamOptions(stall_timeout=0.6, backoff=FAST_BACKOFF, out=out, jsonl=log)
    with MjpegServer(64, 48, fps=30) as server:
        bg = Background(StreamRunner(predictor(model_dir), [parse_source(server.url)], opts, quiet()))
        try:
            wait_until(lambda: bg.stats() and bg.processed() >= 5, "first frames")
            server.stall()
            wait_until(lambda: bg.stats().state != "streaming", "the stall watchdog")
            server.resume()
            wait_until(lambda: bg.stats().reconnects >= 1, "reconnect after stall")
            server.cut()
            wait_until(lambda: bg.stats().reconnects >= 2, "reconnect after cut")
            server.restart(96, 72)
            wait_until(lambda: bg.stats().reconnects >= 3 and bg.stats().resolutions[-1] == (96, 72),
                       "reconnect at the new size")
            seen = bg.processed()
            wait_until(lambda: bg.processed() >= seen + 5, "frames at the new size")
        finally:
            summary = bg.finish()
    src = summary["sources"][0]
    assert src["reconnects"] >= 3 and src["state"] == "stopped"
    assert src["reconnect_attempts"] >= src["reconnects"] and src["outage_s"] > 0
    assert src["resolutions"] == [[64, 48], [96, 72]]
    assert_counts_add_up(summary)
    records = read_jsonl(log)
    details = [r["detail"] for r in records if r.get("event") == "disconnected"]
    assert any("stalled" in d for d in details), details
    widths = {r["width"] for r in records if r["type"] == "frame"}
    assert widths == {64, 96}
    assert count_frames(out) == (src["processed"], 64)


def test_dead_source_counts_attempts_and_outage(tmp_path, model_dir):
    """Before: 20 s against a dead port reported 0 reconnects and 0.0 s of outage."""
    url = dead_url()
    log = str(tmp_path / "log.jsonl")
    opts = StreamOptions(stall_timeout=1.0, max_reconnects=3, backoff=FAST_BACKOFF, jsonl=log)
    summary = StreamRunner(predictor(model_dir), [parse_source(url)], opts, quiet()).run()
    src = summary["sources"][0]
    assert (src["state"], src["processed"], src["captured"]) == ("failed", 0, 0)
    assert (src["failed_attempts"], src["reconnect_attempts"], src["reconnects"]) == (4, 3, 0)
    events = [r for r in read_jsonl(log) if r["type"] == "event"]
    assert [e["event"] for e in events] == ["retry", "retry", "retry", "gave_up"]
    waits = [e["retry_in_s"] for e in events[:-1]]
    assert all(0 < w <= FAST_BACKOFF.maximum for w in waits)
    # the whole run was an outage, which includes at least the backoff sleeps
    assert src["outage_s"] >= sum(waits) - 0.01
    with pytest.raises(DDRNetError, match="127.0.0.1:.*gave up after 4 attempts"):
        raise_for_failed_sources(summary)


class FrozenDevice:
    """A capture device that freezes: opening it, or reading from it after `frames` frames, blocks
    until the test ends (as a V4L2 camera or a GStreamer pipeline can). Later opens work."""

    def __init__(self, freeze_open: bool, frames: int = 5) -> None:
        self.freeze_open = freeze_open
        self.frames = frames
        self.opened = 0
        self.release = threading.Event()  # set by the test at the end: unblocks abandoned reads

    def __call__(self, spec, timeout_s: float) -> "FrozenDevice.Reader":
        self.opened += 1
        if self.opened == 1 and self.freeze_open:
            self.release.wait()
            raise SourceError("released")
        return FrozenDevice.Reader(self, freeze=self.opened == 1)

    class Reader:
        fps = None

        def __init__(self, device: "FrozenDevice", freeze: bool) -> None:
            self.device, self.freeze, self.count = device, freeze, 0

        def read(self):
            if self.freeze and self.count >= self.device.frames:
                self.device.release.wait()
                return None
            self.count += 1
            time.sleep(0.01)
            return synthetic_frame(64, 48, self.count)

        def close(self) -> None:
            pass


@pytest.mark.parametrize("freeze_open", [False, True], ids=["frozen-read", "frozen-open"])
def test_watchdog_reopens_a_frozen_camera(tmp_path, model_dir, freeze_open):
    device = FrozenDevice(freeze_open)
    log = str(tmp_path / "log.jsonl")
    opts = StreamOptions(stall_timeout=0.5, backoff=FAST_BACKOFF, jsonl=log)
    runner = StreamRunner(predictor(model_dir), [parse_source("0")], opts, quiet(), open_reader=device)
    bg = Background(runner)
    try:
        wait_until(lambda: device.opened >= 2 and bg.processed() >= device.frames + 5, "frames after the freeze")
    finally:
        summary = bg.finish()
        device.release.set()
    src = summary["sources"][0]
    assert src["reconnects"] == 1 and src["reconnect_attempts"] >= 1 and src["outage_s"] > 0
    assert_counts_add_up(summary)
    events = [r for r in read_jsonl(log) if r["type"] == "event"]
    first = events[0]
    assert first["event"] == ("retry" if freeze_open else "disconnected") and "stalled" in first["detail"]
    assert events[1]["event"] == "reconnected"


def test_a_device_frozen_for_good_is_not_opened_again_and_again(tmp_path, model_dir):
    """Each abandoned read keeps a thread blocked in the driver: after two, attempts wait instead of
    piling up more (a frozen V4L2 device cannot be opened twice anyway)."""
    release = threading.Event()

    def frozen(spec, timeout_s):
        release.wait()
        raise SourceError("released")
    log = str(tmp_path / "log.jsonl")
    opts = StreamOptions(stall_timeout=0.3, backoff=FAST_BACKOFF, max_reconnects=3, jsonl=log)
    try:
        summary = StreamRunner(predictor(model_dir), [parse_source("/dev/video9")], opts, quiet(),
                               open_reader=frozen).run()
    finally:
        release.set()
    src = summary["sources"][0]
    assert (src["state"], src["failed_attempts"], src["reconnect_attempts"]) == ("failed", 4, 3)
    details = [r["detail"] for r in read_jsonl(log) if r["type"] == "event"]
    assert ["stalled" in d for d in details[:2]] == [True, True]
    assert all("2 earlier reads are still blocked" in d for d in details[2:]), details


@pytest.mark.parametrize("schedule", ["batch", "round-robin"])
def test_several_sources_batched_or_round_robin(tmp_path, model_dir, schedule):
    out, log = str(tmp_path / "videos"), str(tmp_path / "log.jsonl")
    video = make_video(str(tmp_path / "cam2.mp4"), 12)
    model = predictor(model_dir, delay=0.02)
    with MjpegServer(64, 48, fps=30) as a, MjpegServer(64, 48, fps=30) as b:
        specs = [parse_source(a.url), parse_source(b.url), parse_source(video)]
        opts = StreamOptions(max_frames=30, stall_timeout=5.0, schedule=schedule, out=out, jsonl=log)
        summary = StreamRunner(model, specs, opts, quiet()).run()
    per_source = [s["processed"] for s in summary["sources"]]
    assert summary["frames"] == sum(per_source) == 30
    assert all(n >= 5 for n in per_source), per_source  # no source starves
    assert summary["sources"][2]["dropped"] == summary["sources"][2]["dropped_at_stop"]  # a file loses nothing
    assert_counts_add_up(summary)
    batches = [r["batch"] for r in read_jsonl(log) if r["type"] == "frame"]
    if schedule == "batch":
        assert summary["batched"] and max(model.calls) >= 2 and max(batches) >= 2
    else:
        assert not summary["batched"] and set(model.calls) == {1} and set(batches) == {1}
    for i, n in enumerate(per_source):
        assert count_frames(os.path.join(out, "source{}.mp4".format(i))) == (n, 64)


def test_batches_respect_the_backends_max_batch(tmp_path, model_dir):
    video = make_video(str(tmp_path / "cam.mp4"), 12)
    model = predictor(model_dir, delay=0.01, max_batch=2)
    specs = [parse_source(video) for _ in range(3)]  # files: every source always has a frame waiting
    summary = StreamRunner(model, specs, StreamOptions(max_frames=18, schedule="batch"), quiet()).run()
    assert summary["max_batch"] == 2 and summary["frames"] == 18
    # once the readers have filled their queues three frames wait each round: two go, the third
    # source leads the next round, so no source falls behind by more than one batch
    assert sum(model.calls) == 18 and max(model.calls) == 2
    assert max(s["processed"] for s in summary["sources"]) - min(s["processed"] for s in summary["sources"]) <= 2


def test_show_without_display_warns_and_streams(tmp_path, model_dir, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    console = quiet()
    video = make_video(str(tmp_path / "in.mp4"), 3)
    summary = StreamRunner(predictor(model_dir), [parse_source(video)], StreamOptions(show=True), console).run()
    assert summary["frames"] == 3
    assert "--show ignored: no display" in console.stream.getvalue()


# ------------------------------------------------------------------ the command


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, model_dir):
    video = make_video(str(tmp_path / "in.mp4"), 2)
    corrupt = tmp_path / "bad.mp4"
    corrupt.write_bytes(open(video, "rb").read()[:200])  # truncated
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "000000.png"), synthetic_frame(64, 48, 0))
    with socket.socket() as s:  # a port that is taken
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = "127.0.0.1:{}".format(s.getsockname()[1])
        cases = [
            (["--source", str(tmp_path / "nope.mp4")], "nope.mp4: no such file"),
            (["--source", str(tmp_path / "*.jpg")], "no files match"),
            (["--source", str(corrupt)], "bad.mp4: not a readable video"),
            (["--source", video, "--source", video, "--out", str(tmp_path / "o.mp4")], "must be a folder"),
            (["--source", video, "--out", video], "--out would overwrite the input"),
            (["--source", video, "--jsonl", video], "--jsonl would overwrite the input"),
            (["--source", str(frames / "*.png"), "--masks", str(frames)], "--masks would write"),
            (["--source", video, "--max-frames", "0"], "--max-frames must be at least 1"),
            (["--source", video, "--threads", "0"], "--threads 0: must be at least 1"),
            (["--source", video, "--serve", "localhost:http"], "--serve 'localhost:http': expected HOST:PORT"),
            (["--source", video, "--serve", busy], "cannot listen"),
            (["--source", video, "--token", "x"], "--token needs --serve"),
            (["--source", dead_url(), "--max-reconnects", "1", "--stall-timeout", "1"], "gave up after 2 attempts"),
        ]
        for argv, message in cases:
            assert cli.main(["stream", "--model", model_dir] + argv) == 2, argv
            lines = [line for line in capsys.readouterr().err.strip().splitlines()
                     if not line.startswith("warning: model bundles")]
            if "--max-reconnects" not in argv:  # a live source reports each retry before the error
                assert len(lines) == 1, lines
            assert lines[-1].startswith("ddrnet stream: error:") and message in lines[-1], (argv, lines)
    assert os.path.getsize(video) > 200  # never overwritten
    assert cli.main(["stream", "--model", str(tmp_path / "no_model"), "--source", video]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_model" in err, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_with_playable_mp4(tmp_path, sig, model_dir):
    """The real command in a real `python -m ddrnet stream` process."""
    out, log = str(tmp_path / "out.mp4"), str(tmp_path / "log.jsonl")
    with MjpegServer(64, 48, fps=30) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ddrnet", "stream", "--model", model_dir, "--source", server.url,
             "--out", out, "--jsonl", log, "--stall-timeout", "5"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def frames_logged() -> int:
                if not os.path.exists(log):
                    return 0
                return sum(1 for r in read_jsonl(log) if r["type"] == "frame")
            wait_until(lambda: frames_logged() >= 10 or proc.poll() is not None, "frames from the process")
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=HANG)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, stderr
    assert "stream summary:" in stdout and "Traceback" not in stderr
    assert "captured = " in stdout and " processed + " in stdout
    records = read_jsonl(log)
    frames = [r for r in records if r["type"] == "frame"]
    assert records[-1]["type"] == "summary" and records[-1]["stopped_by"] == sig.name
    assert {"source", "frame", "capture_time", "age_ms", "pre_ms", "infer_ms", "post_ms", "dropped"} <= set(frames[0])
    assert count_frames(out) == (len(frames), 64)
    assert os.listdir(str(tmp_path)) and not [n for n in os.listdir(str(tmp_path)) if "partial" in n]
