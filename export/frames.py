"""The images an export looks at: calibration images for INT8 and parity images for the export check.

Calibration reads a Cityscapes-layout folder (its `leftImg8bit/train` split: the val split is what
the INT8 model is judged on, so it never calibrates) or a plain folder of images. Parity uses images
from the same folder that calibration did not see when there are any, else synthetic street-like
frames. Frames are BGR uint8, as the runtime's Predictor takes them.
"""
from __future__ import annotations

import glob
import hashlib
import os
from typing import List, NamedTuple, Sequence, Tuple

import cv2
import numpy as np

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.imageio import read_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class FrameSet(NamedTuple):
    frames: List[np.ndarray]  # HxWx3 uint8 BGR
    source: str  # where they come from, for deploy.yaml
    paths: List[str]  # empty for synthetic frames


def _images_under(folder: str) -> List[str]:
    found = []
    for ext in IMAGE_EXTENSIONS:
        found += glob.glob(os.path.join(folder, "**", "*" + ext), recursive=True)
        found += glob.glob(os.path.join(folder, "**", "*" + ext.upper()), recursive=True)
    return sorted(set(found))


def calibration_pool(calib_dir: str) -> Tuple[str, List[str]]:
    """(folder actually read, sorted image paths). A Cityscapes root means its train split."""
    if not os.path.isdir(calib_dir):
        raise DDRNetError("{}: no such calibration folder".format(calib_dir))
    parts = os.path.normpath(os.path.abspath(calib_dir)).split(os.sep)
    if "leftImg8bit" in parts and parts.index("leftImg8bit") + 1 < len(parts) \
            and parts[parts.index("leftImg8bit") + 1] == "val":
        raise DDRNetError("{}: the val split is for evaluation; calibrate on train images".format(calib_dir))
    folder = calib_dir
    if os.path.isdir(os.path.join(calib_dir, "leftImg8bit")):
        folder = os.path.join(calib_dir, "leftImg8bit", "train")
        if not os.path.isdir(folder):
            raise DDRNetError("{}: Cityscapes layout without a train split to calibrate on".format(calib_dir))
    paths = _images_under(folder)
    if not paths:
        raise DDRNetError("{}: no images ({}) to calibrate on".format(folder, ", ".join(IMAGE_EXTENSIONS)))
    return folder, paths


def spread(items: Sequence, count: int) -> list:
    """`count` items evenly spread over the sequence (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def paths_digest(paths: Sequence[str], root: str) -> str:
    """SHA-256 over the relative names and contents of the images, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.relpath(path, root).encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def read_frames(paths: Sequence[str]) -> List[np.ndarray]:
    return [read_image(p) for p in paths]


def synthetic_frames(count: int, hw: Tuple[int, int], seed: int = 0) -> List[np.ndarray]:
    """Smooth colour fields with a few rectangles: structure at several scales, deterministic."""
    rng = np.random.default_rng(seed)
    h, w = hw
    frames = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(4, 8, 3), dtype=np.uint8)
        frame = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(6):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            y1, x1 = y0 + rng.integers(h // 8, h // 2 + 1), x0 + rng.integers(w // 8, w // 2 + 1)
            frame[y0:y1, x0:x1] = rng.integers(0, 256, size=3, dtype=np.uint8)
        frames.append(frame)
    return frames


def parity_frames(pool: Sequence[str], calibration: Sequence[str], count: int, hw: Tuple[int, int],
                  source: str = "") -> FrameSet:
    """Images of the folder that calibration did not use; the calibration images when none are
    left; synthetic frames when there is no folder (FP32 exports)."""
    used = set(calibration)
    held_out = [p for p in pool if p not in used]
    if held_out:
        paths = spread(held_out, count)
        return FrameSet(read_frames(paths), "{} (not used for calibration)".format(source), paths)
    if calibration:
        paths = spread(calibration, count)
        return FrameSet(read_frames(paths), "{} (calibration images: the folder has no others)".format(source),
                        paths)
    return FrameSet(synthetic_frames(count, hw), "synthetic", [])
