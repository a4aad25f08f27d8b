"""The images an export looks at besides calibration itself: the parity images of the export check,
and a digest that identifies the calibration set.

Calibration sources are read as `ddrnet compress` reads them (ddrnet.compress.calib: a Cityscapes
root means its train split, or an image folder, or a list file; never val). Parity uses images of
the source that calibration did not see (the calibration images when there are no others), or
synthetic frames when there is no source (FP32 exports). Frames are BGR uint8, as the runtime's
Predictor takes them.
"""
from __future__ import annotations

import hashlib
import os
from typing import List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from ddrnet.compress.calib import sample
from ddrnet.runtime.imageio import read_image


class FrameSet(NamedTuple):
    frames: List[np.ndarray]  # HxWx3 uint8 BGR
    source: str  # where they come from, for deploy.yaml
    paths: List[str]  # their files (none for synthetic frames)


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
    """Images of the calibration source that calibration did not use; the calibration images when
    none are left; synthetic frames when there is no source (FP32 exports)."""
    used = set(calibration)
    held_out = [p for p in pool if p not in used]
    if held_out:
        paths = sample(held_out, count)
        return FrameSet(read_frames(paths), "{} (not used for calibration)".format(source), paths)
    if calibration:
        paths = sample(list(calibration), count)
        return FrameSet(read_frames(paths), "{} (calibration images: the folder has no others)".format(source), paths)
    return FrameSet(synthetic_frames(count, hw), "synthetic", [])


def train_labels(paths: Sequence[str], root: str, lookup: np.ndarray) -> Optional[List[np.ndarray]]:
    """The labels of Cityscapes train images under `root` as the model's classes (`lookup`: labelIds ->
    class, runtime/labels.py), or None unless every image has its label."""
    from ddrnet.runtime.cityscapes import label_path_for, load_train_ids

    found = [label_path_for(path, root, "train") for path in paths]
    if not paths or not all(os.path.isfile(p) for p in found):
        return None
    return [load_train_ids(p, lookup=lookup) for p in found]
