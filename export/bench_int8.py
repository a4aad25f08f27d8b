"""FP32 vs INT8 ONNX latency on this CPU, measured the way DESIGN.md asks: both sessions in one
process, runs interleaved (A, B, A, B, ...), many iterations, medians, with the CPU model.

    python -m ddrnet.export.bench_int8 --input-shape 1,3,1024,2048 --threads 2 --iters 30 [--weights W]

Without --weights the model is randomly initialised: convolution cost does not depend on the
weights, and the INT8 parity gate (meaningless for random logits) is not run; the export's own
FP32 parity check still is. Calibration uses synthetic frames.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Dict, List

import numpy as np


def _session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def interleaved_ms(paths: Dict[str, str], tensor: np.ndarray, threads: int, iters: int,
                   warmup: int = 3) -> Dict[str, Dict[str, List[float]]]:
    """Wall-clock and process CPU milliseconds per run. On a shared machine the CPU time of a
    single-threaded session is the steadier measure of work (other processes stretch wall time);
    with more threads it also counts the pool's spin-waiting."""
    sessions = {name: _session(path, threads) for name, path in paths.items()}
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, {"x": tensor})
    times = {name: {"wall": [], "cpu": []} for name in sessions}  # type: Dict[str, Dict[str, List[float]]]
    for _ in range(iters):
        for name, session in sessions.items():
            wall, cpu = time.perf_counter(), time.process_time()
            session.run(None, {"x": tensor})
            times[name]["cpu"].append((time.process_time() - cpu) * 1000)
            times[name]["wall"].append((time.perf_counter() - wall) * 1000)
    return times


def build_models(weights: str, shape, workdir: str, calib_num: int) -> Dict[str, str]:
    """FP32 model dir via the exporter; INT8 ONNX by the same quantizer the exporter uses."""
    from ddrnet.export.exporter import export_model
    from ddrnet.export.frames import synthetic_frames
    from ddrnet.export.onnx_fp32 import save
    from ddrnet.export.onnx_int8 import quantize_onnx
    from ddrnet.runtime import Predictor

    fp32_dir = os.path.join(workdir, "fp32")
    export_model(weights, fp32_dir, formats=("onnx",), input_shape=shape, parity_num=1)
    fp32 = os.path.join(fp32_dir, "model.onnx")
    frames = synthetic_frames(calib_num, (shape[2], shape[3]))
    int8_model, _ = quantize_onnx(fp32, frames, Predictor(fp32_dir).preprocess, "cpu")
    int8 = os.path.join(workdir, "int8.onnx")
    save(int8_model, int8)
    return {"fp32": fp32, "int8": int8}


def main() -> int:
    import paddle

    from ddrnet.export.check import float_conv_count, optimized_op_histogram
    from ddrnet.export.exporter import parse_input_shape
    from ddrnet.runtime.bench import host_info
    from ddrnet.train.model import build_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="checkpoint (default: random ddrnet23_slim)")
    parser.add_argument("--input-shape", default="1,3,512,1024")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--calib-num", type=int, default=8)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    shape = parse_input_shape(args.input_shape)
    with tempfile.TemporaryDirectory() as workdir:
        weights = args.weights
        if weights is None:
            paddle.seed(0)
            weights = os.path.join(workdir, "random.pdparams")
            paddle.save(build_model("ddrnet23_slim").state_dict(), weights)
            with open(os.path.join(workdir, "random.json"), "w") as f:
                json.dump({"model": {"name": "ddrnet23_slim", "num_classes": 19}}, f)
        paths = build_models(weights, shape, workdir, args.calib_num)
        tensor = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        times = interleaved_ms(paths, tensor, args.threads, args.iters)
        histogram = optimized_op_histogram(paths["int8"], args.threads)
    medians = {name: float(np.median(t["wall"])) for name, t in times.items()}
    cpu_medians = {name: float(np.median(t["cpu"])) for name, t in times.items()}
    result = {
        "host": host_info(), "load_average": list(os.getloadavg()), "threads": args.threads,
        "input_shape": list(shape), "iterations": args.iters,
        "median_ms": medians, "min_ms": {name: float(np.min(t["wall"])) for name, t in times.items()},
        "cpu_median_ms": cpu_medians,
        "speedup_median": medians["fp32"] / medians["int8"],
        "speedup_cpu_median": cpu_medians["fp32"] / cpu_medians["int8"],
        "int8_optimized_graph": {"float_convs": float_conv_count(histogram), "op_histogram": histogram},
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
