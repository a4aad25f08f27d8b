"""The suite's timed subjects, on the runtime's one timing harness (ddrnet.runtime.timing: every subject
of a group once per round, rotating order, medians; the round count sized to a time budget).

Every backend here is opened as the runtime opens it, with idle threads that sleep instead of spin:
with onnxruntime's default, the idle workers of the session that just ran busy-wait and take the
cores from the next one (measured on 2 cores, 2 threads, two sessions interleaved: 17.5 -> 38.3 ms and
9.8 -> 19.3 ms), while alone a session without spinning is 0-5 % slower.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy as np

from ddrnet.runtime.timing import Subject


def onnx_subject(labels: Dict[str, object], path: str, threads: int, tensor: np.ndarray) -> Subject:
    """The bare onnxruntime session of the runtime's backend (its options) on a prepared tensor."""
    from ddrnet.runtime.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path, "cpu", threads, spinning=False)
    return Subject(labels, lambda: backend.run(tensor))


def openvino_subject(labels: Dict[str, object], path: str, threads: int, tensor: np.ndarray,
                     precision: str = "auto") -> Subject:
    """The runtime's OpenVINO backend on a prepared tensor; the row records the precision it ran in."""
    from ddrnet.runtime.openvino_backend import OpenVINOBackend

    backend = OpenVINOBackend(path, "cpu", threads, precision, cache=False)  # temporary models: no cache
    return Subject(dict(labels, inference_precision=backend.inference_precision), lambda: backend.run(tensor))


def paddle_backend(model_dir: str, threads: int, precision: str = "fp32"):
    """The runtime's Paddle Inference backend (oneDNN on the CPU; precision int8 or bf16 selects those
    kernels) over model_dir's inference.pdmodel / .pdiparams."""
    from ddrnet.runtime.backends import PaddleInferenceBackend

    return PaddleInferenceBackend(os.path.join(model_dir, "inference.pdmodel"),
                                  os.path.join(model_dir, "inference.pdiparams"), "cpu", threads, precision=precision)


def paddle_subject(labels: Dict[str, object], model_dir: str, threads: int, tensor: np.ndarray,
                   precision: str = "fp32") -> Subject:
    backend = paddle_backend(model_dir, threads, precision)
    return Subject(labels, lambda: backend.run(tensor))


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
