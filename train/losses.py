"""Losses: OHEM cross-entropy as in PaddleSeg's OhemCrossEntropyLoss (the reference recipe)."""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ddrnet.runtime.labels import IGNORE_INDEX


class OhemCrossEntropyLoss(nn.Layer):
    """Cross-entropy over the hard pixels: those whose probability of the true class is below `thresh`,
    and at least the `min_kept` hardest ones (per batch), ignoring `ignore_index`."""

    def __init__(self, thresh: float = 0.7, min_kept: int = 10000, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.thresh = thresh
        self.min_kept = min_kept
        self.ignore_index = ignore_index

    def forward(self, logits: paddle.Tensor, label: paddle.Tensor) -> paddle.Tensor:
        n, c, h, w = logits.shape
        label = label.reshape([-1]).astype("int64")
        valid = label != self.ignore_index
        num_valid = int(valid.astype("int32").sum())
        flat = logits.transpose([0, 2, 3, 1]).reshape([-1, c])
        safe_label = paddle.where(valid, label, paddle.zeros_like(label))
        pixel_loss = F.cross_entropy(flat, safe_label.unsqueeze(1), reduction="none").reshape([-1])
        if num_valid == 0:
            return pixel_loss.sum() * 0.0
        with paddle.no_grad():
            true_prob = paddle.exp(-pixel_loss)  # softmax probability of the true class
            true_prob = paddle.where(valid, true_prob, paddle.ones_like(true_prob))
            threshold = self.thresh
            if self.min_kept > 0:
                k = min(num_valid, self.min_kept)
                kth = float(paddle.sort(true_prob)[k - 1])
                threshold = max(threshold, kth)
            keep = valid & (true_prob <= threshold)
        keep_f = keep.astype(pixel_loss.dtype)
        return (pixel_loss * keep_f).sum() / paddle.clip(keep_f.sum(), min=1.0)


def build_loss(cfg: dict) -> nn.Layer:
    kind = cfg.get("type", "OhemCrossEntropyLoss")
    args = {k: v for k, v in cfg.items() if k != "type"}
    if kind == "OhemCrossEntropyLoss":
        return OhemCrossEntropyLoss(**args)
    if kind == "CrossEntropyLoss":
        return nn.CrossEntropyLoss(ignore_index=args.get("ignore_index", IGNORE_INDEX), axis=1)
    from ddrnet.runtime.errors import DDRNetError

    raise DDRNetError("unknown loss type {!r} (OhemCrossEntropyLoss, CrossEntropyLoss)".format(kind))
