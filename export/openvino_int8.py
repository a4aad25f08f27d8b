"""FP32 ONNX -> INT8 ONNX shaped for OpenVINO: Q/DQ pairs only where OpenVINO's low-precision
transformations fuse them into integer kernels, with symmetric scales.

Measured on 23-slim (README "OpenVINO"): OpenVINO ran our onnxruntime-shaped INT8 graph (Q/DQ after
every op, asymmetric uint8 activations, int32 bias) barely faster than its own BF16 FP32 path, while
NNCF's graph of the same FP32 ONNX ran 2x faster. What OpenVINO wants, and what this writes:
- a Q/DQ pair on the float data inputs of Conv, Add, Concat, Resize, AveragePool, ReduceMean, and of
  a BatchNormalization right after a pool (the ops OpenVINO runs in INT8 or moves a FakeQuantize
  through: the residual adds, the bilateral-fusion upsamples and DAPPM then stay 8-bit; NNCF's choice
  of tensors), nothing on outputs, so Conv + bias + ReLU stay one fused kernel; every quantizable
  consumer of a tensor shares its one Q/DQ pair;
- symmetric activations: uint8 with zero point 0 for a tensor that is never negative (after a ReLU),
  int8 with zero point 0 otherwise; no zero-point compensation in the kernels;
- per-output-channel symmetric int8 weights stored as int8 initializers behind a DequantizeLinear
  (4x smaller file), float bias (folded by OpenVINO into the integer kernel's output scale).

Scales: from a QAT checkpoint, the ranges QAT learned (`qat_scales`), on exactly the tensors QAT
quantized: a point QAT left in float (the bilateral fusion's upsampled tensors and DAPPM's output, which
QAT runs in float as the onnxruntime graph does) stays float here too, so the graph computes what QAT
trained, with no calibration (measured on the demo's 23-slim at 512x1024: as fast as calibrating those
8 tensors too, and as close to the fake-quant model). From FP32 weights (PTQ): min/max calibration of
every point over `frames` run through onnxruntime.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ddrnet.runtime.errors import DDRNetError

# op type -> which inputs get a Q/DQ pair (None: all of them)
QUANTIZED_INPUTS = {"Conv": (0,), "Add": (0, 1), "Concat": None, "Resize": (0,), "AveragePool": (0,),
                    "ReduceMean": (0,), "BatchNormalization": (0,)}
# ...but these only when their input comes from one of these ops (DAPPM's pooled branches; a
# BatchNormalization after an Add or a Concat stays float, as in NNCF's graph: measured 6 % faster)
ONLY_AFTER = {"BatchNormalization": ("AveragePool", "ReduceMean")}


def _quantized_inputs(node: onnx.NodeProto) -> Sequence[int]:
    if node.op_type not in QUANTIZED_INPUTS:
        return ()
    indices = QUANTIZED_INPUTS[node.op_type]
    return range(len(node.input)) if indices is None else indices


def _float_tensors(model: onnx.ModelProto) -> set:
    """Names of the float32 activations (the shape helpers around Resize carry int64)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def quantization_points(model: onnx.ModelProto) -> List[str]:
    """Float activation tensors that get a Q/DQ pair, in graph order (constants excluded)."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    floats = _float_tensors(model)
    producer = {out: node.op_type for node in model.graph.node for out in node.output}
    points = []  # type: List[str]
    for node in model.graph.node:
        for index in _quantized_inputs(node):
            name = node.input[index]
            if node.op_type in ONLY_AFTER and producer.get(name) not in ONLY_AFTER[node.op_type]:
                continue
            if name and name in floats and name not in constants and name not in points:
                points.append(name)
    return points


def calibrate(model: onnx.ModelProto, points: Sequence[str], frames: Sequence[np.ndarray],
              to_tensor: Callable[[np.ndarray], np.ndarray]) -> Dict[str, Tuple[float, float]]:
    """(min, max) of every point over the frames, from onnxruntime running the FP32 graph with the
    points as extra outputs (one frame at a time: only one frame's activations are held)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend([helper.make_tensor_value_info(p, onnx.TensorProto.FLOAT, None) for p in points])
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = model.graph.input[0].name
    ranges = {p: (np.inf, -np.inf) for p in points}
    for frame in frames:
        for name, value in zip(points, session.run(list(points), {input_name: to_tensor(frame)})):
            low, high = ranges[name]
            ranges[name] = (min(low, float(value.min())), max(high, float(value.max())))
    return ranges


def activation_qparams(low: float, high: float) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric (scale, zero point 0): uint8 for a never-negative tensor, int8 otherwise."""
    if low >= 0.0:
        return np.array(max(high, 1e-8) / 255.0, np.float32), np.array(0, np.uint8)
    return np.array(max(-low, high, 1e-8) / 127.0, np.float32), np.array(0, np.int8)


def _quantize_weights(model: onnx.ModelProto, per_channel: bool = True) -> List[onnx.NodeProto]:
    """Every Conv weight -> int8 initializer + DequantizeLinear, symmetric, per output channel (axis 0)
    or, `per_channel=False` (QAT with abs_max weights), one scale per weight."""
    inits = {init.name: init for init in model.graph.initializer}
    nodes = []  # type: List[onnx.NodeProto]
    done = set()  # a weight shared by several Convs is quantized once
    for node in model.graph.node:
        name = node.input[1] if node.op_type == "Conv" else None
        if name not in inits or name in done:
            continue
        done.add(name)
        weight = numpy_helper.to_array(inits[name]).astype(np.float32)
        absmax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
        if not per_channel:
            absmax = absmax.max(keepdims=True)
        scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
        shaped = scale.reshape(-1, *([1] * (weight.ndim - 1)))
        q = np.clip(np.round(weight / shaped), -127, 127).astype(np.int8)
        if not per_channel:
            scale = scale.reshape(())
        inits[name].CopyFrom(numpy_helper.from_array(q, name + "_int8"))
        model.graph.initializer.extend([numpy_helper.from_array(scale, name + "_scale"),
                                        numpy_helper.from_array(np.zeros_like(scale, np.int8), name + "_zero")])
        nodes.append(helper.make_node("DequantizeLinear", [name + "_int8", name + "_scale", name + "_zero"], [name],
                                      name=name + "_dq", **({"axis": 0} if per_channel else {})))
    return nodes


def _insert_qdq(model: onnx.ModelProto, params: Mapping[str, Tuple[np.ndarray, np.ndarray]],
                first: Sequence[onnx.NodeProto]) -> None:
    """A Q/DQ pair per point, placed right after its producer; the quantized consumers read its output.
    `first`: nodes that go before all others (the weights' DequantizeLinear)."""
    graph = model.graph
    for name, (scale, zero) in params.items():
        graph.initializer.extend([numpy_helper.from_array(scale, name + "_qscale"),
                                  numpy_helper.from_array(zero, name + "_qzero")])
    for node in graph.node:
        for index in _quantized_inputs(node):
            if node.input[index] in params:
                node.input[index] = node.input[index] + "_dq"
    pairs = {name: [helper.make_node("QuantizeLinear", [name, name + "_qscale", name + "_qzero"], [name + "_q"],
                                     name=name + "_quantize"),
                    helper.make_node("DequantizeLinear", [name + "_q", name + "_qscale", name + "_qzero"],
                                     [name + "_dq"], name=name + "_dequantize")] for name in params}
    produced = {o for node in graph.node for o in node.output}
    ordered = list(first) + [n for name in params if name not in produced for n in pairs[name]]
    for node in graph.node:
        ordered.append(node)
        for output in node.output:
            ordered.extend(pairs.get(output, []))
    del graph.node[:]
    graph.node.extend(ordered)


def qat_scales(fp32_path: str, anchors: Mapping[str, Tuple[str, str, List[str]]],
               ranges: Mapping[str, Tuple[float, bool]]) -> Dict[str, Tuple[float, bool]]:
    """{ONNX tensor: (scale, unsigned)} of a QAT model's learned (range, unsigned) points (train/quant.py
    point_ranges / point_anchor, resolved as export/onnx_int8.py resolves them; the step is the QAT grid's:
    range / 255 for an unsigned point, range / 127 for a symmetric one), for quantize_for_openvino(scales=)."""
    from ddrnet.export.onnx_int8 import resolve_points
    from ddrnet.train.quant import grid

    tensors = resolve_points(onnx.load(fp32_path, load_external_data=False), dict(anchors))
    return {tensor: (max(float(ranges[key][0]), 1e-8) / grid(ranges[key][1])[0], bool(ranges[key][1]))
            for key, tensor in tensors.items()}


def _given_params(model: onnx.ModelProto, points: Sequence[str], scales: Mapping[str, Tuple[float, bool]]
                  ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """(scale, zero point) of the points that have a given scale: uint8 for an unsigned one, int8 otherwise.
    A ReLU's output takes its input's scale (a ReLU keeps the grid) as uint8 (it is non-negative)."""
    given = dict(scales)
    for node in model.graph.node:
        if node.op_type == "Relu" and node.input[0] in given:
            given.setdefault(node.output[0], (given[node.input[0]][0], True))
    return {p: (np.array(given[p][0], np.float32), np.array(0, np.uint8 if given[p][1] else np.int8))
            for p in points if p in given}


def quantize_for_openvino(fp32_path: str, frames: Sequence[np.ndarray] = (),
                          to_tensor: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                          scales: Optional[Mapping[str, Tuple[float, bool]]] = None,
                          per_channel: bool = True) -> Tuple[onnx.ModelProto, dict]:
    """The OpenVINO-shaped INT8 model of the FP32 ONNX at `fp32_path`, and its description for deploy.yaml.
    `scales` (QAT's: qat_scales, {tensor: (scale, unsigned)}): exactly the points that have one are
    quantized, nothing is calibrated; without it every point is calibrated on `frames` (`to_tensor`:
    frame -> input tensor). `per_channel`: weight scales per output channel (else one per weight)."""
    model = onnx.load(fp32_path)
    points = quantization_points(model)
    if scales is not None:
        params = _given_params(model, points, scales)
    else:
        if not frames or to_tensor is None:
            raise DDRNetError("INT8 export for OpenVINO needs calibration images")
        ranges = calibrate(model, points, frames, to_tensor)
        params = {p: activation_qparams(*ranges[p]) for p in points}
    weight_nodes = _quantize_weights(model, per_channel)
    _insert_qdq(model, params, first=weight_nodes)
    onnx.checker.check_model(model)
    unsigned = sum(1 for _, zero in params.values() if zero.dtype == np.uint8)
    return model, {
        "method": "QAT ranges as OpenVINO-shaped Q/DQ (no calibration)" if scales is not None
                  else "OpenVINO-shaped Q/DQ, min/max calibration",
        "format": "QDQ",
        "target": "openvino",
        "quantized_inputs": {op: "all" if index is None else list(index) for op, index in QUANTIZED_INPUTS.items()},
        # the points QAT left in float stay float (QAT export); calibration quantizes all of them
        "activations": {"points": len(params), "left_float": len(points) - len(params), "uint8": unsigned,
                        "int8": len(params) - unsigned, "symmetric": True},
        "weights": {"type": "int8", "per_channel": per_channel, "symmetric": True, "convs": len(weight_nodes)},
        "bias": "float",
    }
