"""`ddrnet stream` with real parts, all on loopback: a video file and images made here, a local MJPEG
server that stalls, cuts and restarts at another size, a slow injected model, several sources, and
SIGINT/SIGTERM on a real `python -m ddrnet stream` process. Every wait is bounded in time."""
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
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.labels import PALETTE
from ddrnet.runtime.stream import (Backoff, Console, Frame, FrameSlot, StreamOptions, StreamRunner,
                                   parse_source, raise_for_failed_sources)

sys.path.insert(0, os.path.dirname(__file__))
from stream_fixtures import MjpegServer, synthetic_frame, write_tiny_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_BACKOFF = Backoff(initial=0.05, factor=2.0, maximum=0.2, jitter=0.5)
ROAD, SKY = 0, 10


class FakePredictor:
    """A colour-threshold 'model' (red -> road, else sky) with the Predictor's interface;
    `delay` seconds per call emulate a slow backend."""

    def __init__(self, delay: float = 0.0, dynamic_batch: bool = True) -> None:
        self.input_shape = [-1 if dynamic_batch else 1, 3, -1, -1]
        self.delay = delay
        self.calls = []  # frames per inference call
        self.last_timing = {}

    def __call__(self, bgr):
        return self.predict_batch([bgr])[0]

    def predict_batch(self, frames):
        t0 = time.perf_counter()
        time.sleep(self.delay)
        masks = [np.where(f[..., 2] > 127, ROAD, SKY).astype(np.uint8) for f in frames]
        self.calls.append(len(frames))
        self.last_timing = {"pre_ms": 0.0, "infer_ms": (time.perf_counter() - t0) * 1e3, "post_ms": 0.0}
        return masks

    def overlay(self, bgr, mask, alpha=0.5):
        return cv2.addWeighted(bgr, 1 - alpha, np.ascontiguousarray(PALETTE[mask][..., ::-1]), alpha, 0)


def make_video(path: str, frames: int, width: int = 64, height: int = 48, fps: float = 20.0) -> str:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for i in range(frames):
        writer.write(synthetic_frame(width, height, i))
    writer.release()
    return path


def count_frames(path: str):
    """(frames, width) of a video as OpenCV plays it back."""
    cap = cv2.VideoCapture(path)
    assert cap.isOpened(), path
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, width


def read_jsonl(path: str):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after {} s waiting for {}".format(timeout, what))
        time.sleep(0.02)


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

    def finish(self, timeout: float = 10.0):
        self.runner.stop("test")
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "runner did not stop"
        if self.error is not None:
            raise self.error
        return self.summary

    def stats(self, source: int = 0):
        workers = getattr(self.runner, "workers", None)
        return workers[source].stats if workers else None


def quiet() -> Console:
    return Console(io.StringIO())


# ------------------------------------------------------------------ units


def test_parse_source_kinds_and_errors(tmp_path):
    video = make_video(str(tmp_path / "a.mp4"), 2)
    assert parse_source("0").kind == "camera"
    assert parse_source("/dev/video2").kind == "camera"
    assert parse_source("rtsp://10.0.0.2/live").kind == "network"
    assert parse_source("http://127.0.0.1:1/stream.mjpg").kind == "network"
    assert parse_source(video).kind == "file"
    assert parse_source(str(tmp_path / "*.mp4")).kind == "glob"
    assert parse_source("0").live and not parse_source(video).drops
    assert parse_source(video, realtime=True).drops
    with pytest.raises(DDRNetError, match="no such file"):
        parse_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(DDRNetError, match="no files match"):
        parse_source(str(tmp_path / "*.png"))


def test_backoff_grows_is_capped_and_jittered():
    backoff = Backoff(initial=0.25, factor=2.0, maximum=2.0, jitter=0.5)
    rng = random.Random(3)
    for attempt, base in [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (9, 2.0)]:
        delays = [backoff.delay(attempt, rng) for _ in range(20)]
        assert all(base * 0.5 <= d <= base for d in delays), (attempt, delays)
        assert len(set(delays)) > 1  # jittered, not lock-step


def test_frame_slot_keeps_newest_or_waits():
    stop, wake = threading.Event(), threading.Event()
    frames = [Frame(0, i, np.zeros((2, 2, 3), np.uint8), 0.0, 0.0) for i in range(5)]
    live = FrameSlot(1, drop_oldest=True, wakeup=wake)
    for f in frames:
        assert live.put(f, stop)
    assert live.take().index == 4 and live.dropped == 4 and live.take() is None
    ordered = FrameSlot(2, drop_oldest=False, wakeup=wake)
    assert ordered.put(frames[0], stop) and ordered.put(frames[1], stop)
    stop.set()  # full: put waits for room, and gives up only because of stop
    assert not ordered.put(frames[2], stop)
    assert [ordered.take().index, ordered.take().index] == [0, 1] and ordered.dropped == 0


# ------------------------------------------------------------------ files and globs


def test_video_file_is_read_in_order_without_drops(tmp_path):
    video = make_video(str(tmp_path / "in.mp4"), 24)
    out, masks, log = str(tmp_path / "out.mp4"), str(tmp_path / "masks"), str(tmp_path / "log.jsonl")
    opts = StreamOptions(out=out, masks=masks, jsonl=log)
    # a model slower than the reader: a file must still lose nothing
    summary = StreamRunner(FakePredictor(delay=0.01), [parse_source(video)], opts, quiet()).run()
    src = summary["sources"][0]
    assert (summary["frames"], src["processed"], src["dropped"]) == (24, 24, 0)
    assert summary["stopped_by"] == "end of sources"
    frames = [r for r in read_jsonl(log) if r["type"] == "frame"]
    assert [r["frame"] for r in frames] == list(range(24))
    assert all(r["dropped"] == 0 and r["age_ms"] >= 0 and "infer_ms" in r for r in frames)
    assert read_jsonl(log)[-1]["type"] == "summary"
    assert count_frames(out) == (24, 64)
    assert not os.path.exists(str(tmp_path / "out.partial.mp4"))
    assert len(os.listdir(masks)) == 24
    mask = cv2.imread(os.path.join(masks, "000005.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (48, 64) and mask[24, 5] == ROAD and mask[24, 60] == SKY


def test_realtime_file_is_paced_and_drops_like_a_camera(tmp_path):
    video = make_video(str(tmp_path / "in.mp4"), 20, fps=40.0)  # 0.5 s of video
    start = time.monotonic()
    summary = StreamRunner(FakePredictor(delay=0.1), [parse_source(video, realtime=True)],
                           StreamOptions(), quiet()).run()
    src = summary["sources"][0]
    assert time.monotonic() - start >= 0.45  # paced at 40 FPS, not read as fast as possible
    assert src["captured"] == 20 and src["dropped"] > 0 and src["processed"] + src["dropped"] <= 20
    assert src["age_ms"]["p99"] < 2 * 100 + 100


def test_glob_in_order_skips_unreadable_and_follows_size_change(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    sizes = [(64, 48)] * 3 + [(80, 60)] * 3
    for i, (w, h) in enumerate(sizes):
        cv2.imwrite(str(frames / "f{:03d}.png".format(i)), synthetic_frame(w, h, i))
    (frames / "f002b.png").write_bytes(b"not a png")  # sorts between f002 and f003
    out, log = str(tmp_path / "out.mp4"), str(tmp_path / "log.jsonl")
    summary = StreamRunner(FakePredictor(), [parse_source(str(frames / "*.png"))],
                           StreamOptions(out=out, jsonl=log), quiet()).run()
    src = summary["sources"][0]
    assert (src["processed"], src["dropped"], src["skipped"]) == (6, 0, 1)
    assert src["resolutions"] == [[64, 48], [80, 60]]
    records = read_jsonl(log)
    seen = [os.path.basename(r["file"]) for r in records if r["type"] == "frame"]
    assert seen == ["f{:03d}.png".format(i) for i in range(6)]
    assert [r["width"] for r in records if r["type"] == "frame"] == [w for w, _ in sizes]
    assert any(r["type"] == "event" and r["event"] == "skipped" and "f002b.png" in r["detail"] for r in records)
    assert count_frames(out) == (6, 64)  # the video keeps its first size


# ------------------------------------------------------------------ live MJPEG


def test_slow_model_drops_frames_instead_of_queueing(tmp_path):
    delay = 0.1
    log = str(tmp_path / "log.jsonl")
    with MjpegServer(64, 48, fps=60) as server:
        opts = StreamOptions(max_frames=8, stall_timeout=2.0, jsonl=log)
        summary = StreamRunner(FakePredictor(delay=delay), [parse_source(server.url)], opts, quiet()).run()
    src = summary["sources"][0]
    assert src["processed"] == 8 and summary["stopped_by"] == "max-frames"
    assert src["dropped"] > 8  # ~6 frames arrive per inference; all but the newest are dropped
    # bounded age: one inference plus at most a frame interval, never a growing backlog
    assert src["age_ms"]["p99"] < 2 * delay * 1000 + 100, src["age_ms"]
    indices = [r["frame"] for r in read_jsonl(log) if r["type"] == "frame"]
    assert indices == sorted(indices) and max(np.diff(indices)) > 1


def test_mjpeg_stall_cut_and_resize_recover(tmp_path):
    out, log = str(tmp_path / "live.mp4"), str(tmp_path / "log.jsonl")
    opts = StreamOptions(stall_timeout=0.6, backoff=FAST_BACKOFF, out=out, jsonl=log)
    with MjpegServer(64, 48, fps=30) as server:
        bg = Background(StreamRunner(FakePredictor(), [parse_source(server.url)], opts, quiet()))
        try:
            wait_until(lambda: bg.stats() and bg.stats().processed >= 5, 10, "first frames")
            server.stall()
            wait_until(lambda: bg.stats().state != "streaming", 5, "the stall watchdog")
            server.resume()
            wait_until(lambda: bg.stats().reconnects >= 1, 5, "reconnect after stall")
            server.cut()
            wait_until(lambda: bg.stats().reconnects >= 2, 5, "reconnect after cut")
            server.restart(96, 72)
            wait_until(lambda: bg.stats().reconnects >= 3 and bg.stats().resolutions[-1] == (96, 72), 5,
                       "reconnect at the new size")
            seen = bg.stats().processed
            wait_until(lambda: bg.stats().processed >= seen + 5, 5, "frames at the new size")
        finally:
            summary = bg.finish()
    src = summary["sources"][0]
    assert src["reconnects"] >= 3 and src["state"] == "stopped"
    assert src["resolutions"] == [[64, 48], [96, 72]]
    records = read_jsonl(log)
    details = [r["detail"] for r in records if r.get("event") == "disconnected"]
    assert any("stalled" in d for d in details), details
    widths = {r["width"] for r in records if r["type"] == "frame"}
    assert widths == {64, 96}
    assert count_frames(out) == (src["processed"], 64)


def test_unreachable_url_is_retried_with_backoff_then_reported(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = "http://127.0.0.1:{}/stream.mjpg".format(port)
    log = str(tmp_path / "log.jsonl")
    opts = StreamOptions(stall_timeout=1.0, max_reconnects=2, backoff=FAST_BACKOFF, jsonl=log)
    summary = StreamRunner(FakePredictor(), [parse_source(url)], opts, quiet()).run()
    src = summary["sources"][0]
    assert (src["state"], src["failed_attempts"], src["processed"]) == ("failed", 3, 0)
    events = [r["event"] for r in read_jsonl(log) if r["type"] == "event"]
    assert events == ["retry", "retry", "gave_up"]
    with pytest.raises(DDRNetError, match="127.0.0.1:{}.*gave up after 3 attempts".format(port)):
        raise_for_failed_sources(summary)


@pytest.mark.parametrize("schedule", ["batch", "round-robin"])
def test_several_sources_batched_or_round_robin(tmp_path, schedule):
    out = str(tmp_path / "videos")
    video = make_video(str(tmp_path / "cam2.mp4"), 12)
    predictor = FakePredictor(delay=0.02)
    with MjpegServer(64, 48, fps=30) as a, MjpegServer(64, 48, fps=30) as b:
        specs = [parse_source(a.url), parse_source(b.url), parse_source(video)]
        opts = StreamOptions(max_frames=30, stall_timeout=2.0, schedule=schedule, out=out)
        summary = StreamRunner(predictor, specs, opts, quiet()).run()
    per_source = [s["processed"] for s in summary["sources"]]
    assert summary["frames"] == sum(per_source) == 30
    assert all(n >= 5 for n in per_source), per_source  # no source starves
    assert summary["sources"][2]["dropped"] == 0  # the file still loses nothing
    if schedule == "batch":
        assert summary["batched"] and max(predictor.calls) >= 2
    else:
        assert not summary["batched"] and set(predictor.calls) == {1}
    for i, n in enumerate(per_source):
        assert count_frames(os.path.join(out, "source{}.mp4".format(i))) == (n, 64)


def test_show_without_display_warns_and_streams(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    console = quiet()
    video = make_video(str(tmp_path / "in.mp4"), 3)
    summary = StreamRunner(FakePredictor(), [parse_source(video)], StreamOptions(show=True), console).run()
    assert summary["frames"] == 3
    assert "--show ignored: no display" in console.stream.getvalue()


# ------------------------------------------------------------------ the command


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    model = write_tiny_model(str(tmp_path / "model"))
    video = make_video(str(tmp_path / "in.mp4"), 2)
    corrupt = tmp_path / "bad.mp4"
    corrupt.write_bytes(open(video, "rb").read()[:200])  # truncated
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_url = "http://127.0.0.1:{}/stream.mjpg".format(s.getsockname()[1])
    cases = [
        (["--source", str(tmp_path / "nope.mp4")], "nope.mp4: no such file"),
        (["--source", str(tmp_path / "*.jpg")], "no files match"),
        (["--source", str(corrupt)], "bad.mp4: not a readable video"),
        (["--source", video, "--source", video, "--out", str(tmp_path / "o.mp4")], "must be a folder"),
        (["--source", video, "--max-frames", "0"], "--max-frames must be at least 1"),
        (["--source", dead_url, "--max-reconnects", "1", "--stall-timeout", "1"], "gave up after 2 attempts"),
    ]
    for argv, message in cases:
        assert cli.main(["stream", "--model", model] + argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        if "--max-reconnects" not in argv:  # a live source reports each retry before the error
            assert len(lines) == 1, lines
        assert lines[-1].startswith("ddrnet stream: error:") and message in lines[-1], lines
    assert cli.main(["stream", "--model", str(tmp_path / "no_model"), "--source", video]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such model dir" in err, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_with_playable_mp4(tmp_path, sig):
    """The real Predictor on a tiny ONNX model, in a real `python -m ddrnet stream` process."""
    model = write_tiny_model(str(tmp_path / "model"))
    out, log = str(tmp_path / "out.mp4"), str(tmp_path / "log.jsonl")
    with MjpegServer(64, 48, fps=30) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ddrnet", "stream", "--model", model, "--source", server.url,
             "--out", out, "--jsonl", log, "--stall-timeout", "2"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def frames_logged() -> int:
                if not os.path.exists(log):
                    return 0
                return sum(1 for r in read_jsonl(log) if r["type"] == "frame")
            wait_until(lambda: frames_logged() >= 10 or proc.poll() is not None, 20, "frames from the process")
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, stderr
    assert "stream summary:" in stdout and "Traceback" not in stderr
    records = read_jsonl(log)
    frames = [r for r in records if r["type"] == "frame"]
    assert records[-1]["type"] == "summary" and records[-1]["stopped_by"] == sig.name
    assert {"source", "frame", "capture_time", "age_ms", "pre_ms", "infer_ms", "post_ms", "dropped"} <= set(frames[0])
    assert count_frames(out) == (len(frames), 64)
    assert not os.path.exists(str(tmp_path / "out.partial.mp4"))
