"""Structured channel pruning of DDRNet with PaddleSlim (L1-norm or FPGM filter criteria).

PaddleSlim traces the model and groups every tensor whose channels must stay aligned: a conv's
output channels with its BN, the next conv's input channels, and everything added to it (residual
adds, the bilateral fusions high<->low, DAPPM's output + the high branch before the head), so
channels that are summed are pruned together. Two DDRNet-specific points:
- DAPPM's global pool is a mean over H and W (`reduce_mean`), which PaddleSlim 2.6 skips instead of
  following: the BN after it would keep its width while its input shrinks. A channel-preserving
  `reduce_mean` worker is registered below.
- PaddleSlim has no `concat` worker, so the groups that reach DAPPM's concatenation are left whole
  (at 1/64 resolution they cost little); the last conv of each head (the class logits) is a leaf
  and is never pruned.
Each group keeps a multiple of `channel_align` channels (16 by default, PaddleSlim's own rounding):
onnxruntime's blocked (NCHWc) convolutions and oneDNN's need whole 16-channel blocks on AVX-512.
Measured on 23-slim at 512x1024: 30 % pruning without it left 22/45/90/179/358 channels, the
convolutions fell back to im2col + GEMM and the pruned model was no faster than the full one.

The pruned shapes of every changed tensor are returned (and stored in the checkpoint's state.json),
so `resize_to_shapes` rebuilds the same structure on a freshly built model before loading weights.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn
from paddleslim.prune.prune_worker import PRUNE_WORKER, PruneWorker, UnsupportOpError

from ddrnet.runtime.errors import DDRNetError
from ddrnet.train.model import count_macs

CRITERIA = ("l1", "fpgm")
CHANNEL_ALIGN = 16
Shapes = Dict[str, List[int]]


class reduce_mean(PruneWorker):  # noqa: N801 (PaddleSlim looks workers up by op type)
    """A mean over axes other than the pruned one keeps channels aligned between input and output."""

    def _prune(self, var, pruned_axis, transforms):
        in_var, out_var = self.op.inputs("X")[0], self.op.outputs("Out")[0]
        rank = len(in_var.shape())
        dims = [d % rank for d in self.op.attr("dim")]
        if self.op.attr("reduce_all") or not self.op.attr("keep_dim") or pruned_axis in dims:
            raise UnsupportOpError("reduce_mean over the pruned axis")
        self._visit_and_search(out_var if var == in_var else in_var, pruned_axis, transforms)


if PRUNE_WORKER.get("reduce_mean") is None:
    PRUNE_WORKER.register(reduce_mean)


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
            ratios = pruner._round_to(ratios, dims=0, factor=channel_align)
        pruner.prune_vars(ratios, axis=0)
    _drop_backups(model)
    _sync_layer_attrs(model)
    if was_training:
        model.train()
    return {name: shape for name, shape in tensor_shapes(model).items() if before.get(name) != shape}


def _drop_backups(model: nn.Layer) -> None:
    """PaddleSlim keeps the unpruned values as persistable buffers (for `restore`): they would double
    the checkpoint and break loading into a rebuilt model."""
    for layer in model.sublayers(include_self=True):
        for name in [n for n in layer._buffers if n.endswith("_backup")]:
            del layer._buffers[name]


def _sync_layer_attrs(model: nn.Layer) -> None:
    """Make the layers' channel attributes describe their (pruned) tensors."""
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, nn.Conv2D):
            layer._out_channels = layer.weight.shape[0]
            layer._in_channels = layer.weight.shape[1] * layer._groups
        elif isinstance(layer, nn.BatchNorm2D):
            layer._num_features = layer.weight.shape[0]


def resize_to_shapes(model: nn.Layer, shapes: Shapes) -> None:
    """Give the named tensors of a freshly built model their pruned shapes (values zeroed: load the
    pruned weights afterwards)."""
    tensors = model.state_dict()
    unknown = [name for name in shapes if name not in tensors]
    if unknown:
        raise DDRNetError("pruned shapes name tensors this model lacks (first: {})".format(unknown[0]))
    place = paddle.framework._current_expected_place()
    for name, shape in shapes.items():
        tensors[name].value().get_tensor().set(np.zeros(shape, dtype=np.float32), place)
    _sync_layer_attrs(model)


def model_cost(model: nn.Layer, hw: Tuple[int, int] = (1024, 2048)) -> Dict[str, int]:
    """Parameter count and MACs of one forward at `hw`."""
    return {"params": int(sum(int(p.size) for p in model.parameters())),
            "macs": int(count_macs(model, (1, 3, int(hw[0]), int(hw[1])))),
            "macs_input_hw": [int(hw[0]), int(hw[1])]}
