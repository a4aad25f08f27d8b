"""Structured channel pruning of DDRNet with PaddleSlim (L1-norm or FPGM filter criteria).

PaddleSlim traces the model and groups every tensor whose channels must stay aligned: a conv's
output channels with its BN, the next conv's input channels, and everything added to it (residual
adds, the bilateral fusions high<->low, DAPPM's output + the high branch before the head), so
channels that are summed are pruned together. Two DDRNet-specific points:
- DAPPM's global pool is a mean over H and W (`reduce_mean`), which PaddleSlim 2.6 skips instead of
  following: the BN after it would keep its width while its input shrinks. A channel-preserving
  `reduce_mean` worker is registered (train/compat.py, with the other PaddleSlim internals).
- PaddleSlim has no `concat` worker, so the groups that reach DAPPM's concatenation are left whole
  (at 1/64 resolution they cost little); the last conv of each head (the class logits) is a leaf
  and is never pruned.
Each group keeps a multiple of `channel_align` channels (16 by default, PaddleSlim's own rounding):
onnxruntime's blocked (NCHWc) convolutions and oneDNN's need whole 16-channel blocks on AVX-512.
Measured on 23-slim at 512x1024: 30 % pruning without it left 22/45/90/179/358 channels, the
convolutions fell back to im2col + GEMM and the pruned model was no faster than the full one.

The pruned shapes of every changed tensor are returned (and stored in the checkpoint's state.json),
so `resize_to_shapes` (train/structure.py) rebuilds the same structure on a freshly built model before loading weights.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import paddle.nn as nn

from ddrnet.runtime.errors import DDRNetError
from ddrnet.train import compat
from ddrnet.train.model import count_macs
from ddrnet.train.structure import sync_layer_attrs

CRITERIA = ("l1", "fpgm")
CHANNEL_ALIGN = 16
Shapes = Dict[str, List[int]]

compat.register_channel_preserving_mean()


def check_ratio(ratio: float) -> float:
    if not 0.0 < ratio < 1.0:
        raise DDRNetError("--prune {}: the pruning ratio must be in (0, 1)".format(ratio))
    return ratio


def _pruner(model: nn.Layer, criterion: str, trace_shape: Sequence[int]):
    from paddleslim.dygraph import FPGMFilterPruner, L1NormFilterPruner

    if criterion not in CRITERIA:
        raise DDRNetError("--criterion {}: choose {}".format(criterion, " or ".join(CRITERIA)))
    cls = L1NormFilterPruner if criterion == "l1" else FPGMFilterPruner
    # skip_leaves: convolutions whose output leaves the graph (the class logits) keep their channels
    return cls(model, list(trace_shape), skip_leaves=True)


@contextlib.contextmanager
def _quiet_paddleslim() -> Iterator[None]:
    """PaddleSlim logs every traced leaf and pruned tensor at INFO/WARNING on its own handlers."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("paddleslim")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def tensor_shapes(model: nn.Layer) -> Shapes:
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def prune_model(model: nn.Layer, ratio: float, criterion: str = "l1",
                trace_shape: Sequence[int] = (1, 3, 128, 256), channel_align: int = CHANNEL_ALIGN) -> Shapes:
    """Prune about `ratio` of the output channels of every prunable conv group in place, keeping a
    multiple of `channel_align` (1: exactly `ratio`); returns the new shape of every tensor that
    changed (structured names, as in the state dict)."""
    check_ratio(ratio)
    if channel_align < 1:
        raise DDRNetError("prune.channel_align {}: must be >= 1".format(channel_align))
    before = tensor_shapes(model)
    was_training = model.training
    model.eval()
    with _quiet_paddleslim():
        pruner = _pruner(model, criterion, trace_shape)
        ratios = {c.master_name: ratio for c in pruner.collections}
        if not ratios:
            raise DDRNetError("PaddleSlim found no prunable convolution group in this model")
        if channel_align > 1:
            ratios = compat.round_prune_ratios(pruner, ratios, channel_align)
        pruner.prune_vars(ratios, axis=0)
    _drop_backups(model)
    sync_layer_attrs(model)
    if was_training:
        model.train()
    return {name: shape for name, shape in tensor_shapes(model).items() if before.get(name) != shape}


def _drop_backups(model: nn.Layer) -> None:
    """PaddleSlim keeps the unpruned values as persistable buffers (for `restore`): they would double
    the checkpoint and break loading into a rebuilt model."""
    for layer in model.sublayers(include_self=True):
        compat.drop_buffers(layer, "_backup")


def model_cost(model: nn.Layer, hw: Tuple[int, int] = (1024, 2048)) -> Dict[str, int]:
    """Parameter count and MACs of one forward at `hw`."""
    return {"params": int(sum(int(p.size) for p in model.parameters())),
            "macs": int(count_macs(model, (1, 3, int(hw[0]), int(hw[1])))),
            "macs_input_hw": [int(hw[0]), int(hw[1])]}
