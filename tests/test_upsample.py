"""The runtime's exact upsample + argmax of low-resolution scores (output op lowres_logits),
checked against onnxruntime's Resize (linear, half_pixel) + ArgMax: the graph it replaces."""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ddrnet.runtime.upsample import upsample_argmax


def resize_argmax_onnx(scores: np.ndarray, out_hw) -> np.ndarray:
    """onnxruntime: Resize [1, C, h, w] -> [1, C, H, W] (bilinear, half-pixel), ArgMax over C."""
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, scores.shape[0], out_hw[0], out_hw[1]])
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "", "sizes"], ["up"], mode="linear",
                          coordinate_transformation_mode="half_pixel"),
         helper.make_node("ArgMax", ["up"], ["labels"], axis=1, keepdims=0)],
        "resize_argmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1] + list(scores.shape))],
        [helper.make_tensor_value_info("labels", TensorProto.INT64, None)], [sizes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": scores[None]})[0][0]


def smooth_scores(rng: np.random.Generator, classes: int, hw, blob: int = 4) -> np.ndarray:
    """Score maps with regions, like a segmentation head's: smooth noise upsampled from a coarse grid."""
    coarse = rng.normal(0, 3, (classes, max(1, hw[0] // blob), max(1, hw[1] // blob))).astype(np.float32)
    return np.stack([cv2.resize(c, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC) for c in coarse])


@pytest.mark.parametrize("classes, hw, stride", [(19, (16, 32), 8), (19, (9, 13), 8), (5, (12, 12), 4),
                                                 (19, (2, 7), 8), (2, (10, 20), 2)])
def test_even_stride_matches_onnxruntime_exactly(classes, hw, stride):
    rng = np.random.default_rng(classes + hw[0])
    scores = smooth_scores(rng, classes, hw, blob=1 if min(hw) < 4 else 4)
    out_hw = (hw[0] * stride, hw[1] * stride)
    labels = upsample_argmax(scores, out_hw)
    assert labels.dtype == np.uint8 and labels.shape == out_hw
    expected = resize_argmax_onnx(scores, out_hw)
    assert (labels == expected).all()
    # and the boundary blocks did the work: plain nearest upsampling of the coarse argmax differs
    nearest = np.repeat(np.repeat(scores.argmax(0), stride, 0), stride, 1)
    assert classes == 2 or (nearest != expected).any()


@pytest.mark.parametrize("hw, out_hw", [((16, 32), (125, 251)), ((8, 8), (24, 24)), ((10, 10), (40, 35))])
def test_other_ratios_fall_back_to_full_upsampling(hw, out_hw):
    scores = smooth_scores(np.random.default_rng(1), 19, hw)
    labels = upsample_argmax(scores, out_hw)
    agreement = (labels == resize_argmax_onnx(scores, out_hw)).mean()
    assert labels.shape == out_hw and agreement > 0.999  # OpenCV's and onnxruntime's rounding may differ


def test_a_class_best_at_no_corner_still_wins_between_them():
    """Class 2 is second at every low-res pixel but first where classes 0 and 1 mix half and half: the
    candidate pruning must keep it (it is beaten at every corner, but never by one class at all four)."""
    scores = np.zeros((3, 2, 2), np.float32)
    scores[0, :, 0], scores[1, :, 0] = 10, 0   # left column: class 0 leads
    scores[0, :, 1], scores[1, :, 1] = 0, 10   # right column: class 1 leads
    scores[2] = 9
    labels = upsample_argmax(scores, (16, 16))
    assert (labels == resize_argmax_onnx(scores, (16, 16))).all()
    assert set(np.unique(labels)) == {0, 1, 2}


def test_threads_split_the_block_rows_and_agree(monkeypatch):
    """Enough blocks for two threads: two bands of block rows, covering all of them, on the pool's threads,
    and the same labels as one thread."""
    import threading

    from ddrnet.runtime import upsample

    monkeypatch.setattr(upsample, "MIN_BLOCKS_PER_THREAD", 16)
    scores = smooth_scores(np.random.default_rng(3), 19, (24, 40), blob=2)
    one = upsample_argmax(scores, (192, 320), threads=1)
    calls, real = [], upsample._block_rows

    def spy(pixels, coarse, top_left, agree, first, stop, stride, out):
        calls.append((first, stop, threading.current_thread().name))
        return real(pixels, coarse, top_left, agree, first, stop, stride, out)

    monkeypatch.setattr(upsample, "_block_rows", spy)
    two = upsample_argmax(scores, (192, 320), threads=2)
    assert sorted(c[:2] for c in calls) == [(0, 12), (12, 25)]  # 25 block rows: one more than the 24 rows
    assert all(name.startswith("upsample") for _, _, name in calls)
    assert (one == two).all() and (two == resize_argmax_onnx(scores, (192, 320))).all()


def test_tied_scores_match_onnxruntime():
    """Scores on a coarse grid (many exact ties, as an INT8 model's dequantized output has): the candidate
    test keeps tied classes and the first maximal class wins, as in onnxruntime's ArgMax."""
    scores = np.round(smooth_scores(np.random.default_rng(7), 19, (16, 32), blob=2) * 2) / 2
    assert (upsample_argmax(scores, (128, 256)) == resize_argmax_onnx(scores, (128, 256))).all()
