"""`ddrnet stream --serve HOST:PORT`: watch the segmentation live from a browser on the car's network.

`/` is a page with one overlay video per source (multipart MJPEG, which every browser plays in an
<img>) and its FPS, frame age, drops and reconnects, refreshed from `/status` (JSON, the runner's
counters per source). `/video/<i>.mjpg` is the stream of source i.

It never slows inference: the runner only hands over references to the newest frame and mask of a
source (`offer`, O(1)) and only while someone watches that source; one encoder thread draws a
down-scaled overlay and encodes a JPEG at most `fps` times a second per source, replacing what it has
not encoded yet (dropped, never queued); each viewer's thread sends the newest JPEG, so a slow viewer
skips frames and a viewer that disconnects just ends its thread. Binds 127.0.0.1 unless told otherwise;
with a token every request needs `?token=` or `Authorization: Bearer` (401 without one, 403 if wrong).
"""
from __future__ import annotations

import contextlib
import functools
import hmac
import html
import json
import logging
import os
import re
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, quote, urlsplit

import cv2
import numpy as np

from ddrnet.runtime.errors import DDRNetError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
BOUNDARY = "ddrnetframe"
TOKEN_ENV = "DDRNET_STREAM_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_serve(text: str) -> Tuple[str, int]:
    """--serve value: HOST:PORT, [IPv6]:PORT, :PORT or PORT (host 127.0.0.1)."""
    match = re.fullmatch(r"(?:(\[[0-9a-fA-F:.]+\]|[^:\s]*):)?(\d{1,5})", (text or "").strip())
    if not match or int(match.group(2)) > 65535:
        raise DDRNetError("--serve {!r}: expected HOST:PORT or PORT, e.g. 127.0.0.1:8080".format(text))
    host = (match.group(1) or DEFAULT_HOST).strip("[]")
    return host, int(match.group(2))


class _Feed:
    """The live view's state for one source, guarded by LiveView._cond."""

    def __init__(self) -> None:
        self.viewers = 0
        self.pending: Optional[Tuple[np.ndarray, np.ndarray]] = None  # newest (frame, mask) not encoded
        self.jpeg: Optional[bytes] = None
        self.seq = 0  # bumped with every new JPEG
        self.last_encode = 0.0
        self.offered = 0
        self.encoded = 0
        self.encode_cpu_s = 0.0  # CPU time the encoder thread spent on this source (what the page costs)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], view: "LiveView") -> None:
        self.view = view
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        """A viewer that resets its connection is normal; anything else is logged, not printed over
        the status line."""
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            log.warning("live view: request from %s failed: %r", client_address[0], err)


class LiveView:
    """The HTTP server of `--serve`. Bind (constructor) before the model loads, so a taken port is an
    error at once; `start` once the sources are known; `close` at the end of the run."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, token: Optional[str] = None, fps: float = 10.0,
                 max_width: int = 640, quality: int = 75) -> None:
        self.token = token or None
        self.fps = fps
        self.max_width = max_width
        self.quality = quality
        self.closed = threading.Event()
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._feeds: List[_Feed] = []
        self._names: List[str] = []
        self._status: Callable[[], Dict[str, Any]] = dict
        self._overlay: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None
        self._threads: List[threading.Thread] = []
        try:
            self._server = _Server((host, port), self)
        except (OSError, OverflowError) as err:
            raise DDRNetError("--serve {}:{}: cannot listen ({})".format(
                host, port, getattr(err, "strerror", None) or err)) from None
        self.host = host
        self.port = self._server.server_address[1]

    @property
    def url(self) -> str:
        host = "[{}]".format(self.host) if ":" in self.host else self.host
        return "http://{}:{}/".format(host, self.port)

    @property
    def sources(self) -> int:
        return len(self._feeds)

    @property
    def exposed(self) -> bool:
        """Reachable from other machines (not bound to a loopback address)."""
        return self.host not in LOOPBACK and not self.host.startswith("127.")

    def start(self, names: List[str], status: Callable[[], Dict[str, Any]],
              overlay: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        """names: one display name per source; status(): the runner's counters; overlay(frame, mask)."""
        self._names = list(names)
        self._feeds = [_Feed() for _ in names]
        self._status = status
        self._overlay = overlay
        self._threads = [threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                          name="liveview-http", daemon=True),
                         threading.Thread(target=self._encode_loop, name="liveview-jpeg", daemon=True)]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        if self._threads:
            self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=2.0)

    # -- the runner's side: O(1), never waits for encoding or viewers ---------------------------

    def wants(self, source: int) -> bool:
        return self._feeds[source].viewers > 0

    def offer(self, source: int, frame: np.ndarray, mask: np.ndarray) -> None:
        """The newest frame and mask of a source (not copied: the caller must not modify them)."""
        feed = self._feeds[source]
        if feed.viewers == 0:
            return
        with self._cond:
            feed.pending = (frame, mask)
            feed.offered += 1
        self._wake.set()

    # -- encoder thread ---------------------------------------------------------------------

    def _encode_loop(self) -> None:
        _yield_to_inference()
        timeout = None
        while not self.closed.is_set():
            self._wake.wait(timeout)
            self._wake.clear()
            timeout = None
            for feed in self._feeds:
                now = time.monotonic()
                with self._cond:
                    item = feed.pending
                    due = feed.last_encode + 1.0 / self.fps
                    if item is None:
                        continue
                    if now < due:  # over the page's frame rate: keep the newest, try again later
                        timeout = due - now if timeout is None else min(timeout, due - now)
                        continue
                    feed.pending = None
                    feed.last_encode = now
                cpu = time.thread_time()
                try:
                    jpeg = self._encode(*item)
                except Exception as err:  # a bad frame must not end the page for the rest of the run
                    log.warning("live view: cannot encode a frame: %r", err)
                    continue
                with self._cond:
                    feed.jpeg, feed.seq, feed.encoded = jpeg, feed.seq + 1, feed.encoded + 1
                    feed.encode_cpu_s += time.thread_time() - cpu
                    self._cond.notify_all()

    def _encode(self, frame: np.ndarray, mask: np.ndarray) -> bytes:
        h, w = mask.shape[:2]
        if w > self.max_width:  # scale down first: overlay and JPEG cost follow the pixel count
            # measured at 1024x512 -> 640x320: resize 0.4 ms (INTER_AREA: 2.9), overlay 0.6, JPEG 2.2;
            # 7 ms without scaling: at 10 FPS the page costs ~2 % of a 2-core CPU instead of ~4 %
            size = (self.max_width, max(1, round(h * self.max_width / w)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        ok, buf = cv2.imencode(".jpg", self._overlay(frame, mask), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        return buf.tobytes() if ok else b""

    # -- viewers' side ----------------------------------------------------------------------

    @contextlib.contextmanager
    def watching(self, source: int) -> Iterator[None]:
        feed = self._feeds[source]
        with self._cond:
            feed.viewers += 1
        try:
            yield
        finally:
            with self._cond:
                feed.viewers -= 1

    def next_jpeg(self, source: int, seen: int, timeout: float) -> Tuple[Optional[bytes], int]:
        """The newest JPEG newer than `seen` (waiting up to `timeout`), and its sequence number. A
        new viewer (seen < 0) of a source with no frame yet gets a placeholder at once, so the page
        finishes loading and says what it waits for."""
        feed = self._feeds[source]
        with self._cond:
            if seen < 0 and feed.jpeg is None:
                return _placeholder(), 0
            self._cond.wait_for(lambda: feed.seq != seen or self.closed.is_set(), timeout)
            if feed.seq == seen or not feed.jpeg:
                return None, seen
            return feed.jpeg, feed.seq

    def check_token(self, given: Optional[str]) -> int:
        """HTTP status for a request's token: 200, 401 (none given) or 403 (wrong)."""
        if self.token is None:
            return 200
        if not given:
            return 401
        return 200 if hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8")) else 403

    def status(self) -> Dict[str, Any]:
        status = dict(self._status())
        with self._cond:
            status["live_view"] = [{"source": i, "viewers": f.viewers, "offered": f.offered, "encoded": f.encoded,
                                    "encode_cpu_s": round(f.encode_cpu_s, 3)} for i, f in enumerate(self._feeds)]
        return status

    def page(self) -> str:
        query = "?token=" + quote(self.token, safe="") if self.token else ""
        cards = "".join(_CARD.format(i=i, name=html.escape(name), q=query) for i, name in enumerate(self._names))
        return _PAGE.replace("{cards}", cards).replace("{status_url}", json.dumps("/status" + query))


def _yield_to_inference(niceness: int = 10) -> None:
    """Lower this thread's scheduling priority: Linux schedules threads as tasks and applies
    setpriority(PRIO_PROCESS, thread id) to that thread alone, so when inference wants every core the
    encoder waits instead of taking a share of them. Elsewhere (or not permitted) it runs as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


@functools.lru_cache(maxsize=1)
def _placeholder() -> bytes:
    img = np.full((180, 320, 3), 40, np.uint8)
    cv2.putText(img, "waiting for frames", (40, 95), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (200, 200, 200), 2)
    return cv2.imencode(".jpg", img)[1].tobytes()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "ddrnet-stream"
    timeout = 10.0  # a viewer whose socket takes no data for this long is dropped

    def log_message(self, *args: Any) -> None:  # requests are not worth a line on the console
        pass

    def do_GET(self) -> None:
        view = self.server.view
        url = urlsplit(self.path)
        code = view.check_token(self._token(url.query))
        if code != 200:
            self.send_error(code, "token required" if code == 401 else "wrong token")
            return
        match = re.fullmatch(r"/video/(\d+)\.mjpg", url.path)
        try:
            if url.path == "/":
                self._send(200, "text/html; charset=utf-8", view.page().encode("utf-8"))
            elif url.path == "/status":
                self._send(200, "application/json", json.dumps(view.status()).encode("utf-8"))
            elif match and int(match.group(1)) < view.sources:
                self._mjpeg(view, int(match.group(1)))
            else:
                self.send_error(404)
        except (OSError, ValueError):  # the viewer went away (reset, broken pipe, timeout)
            self.close_connection = True

    def _token(self, query: str) -> Optional[str]:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return (parse_qs(query).get("token") or [None])[0]

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _mjpeg(self, view: LiveView, source: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=" + BOUNDARY)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        # Each JPEG is followed at once by the boundary and the headers of the next part: a browser
        # shows a part only once the next one has begun, so this saves a frame of delay (and the
        # first frame shows at once). Hence no Content-Length: the boundary ends each part.
        next_part = "\r\n--{}\r\nContent-Type: image/jpeg\r\n\r\n".format(BOUNDARY).encode("ascii")
        self.wfile.write(next_part[2:])
        seq = -1
        with view.watching(source):
            while not view.closed.is_set():
                jpeg, seq = view.next_jpeg(source, seq, timeout=1.0)
                if jpeg is not None:
                    self.wfile.write(jpeg + next_part)
                    self.wfile.flush()
                elif self._client_gone():  # a source without frames: notice a viewer that left
                    return

    def _client_gone(self) -> bool:
        try:
            readable = select.select([self.connection], [], [], 0)[0]
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True


_CARD = """<section><h2>source {i}: {name}</h2><img id="v{i}" src="/video/{i}.mjpg{q}" alt="source {i}">
<p id="s{i}">waiting for the first frame...</p></section>"""

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ddrnet stream</title>
<style>
body { font-family: sans-serif; margin: 1em; background: #111; color: #ddd; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(24em, 1fr)); gap: 1em; }
img { width: 100%; background: #000; }
h2 { font-size: 1em; margin: 0.3em 0; word-break: break-all; }
p { font-family: monospace; margin: 0.3em 0; }
</style></head>
<body><h1>ddrnet stream</h1><p id="summary">connecting...</p><main>{cards}</main>
<script>
const statusUrl = {status_url};
function ms(v) { return v === null || v === undefined ? "-" : v.toFixed(0); }
async function refresh() {
  try {
    const r = await fetch(statusUrl, {cache: "no-store"});
    const s = await r.json();
    document.getElementById("summary").textContent =
      s.uptime_s.toFixed(0) + " s, " + s.fps.toFixed(1) + " FPS, " + s.frames + " frames";
    for (const src of s.sources) {
      const el = document.getElementById("s" + src.source);
      if (el) el.textContent = src.state + " | " + src.fps.toFixed(1) + " FPS | age p50 " +
        ms(src.age_ms.p50) + " p99 " + ms(src.age_ms.p99) + " ms | " + src.processed + " processed, " +
        src.dropped + " dropped, " + src.reconnects + " reconnects, outage " + src.outage_s.toFixed(1) + " s";
    }
  } catch (e) {
    document.getElementById("summary").textContent = "no answer from the stream (" + e + ")";
  }
}
refresh();
setInterval(refresh, 1000);
</script></body></html>
"""
