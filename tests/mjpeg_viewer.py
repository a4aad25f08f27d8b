"""A client of `ddrnet stream --serve`'s /video/<i>.mjpg (runtime/liveview.py), for tests and, as a
separate process, for benchmarks/stream_viewers.py and soak_stream.py. Standard library only, so a
viewer process starts in milliseconds and costs the host what a browser's network reading would."""
from __future__ import annotations

import socket
import sys
import time
from typing import List


class MjpegViewer:
    """A raw client of a live view's /video/<i>.mjpg (runtime/liveview.py): frame() reads the next
    JPEG (each part ends at the next boundary; no Content-Length), close() drops the connection.
    It reads the socket in large chunks into one buffer, as a browser does (a JPEG read line by line, the
    frame re-copied at every line, spent CPU that a remote viewer would not take from the host)."""

    def __init__(self, port: int, path: str, timeout: float = 30.0, boundary: str = "ddrnetframe") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall("GET {} HTTP/1.1\r\nHost: viewer\r\n\r\n".format(path).encode("ascii"))
        self._buffer = bytearray()
        self.headers: List[bytes] = self._until(b"\r\n\r\n").split(b"\r\n")
        self.status = int(self.headers[0].split()[1])
        self._end = "\r\n--{}\r\n".format(boundary).encode("ascii")
        if self.status == 200:
            assert self._until(b"\r\n") + b"\r\n" == self._end[2:], "the stream must start with its boundary"

    def _until(self, delimiter: bytes) -> bytes:
        """The bytes before the next `delimiter`, which is consumed too."""
        searched = 0
        while True:
            found = self._buffer.find(delimiter, searched)
            if found >= 0:
                data = bytes(self._buffer[:found])
                del self._buffer[:found + len(delimiter)]
                return data
            searched = max(0, len(self._buffer) - len(delimiter) + 1)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the live view closed the stream")
            self._buffer += chunk

    def jpeg(self) -> bytes:
        self._until(b"\r\n\r\n")  # the part's headers, up to an empty line
        return self._until(self._end)

    def frame(self):
        """The next JPEG decoded (BGR array)."""
        import cv2
        import numpy as np

        return cv2.imdecode(np.frombuffer(self.jpeg(), np.uint8), cv2.IMREAD_COLOR)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def watch(port: int, path: str, seconds: float) -> int:
    """Read a live view's stream for `seconds` like a browser (`python mjpeg_viewer.py PORT PATH S`, for
    benchmarks that need viewers in another process); returns the JPEGs received."""
    viewer = MjpegViewer(port, path)
    count, end = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            viewer.jpeg()
            count += 1
    except (OSError, ConnectionError):
        pass
    finally:
        viewer.close()
    return count


if __name__ == "__main__":
    print(watch(int(sys.argv[1]), sys.argv[2], float(sys.argv[3])), flush=True)
