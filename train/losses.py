"""Losses: OHEM cross-entropy as in PaddleSeg's OhemCrossEntropyLoss (the reference recipe)."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

from ddrnet.runtime.labels import IGNORE_INDEX


def ohem_numpy(logits: np.ndarray, label: np.ndarray, thresh: float, min_kept: int, ignore_index: int
               ) -> Tuple[float, np.ndarray]:
    """OhemCrossEntropyLoss in numpy: (loss, its gradient with respect to the logits)."""
    n, c, h, w = logits.shape
    x = logits.reshape(n, c, h * w)
    label = label.reshape(n, 1, h * w).astype(np.int64)
    valid = label != ignore_index
    safe = np.where(valid, label, 0)
    top = x.max(axis=1, keepdims=True)
    exp = np.subtract(x, top)  # the one score-sized temporary; it becomes the gradient below
    np.exp(exp, out=exp)
    total = exp.sum(axis=1, keepdims=True)
    pixel_loss = np.log(total) + top - np.take_along_axis(x, safe, axis=1)  # [n, 1, hw]
    keep = valid
    num_valid = int(valid.sum())
    if 0 < min_kept < num_valid:
        prob = np.exp(-pixel_loss) + ~valid  # true-class probability; ignored pixels above 1
        kth = np.partition(prob.ravel(), min_kept - 1)[min_kept - 1]
        keep = valid & (prob < max(thresh, kth))
    weight = keep.astype(np.float32) / np.float32(keep.sum() + OhemCrossEntropyLoss.EPS * keep.size)
    loss = float((pixel_loss * weight).sum(dtype=np.float64))
    grad = exp  # softmax, minus one at the true class, times each pixel's weight
    grad /= total
    np.put_along_axis(grad, safe, np.take_along_axis(grad, safe, axis=1) - 1.0, axis=1)
    grad *= weight
    return loss, grad.reshape(n, c, h, w)


class _NumpyOhem(PyLayer):
    @staticmethod
    def forward(ctx, logits, label, thresh, min_kept, ignore_index):
        loss, ctx.grad = ohem_numpy(logits.numpy(), label, thresh, min_kept, ignore_index)
        return paddle.to_tensor(np.float32(loss))

    @staticmethod
    def backward(ctx, grad_loss):
        scale = float(grad_loss)  # 1 for a loss of coefficient 1: no score-sized product
        return paddle.to_tensor(ctx.grad if scale == 1.0 else ctx.grad * np.float32(scale))


class OhemCrossEntropyLoss(nn.Layer):
    """PaddleSeg's OhemCrossEntropyLoss, the same numbers (tests/test_train.py compares them): cross-entropy
    over the pixels whose softmax probability of the true class is below `thresh`, raised to the
    `min_kept`-th smallest probability when fewer pixels than that are below it; `ignore_index` pixels
    never count. As in PaddleSeg, the selection applies only when more than `min_kept` pixels are valid
    and `min_kept` > 0 (min_kept 0 is plain cross-entropy), a pixel is kept when its probability is
    strictly below the threshold, and the mean divides by (kept fraction + 1e-5).

    On CPU the loss and its gradient are computed in numpy (one pass, `ohem_numpy`): Paddle's CPU
    softmax-cross-entropy over 19 x 256 x 256 x 8 scores and PaddleSeg's argsort took 12-15 % of a
    23-slim training step, numpy needs a quarter of that. Elsewhere (GPU, AMP) Paddle's own ops."""

    EPS = 1e-5

    def __init__(self, thresh: float = 0.7, min_kept: int = 10000, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.thresh = thresh
        self.min_kept = min_kept
        self.ignore_index = ignore_index

    def forward(self, logits: paddle.Tensor, label: paddle.Tensor) -> paddle.Tensor:
        if paddle.in_dynamic_mode() and logits.place.is_cpu_place() and logits.dtype == paddle.float32:
            return _NumpyOhem.apply(logits, label.numpy(), self.thresh, self.min_kept, self.ignore_index)
        return self.paddle_ops(logits, label)

    def paddle_ops(self, logits: paddle.Tensor, label: paddle.Tensor) -> paddle.Tensor:
        """The same loss from Paddle operators (per-pixel cross-entropy, the k-th smallest probability
        by topk rather than PaddleSeg's full argsort)."""
        n, _, h, w = logits.shape
        label = label.reshape([n, 1, h, w]).astype("int64")
        valid = label != self.ignore_index
        safe_label = paddle.where(valid, label, paddle.zeros_like(label))
        pixel_loss = F.cross_entropy(logits, safe_label, axis=1, reduction="none")  # [n, 1, h, w]
        keep = valid
        num_valid = int(valid.astype("int64").sum())
        if 0 < self.min_kept < num_valid:
            with paddle.no_grad():
                # probability of the true class; ignored pixels pushed above 1, out of every selection
                prob = paddle.exp(-pixel_loss) + (~valid).astype(pixel_loss.dtype)
                kth = float(paddle.topk(prob.reshape([-1]), self.min_kept, largest=False)[0][-1])
                keep = valid & (prob < max(self.thresh, kth))
        keep_f = keep.astype(pixel_loss.dtype)
        return (pixel_loss * keep_f).mean() / (keep_f.mean() + self.EPS)


def build_loss(cfg: dict) -> nn.Layer:
    kind = cfg.get("type", "OhemCrossEntropyLoss")
    args = {k: v for k, v in cfg.items() if k != "type"}
    if kind == "OhemCrossEntropyLoss":
        return OhemCrossEntropyLoss(**args)
    if kind == "CrossEntropyLoss":
        return nn.CrossEntropyLoss(ignore_index=args.get("ignore_index", IGNORE_INDEX), axis=1)
    from ddrnet.runtime.errors import DDRNetError

    raise DDRNetError("unknown loss type {!r} (OhemCrossEntropyLoss, CrossEntropyLoss)".format(kind))
