"""Labels from low-resolution class scores: argmax of their half-pixel bilinear upsample, computed
exactly but only where it can differ from the low-resolution argmax.

Why: DDRNet's head predicts at 1/8 of the input; upsampling 19 score maps 8x and taking the argmax
over them touches 19 x H x W values and was 22 % (FP32) to 37 % (INT8) of onnxruntime's time on
23-slim (`ddrnet bench --profile`). But bilinear interpolation is a convex combination of the four
neighbouring low-resolution score vectors: where one class is the largest at all four corners it
is the largest everywhere between them. So each 8x8 block between four agreeing corners takes
that label directly, and only the blocks on class boundaries are interpolated, with fixed weights
(the same 64 x 4 matrix for every block), and there only for the classes that can still win: a
class that one other class beats at all four corners loses everywhere in the block.

Same coordinates as Paddle's `interpolate(align_corners=False)` and ONNX Resize `half_pixel`:
source = (destination + 0.5) / scale - 0.5, clamped to the border.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
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


def _candidates(corners: np.ndarray, leaders: np.ndarray) -> np.ndarray:
    """[n, C] True for the classes that can still win somewhere in a block: not beaten at all four corners by
    one corner's best class (ties stay candidates). `corners`: [4, n, C] scores; `leaders`: [4, n] each
    corner's best class. One [n, C] comparison at a time, written in place: the [4, 4, n, C] comparison in
    one expression took 1.9x as long (16k boundary blocks of a 1024x2048 frame: 11.9 against 6.3 ms)."""
    count, n, classes = corners.shape
    flat = corners.reshape(count, n * classes)
    row_start = np.arange(n) * classes
    candidate = np.ones((n, classes), bool)
    beaten, below = np.empty((n, classes), bool), np.empty((n, classes), bool)
    for leader in leaders:
        lead = flat[:, row_start + leader]  # [4, n]: this leader's score at every corner
        np.less(corners[0], lead[0][:, None], out=beaten)
        for corner in range(1, count):
            beaten &= np.less(corners[corner], lead[corner][:, None], out=below)
        candidate &= np.logical_not(beaten, out=beaten)
    return candidate


def _boundary_labels(pixels: np.ndarray, coarse: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                     stride: int) -> np.ndarray:
    """[n, stride^2] labels of the blocks whose corners are the low-res pixels (rows-1 | rows, cols-1 | cols),
    clamped to the border. Only candidate classes are interpolated: the bilinear value is a convex combination
    of the four corners' scores, so a class that another class beats at all four corners loses everywhere in
    the block. Testing each class against the four corners' own best classes leaves about 2-3 of 19.
    `pixels`: the scores as [h, w, C], so that a corner's scores are one row; `coarse`: their argmax [h, w]."""
    h, w = pixels.shape[:2]
    ys = np.clip(np.stack([rows - 1, rows]), 0, h - 1)
    xs = np.clip(np.stack([cols - 1, cols]), 0, w - 1)
    # [4, n, C], in _block_weights' order: top-left, bottom-left, top-right, bottom-right
    corner_ys, corner_xs = ys[[0, 1, 0, 1]], xs[[0, 0, 1, 1]]
    corners = pixels[corner_ys, corner_xs]
    candidate = _candidates(corners, coarse[corner_ys, corner_xs])  # a corner's best class: the low-res argmax
    counts = candidate.sum(axis=1)
    weights = _block_weights(stride).T  # [4, stride^2]
    labels = np.empty((rows.size, stride * stride), np.uint8)
    for count in np.unique(counts):  # blocks with the same number of candidates together: no padding
        members = np.flatnonzero(counts == count)
        classes = np.nonzero(candidate[members])[1].reshape(-1, count)  # ascending: a tie keeps the lower class
        # [m, count, stride^2]; einsum, not matmul: OpenBLAS would start its own threads beside ours
        values = np.einsum("cmk,cp->mkp", corners[:, members[:, None], classes], weights)
        classes = classes.astype(np.uint8)
        best, label = values[:, 0], np.repeat(classes[:, :1], stride * stride, axis=1)
        for k in range(1, count):
            better = (values[:, k] > best).view(np.uint8)
            label += better * (classes[:, k:k + 1] - label)  # uint8 wraps: class k where better, else label
            if k + 1 < count:
                best = np.maximum(best, values[:, k])
        labels[members] = label
    return labels


# below this many 8x8 blocks per thread, handing work to a thread costs more than it saves
MIN_BLOCKS_PER_THREAD = 2048


@functools.lru_cache(maxsize=None)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="upsample")


def _block_rows(pixels: np.ndarray, coarse: np.ndarray, top_left: np.ndarray, agree: np.ndarray, first: int,
                stop: int, stride: int, out: np.ndarray) -> None:
    """Labels of block rows first..stop-1 into their `stride` rows each of `out`, the label image of all
    (h+1) x (w+1) blocks (it starts half a block above and left of the picture)."""
    # the band as [block row, pixel row, block column, pixel column]: a view of `out`
    band = out[first * stride:stop * stride].reshape(stop - first, stride, top_left.shape[1], stride)
    band[:] = top_left[first:stop, None, :, None]
    rows, cols = np.nonzero(~agree[first:stop])
    if rows.size:
        labels = _boundary_labels(pixels, coarse, rows + first, cols, stride)
        band[rows, :, cols] = labels.reshape(-1, stride, stride)


def _upsample_argmax_even(scores: np.ndarray, stride: int, threads: int) -> np.ndarray:
    h, w = scores.shape[1:]
    coarse = _argmax_leading(scores)
    padded = np.pad(coarse, 1, mode="edge")  # blocks at the border clamp to the edge pixel
    top_left = padded[:-1, :-1]
    agree = (top_left == padded[1:, :-1]) & (top_left == padded[:-1, 1:]) & (top_left == padded[1:, 1:])
    pixels = np.ascontiguousarray(scores.transpose(1, 2, 0))  # [h, w, C]: a corner's scores in one row
    full = np.empty(((h + 1) * stride, (w + 1) * stride), np.uint8)
    # bands of block rows on up to `threads` threads (numpy's indexing, ufuncs and copies release the GIL)
    parts = max(1, min(threads, (h + 1) * (w + 1) // MIN_BLOCKS_PER_THREAD))
    bounds = np.linspace(0, h + 1, parts + 1).astype(int)
    bands = list(zip(bounds[:-1], bounds[1:]))
    if parts == 1:
        _block_rows(pixels, coarse, top_left, agree, 0, h + 1, stride, full)
    else:
        list(_pool(parts).map(
            lambda band: _block_rows(pixels, coarse, top_left, agree, band[0], band[1], stride, full), bands))
    half = stride // 2
    return full[half:half + h * stride, half:half + w * stride]


def upsample_argmax(scores: np.ndarray, out_hw: Tuple[int, int], threads: int = 1) -> np.ndarray:
    """[C, h, w] float scores -> [H, W] uint8 labels of their bilinear upsample to `out_hw`, on up to
    `threads` threads."""
    classes, h, w = scores.shape
    if classes > 256:
        raise ValueError("at most 256 classes fit uint8 labels, got {}".format(classes))
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    height, width = out_hw
    stride = height // h
    if stride >= 2 and stride % 2 == 0 and (height, width) == (h * stride, w * stride):
        return _upsample_argmax_even(scores, stride, threads)
    # any other ratio (odd input sizes): upsample every class, OpenCV's bilinear is half-pixel too
    up = np.stack([cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR) for plane in scores])
    return _argmax_leading(up)
