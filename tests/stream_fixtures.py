"""Local, loopback-only stream fixtures shared by tests/test_stream*.py and benchmarks/soak_stream.py,
benchmarks/stream_viewers.py (the live view's client is tests/mjpeg_viewer.py).

`MjpegServer` serves multipart MJPEG over HTTP on 127.0.0.1 (port 0 -> the OS picks a free port) and
lets a test inject the faults cars see: a stall (connection open, no frames), a cut (every connection
closed, the server keeps listening), a stop (connection refused) and a restart at another resolution.
"""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Set, Tuple

import cv2
import numpy as np

BOUNDARY = "ddrnetframe"
LOOP_FRAMES = 32  # distinct frames the server cycles through


def synthetic_frame(width: int, height: int, index: int) -> np.ndarray:
    """A BGR frame with a red left half, a blue right half and a green bar that moves each frame,
    so consecutive frames differ and a colour-threshold fake model has something to segment."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = (0, 0, 220)
    img[:, width // 2:] = (220, 0, 0)
    x = (index * 3) % max(1, width - 4)
    img[:, x: x + 4] = (0, 220, 0)
    return img


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path.split("?")[0] != "/stream.mjpg":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=" + BOUNDARY)
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        owner._register(self.connection)
        generation = owner.generation
        try:
            while owner.generation == generation and not self.server.closing:
                if owner.stalled:
                    time.sleep(0.01)
                    continue
                self.wfile.write(owner._next_part())
                self.wfile.flush()
                time.sleep(1.0 / owner.fps)
        except OSError:  # the client went away, or cut() shut the socket down
            pass
        finally:
            owner._unregister(self.connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart() rebinds the same port at once

    def __init__(self, addr: Tuple[str, int], owner: "MjpegServer") -> None:
        self.owner = owner
        self.closing = False
        super().__init__(addr, _Handler)


class MjpegServer:
    """A multipart MJPEG server on 127.0.0.1 that can stall, cut, stop and restart at a new size."""

    def __init__(self, width: int = 64, height: int = 48, fps: float = 30.0, port: int = 0) -> None:
        self.size = (width, height)
        self.fps = fps
        self.port = port
        self.stalled = False
        self.generation = 0  # bumped by cut(): every handler whose generation is stale returns
        self.frames_sent = 0
        self._lock = threading.Lock()
        self._connections: Set[socket.socket] = set()
        # A camera encodes on its own chip: pre-encode a loop of frames so the server's JPEG encoding
        # does not eat the CPU a benchmark is measuring.
        self._jpegs: Dict[Tuple[int, int], List[bytes]] = {}
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:{}/stream.mjpg".format(self.port)

    def start(self, width: Optional[int] = None, height: Optional[int] = None) -> "MjpegServer":
        if width and height:
            self.size = (width, height)
        self.stalled = False
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="mjpeg-server", daemon=True)
        self._thread.start()
        return self

    def stall(self) -> None:
        """Keep connections open but send nothing (a frozen camera)."""
        self.stalled = True

    def resume(self) -> None:
        self.stalled = False

    def cut(self) -> None:
        """Close every open connection; new connections are still accepted."""
        with self._lock:
            self.generation += 1
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        """Close connections and the listening socket: clients get 'connection refused'."""
        if self._server is None:
            return
        self._server.closing = True
        self.cut()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._server = None

    def restart(self, width: Optional[int] = None, height: Optional[int] = None) -> None:
        self.stop()
        self.start(width, height)

    def __enter__(self) -> "MjpegServer":
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_part(self) -> bytes:
        with self._lock:
            index = self.frames_sent
            self.frames_sent += 1
            if self.size not in self._jpegs:
                self._jpegs[self.size] = [cv2.imencode(".jpg", synthetic_frame(self.size[0], self.size[1], i))[1]
                                          .tobytes() for i in range(LOOP_FRAMES)]
            data = self._jpegs[self.size][index % LOOP_FRAMES]
        head = "--{}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n".format(BOUNDARY, len(data))
        return head.encode("ascii") + data + b"\r\n"

    def _register(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _unregister(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)


