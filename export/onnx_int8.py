"""INT8 ONNX (Q/DQ) that is both faithful and fast: the QAT model's own scales written into the graph
(`quantize_qat`), or, for an FP32 checkpoint (PTQ), onnxruntime's static quantization (`quantize_onnx`).

Measured on this project (docs/design-notes.md): a QAT graph exported as-is runs slower than FP32 on CPU
because convolutions stay float between Q/DQ pairs. What makes INT8 fast here:
- BN folded into the convolutions, and the BNs with no convolution before them (pre-activation, in
  DAPPM and the head) rewritten as the 1x1 depthwise convolutions they are;
- every convolution's input, weights and output quantized, and the residual adds, pools and concats
  between them, so onnxruntime fuses them into QLinearConv / QLinearAdd / QLinearAveragePool /
  QLinearConcat and the tensors between them stay 8-bit; a ReLU before a QuantizeLinear with zero
  point 0 (uint8) is folded into it;
- for the CPU target: UINT8 activations and per-channel INT8 weights (the u8s8 kernels of x86
  VNNI/AMX); the stem convolution over the 3-channel image recast over 12 channels (SpaceToDepth),
  a shape onnxruntime's integer kernels handle far better; with an argmax output, the head's final
  upsample rewired to interpolate the quantized logits and ArgMax to read them directly, so the
  float 19xHxW logits tensor is never materialised;
- for the TensorRT target: symmetric INT8 activations with zero point 0, FP32 weights with a
  QuantizeLinear -> DequantizeLinear pair per channel and FP32 biases (the explicit-quantization
  form TensorRT 8.5+ parses: its DequantizeLinear takes int8 only, never an int32 bias).
The exporter checks the CPU result on onnxruntime's optimized graph: no float convolution may remain.

From a QAT checkpoint nothing is calibrated: each tensor train/quant.py fake-quantizes gets a
QuantizeLinear / DequantizeLinear pair with the learned range (a symmetric tensor: scale = range / 127,
zero point 0 in int8 or 128 in uint8; a non-negative one, e.g. a ReLU's output: scale = range / 255,
uint8 zero point 0, which also lets onnxruntime fold the ReLU away), each weight the per-channel
scale QAT used, and no other tensor is quantized: the graph computes what QAT trained. The
approximations: int32 biases at the product of the input and weight scales and the quantized head
upsample (cpu, argmax output); on TensorRT (int8 only) the non-negative tensors at range / 127, half
QAT's resolution. The export's parity check measures them.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tqdm import tqdm

from ddrnet.runtime.errors import DDRNetError

# PTQ: ops onnxruntime quantizes wherever they appear; ArgMax so that it lets it read the 8-bit tensor
OP_TYPES = ["Conv", "Add", "Mul", "Concat", "Resize", "AveragePool", "GlobalAveragePool", "MaxPool",
            "Relu", "ArgMax"]
QMAX = 127
# Quantization settings per target, for both routes (a new target is one more row):
#   activation_type: what activations are stored as; signed_zero_point: the zero point of a symmetric
#   scale in that type; relu_zero_point: for a ReLU's output (0 in uint8 lets the ReLU fold away);
#   unsigned_steps: steps over the range of a QAT tensor that cannot be negative (255: uint8, exact;
#   127: int8 has no more, half QAT's resolution); float_weights: FP32 weights with Q -> DQ (TensorRT)
#   instead of INT8 initializers with DQ; quantize_bias: int32 biases (onnxruntime's QLinearConv needs
#   them; TensorRT refuses them); cpu_rewrites: SpaceToDepth stem and quantized head resize.
TARGET_SETTINGS = {
    "cpu": dict(activation_type=TensorProto.UINT8, signed_zero_point=128, relu_zero_point=0, unsigned_steps=255,
                float_weights=False, quantize_bias=True, cpu_rewrites=True),
    "tensorrt": dict(activation_type=TensorProto.INT8, signed_zero_point=0, relu_zero_point=0, unsigned_steps=127,
                     float_weights=True, quantize_bias=False, cpu_rewrites=False),
}
TARGETS = tuple(TARGET_SETTINGS)


def target_settings(target: str) -> dict:
    if target not in TARGET_SETTINGS:
        raise DDRNetError("unknown INT8 target {!r}: choose {}".format(target, " or ".join(TARGETS)))
    return TARGET_SETTINGS[target]


def calibration_reader(frames: Sequence[np.ndarray], to_tensor: Callable[[np.ndarray], np.ndarray],
                       input_name: str, progress: tqdm):
    """Calibration inputs, read in chunks (`set_range`) so only a few images' activations are held."""
    from onnxruntime.quantization import CalibrationDataReader

    class FrameReader(CalibrationDataReader):
        def __init__(self):
            self._pending = iter(())

        def __len__(self):
            return len(frames)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._pending = iter(frames[start_index:end_index])

        def get_next(self):
            frame = next(self._pending, None)
            if frame is None:
                return None
            progress.update()
            return {input_name: to_tensor(frame)}

    return FrameReader()


def _chunk(count: int, most: int = 2) -> int:
    """Largest chunk size <= `most` dividing `count` (onnxruntime's strided calibration needs one).

    Not CalibMaxIntermediateOutputs: onnxruntime 1.32 drops every full chunk unmeasured with it."""
    return max(d for d in range(1, most + 1) if count % d == 0)


def stem_space_to_depth(model: onnx.ModelProto) -> bool:
    """Rewrite the first convolution (3x3, stride 2, padding 1 on the 3-channel image) as
    SpaceToDepth(2) + a 2x2 stride-1 convolution over 12 channels: the same sums, but onnxruntime's
    integer kernels are several times faster on 12 channels than on 3 (measured here: the stem conv
    was 10 % of the INT8 model's time, and 7x faster rewritten). Needs an even, fixed H and W.

    Input row 2i-1+ky of the 3x3 window lies in 2x2 block i-1 (ky=0, block row 1) or block i
    (ky=1: row 0, ky=2: row 1), and the same for columns; block tap (0, row 0) gets a zero weight.
    """
    graph = model.graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or not all(d > 0 and d % 2 == 0 for d in dims[2:]):
        return False
    image = graph.input[0].name
    stem = next((n for n in graph.node if n.op_type == "Conv" and n.input[0] == image), None)
    if stem is None or len([n for n in graph.node if image in n.input]) != 1:
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in stem.attribute}
    if list(attrs.get("kernel_shape", [])) != [3, 3] or list(attrs.get("strides", [])) != [2, 2] \
            or list(attrs.get("pads", [])) != [1, 1, 1, 1] or attrs.get("group", 1) != 1 \
            or any(d != 1 for d in attrs.get("dilations", [1, 1])) or attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
        return False
    weights = {init.name: init for init in graph.initializer}
    if stem.input[1] not in weights:
        return False
    kernel = numpy_helper.to_array(weights[stem.input[1]])  # [out, 3, 3, 3]
    blocked = np.zeros((kernel.shape[0], 12, 2, 2), kernel.dtype)
    tap_of = {(0, 1): 0, (1, 0): 1, (1, 1): 2}  # (block tap, row in block) -> 3x3 kernel row
    for (ty, by), ky in tap_of.items():
        for (tx, bx), kx in tap_of.items():
            # SpaceToDepth channel = (row in block * 2 + column in block) * C + c
            blocked[:, (by * 2 + bx) * 3:(by * 2 + bx) * 3 + 3, ty, tx] = kernel[:, :, ky, kx]
    weights[stem.input[1]].CopyFrom(numpy_helper.from_array(blocked, stem.input[1]))
    blocks = image + "_space_to_depth"
    stem.input[0] = blocks
    for name in ("kernel_shape", "strides", "pads"):
        next(a for a in stem.attribute if a.name == name).CopyFrom(onnx.helper.make_attribute(
            name, {"kernel_shape": [2, 2], "strides": [1, 1], "pads": [1, 1, 0, 0]}[name]))
    graph.node.insert(0, onnx.helper.make_node("SpaceToDepth", [image], [blocks], name="stem_space_to_depth",
                                               blocksize=2))
    return True


def batchnorm_to_depthwise_conv(model: onnx.ModelProto) -> int:
    """Rewrite each BatchNormalization left after folding as the 1x1 depthwise Conv it equals.

    DDRNet's DAPPM and head are pre-activation (BN -> ReLU -> Conv): those BNs have no convolution
    to fold into, and onnxruntime has no integer BN, so each one would run in float with a DQ/Q pair
    and NHWC<->NCHW transposes around it. As a depthwise Conv it quantizes like any convolution
    (one weight per channel with a per-channel scale: exact) and runs as QLinearConv. Returns the count.
    """
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    rewritten = 0
    for node in graph.node:
        if node.op_type != "BatchNormalization" or len(node.output) != 1 \
                or not all(name in constants for name in node.input[1:5]):
            continue
        gamma, beta, mean, var = (constants[name].astype(np.float64) for name in node.input[1:5])
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + epsilon)
        weight, bias = node.name + "_depthwise_w", node.name + "_depthwise_b"
        graph.initializer.extend([
            numpy_helper.from_array(scale.reshape(-1, 1, 1, 1).astype(np.float32), weight),
            numpy_helper.from_array((beta - mean * scale).astype(np.float32), bias)])
        node.CopyFrom(onnx.helper.make_node("Conv", [node.input[0], weight, bias], [node.output[0]],
                                            name=node.name + "_depthwise", group=int(scale.size),
                                            kernel_shape=[1, 1]))
        rewritten += 1
    _drop_unused_initializers(model)  # the BN parameters
    return rewritten


class _Graph:
    """Producer / consumer look-ups and constant helpers over an ONNX graph being rewritten."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.constants = {init.name: init for init in self.graph.initializer}
        self.refresh()

    def refresh(self) -> None:
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: Dict[str, List[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.constants[name])

    def constant(self, name: str, value: np.ndarray) -> str:
        init = numpy_helper.from_array(value, name)
        if name in self.constants:
            self.constants[name].CopyFrom(init)
        else:
            self.graph.initializer.append(init)
            self.constants[name] = self.graph.initializer[-1]
        return name

    def scale_of(self, dq_output: str) -> Optional[float]:
        """The per-tensor scale of a DequantizeLinear output (None if `dq_output` is not one)."""
        node = self.producer.get(dq_output)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        return float(self.array(node.input[1]).reshape(-1)[0])

    def insert_qdq(self, tensor: str, scale: float, zero_point: int, dtype: int) -> None:
        """QuantizeLinear -> DequantizeLinear on `tensor`: its readers (and a graph output) then read
        the dequantized values under the same name; a graph input keeps its name and feeds the pair."""
        tag = tensor.replace("/", "_")
        scale_name = self.constant(tag + "_qscale", np.array(scale, np.float32))
        zp_name = self.constant(tag + "_qzero", np.array(zero_point, helper.tensor_dtype_to_np_dtype(dtype)))
        at = 0  # right after the producer (a graph input has none): the graph stays topologically sorted
        if tensor in {i.name for i in self.graph.input}:
            source, target = tensor, tag + "_dequantized"
            for node in self.consumers.get(tensor, []):
                node.input[:] = [target if name == tensor else name for name in node.input]
        else:
            source, target = tag + "_float", tensor
            producer = self.producer[tensor]
            producer.output[:] = [source if name == tensor else name for name in producer.output]
            at = list(self.graph.node).index(producer) + 1
        quantized = tag + "_quantized"
        self.graph.node.insert(at, helper.make_node("DequantizeLinear", [quantized, scale_name, zp_name], [target],
                                                    name=tag + "_dq"))
        self.graph.node.insert(at, helper.make_node("QuantizeLinear", [source, scale_name, zp_name], [quantized],
                                                    name=tag + "_q"))
        self.refresh()

    def follow(self, tensor: str, op_types: Sequence[str]) -> str:
        """The output reached from `tensor` through sole readers of the given op types, in order."""
        for op_type in op_types:
            readers = self.consumers.get(tensor, [])
            if len(readers) != 1 or readers[0].op_type != op_type:
                raise DDRNetError("INT8 export: tensor {} is read by {}, expected one {}".format(
                    tensor, [n.op_type for n in readers], op_type))
            tensor = readers[0].output[0]
        return tensor


def resolve_points(model: onnx.ModelProto, anchors: Dict[str, Tuple[str, str, List[str]]]) -> Dict[str, str]:
    """{point: tensor name} from anchors (train/quant.point_anchor: a Conv / BatchNormalization
    weight's name, "in" or "out", op types to follow); every anchor must be found exactly once."""
    graph = _Graph(model)
    by_weight = {node.input[1]: node for node in model.graph.node
                 if node.op_type in ("Conv", "BatchNormalization") and len(node.input) > 1}
    tensors = {}
    for key, (weight, side, follow) in anchors.items():
        node = by_weight.get(weight)
        if node is None:
            raise DDRNetError("INT8 export: QAT point {} (weight {}) has no node in the ONNX graph".format(key, weight))
        tensors[key] = graph.follow(node.input[0] if side == "in" else node.output[0], follow)
    return tensors


def _weight_scales(weight: np.ndarray, per_channel: bool) -> np.ndarray:
    """Symmetric scales as QAT's weight fake quantization computes them (abs max / 127)."""
    absmax = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1) if per_channel else np.abs(weight).max()[None]
    return (np.maximum(absmax, 1e-12) / QMAX).astype(np.float32)


def _quantize_conv_weights(graph: _Graph, node: onnx.NodeProto, settings: dict, per_channel: bool) -> None:
    weight = graph.array(node.input[1])
    scales = _weight_scales(weight, per_channel)
    shaped = scales.reshape((-1,) + (1,) * (weight.ndim - 1))
    q = np.clip(np.round(weight / shaped), -QMAX, QMAX).astype(np.int8)
    axis = {"axis": 0} if per_channel else {}
    tag = node.input[1].replace("/", "_")
    scale_name = graph.constant(tag + "_wscale", scales if per_channel else scales[0])
    zero_name = graph.constant(tag + "_wzero", np.zeros(scales.shape, np.int8) if per_channel else np.array(0, np.int8))
    nodes = []
    if settings["float_weights"]:  # FP32 weights -> Q -> DQ (TensorRT rebuilds the INT8 weights itself)
        nodes.append(helper.make_node("QuantizeLinear", [node.input[1], scale_name, zero_name], [tag + "_wq"],
                                      name=tag + "_wq", **axis))
    else:
        graph.constant(tag + "_wq", q)
    nodes.append(helper.make_node("DequantizeLinear", [tag + "_wq", scale_name, zero_name], [tag + "_wdq"],
                                  name=tag + "_wdq", **axis))
    node.input[1] = tag + "_wdq"
    if settings["quantize_bias"] and len(node.input) > 2 and node.input[2]:
        input_scale = graph.scale_of(node.input[0])
        if input_scale is None:
            raise DDRNetError("INT8 export: convolution {} reads an unquantized tensor {}".format(node.name, node.input[0]))
        bias = graph.array(node.input[2])
        bias_scales = np.broadcast_to(np.float32(input_scale) * scales, bias.shape).astype(np.float32)
        bias = np.round(bias / bias_scales).astype(np.int32)
        btag = node.input[2].replace("/", "_")
        graph.constant(btag + "_bq", bias)
        graph.constant(btag + "_bscale", bias_scales)
        graph.constant(btag + "_bzero", np.zeros(bias.shape, np.int32))
        nodes.append(helper.make_node("DequantizeLinear", [btag + "_bq", btag + "_bscale", btag + "_bzero"],
                                      [btag + "_bdq"], name=btag + "_bdq", axis=0))
        node.input[2] = btag + "_bdq"
    at = list(graph.graph.node).index(node)
    for new in reversed(nodes):
        graph.graph.node.insert(at, new)


def quantize_qat(fp32_path: str, anchors: Dict[str, Tuple[str, str, List[str]]], ranges: Dict[str, Tuple[float, bool]],
                 target: str = "cpu", per_channel: bool = True, argmax_output: bool = True
                 ) -> Tuple[onnx.ModelProto, dict]:
    """The FP32 graph of a QAT model's float weights with the QAT model's own quantization written in:
    a Q/DQ pair with the learned range on every point's tensor (`anchors`, `ranges`: train/quant.py,
    {point: (range, unsigned)}), on each ReLU of a quantized tensor (same scale: a ReLU keeps the
    grid), and on every weight."""
    settings = target_settings(target)
    model = onnx.load(fp32_path)
    tensors = resolve_points(model, anchors)
    depthwise = batchnorm_to_depthwise_conv(model)
    stem = stem_space_to_depth(model) if settings["cpu_rewrites"] else False
    graph = _Graph(model)
    input_name = model.graph.input[0].name
    if stem:  # the stem conv reads the image through SpaceToDepth: quantize that (same values, moved)
        tensors = {key: graph.consumers[input_name][0].output[0] if name == input_name else name
                   for key, name in tensors.items()}
    scales: Dict[str, Tuple[float, int]] = {}
    unclipped = 0
    for key, tensor in tensors.items():
        value, unsigned = ranges[key]
        steps = settings["unsigned_steps"] if unsigned else QMAX
        # a symmetric ReLU output (QAT with relu_outputs: signed) still takes the ReLU's zero point, or
        # onnxruntime would run its convolution in float; uint8 then lets it pass 127 steps
        relu = graph.producer.get(tensor) is not None and graph.producer[tensor].op_type == "Relu"
        zero = settings["relu_zero_point"] if unsigned or relu else settings["signed_zero_point"]
        unclipped += int(relu and not unsigned and settings["activation_type"] == TensorProto.UINT8)
        quant = (float(np.float32(max(value, 1e-8)) / np.float32(steps)), zero)
        if scales.setdefault(tensor, quant) != quant:
            raise DDRNetError("INT8 export: tensor {} has two quantization points with different ranges".format(tensor))
    for tensor, (scale, zero) in scales.items():
        graph.insert_qdq(tensor, scale, zero, settings["activation_type"])
    coarser = sum(1 for value, unsigned in ranges.values() if unsigned and settings["unsigned_steps"] == QMAX)
    relus = 0
    for node in [n for n in model.graph.node if n.op_type == "Relu"]:
        scale = graph.scale_of(node.input[0])
        if scale is not None and node.output[0] not in scales:
            graph.insert_qdq(node.output[0], scale, settings["relu_zero_point"], settings["activation_type"])
            relus += 1
    for node in [n for n in model.graph.node if n.op_type == "Conv"]:
        _quantize_conv_weights(graph, node, settings, per_channel)
    head_resize = quantize_head_resize(model) if settings["cpu_rewrites"] and argmax_output else False
    _drop_unused_initializers(model)  # the FP32 weights and biases an INT8 copy replaced
    return model, {
        "method": "QAT ranges written as Q/DQ (no calibration)",
        "format": "QDQ",
        "target": target,
        "points": len(tensors),
        "unsigned_points_at_half_resolution": coarser,
        "signed_relu_outputs_unclipped": unclipped,
        "relu_outputs_on_input_grid": relus,
        "per_channel": per_channel,
        "activation_type": "uint8" if settings["activation_type"] == TensorProto.UINT8 else "int8",
        "weight_type": "int8",
        "weight_storage": "fp32 with Q/DQ" if settings["float_weights"] else "int8",
        "bias": "int32" if settings["quantize_bias"] else "fp32",
        "batchnorm_as_depthwise_conv": depthwise,
        "stem_space_to_depth": stem,
        "head_resize_quantized": head_resize,
    }


def quantize_head_resize(model: onnx.ModelProto) -> bool:
    """Make the head's final upsample interpolate the quantized logits and ArgMax read them.

    Patterns: DQ -> Resize -> Q -> DQ -> ArgMax (onnxruntime's quantization) and DQ -> Resize -> ArgMax
    (QAT scales: the upsample is not quantized). Linear interpolation commutes with the affine
    dequantization; onnxruntime's 8-bit Resize rounds each interpolated value to the grid, a change
    of under one step that can only flip a pixel whose top two classes are that close. (Inside the
    network that rounding would bias the sums it feeds, so the other Resize nodes stay float.)
    Returns whether the pattern was found.
    """
    graph = _Graph(model)
    for argmax in [n for n in model.graph.node if n.op_type == "ArgMax"]:
        node = graph.producer.get(argmax.input[0])
        if node is not None and node.op_type == "Resize":  # QAT: DQ -> Resize -> ArgMax
            dq = graph.producer.get(node.input[0])
            if dq is None or dq.op_type != "DequantizeLinear" or len(graph.consumers[node.output[0]]) != 1:
                continue
            node.input[0] = dq.input[0]
            _drop_value_info(model, node.output[0])
        elif node is not None and node.op_type == "DequantizeLinear":  # DQ -> Resize -> Q -> DQ -> ArgMax
            q = graph.producer.get(node.input[0])
            resize = graph.producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            dq = graph.producer.get(resize.input[0]) if resize is not None and resize.op_type == "Resize" else None
            if dq is None or dq.op_type != "DequantizeLinear" or len(graph.consumers[resize.output[0]]) != 1:
                continue
            same = len(dq.input) == len(q.input) and all(
                a in graph.constants and b in graph.constants and np.array_equal(graph.array(a), graph.array(b))
                for a, b in zip(dq.input[1:], q.input[1:]))
            if not same:
                continue
            resize.input[0] = dq.input[0]  # the Resize now reads and writes the quantized tensor
            resize.output[0] = q.output[0]
            model.graph.node.remove(q)
        else:
            continue
        graph.refresh()
        if not graph.consumers.get(dq.output[0]):
            model.graph.node.remove(dq)
        return True
    return False


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def _drop_value_info(model: onnx.ModelProto, tensor: str) -> None:
    """A tensor whose type changed (float -> 8-bit) must not keep its old declaration."""
    for info in [v for v in model.graph.value_info if v.name == tensor]:
        model.graph.value_info.remove(info)


def float_weights_with_qdq(model: onnx.ModelProto) -> int:
    """TensorRT form of onnxruntime's output: each INT8 weight initializer read by a DequantizeLinear
    becomes its FP32 value with a QuantizeLinear in front (the same INT8 values, re-derived by
    TensorRT). Returns the count."""
    graph = _Graph(model)
    converted = 0
    for node in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
        name = node.input[0]
        if name not in graph.constants or graph.constants[name].data_type != TensorProto.INT8:
            continue
        scale, zero = graph.array(node.input[1]), graph.array(node.input[2])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * graph.array(name).ndim
        if scale.ndim:
            shape[axis] = -1
        value = (graph.array(name).astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape)
        graph.constant(name + "_float", value.astype(np.float32))
        quantize = helper.make_node("QuantizeLinear", [name + "_float", node.input[1], node.input[2]], [name],
                                    name=name + "_q", **({"axis": axis} if scale.ndim else {}))
        model.graph.node.insert(list(model.graph.node).index(node), quantize)
        model.graph.initializer.remove(graph.constants.pop(name))
        converted += 1
    return converted


def quantize_onnx(fp32_path: str, frames: Sequence[np.ndarray], to_tensor: Callable[[np.ndarray], np.ndarray],
                  target: str = "cpu") -> Tuple[onnx.ModelProto, dict]:
    """PTQ: the INT8 Q/DQ model calibrated on `frames` (onnxruntime's static quantization), and its
    description for deploy.yaml."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = target_settings(target)
    symmetric = settings["activation_type"] == TensorProto.INT8
    input_name = onnx.load(fp32_path, load_external_data=False).graph.input[0].name
    if not frames:
        raise DDRNetError("INT8 export needs calibration images")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quantized = os.path.join(tmp, "quantized.onnx")
        quant_pre_process(fp32_path, prepared, auto_merge=True)  # auto_merge: dynamic H/W
        model = onnx.load(prepared)
        depthwise = batchnorm_to_depthwise_conv(model)
        stem = stem_space_to_depth(model) if settings["cpu_rewrites"] else False
        onnx.save(model, prepared)
        with tqdm(total=len(frames), desc="calibrating", unit="img", leave=False) as progress:
            quantize_static(
                prepared, quantized, calibration_reader(frames, to_tensor, input_name, progress),
                quant_format=QuantFormat.QDQ, op_types_to_quantize=OP_TYPES, per_channel=True,
                reduce_range=False, activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                               "QuantizeBias": settings["quantize_bias"],
                               "ForceQuantizeNoInputCheck": True, "CalibStridedMinMax": _chunk(len(frames))})
        int8 = onnx.load(quantized)
    head_resize = quantize_head_resize(int8) if settings["cpu_rewrites"] else False
    if settings["float_weights"]:
        float_weights_with_qdq(int8)
    return int8, {
        "method": "onnxruntime quantize_static",
        "format": "QDQ",
        "target": target,
        "calibrate_method": "minmax",
        "per_channel": True,
        "activation_type": "int8" if symmetric else "uint8",
        "activation_symmetric": symmetric,
        "weight_type": "int8",
        "weight_storage": "fp32 with Q/DQ" if settings["float_weights"] else "int8",
        "bias": "int32" if settings["quantize_bias"] else "fp32",
        "weight_symmetric": True,
        "op_types": list(OP_TYPES),
        "batchnorm_as_depthwise_conv": depthwise,
        "stem_space_to_depth": stem,
        "head_resize_quantized": head_resize,
    }
