"""Fold BatchNorm into the convolution before it, for the true Conv->BN pairs of DDRNet only.

PaddleSlim 2.6's `fuse_conv_bn=True` does nothing, so QAT and PTQ would otherwise quantize the
un-folded weights and leave a float BN between the Q/DQ pairs. The true pairs are the `ConvBN` /
`ConvBNReLU` layers (`_conv`, `_batch_norm`) and the residual `downsample` Sequentials (conv, BN).
DAPPM (`spp.*`) and the heads are pre-activation (BN -> ReLU -> conv): their BN follows another op,
not a conv, and must stay, so pairs are found by structure, never by "a conv followed by a BN in
layer order".
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import paddle
import paddle.nn as nn

from ddrnet.train.model import ConvBN

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
        scale = bn.weight / paddle.sqrt(bn._variance + bn._epsilon)
        bias = conv.bias if conv.bias is not None else paddle.zeros([conv.weight.shape[0]], conv.weight.dtype)
        new_bias = (bias - bn._mean) * scale + bn.bias
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
        fold_conv_bn(parent._sub_layers[conv_key], parent._sub_layers[bn_key])
        parent._sub_layers[bn_key] = nn.Identity()
        folded.append(name)
    return folded
