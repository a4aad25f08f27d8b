"""Image and label reading with one-line errors that name the file and the problem."""
from __future__ import annotations

import os

import cv2
import numpy as np

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import write_bytes


def _is_truncated_jpeg(data: bytes) -> bool:
    """libjpeg decodes a cut-off JPEG with a warning only, grey-filling the missing rows, so OpenCV
    returns an image; the end-of-image marker must follow the last start-of-scan (an EXIF
    thumbnail's own end marker comes before it)."""
    return data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def _read_raw(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise DDRNetError("{}: no such file".format(path))
    if os.path.getsize(path) == 0:
        raise DDRNetError("{}: empty file".format(path))
    # imdecode from bytes: cv2.imread cannot read non-ASCII paths on some platforms
    with open(path, "rb") as f:
        data = f.read()
    if _is_truncated_jpeg(data):
        raise DDRNetError("{}: truncated JPEG (no end-of-image marker)".format(path))
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DDRNetError("{}: not a readable image (corrupt or truncated?)".format(path))
    if img.size == 0:
        raise DDRNetError("{}: zero-size image".format(path))
    return img


def to_bgr8(img: np.ndarray, source: str = "image") -> np.ndarray:
    """Check that an array is an 8-bit 3-channel BGR image, the only thing the model takes."""
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or img.size == 0:
        raise DDRNetError("{}: expected an HxWx3 image, got shape {}".format(
            source, getattr(img, "shape", None)))
    if img.dtype != np.uint8:
        raise DDRNetError("{}: expected 8-bit pixels, got {} (convert 16-bit images to 8-bit first)"
                          .format(source, img.dtype))
    if img.ndim == 2 or img.shape[2] == 1:
        raise DDRNetError("{}: grayscale image; the model needs 3-channel colour".format(source))
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.shape[2] != 3:
        raise DDRNetError("{}: {} channels; the model needs 3".format(source, img.shape[2]))
    return img


def read_image(path: str) -> np.ndarray:
    """Read a colour image as HxWx3 uint8 BGR (alpha dropped)."""
    return to_bgr8(_read_raw(path), path)


def read_label(path: str) -> np.ndarray:
    """Read a single-channel 8-bit label PNG as HxW uint8."""
    lab = _read_raw(path)
    if lab.ndim != 2 or lab.dtype != np.uint8:
        raise DDRNetError("{}: a label must be a single-channel 8-bit PNG, got shape {} {}".format(
            path, lab.shape, lab.dtype))
    return lab


def write_image(path: str, img: np.ndarray) -> None:
    """Write atomically, creating the folder if needed: a crash leaves no half-written file."""
    ok, buf = cv2.imencode(os.path.splitext(path)[1] or ".png", img)
    if not ok:
        raise DDRNetError("{}: could not encode image".format(path))
    write_bytes(path, buf.tobytes())
