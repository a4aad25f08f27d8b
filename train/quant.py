"""Quantization-aware structure of a DDRNet: fake quantization on exactly the tensors the deployed
INT8 graph quantizes, one quantizer per tensor.

The INT8 graphs the exporter writes (export/onnx_int8.py) keep every tensor between integer kernels
8-bit: each convolution's input and output, each residual add's output, the inputs of DAPPM's and
the head's pre-activation BatchNorms (they run as depthwise convolutions there, so those catch the
pooled, concatenated and upsampled-and-added tensors). A quantizer belongs to a tensor, not to the
layer that reads it: a tensor read by two convolutions and an add is rounded once, with one scale,
as in the deployed graph. Upsampling (Resize) and the fusion adds that feed a ReLU and a layer run
in float on dequantized values, here and there; a ReLU keeps its input's grid (its output needs no
quantizer of its own).

Placement (a "point" is `<layer path>:in` or `<layer path>:out`):
  in:  every Conv2D, BatchNorm2D left after BN folding, residual block, DAPPM and head;
  out: every Conv2D (the ReLU's output for the conv of a ConvBNReLU) and every residual block.
A point whose tensor already carries a quantizer (e.g. a block's input that is the previous block's
output) gets none. The points are found by one eval-mode forward on a small image (`quantize_model`),
in execution order, so a rebuilt checkpoint has the same points; the list is saved in state.json.

Quantizers (`ActivationQuantizer`): 8-bit per tensor with QuantizeLinear's rounding and saturation,
range = moving average of the batch's abs max. A tensor that cannot be negative (a ReLU's output, or
a pool of one) is unsigned: 256 steps over [0, range], as onnxruntime's uint8 with zero point 0 (the
form that folds the ReLU into the quantization: a signed scale there would leave 32 convolutions in
float, measured) and oneDNN's u8 (Paddle Inference INT8) store it. Any other tensor is symmetric:
steps of range / 127 over [-128, 127], int8 with zero point 0 or uint8 with 128. TensorRT has no
uint8: it stores an unsigned tensor at range / 127 (half the resolution), an approximation the
export's parity check measures; QAT for TensorRT (`unsigned_relu=False`, config `qat.quant.relu_outputs:
signed`) keeps every tensor symmetric, which TensorRT stores exactly (and onnxruntime then lets a ReLU
output run past its range, up to 255 steps, where QAT clipped it at 127). Weights: symmetric 8-bit per output channel (abs max, recomputed
from the weights at every step: Paddle's QuantizedConv2D).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import paddle
import paddle.nn as nn

from ddrnet.runtime.errors import DDRNetError
from ddrnet.train import compat
from ddrnet.train.model import DAPPM, BasicBlock, Bottleneck, ConvBNReLU, DDRNetHead, DualResNet, GlobalAvgPool

QUANT_BITS = 8
QMAX = 2 ** (QUANT_BITS - 1) - 1  # 127
DISCOVERY_HW = (128, 128)  # the smallest size every DDRNet stage (down to 1/64) handles
POINTS_LAYER = "quant_points"
# besides the convolutions (Conv2D, or its weight-quantized wrapper)
INPUT_TYPES = (nn.BatchNorm2D, BasicBlock, Bottleneck, DAPPM, DDRNetHead)
OUTPUT_TYPES = (ConvBNReLU, BasicBlock, Bottleneck)
POOL_TYPES = (nn.AvgPool2D, GlobalAvgPool)  # non-negative in, non-negative out


def grid(unsigned: bool) -> Tuple[int, int, int]:
    """(steps per range, lowest and highest quantized value) of a quantizer."""
    return (2 * QMAX + 1, 0, 2 * QMAX + 1) if unsigned else (QMAX, -QMAX - 1, QMAX)


class ActivationQuantizer(nn.Layer):
    """Per-tensor fake quantization as QuantizeLinear -> DequantizeLinear computes it:
    q = clip(round(x / step), low, high), step = range / steps (`grid`); straight-through gradient.
    The range is a moving average of the batch abs max (started from the first batch). Paddle's own
    fake-quant op clips at -127 where every deployed QuantizeLinear goes to -128, and has no unsigned
    form, so it would not compute what is deployed. In a static program (export) it is a
    quantize_linear / dequantize_linear pair with the range as its scale (what oneDNN reads)."""

    def __init__(self, moving_rate: float, unsigned: bool = False):
        super().__init__()
        self._moving_rate = moving_rate
        self.unsigned = unsigned
        self.range = self.create_parameter([1], default_initializer=nn.initializer.Constant(0.0))
        self.state = self.create_parameter([1], default_initializer=nn.initializer.Constant(0.0))
        self.accum = self.create_parameter([1], default_initializer=nn.initializer.Constant(0.0))
        self.zero_point = self.create_parameter([1], dtype="int32", default_initializer=nn.initializer.Constant(0))
        for param in (self.range, self.state, self.accum, self.zero_point):
            param.stop_gradient = True
            param.trainable = False

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not paddle.in_dynamic_mode():
            return compat.append_quantize_dequantize(x, self.range, self.zero_point, QUANT_BITS)
        if self.training:
            with paddle.no_grad():
                self.state.set_value(self._moving_rate * self.state + 1.0)
                self.accum.set_value(self._moving_rate * self.accum + paddle.max(paddle.abs(x)))
                self.range.set_value(self.accum / self.state)
        steps, low, high = grid(self.unsigned)
        step = paddle.clip(self.range, min=1e-8) / steps
        q = paddle.clip(paddle.round(x / step), low, high)
        return x + (q * step - x).detach()


class QuantPoints(nn.Layer):
    """The activation quantizers of a model (a sublayer, so they are saved and switch train/eval
    with it) and the per-forward record of which tensors already sit on a quantization grid."""

    def __init__(self, moving_rate: float):
        super().__init__()
        self.keys: List[str] = []
        self.quantizers = nn.LayerList()
        self._moving_rate = moving_rate
        self._index: Dict[str, int] = {}
        self._discovered: Optional[List[Tuple[str, bool]]] = None
        self.reset()

    def build(self, keys: List[str], unsigned: List[str]) -> None:
        self.keys = list(keys)
        self.quantizers = nn.LayerList([ActivationQuantizer(self._moving_rate, key in unsigned) for key in keys])
        self._index = {key: i for i, key in enumerate(keys)}

    def reset(self) -> None:
        # id -> (tensor, point); the tensors are held so that their ids cannot be reused within a forward
        self._on_grid: Dict[int, Tuple[paddle.Tensor, str]] = {}
        self._quantized_from: Dict[int, Tuple[paddle.Tensor, paddle.Tensor]] = {}
        self._non_negative: Dict[int, paddle.Tensor] = {}

    def range_of(self, key: str) -> Tuple[float, bool]:
        """(learned abs-max range, unsigned) of a point (deployed scale: range / grid(unsigned)[0])."""
        quantizer = self.quantizers[self._index[key]]
        return float(quantizer.range.numpy()[0]), quantizer.unsigned

    def mark_non_negative(self, out: paddle.Tensor, source: Optional[paddle.Tensor] = None) -> None:
        """`out` cannot be negative (a ReLU's output; with `source`, a pool of a non-negative tensor).
        Only discovery needs to know (it makes such points unsigned)."""
        if self._discovered is not None and (source is None or id(source) in self._non_negative):
            self._non_negative[id(out)] = out

    def quantize(self, key: str, x: paddle.Tensor) -> paddle.Tensor:
        if id(x) in self._on_grid:
            return x
        if id(x) in self._quantized_from:  # a second reader of the same tensor: the same rounding
            return self._quantized_from[id(x)][1]
        if self._discovered is not None:
            self._discovered.append((key, id(x) in self._non_negative))
            self._on_grid[id(x)] = (x, key)
            return x
        if key not in self._index:  # only in training-only parts (the aux head): not deployed
            return x
        out = self.quantizers[self._index[key]](x)
        self._on_grid[id(out)] = (out, key)
        self._quantized_from[id(x)] = (x, out)
        return out

    def relu(self, x: paddle.Tensor, out: paddle.Tensor) -> None:
        """A ReLU's output is non-negative, and a ReLU of a quantized tensor stays on its grid."""
        self.mark_non_negative(out)
        if id(x) in self._on_grid:
            self._on_grid[id(out)] = (out, self._on_grid[id(x)][1])

    def discover(self, model: nn.Layer) -> List[Tuple[str, bool]]:
        """(point, unsigned) for the points one eval-mode forward passes, in order (nothing is
        quantized meanwhile)."""
        self._discovered = []
        was_training = model.training
        model.eval()
        try:
            with paddle.no_grad():
                model(paddle.zeros([1, 3, *DISCOVERY_HW]))
            return self._discovered
        finally:
            self._discovered = None
            self.reset()
            if was_training:
                model.train()


def _relu_follows(name: str, model: nn.Layer) -> bool:
    """The conv of a ConvBNReLU: its output point is the ReLU's output (the ConvBNReLU's)."""
    parent = name.rpartition(".")[0]
    return name.endswith("._conv") and isinstance(compat.get_sublayer(model, parent) if parent else model, ConvBNReLU)


def _attach(model: DualResNet, points: QuantPoints) -> None:
    def pre(key):
        return lambda layer, inputs: (points.quantize(key, inputs[0]),) + tuple(inputs[1:])

    def post(key, ends_in_relu):
        def hook(layer, inputs, output):
            if ends_in_relu:
                points.mark_non_negative(output)
            return points.quantize(key, output)
        return hook

    for name, layer in model.named_sublayers():
        conv = compat.is_conv(layer)
        if conv or isinstance(layer, INPUT_TYPES):
            layer.register_forward_pre_hook(pre(name + ":in"))
        if (conv and not _relu_follows(name, model)) or isinstance(layer, OUTPUT_TYPES):
            ends_in_relu = isinstance(layer, ConvBNReLU) or (isinstance(layer, (BasicBlock, Bottleneck))
                                                             and not layer.no_relu)
            layer.register_forward_post_hook(post(name + ":out", ends_in_relu))
        if isinstance(layer, nn.ReLU):
            layer.register_forward_post_hook(lambda layer, inputs, output: points.relu(inputs[0], output))
        if isinstance(layer, POOL_TYPES):
            layer.register_forward_post_hook(lambda layer, inputs, output: points.mark_non_negative(output, inputs[0]))
    # a forward starts at conv1 (both `forward` and `lowres_logits`): forget the previous one's tensors
    model.conv1.register_forward_pre_hook(lambda layer, inputs: points.reset())


def _quantize_weights(model: nn.Layer, weight_quantize_type: str) -> None:
    """Every Conv2D becomes Paddle's QuantizedConv2D with fake-quantized weights and no input
    quantizer of its own (the points quantize tensors). Its parameters keep the conv's names."""
    for name, layer in list(model.named_sublayers()):
        if compat.is_conv(layer):
            compat.set_sublayer(model, name, compat.weight_quantized_conv(layer, weight_quantize_type, QUANT_BITS))


def quantize_model(model: DualResNet, weight_quantize_type: str = "channel_wise_abs_max", moving_rate: float = 0.9,
                   unsigned_relu: bool = True, expected: Optional[dict] = None) -> dict:
    """Make a (BN-folded) DDRNet quantization-aware in place; returns {"points": [...] in execution
    order, "unsigned_points": [...]} for state.json. `expected`: what a checkpoint recorded (a rebuilt
    model must have the same)."""
    if hasattr(model, POINTS_LAYER):
        raise DDRNetError("model is already quantization-aware")
    _quantize_weights(model, weight_quantize_type)
    points = QuantPoints(moving_rate)
    _attach(model, points)
    found = points.discover(model)
    plan = {"points": [key for key, _ in found],
            "unsigned_points": [key for key, unsigned in found if unsigned and unsigned_relu]}
    differs = [k for k in plan if expected is not None and list(expected.get(k) or []) != plan[k]]
    if differs:
        raise DDRNetError("the checkpoint's {} ({}) are not this model's ({}): saved by another version of "
                          "ddrnet; re-run `ddrnet compress --qat`".format(
                              differs[0].replace("_", " "), len(expected.get(differs[0]) or []), len(plan[differs[0]])))
    points.build(plan["points"], plan["unsigned_points"])
    model.add_sublayer(POINTS_LAYER, points)
    return plan


def point_ranges(model: nn.Layer) -> Dict[str, Tuple[float, bool]]:
    """{point: (learned abs-max range, unsigned)} of a quantization-aware model."""
    points = getattr(model, POINTS_LAYER, None)
    if points is None:
        raise DDRNetError("model is not quantization-aware")
    return {key: points.range_of(key) for key in points.keys}


def point_anchor(model: nn.Layer, key: str) -> Tuple[str, str, List[str]]:
    """Where a point's tensor is in an exported graph of the plain (BN-folded, float) model:
    (the parameter name of the Conv / BatchNormalization weight it starts from, "in" or "out" of that
    node, the op types to follow from there through sole consumers). ONNX keeps Paddle's parameter
    names for initializers, so this finds the tensor whatever the exporter named it."""
    path, _, side = key.rpartition(":")
    layer = compat.get_sublayer(model, path)
    if compat.is_conv(layer) or isinstance(layer, nn.BatchNorm2D):
        return layer.weight.name, side, []
    if isinstance(layer, ConvBNReLU) and side == "out":
        return layer._conv.weight.name, "out", ["Relu"]
    if isinstance(layer, (BasicBlock, Bottleneck)):
        if side == "in":
            first = layer.conv_bn_relu if isinstance(layer, BasicBlock) else layer.conv_bn_relu1
            return first._conv.weight.name, "in", []
        return layer.conv_bn._conv.weight.name, "out", ["Add"] + ([] if layer.no_relu else ["Relu"])
    if isinstance(layer, DAPPM) and side == "in":
        return layer.scale0[0].weight.name, "in", []
    if isinstance(layer, DDRNetHead) and side == "in":
        return layer.bn1.weight.name, "in", []
    raise DDRNetError("quantization point {}: no rule places it in an exported graph".format(key))
