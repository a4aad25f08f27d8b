"""Labels from low-resolution class scores: argmax of their half-pixel bilinear upsample, computed
exactly but only where it can differ from the low-resolution argmax.

Why: DDRNet's head predicts at 1/8 of the input; upsampling 19 score maps 8x and taking the argmax
over them touches 19 x H x W values and was 22 % (FP32) to 37 % (INT8) of onnxruntime's time on
23-slim (`ddrnet bench --profile`). But bilinear interpolation is a convex combination of the four
neighbouring low-resolution score vectors: where one class is the largest at all four corners it
is the largest everywhere between them. So each 8x8 block between four agreeing corners takes
that label directly, and only the blocks on class boundaries are interpolated, per class, with
fixed weights (the same 64 x 4 matrix for every block).

Same coordinates as Paddle's `interpolate(align_corners=False)` and ONNX Resize `half_pixel`:
source = (destination + 0.5) / scale - 0.5, clamped to the border.
"""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np


def _argmax_leading(scores: np.ndarray) -> np.ndarray:
    """argmax over axis 0 as uint8 by a running maximum (numpy's argmax over a short leading axis
    is several times slower); the first maximal class wins ties, as numpy and onnxruntime do."""
    best = scores[0].copy()
    labels = np.zeros(scores.shape[1:], np.uint8)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        np.maximum(best, scores[k], out=best)
        labels[better] = k
    return labels


def _block_weights(stride: int) -> np.ndarray:
    """[stride^2, 4] bilinear weights of the corners (top-left, bottom-left, top-right,
    bottom-right) for each pixel of a block; with an even stride the block between low-res pixels
    i-1 and i starts at output row i * stride - stride / 2, at fraction (r + 0.5) / stride."""
    f = (np.arange(stride, dtype=np.float64) + 0.5) / stride
    wy, wx = f[:, None], f[None, :]
    corners = [(1 - wy) * (1 - wx), wy * (1 - wx), (1 - wy) * wx, wy * wx]
    return np.stack(corners).reshape(4, stride * stride).T.astype(np.float32)


def _upsample_argmax_even(scores: np.ndarray, stride: int) -> np.ndarray:
    classes, h, w = scores.shape
    coarse = _argmax_leading(scores)
    padded = np.pad(coarse, 1, mode="edge")  # blocks at the border clamp to the edge pixel
    top_left = padded[:-1, :-1]
    agree = (top_left == padded[1:, :-1]) & (top_left == padded[:-1, 1:]) & (top_left == padded[1:, 1:])
    blocks = np.broadcast_to(top_left[:, :, None, None], (h + 1, w + 1, stride, stride)).copy()
    rows, cols = np.nonzero(~agree)
    if rows.size:
        y0, y1 = np.clip(rows - 1, 0, h - 1), np.clip(rows, 0, h - 1)
        x0, x1 = np.clip(cols - 1, 0, w - 1), np.clip(cols, 0, w - 1)
        weights = _block_weights(stride)
        best = labels = None
        for k in range(classes):
            plane = scores[k]
            values = weights @ np.stack([plane[y0, x0], plane[y1, x0], plane[y0, x1], plane[y1, x1]])
            if best is None:
                best, labels = values, np.zeros(values.shape, np.uint8)
            else:
                better = values > best
                np.maximum(best, values, out=best)
                labels[better] = k
        blocks[rows, cols] = labels.T.reshape(-1, stride, stride)
    full = blocks.transpose(0, 2, 1, 3).reshape((h + 1) * stride, (w + 1) * stride)
    half = stride // 2
    return full[half:half + h * stride, half:half + w * stride]


def upsample_argmax(scores: np.ndarray, out_hw: Tuple[int, int]) -> np.ndarray:
    """[C, h, w] float scores -> [H, W] uint8 labels of their bilinear upsample to `out_hw`."""
    classes, h, w = scores.shape
    if classes > 256:
        raise ValueError("at most 256 classes fit uint8 labels, got {}".format(classes))
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    height, width = out_hw
    stride = height // h
    if stride >= 2 and stride % 2 == 0 and (height, width) == (h * stride, w * stride):
        return _upsample_argmax_even(scores, stride)
    # any other ratio (odd input sizes): upsample every class, OpenCV's bilinear is half-pixel too
    up = np.stack([cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR) for plane in scores])
    return _argmax_leading(up)
