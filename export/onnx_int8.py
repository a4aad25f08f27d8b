"""FP32 ONNX -> INT8 ONNX (Q/DQ) with onnxruntime's static quantization, built to actually be faster.

Measured on this project (DESIGN.md): a QAT graph exported as-is runs slower than FP32 on CPU
because convolutions stay float between Q/DQ pairs. What makes INT8 fast here:
- `quant_pre_process` first: BN folds into its convolution, shapes become static where they can;
- every Conv, Add, Concat, pool and Resize quantized (not only convolutions), so onnxruntime fuses
  them into QLinearConv / QLinearAdd / QLinearConcat / QLinearAveragePool and the tensors between
  them stay 8-bit;
- for the CPU target: UINT8 activations and per-channel INT8 weights (the u8s8 kernels of x86
  VNNI/AMX), and each Resize rewired to interpolate the quantized tensor itself (its input and
  output share scale and zero point, so the DQ -> Resize -> Q pair is redundant). The head's final
  upsample then works on 8-bit data and ArgMax reads it directly: the float 19xHxW logits tensor is
  never materialised;
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
MIN_OPSET = 13  # per-channel QuantizeLinear / DequantizeLinear


def _target_settings(target: str) -> dict:
    from onnxruntime.quantization import QuantType

    if target == "cpu":
        return dict(activation_type=QuantType.QUInt8, activation_symmetric=False, quantized_resize=True)
    if target == "tensorrt":
        return dict(activation_type=QuantType.QInt8, activation_symmetric=True, quantized_resize=False)
    raise DDRNetError("unknown INT8 target {!r}: choose {}".format(target, " or ".join(TARGETS)))


def _reader(frames: Sequence[np.ndarray], to_tensor: Callable[[np.ndarray], np.ndarray], input_name: str):
    """Calibration inputs, read in chunks (`set_range`) so only a few images' activations are held."""
    from onnxruntime.quantization import CalibrationDataReader

    progress = tqdm(total=len(frames), desc="calibrating", unit="img", leave=False)

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


def _chunk(count: int, most: int = 4) -> int:
    """Largest chunk size <= `most` dividing `count` (onnxruntime's strided calibration needs one).

    Not CalibMaxIntermediateOutputs: onnxruntime 1.32 drops every full chunk unmeasured with it."""
    return max(d for d in range(1, most + 1) if count % d == 0)


def quantize_resize_in_place(model: onnx.ModelProto) -> int:
    """Make each DQ -> Resize -> Q (same scale and zero point) a Resize of the quantized tensor.

    Linear interpolation commutes with the affine dequantization, so this only changes rounding.
    Returns how many Resize nodes now run on 8-bit data.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    graph_outputs = {out.name for out in graph.output}

    def same_params(dq: onnx.NodeProto, q: onnx.NodeProto) -> bool:
        pairs = list(zip(dq.input[1:], q.input[1:]))
        return len(pairs) == 2 and all(a in constants and b in constants and np.array_equal(constants[a], constants[b])
                                       for a, b in pairs)

    rewired = 0
    for resize in [n for n in graph.node if n.op_type == "Resize"]:
        dq = producer.get(resize.input[0])
        after = consumers.get(resize.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 or after[0].op_type != "QuantizeLinear" \
                or resize.output[0] in graph_outputs or not same_params(dq, after[0]):
            continue
        q = after[0]
        resize.input[0] = dq.input[0]
        resize.output[0] = q.output[0]
        graph.node.remove(q)
        if len(consumers[dq.output[0]]) == 1:
            graph.node.remove(dq)
        rewired += 1
    return rewired


def quantize_onnx(fp32_path: str, frames: Sequence[np.ndarray], to_tensor: Callable[[np.ndarray], np.ndarray],
                  target: str = "cpu") -> Tuple[onnx.ModelProto, dict]:
    """The INT8 Q/DQ model calibrated on `frames`, and its description for deploy.yaml."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = _target_settings(target)
    model = onnx.load(fp32_path)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        raise DDRNetError("INT8 export needs --opset {} or newer (per-channel Q/DQ), got {}".format(MIN_OPSET, opset))
    if not frames:
        raise DDRNetError("INT8 export needs calibration images")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quantized = os.path.join(tmp, "quantized.onnx")
        quant_pre_process(fp32_path, prepared)
        quantize_static(
            prepared, quantized, _reader(frames, to_tensor, model.graph.input[0].name),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=OP_TYPES, per_channel=True,
            reduce_range=False, activation_type=settings["activation_type"], weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": settings["activation_symmetric"], "WeightSymmetric": True,
                           "ForceQuantizeNoInputCheck": True, "CalibStridedMinMax": _chunk(len(frames))})
        int8 = onnx.load(quantized)
    rewired = quantize_resize_in_place(int8) if settings["quantized_resize"] else 0
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
        "resize_on_quantized_data": rewired,
    }

