"""What onnxruntime really runs: the op histogram of its optimized graph.

An INT8 ONNX file full of QuantizeLinear/DequantizeLinear pairs says little; onnxruntime fuses
DQ -> Conv -> Q into QLinearConv only where every input and output is quantized the way its kernels
want. A float `Conv` (or `FusedConv`) left in the optimized graph means that convolution runs in
FP32 between a dequantize and a quantize: slower than plain FP32. The INT8 export fails on any.

    python -m ddrnet.export.check model.onnx
"""
from __future__ import annotations

import collections
import os
import sys
import tempfile
from typing import Dict

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
