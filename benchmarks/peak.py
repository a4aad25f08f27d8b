"""The host's arithmetic peak, measured in the same run as the models it is compared with.

FP32: numpy's sgemm (the BLAS numpy links, all cores) and onnxruntime's MatMul (MLAS, the kernels
our FP32 ONNX convolutions use) per thread count. INT8: onnxruntime's MatMulInteger on uint8 x int8
(the u8s8 VNNI/AMX path QLinearConv runs on x86) per thread count. OpenVINO (when installed): its
MatMul in FP32 and, where the CPU has BF16 kernels (AMX / AVX512-BF16), in BF16, and a Q/DQ MatMul
it runs as a u8 x i8 integer kernel (AMX / VNNI). All as multiply-accumulates per second, so a
model's MACs / latency divides straight into them.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Sequence

import numpy as np


def _best_seconds(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    """Fastest of `reps` runs: a peak is what the hardware can do, and on a shared host every slower
    run is someone else's load, not the kernel."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.min(times))


def numpy_sgemm_gmacs(n: int, reps: int) -> float:
    """GMAC/s of an n x n x n float32 matmul through numpy's BLAS."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    return n ** 3 / _best_seconds(lambda: np.matmul(a, b, out=out), reps) / 1e9


def _matmul_model(n: int, integer: bool):
    """A one-node ONNX graph: x[n,n] times a constant [n,n] (MatMulInteger u8 x s8, or MatMul f32)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        weight = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "w")
        zero_a = numpy_helper.from_array(np.array(128, dtype=np.uint8), "za")
        zero_b = numpy_helper.from_array(np.array(0, dtype=np.int8), "zb")
        node = helper.make_node("MatMulInteger", ["x", "w", "za", "zb"], ["y"])
        inits, in_type, out_type = [weight, zero_a, zero_b], TensorProto.UINT8, TensorProto.INT32
    else:
        weight = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        inits, in_type, out_type = [weight], TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("x", in_type, [n, n])],
                              [helper.make_tensor_value_info("y", out_type, [n, n])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _qdq_matmul_model(n: int):
    """x[n,n] float -> QuantizeLinear (uint8) -> DequantizeLinear, times DequantizeLinear(int8 constant
    [n,n]): the Q/DQ form OpenVINO fuses into one integer MatMul, as in our INT8 convolutions."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "w"),
             numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
             numpy_helper.from_array(np.array(0, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    graph = helper.make_graph(nodes, "peak", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def openvino_gmacs(n: int, threads: int, kind: str, reps: int) -> float:
    """GMAC/s of an n x n x n MatMul in OpenVINO with `threads` threads: kind fp32 | bf16 (the float
    MatMul with that inference precision) | int8 (the Q/DQ MatMul)."""
    import openvino as ov

    model = _qdq_matmul_model(n) if kind == "int8" else _matmul_model(n, integer=False)
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "bf16" if kind == "bf16" else "f32"}
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", config)
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    return n ** 3 / _best_seconds(lambda: request.infer({0: x}), reps) / 1e9


def openvino_peaks(threads: Sequence[int], n: int, reps: int) -> Dict[str, Dict[str, float]]:
    """{'fp32'|'bf16'|'int8': {threads: GMAC/s}}; bf16 only where OpenVINO has BF16 kernels on this CPU."""
    import openvino as ov

    from ddrnet.runtime.openvino_backend import has_bf16

    kinds = ["fp32", "bf16", "int8"] if has_bf16(ov.Core()) else ["fp32", "int8"]
    return {kind: {str(t): openvino_gmacs(n, t, kind, reps) for t in threads} for kind in kinds}


def onnxruntime_gmacs(n: int, threads: int, integer: bool, reps: int) -> float:
    """GMAC/s of an n x n x n MatMul(Integer) in onnxruntime with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(_matmul_model(n, integer).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (n, n), dtype=np.uint8) if integer else rng.standard_normal((n, n), dtype=np.float32)
    return n ** 3 / _best_seconds(lambda: session.run(None, {"x": x}), reps) / 1e9


def measure_peaks(threads: Sequence[int], n: int = 2048, reps: int = 10) -> Dict[str, object]:
    """{'numpy_sgemm_gmacs', 'fp32_gmacs' and 'int8_gmacs' (onnxruntime): {threads: GMAC/s}, 'openvino':
    openvino_peaks() or None when OpenVINO is not installed, 'n', 'reps'}."""
    from ddrnet.runtime.backends import installed

    return {
        "n": n,
        "reps": reps,
        "numpy_sgemm_gmacs": numpy_sgemm_gmacs(n, reps),
        "fp32_gmacs": {str(t): onnxruntime_gmacs(n, t, False, reps) for t in threads},
        "int8_gmacs": {str(t): onnxruntime_gmacs(n, t, True, reps) for t in threads},
        "openvino": openvino_peaks(threads, n, reps) if installed("openvino") else None,
    }
