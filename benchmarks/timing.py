"""Interleaved latency measurement: every subject of a group runs once per round (A, B, C, A, B, C...),
so the noise of a shared host hits all of them alike and their ratios hold; figures are medians.

Every onnxruntime session here has thread-pool spinning off: with onnxruntime's default, the idle
workers of the session that just ran busy-wait and take the cores from the next one (measured on
2 cores, 2 threads, two sessions interleaved: 17.5 -> 38.3 ms and 9.8 -> 19.3 ms), while alone a
session without spinning is 0-5 % slower.

The iteration count adapts to a time budget (after warm-up, one timed round sets how many rounds fit),
bounded by a minimum and maximum, and is recorded with the result.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ddrnet.runtime.bench import latency_stats


class Subject:
    """One thing to time: a zero-argument call and the labels of its row."""

    def __init__(self, labels: Dict[str, object], call: Callable[[], object]):
        self.labels = labels
        self.call = call
        self.samples_ms = []  # type: List[float]

    def once(self) -> float:
        t0 = time.perf_counter()
        self.call()
        return (time.perf_counter() - t0) * 1e3

    def row(self) -> dict:
        stats = latency_stats(self.samples_ms)
        return dict(self.labels, latency_ms=stats, fps=1000.0 / stats["p50"], iterations=len(self.samples_ms))


def rounds_for(round_s: float, budget_s: float, min_iters: int, max_iters: int) -> int:
    return int(max(min_iters, min(max_iters, budget_s // max(round_s, 1e-6))))


def measure(subjects: Sequence[Subject], budget_s: float, min_iters: int, max_iters: int, warmup: int = 2,
            desc: str = "timing") -> List[dict]:
    """Warm up, time one round to size the run to `budget_s`, then record round-robin; returns rows."""
    for _ in range(warmup):  # the first runs build oneDNN primitives and allocate arenas
        for subject in subjects:
            subject.call()
    probe = sum(subject.once() for subject in subjects) / 1e3
    iters = rounds_for(probe, budget_s, min_iters, max_iters)
    for _ in tqdm(range(iters), desc=desc, unit="round", leave=False):
        for subject in subjects:
            subject.samples_ms.append(subject.once())
    load = list(os.getloadavg())
    return [dict(s.row(), load_average_after=load) for s in subjects]


def onnx_subject(labels: Dict[str, object], path: str, threads: int, tensor: np.ndarray) -> Subject:
    """The bare onnxruntime session of the runtime's backend (its options) on a prepared tensor."""
    from ddrnet.runtime.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path, "cpu", threads, spinning=False)
    return Subject(labels, lambda: backend.run(tensor))


def paddle_config(model_dir: str, threads: int, precision: str = "fp32"):
    """Paddle Inference on CPU with oneDNN, as the runtime's backend sets it up, plus bfloat16 on request
    (the runtime has no BF16 mode; this is the benchmark's own)."""
    from paddle import inference as paddle_infer

    config = paddle_infer.Config(os.path.join(model_dir, "inference.pdmodel"),
                                 os.path.join(model_dir, "inference.pdiparams"))
    config.disable_gpu()
    config.enable_mkldnn()
    if precision == "bf16":
        config.enable_mkldnn_bfloat16()
    elif precision == "int8":
        config.enable_mkldnn_int8()
    config.set_cpu_math_library_num_threads(threads)
    config.switch_ir_optim(True)
    config.enable_memory_optim()
    config.disable_glog_info()
    return config


class PaddleRunner:
    """A Paddle Inference predictor that runs one tensor and returns its first output."""

    def __init__(self, model_dir: str, threads: int, precision: str = "fp32"):
        from paddle import inference as paddle_infer

        self.predictor = paddle_infer.create_predictor(paddle_config(model_dir, threads, precision))
        self._input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self._output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def __call__(self, tensor: np.ndarray) -> np.ndarray:
        self._input.reshape(list(tensor.shape))
        self._input.copy_from_cpu(tensor)
        self.predictor.run()
        return self._output.copy_to_cpu()


def paddle_subject(labels: Dict[str, object], model_dir: str, threads: int, tensor: np.ndarray,
                   precision: str = "fp32") -> Subject:
    runner = PaddleRunner(model_dir, threads, precision)
    return Subject(labels, lambda: runner(tensor))


def predictor_subject(labels: Dict[str, object], predictor, frame: np.ndarray) -> Subject:
    """The runtime's Predictor end to end: BGR uint8 frame in, trainId mask out."""
    return Subject(labels, lambda: predictor(frame))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels whose argmax label agrees."""
    return float(np.mean(np.asarray(a).reshape(-1) == np.asarray(b).reshape(-1)))


def only(rows: Sequence[dict], **labels) -> Optional[dict]:
    """The first row whose labels match."""
    for row in rows:
        if all(row.get(k) == v for k, v in labels.items()):
            return row
    return None
