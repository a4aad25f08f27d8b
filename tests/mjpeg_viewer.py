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
    JPEG (each part ends at the next boundary; no Content-Length), close() drops the connection."""

    def __init__(self, port: int, path: str, timeout: float = 30.0, boundary: str = "ddrnetframe") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall("GET {} HTTP/1.1\r\nHost: viewer\r\n\r\n".format(path).encode("ascii"))
        self.stream = self.sock.makefile("rb")
        self.headers: List[bytes] = []
        while not self.headers or self.headers[-1]:
            self.headers.append(self.stream.readline().strip())
        self.status = int(self.headers[0].split()[1])
        self._end = "\r\n--{}\r\n".format(boundary).encode("ascii")
        if self.status == 200:
            assert self.stream.readline() == self._end[2:], "the stream must start with its boundary"

    def jpeg(self) -> bytes:
        while self.stream.readline().strip():  # the part's headers, up to an empty line
            pass
        data = b""
        while not data.endswith(self._end):
            line = self.stream.readline()
            if not line:
                raise ConnectionError("the live view closed the stream")
            data += line
        return data[:-len(self._end)]

    def frame(self):
        """The next JPEG decoded (BGR array)."""
        import cv2
        import numpy as np

        return cv2.imdecode(np.frombuffer(self.jpeg(), np.uint8), cv2.IMREAD_COLOR)

    def close(self) -> None:
        self.stream.close()
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
