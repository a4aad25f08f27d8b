"""What onnxruntime (and OpenVINO) really runs: the op histogram of its optimized graph.

An INT8 ONNX file full of QuantizeLinear/DequantizeLinear pairs says little; onnxruntime fuses
DQ -> Conv -> Q into QLinearConv only where every input and output is quantized the way its kernels
want. A float `Conv` (or `FusedConv`) left in the optimized graph means that convolution runs in
FP32 between a dequantize and a quantize: slower than plain FP32. The INT8 export fails on any.
The same for OpenVINO's INT8 graph: its compiled model says which precision each layer runs in.

    python -m ddrnet.export.check model.onnx
"""
from __future__ import annotations

import collections
import os
import sys
import tempfile
from typing import Dict, List

FLOAT_CONV_OPS = ("Conv", "FusedConv")


def optimized_op_histogram(onnx_path: str, threads: int = 1) -> Dict[str, int]:
    """Node count per op type of onnxruntime's CPU graph after all optimizations (as at runtime)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # the "hardware-specific graph" warning is expected here
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    return dict(counts.most_common())


def float_conv_count(histogram: Dict[str, int]) -> int:
    return sum(histogram.get(op, 0) for op in FLOAT_CONV_OPS)


def openvino_layer_histogram(onnx_path: str) -> Dict[str, int]:
    """Layer count per `type:precision` of OpenVINO's compiled CPU graph, the precision each layer really
    runs in (`Convolution:u8` / `:i8` is an integer kernel; `:bf16` / `:f32` a float one)."""
    import openvino as ov

    compiled = ov.Core().compile_model(onnx_path, "CPU", {"INFERENCE_NUM_THREADS": 1})
    counts = collections.Counter()  # type: collections.Counter
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) != "Const":  # the weights: in the file's own table already
            counts["{}:{}".format(info["layerType"].astype(str), info["runtimePrecision"].astype(str))] += 1
    return dict(counts.most_common())


def openvino_float_conv_count(histogram: Dict[str, int]) -> int:
    """Convolutions OpenVINO runs in a float precision (each one a quantized convolution it did not fuse)."""
    return sum(count for key, count in histogram.items()
               if "Convolution" in key.split(":")[0] and key.split(":")[1] not in ("u8", "i8"))


def tensorrt_qdq_violations(model) -> List[str]:
    """What TensorRT 8.5+ would refuse in a Q/DQ graph (explicit quantization): a DequantizeLinear
    of anything but int8 (an int32 bias, uint8), a non-zero zero point, an INT8 weight initializer
    read by DequantizeLinear without a QuantizeLinear of FP32 weights before it (TensorRT 8.x wants
    Q -> DQ on FP32 weights). Empty when the graph follows the rules."""
    from onnx import TensorProto, numpy_helper

    constants = {init.name: init for init in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) < 3 or node.input[2] not in constants:
            problems.append("{} {}: no constant zero point".format(node.op_type, node.name))
            continue
        zero = constants[node.input[2]]
        if zero.data_type != TensorProto.INT8:
            problems.append("{} {}: zero point of type {}, not int8".format(
                node.op_type, node.name, TensorProto.DataType.Name(zero.data_type)))
        elif numpy_helper.to_array(zero).any():
            problems.append("{} {}: non-zero zero point".format(node.op_type, node.name))
        if node.op_type == "DequantizeLinear":
            source = node.input[0]
            if source in constants:
                problems.append("DequantizeLinear {}: reads the initializer {} directly (TensorRT 8.x wants "
                                "FP32 weights -> QuantizeLinear -> DequantizeLinear)".format(node.name, source))
            elif source in producer and producer[source].op_type != "QuantizeLinear":
                problems.append("DequantizeLinear {}: input from {}, not a QuantizeLinear".format(
                    node.name, producer[source].op_type))
    return problems


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m ddrnet.export.check MODEL.onnx", file=sys.stderr)
        return 2
    histogram = optimized_op_histogram(sys.argv[1])
    for op, count in histogram.items():
        print("{:>5}  {}".format(count, op))
    print("float convolutions: {}".format(float_conv_count(histogram)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
