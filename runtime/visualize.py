"""Masks to pictures: class colours through a 256-entry lookup table (cv2.LUT), no per-pixel loops."""
from __future__ import annotations

import cv2
import numpy as np

from ddrnet.runtime.errors import DDRNetError


def _bgr_lut(palette) -> np.ndarray:
    """[256, 1, 3] BGR table; ids past the palette (e.g. 255 ignore) draw black."""
    rgb = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut = np.zeros((256, 1, 3), dtype=np.uint8)
    lut[:len(rgb), 0] = rgb[:, ::-1]
    return lut


def colorize(mask: np.ndarray, palette) -> np.ndarray:
    """HxW uint8 class mask -> HxWx3 BGR image with the palette's (RGB) class colours."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise DDRNetError("colorize: expected an HxW uint8 mask, got {} {}".format(mask.shape, mask.dtype))
    # cv2.LUT maps a 3-channel image through a 3-channel table: one pass, several times faster
    # than numpy fancy indexing on large masks
    return cv2.LUT(cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR), _bgr_lut(palette))


def overlay(bgr: np.ndarray, mask: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised mask over the frame: (1 - alpha) * frame + alpha * colours."""
    if bgr.shape[:2] != mask.shape[:2]:
        raise DDRNetError("overlay: frame is {}x{} but mask is {}x{}".format(
            bgr.shape[0], bgr.shape[1], mask.shape[0], mask.shape[1]))
    if not 0.0 <= alpha <= 1.0:
        raise DDRNetError("overlay: alpha must be in [0, 1], got {}".format(alpha))
    return cv2.addWeighted(bgr, 1.0 - alpha, colorize(mask, palette), alpha, 0.0)
