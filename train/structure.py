"""The structure a compressed checkpoint describes, rebuilt on a freshly built DDRNet before its
weights load: pruned tensor shapes, BatchNorm folded into the convolutions, quantization-aware
fake quantization (train/quant.py). `ddrnet compress` makes these changes; every loader
(train/checkpoint.load_checkpoint) replays them from state.json's `compression` section:
  prune:   {shapes: {tensor: shape}, ratio, criterion, ...}   pruned tensor shapes
  fold_bn: true                                               true Conv->BN pairs folded
  qat:     {config, points, unsigned_points, ...}             quantization-aware (implies fold_bn)

BN folding, for the true Conv->BN pairs of DDRNet only: PaddleSlim 2.6's `fuse_conv_bn=True` does
nothing, so quantization would otherwise see the un-folded weights and leave a float BN between the
Q/DQ pairs. The true pairs are the `ConvBN` / `ConvBNReLU` layers (`_conv`, `_batch_norm`) and the
residual `downsample` Sequentials (conv, BN). DAPPM (`spp.*`) and the heads are pre-activation
(BN -> ReLU -> conv): their BN follows another op, not a conv, and must stay, so pairs are found by
structure, never by "a conv followed by a BN in layer order".
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from ddrnet.runtime.errors import DDRNetError
from ddrnet.train import compat
from ddrnet.train.model import ConvBN, DualResNet, build_model
from ddrnet.train.quant import quantize_model

Shapes = Dict[str, List[int]]
# (parent layer, conv attribute, BN attribute) of one true pair
Pair = Tuple[nn.Layer, str, str]


def conv_bn_pairs(model: nn.Layer) -> Iterator[Tuple[str, Pair]]:
    """(name, pair) for every unfolded Conv->BN pair of a DDRNet."""
    for name, layer in model.named_sublayers(include_self=True):
        if isinstance(layer, ConvBN) and isinstance(layer._batch_norm, nn.BatchNorm2D):
            yield name, (layer, "_conv", "_batch_norm")
        elif (name.split(".")[-1] == "downsample" and isinstance(layer, nn.Sequential)
              and isinstance(layer[0], nn.Conv2D) and isinstance(layer[1], nn.BatchNorm2D)):
            yield name, (layer, "0", "1")


def fold_conv_bn(conv: nn.Conv2D, bn: nn.BatchNorm2D) -> None:
    """conv <- BN(conv) in eval semantics: w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta."""
    with paddle.no_grad():
        mean, variance, epsilon = compat.bn_statistics(bn)
        scale = bn.weight / paddle.sqrt(variance + epsilon)
        bias = conv.bias if conv.bias is not None else paddle.zeros([conv.weight.shape[0]], conv.weight.dtype)
        new_bias = (bias - mean) * scale + bn.bias
        conv.weight.set_value(conv.weight * scale.reshape([-1, 1, 1, 1]))
        if conv.bias is None:
            conv.bias = conv.create_parameter([conv.weight.shape[0]], is_bias=True)
        conv.bias.set_value(new_bias)


def fold_bn(model: nn.Layer) -> List[str]:
    """Fold every true Conv->BN pair in place (the BN becomes an Identity); returns the pair names.

    The folded model computes what the original computes in eval mode. Idempotent: folded pairs
    have no BN left and are skipped.
    """
    folded = []
    for name, (parent, conv_key, bn_key) in list(conv_bn_pairs(model)):
        fold_conv_bn(compat.get_sublayer(parent, conv_key), compat.get_sublayer(parent, bn_key))
        compat.set_sublayer(parent, bn_key, nn.Identity())
        folded.append(name)
    return folded


def sync_layer_attrs(model: nn.Layer) -> None:
    """Make the layers' channel attributes describe their (pruned) tensors."""
    for layer in model.sublayers(include_self=True):
        compat.sync_channel_attrs(layer)


def resize_to_shapes(model: nn.Layer, shapes: Shapes) -> None:
    """Give the named tensors of a freshly built model their pruned shapes (values zeroed: load the
    pruned weights afterwards)."""
    tensors = model.state_dict()
    unknown = [name for name in shapes if name not in tensors]
    if unknown:
        raise DDRNetError("pruned shapes name tensors this model lacks (first: {})".format(unknown[0]))
    for name, shape in shapes.items():
        compat.set_tensor(tensors[name], np.zeros(shape, dtype=np.float32))
    sync_layer_attrs(model)


def build_compressed(meta: dict, compression: dict) -> DualResNet:
    """A freshly built model with the structure `compression` describes (weights not loaded)."""
    model = build_model(**meta)
    if compression.get("prune"):
        resize_to_shapes(model, compression["prune"]["shapes"])
    if compression.get("fold_bn") or compression.get("qat"):
        fold_bn(model)
    qat = compression.get("qat")
    if qat:
        if "points" not in qat:
            raise DDRNetError("quantization-aware checkpoint of an older ddrnet (PaddleSlim conv wrappers, "
                              "no quantization points): re-run `ddrnet compress --qat` on its FP32 source")
        config = qat.get("config") or {}
        quantize_model(model, config.get("weight_quantize_type", "channel_wise_abs_max"),
                       float(config.get("moving_rate", 0.9)), config.get("relu_outputs", "unsigned") == "unsigned",
                       expected=qat)
    return model
