"""FP32 ONNX -> INT8 ONNX (Q/DQ) with onnxruntime's static quantization, built to actually be faster.

Measured on this project (DESIGN.md): a QAT graph exported as-is runs slower than FP32 on CPU
because convolutions stay float between Q/DQ pairs. What makes INT8 fast here:
- `quant_pre_process` first: BN folds into its convolution, shapes become static where they can;
  the BNs with no convolution before them (pre-activation) become 1x1 depthwise convolutions;
- every Conv, Add, Concat, pool and Resize quantized (not only convolutions), so onnxruntime fuses
  them into QLinearConv / QLinearAdd / QLinearConcat / QLinearAveragePool and the tensors between
  them stay 8-bit;
- for the CPU target: UINT8 activations and per-channel INT8 weights (the u8s8 kernels of x86
  VNNI/AMX); the stem convolution over the 3-channel image recast over 12 channels (SpaceToDepth),
  a shape onnxruntime's integer kernels handle far better; with an argmax output, the head's final upsample rewired to interpolate the quantized
  logits and ArgMax to read them directly, so the float 19xHxW logits tensor is never materialised;
- for the TensorRT target: symmetric INT8 activations (TensorRT only takes zero-point 0) and plain
  Q/DQ everywhere, since TensorRT fuses the pairs itself.
The result is checked on onnxruntime's optimized graph: no float convolution may remain.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from ddrnet.runtime.errors import DDRNetError

# ops quantized wherever they appear; ArgMax so that onnxruntime lets it read the 8-bit tensor
OP_TYPES = ["Conv", "Add", "Mul", "Concat", "Resize", "AveragePool", "GlobalAveragePool", "MaxPool",
            "Relu", "ArgMax"]
TARGETS = ("cpu", "tensorrt")


def _target_settings(target: str) -> dict:
    from onnxruntime.quantization import QuantType

    if target == "cpu":
        return dict(activation_type=QuantType.QUInt8, activation_symmetric=False, cpu_rewrites=True)
    if target == "tensorrt":
        return dict(activation_type=QuantType.QInt8, activation_symmetric=True, cpu_rewrites=False)
    raise DDRNetError("unknown INT8 target {!r}: choose {}".format(target, " or ".join(TARGETS)))


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
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:  # the BN parameters
        graph.initializer.remove(init)
    return rewritten


def quantize_head_resize(model: onnx.ModelProto) -> bool:
    """Make the head's DQ -> Resize -> Q -> DQ -> ArgMax a Resize of the quantized logits.

    Linear interpolation commutes with the affine dequantization (same scale and zero point on both
    sides), and onnxruntime's 8-bit Resize truncates: a shift of under one step, the same for every
    class, which ArgMax ignores. (Inside the network that shift would bias the sums it feeds, so the
    other Resize nodes keep their Q/DQ.) Returns whether the pattern was found.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}

    def only_consumer(tensor: str, op_type: str):
        found = consumers.get(tensor, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    for argmax in [n for n in graph.node if n.op_type == "ArgMax"]:
        dq_after = producer.get(argmax.input[0])
        q = producer.get(dq_after.input[0]) if dq_after is not None and dq_after.op_type == "DequantizeLinear" else None
        resize = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        dq = producer.get(resize.input[0]) if resize is not None and resize.op_type == "Resize" else None
        if dq is None or dq.op_type != "DequantizeLinear" or only_consumer(resize.output[0], "QuantizeLinear") is None:
            continue
        same = all(a in constants and b in constants and np.array_equal(constants[a], constants[b])
                   for a, b in zip(dq.input[1:], q.input[1:]))
        if not same or len(dq.input) != len(q.input):
            continue
        resize.input[0] = dq.input[0]  # the Resize now reads and writes the quantized tensor
        resize.output[0] = q.output[0]
        graph.node.remove(q)
        if len(consumers[dq.output[0]]) == 1:
            graph.node.remove(dq)
        return True
    return False


def quantize_onnx(fp32_path: str, frames: Sequence[np.ndarray], to_tensor: Callable[[np.ndarray], np.ndarray],
                  target: str = "cpu") -> Tuple[onnx.ModelProto, dict]:
    """The INT8 Q/DQ model calibrated on `frames`, and its description for deploy.yaml."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = _target_settings(target)
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
                reduce_range=False, activation_type=settings["activation_type"], weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": settings["activation_symmetric"], "WeightSymmetric": True,
                               "ForceQuantizeNoInputCheck": True, "CalibStridedMinMax": _chunk(len(frames))})
        int8 = onnx.load(quantized)
    head_resize = quantize_head_resize(int8) if settings["cpu_rewrites"] else False
    return int8, {
        "method": "onnxruntime quantize_static",
        "format": "QDQ",
        "target": target,
        "calibrate_method": "minmax",
        "per_channel": True,
        "activation_type": "uint8" if settings["activation_type"] == QuantType.QUInt8 else "int8",
        "activation_symmetric": settings["activation_symmetric"],
        "weight_type": "int8",
        "weight_symmetric": True,
        "op_types": list(OP_TYPES),
        "batchnorm_as_depthwise_conv": depthwise,
        "stem_space_to_depth": stem,
        "head_resize_quantized": head_resize,
    }

