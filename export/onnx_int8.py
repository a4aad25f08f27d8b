"""FP32 ONNX -> INT8 ONNX (Q/DQ) with onnxruntime's static quantization, built to actually be faster.

Measured on this project (DESIGN.md): a QAT graph exported as-is runs slower than FP32 on CPU
because convolutions stay float between Q/DQ pairs. What makes INT8 fast here:
- `quant_pre_process` first: BN folds into its convolution, shapes become static where they can;
- every Conv, Add, Concat, pool and Resize quantized (not only convolutions), so onnxruntime fuses
  them into QLinearConv / QLinearAdd / QLinearConcat / QLinearAveragePool and the tensors between
  them stay 8-bit;
- for the CPU target: UINT8 activations and per-channel INT8 weights (the u8s8 kernels of x86
  VNNI/AMX); with an argmax output, the head's final upsample rewired to interpolate the quantized
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
        quantize_static(
            prepared, quantized, _reader(frames, to_tensor, input_name),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=OP_TYPES, per_channel=True,
            reduce_range=False, activation_type=settings["activation_type"], weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": settings["activation_symmetric"], "WeightSymmetric": True,
                           "ForceQuantizeNoInputCheck": True, "CalibStridedMinMax": _chunk(len(frames))})
        int8 = onnx.load(quantized)
    head_resize = quantize_head_resize(int8) if settings["quantized_resize"] else False
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
        "head_resize_quantized": head_resize,
    }

