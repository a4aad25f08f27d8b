"""`ddrnet stream --serve` (the live view) over real HTTP on loopback and in a real headless Chromium,
the H.264 overlay video played by that browser, and `gst:` sources through a real GStreamer.

Chromium (Debian's `chromium` + `chromium-driver`) and an OpenCV built with GStreamer (Debian's
`python3-opencv` with `gstreamer1.0-plugins-base`) are system packages that .ci/run installs; where they
are missing these tests skip and say which package to install. The GStreamer tests run this venv's
Python with Debian's cv2 module put first on PYTHONPATH, as a Jetson runs JetPack's OpenCV, so the
whole command (real tiny model, real pipeline) is under test, not a mock of OpenCV."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from ddrnet.runtime import liveview
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.sources import parse_source
from ddrnet.runtime.stream import StreamOptions, StreamRunner

sys.path.insert(0, os.path.dirname(__file__))
from mjpeg_viewer import MjpegViewer  # noqa: E402
from stream_fixtures import MjpegServer  # noqa: E402
from test_stream import HANG, Background, make_video, model_dir, predictor, quiet, read_jsonl, wait_until  # noqa: E402,F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "s3cret-token"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def test_parse_serve():
    assert liveview.parse_serve("8080") == ("127.0.0.1", 8080)
    assert liveview.parse_serve(":8080") == ("127.0.0.1", 8080)
    assert liveview.parse_serve("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert liveview.parse_serve("[::1]:8080") == ("::1", 8080)
    for bad in ["", "host:", "host:http", "1.2.3.4:70000", "a:b:c"]:
        with pytest.raises(DDRNetError, match="--serve"):
            liveview.parse_serve(bad)


# ------------------------------------------------------------------ HTTP


def get(url: str, headers=None):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=HANG) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def viewer(view: liveview.LiveView, source: int = 0) -> MjpegViewer:
    v = MjpegViewer(view.port, "/video/{}.mjpg?token={}".format(source, TOKEN), timeout=HANG)
    assert v.status == 200
    assert any(h.lower().startswith(b"content-type: multipart/x-mixed-replace") for h in v.headers), v.headers
    return v


def test_live_view_page_status_and_video(tmp_path, model_dir):
    view = liveview.LiveView("127.0.0.1", 0, token=TOKEN, fps=30.0)
    base = "http://127.0.0.1:{}".format(view.port)
    with MjpegServer(64, 48, fps=30) as server:
        runner = StreamRunner(predictor(model_dir), [parse_source(server.url)], StreamOptions(), quiet(),
                              live_view=view)
        bg = Background(runner)
        try:
            wait_until(lambda: bg.stats() and bg.processed() >= 10, "first frames")
            assert get(base + "/")[0] == 401
            assert get(base + "/?token=wrong")[0] == 403
            assert get(base + "/status", {"Authorization": "Bearer wrong"})[0] == 403
            code, page = get(base + "/", {"Authorization": "Bearer " + TOKEN})
            assert code == 200 and b'src="/video/0.mjpg?token=' + TOKEN.encode() + b'"' in page
            assert get(base + "/video/1.mjpg?token=" + TOKEN)[0] == 404
            assert get(base + "/nothing?token=" + TOKEN)[0] == 404

            def status():
                code, body = get(base + "/status?token=" + TOKEN)
                assert code == 200
                return json.loads(body)
            first = status()
            src = first["sources"][0]
            assert src["processed"] > 0 and src["captured"] >= src["processed"] and src["uri"] == server.url
            assert first["live_view"][0] == {"source": 0, "viewers": 0, "offered": 0, "encoded": 0,
                                             "encode_cpu_s": 0.0}  # nobody watches: no work
            wait_until(lambda: status()["sources"][0]["processed"] > src["processed"], "/status counts rising")

            viewers = [viewer(view), viewer(view)]  # two at once, each gets the newest frames
            for v in viewers:
                shots = [v.frame() for _ in range(4)]
                if shots[0].shape == (180, 320, 3):  # "waiting for frames", until the first is encoded
                    shots = shots[1:]
                assert all(s.shape == (48, 64, 3) for s in shots)
                assert len({hashlib.sha1(s.tobytes()).hexdigest() for s in shots}) > 1
            assert status()["live_view"][0]["viewers"] == 2
            viewers[0].close()  # a viewer that goes away costs nothing: its thread ends
            wait_until(lambda: status()["live_view"][0]["viewers"] == 1, "the closed viewer to be gone")
            viewers[1].frame()
            viewers[1].close()
            wait_until(lambda: status()["live_view"][0]["viewers"] == 0, "no viewers")
            # nobody watching: no more frames are handed over, while the stream goes on
            offered, seen = status()["live_view"][0]["offered"], bg.processed()
            wait_until(lambda: bg.processed() >= seen + 20, "more frames")
            assert status()["live_view"][0]["offered"] == offered
        finally:
            summary = bg.finish()
    assert summary["frames"] >= 30
    assert view.closed.is_set()
    with pytest.raises(OSError):  # the port is released at the end of the run
        socket.create_connection(("127.0.0.1", view.port), timeout=2).close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_the_encoder_yields_the_cores_to_inference():
    view = liveview.LiveView("127.0.0.1", 0)
    before = set(threading.enumerate())  # an earlier test's encoder may still be ending
    view.start(["camera"], dict, lambda frame, mask: frame)
    try:
        encoder = next(t for t in threading.enumerate() if t.name == "liveview-jpeg" and t not in before)
        wait_until(lambda: os.getpriority(os.PRIO_PROCESS, encoder.native_id) == 10, "the encoder to lower itself")
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == 0  # the caller keeps its priority
    finally:
        view.close()


def test_viewer_of_a_silent_source_gets_a_placeholder_and_leaves_cleanly():
    view = liveview.LiveView("127.0.0.1", 0, token=TOKEN)
    view.start(["camera that never answers"], dict, lambda frame, mask: frame)
    try:
        silent = viewer(view)
        assert silent.frame().shape == (180, 320, 3)  # "waiting for frames", so the page loads
        assert view.status()["live_view"][0]["viewers"] == 1
        silent.close()
        wait_until(lambda: view.status()["live_view"][0]["viewers"] == 0, "the viewer's thread to end")
    finally:
        view.close()


def test_page_frames_are_dropped_not_queued():
    """Frames offered faster than the page's rate replace each other: the viewer gets the newest."""
    view = liveview.LiveView("127.0.0.1", 0, token=TOKEN, fps=5.0)
    view.start(["camera"], dict, lambda frame, mask: frame)
    mask = np.zeros((48, 64), np.uint8)
    try:
        watcher = viewer(view)
        assert watcher.frame().shape == (180, 320, 3)  # the placeholder: nothing offered yet
        for level in range(50):  # a burst: 50 frames, each a different grey
            view.offer(0, np.full((48, 64, 3), 5 * level, np.uint8), mask)
        # the newest frame (grey 245) reaches the viewer; the burst was not encoded frame by frame
        wait_until(lambda: abs(float(watcher.frame().mean()) - 245) < 3, "the newest frame")
        counts = view.status()["live_view"][0]
        assert counts["offered"] == 50 and 1 <= counts["encoded"] < 50
        watcher.close()
    finally:
        view.close()


# ------------------------------------------------------------------ headless Chromium


@pytest.fixture
def browser(tmp_path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        pytest.skip("no {} (Debian: apt-get install chromium chromium-driver; .ci/run does)".format(", ".join(missing)))
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (dev extra) drives the browser")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--user-data-dir=" + str(tmp_path / "chromium-profile")):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(HANG)
    try:
        yield driver
    finally:
        driver.quit()


class StreamProcess:
    """`python -m ddrnet stream ... --serve 127.0.0.1:0`; learns the live view's URL from stderr."""

    def __init__(self, args, env=None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ddrnet", "stream"] + args, cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def url(self) -> str:
        found = []

        def seen() -> bool:
            found.extend(m.group(1) for line in self.lines for m in [re.search(r"live view: (http://\S+)", line)] if m)
            return bool(found) or self.proc.poll() is not None
        wait_until(seen, "the live view's address")
        assert found, self.lines
        return found[0]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        stdout, _ = self.proc.communicate(timeout=HANG)
        self.reader.join(HANG)
        return self.proc.returncode, stdout


FRAME_HASH_JS = """
const img = document.getElementById('v0');
if (!img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext('2d');
ctx.drawImage(img, 0, 0);
const d = ctx.getImageData(0, 0, c.width, c.height).data;
let h = 0;
for (let i = 0; i < d.length; i += 4) h = (h * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) >>> 0;
return [c.width, c.height, h];
"""


def test_browser_sees_live_frames_and_counts(tmp_path, model_dir, browser):
    """>= 5 distinct frames in 10 s from a looping source, /status rising on the page, a wrong token refused."""
    with MjpegServer(64, 48, fps=30) as server:  # loops 32 distinct frames
        stream = StreamProcess(["--model", model_dir, "--source", server.url, "--serve", "127.0.0.1:0",
                                "--stall-timeout", "5"], env=dict(os.environ, DDRNET_STREAM_TOKEN=TOKEN))
        try:
            url = stream.url()
            browser.get(url + "?token=wrong")
            assert "403" in browser.page_source and "v0" not in browser.page_source
            browser.get(url + "?token=" + TOKEN)
            frames = set()
            deadline = time.monotonic() + 10.0
            while len(frames) < 5 and time.monotonic() < deadline:
                shot = browser.execute_script(FRAME_HASH_JS)
                if shot:
                    assert shot[:2] == [64, 48]
                    frames.add(shot[2])
                time.sleep(0.1)
            assert len(frames) >= 5, "{} distinct frames in 10 s".format(len(frames))

            def frames_on_page() -> int:
                text = browser.find_element("id", "summary").text
                match = re.search(r"(\d+) frames", text)
                return int(match.group(1)) if match else -1
            wait_until(lambda: frames_on_page() > 0, "the page's status line")
            first = frames_on_page()
            wait_until(lambda: frames_on_page() > first, "the page's frame count rising")
            assert "streaming" in browser.find_element("id", "s0").text
        finally:
            rc, stdout = stream.stop()
    assert rc == 0 and "stream summary:" in stdout, stream.lines


def test_browser_plays_the_h264_overlay_video(tmp_path, model_dir, browser):
    pytest.importorskip("av", reason="PyAV (pip install av, in the dev extra) writes H.264")
    video = make_video(str(tmp_path / "in.mp4"), 20)  # mp4v: what the old writer made
    out = str(tmp_path / "overlay.mp4")
    summary = StreamRunner(predictor(model_dir), [parse_source(video)], StreamOptions(out=out), quiet()).run()
    assert summary["video"].startswith("H.264")
    page = tmp_path / "play.html"
    page.write_text('<video id="h264" src="overlay.mp4" muted></video><video id="mp4v" src="in.mp4" muted></video>')
    browser.get("file://" + str(page))
    probe = ("const v = document.getElementById(arguments[0]);"
             "return [v.readyState, v.videoWidth, v.error ? v.error.code : 0];")
    wait_until(lambda: browser.execute_script(probe, "h264")[0] >= 2 or browser.execute_script(probe, "h264")[2],
               "the browser to decode the overlay")
    ready, width, error = browser.execute_script(probe, "h264")
    assert (width, error) == (64, 0) and ready >= 2  # HAVE_CURRENT_DATA: a decoded frame, no error
    # the control: the old MPEG-4 Part 2 file is refused by the same browser (so the check can fail)
    wait_until(lambda: browser.execute_script(probe, "mp4v")[2] != 0, "the browser to refuse mp4v")
    assert browser.execute_script(probe, "mp4v")[2] == 4  # MEDIA_ERR_SRC_NOT_SUPPORTED


# ------------------------------------------------------------------ GStreamer


def system_opencv_with_gstreamer(tmp_path) -> dict:
    """An environment whose PYTHONPATH puts Debian's cv2 (built with GStreamer) first; skips if
    there is none for this Python, or it lacks GStreamer or the test source (videotestsrc)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    found = glob.glob("/usr/lib/python3/dist-packages/cv2" + suffix) + \
        glob.glob("/usr/lib/python3/dist-packages/cv2/python-3*/cv2" + suffix)
    if not found:
        pytest.skip("no system OpenCV for this Python ({}): apt-get install python3-opencv "
                    "gstreamer1.0-plugins-base (.ci/run does)".format(suffix))
    shim = tmp_path / "system_cv2"
    shim.mkdir()
    os.symlink(found[0], str(shim / os.path.basename(found[0])))
    env = dict(os.environ, PYTHONPATH=str(shim))
    probe = ("import cv2, sys\n"
             "from ddrnet.runtime.sources import opencv_has_gstreamer\n"
             "assert opencv_has_gstreamer(), 'no GStreamer'\n"
             "cap = cv2.VideoCapture('videotestsrc num-buffers=1 ! videoconvert ! appsink', cv2.CAP_GSTREAMER)\n"
             "assert cap.isOpened() and cap.read()[0], 'videotestsrc'\n")
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=HANG)
    if proc.returncode != 0:
        pytest.skip("the system OpenCV cannot run a GStreamer test pipeline ({}): apt-get install "
                    "python3-opencv gstreamer1.0-plugins-base".format(proc.stderr.strip().splitlines()[-1:]))
    return env


def test_gstreamer_source_streams_through_the_real_pipeline(tmp_path, model_dir):
    env = system_opencv_with_gstreamer(tmp_path)
    log, out = str(tmp_path / "log.jsonl"), str(tmp_path / "gst.mp4")
    pipeline = "gst:videotestsrc is-live=true pattern=ball ! video/x-raw,width=96,height=64,framerate=30/1"
    proc = subprocess.run([sys.executable, "-m", "ddrnet", "stream", "--model", model_dir, "--source", pipeline,
                           "--max-frames", "15", "--jsonl", log, "--out", out],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = read_jsonl(log)
    frames = [r for r in records if r["type"] == "frame"]
    assert len(frames) == 15 and {(r["width"], r["height"]) for r in frames} == {(96, 64)}
    summary = records[-1]
    assert summary["sources"][0]["kind"] == "gstreamer" and summary["stopped_by"] == "max-frames"
    assert os.path.getsize(out) > 0


def test_gstreamer_frozen_pipeline_is_caught_by_the_watchdog(tmp_path, model_dir):
    """A pipeline that never delivers (a valve that drops everything): OpenCV's open blocks forever,
    as with a frozen camera. The watchdog gives up on each attempt after --stall-timeout."""
    env = system_opencv_with_gstreamer(tmp_path)
    log = str(tmp_path / "log.jsonl")
    pipeline = "gst:videotestsrc is-live=true ! valve drop=true"
    proc = subprocess.run([sys.executable, "-m", "ddrnet", "stream", "--model", model_dir, "--source", pipeline,
                           "--stall-timeout", "1", "--max-reconnects", "1", "--jsonl", log],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ddrnet stream: error: gst:videotestsrc") and "gave up after 2 attempts" in last
    assert "no answer" in last and "stalled" in last
    events = [r["event"] for r in read_jsonl(log) if r["type"] == "event"]
    assert events == ["retry", "gave_up"]
    summary = read_jsonl(log)[-1]["sources"][0]
    assert (summary["failed_attempts"], summary["reconnect_attempts"], summary["processed"]) == (2, 1, 0)
    assert summary["outage_s"] >= 2.0  # two watched attempts of >= 1 s each, without a frame
