"""GPU rows of the suite (`run.py --device gpu`): every GPU path of the runtime on the same models.

Per model and input size: onnxruntime with the GPU providers the runtime picks (TensorRT execution
provider first when the tensorrt package is installed, else CUDA), the native TensorRT backend at
FP32, FP16 and INT8 (explicit quantization from our TensorRT-target Q/DQ ONNX: symmetric INT8
activations), and Paddle Inference on the GPU. A path the machine cannot start (no CUDA device, no
tensorrt / pycuda, a CPU-only wheel) becomes a note in the results, never a figure. Timing is the
same interleaved loop as on the CPU; every backend returns host arrays, so a run includes its copies.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Tuple

import numpy as np

import timing
import variants

# published figures, for comparison only (not measured here)
ANCHORS = (
    ("paper (Hong et al. 2021), RTX 2080Ti, 1024x2048", "ddrnet23_slim 101.6 FPS; ddrnet23 37.1 FPS"),
    ("PaddleSeg model zoo, V100, Paddle-TensorRT FP32, 1024x2048", "DDRNet_23 42.6 FPS"),
    ("Jetson Xavier NX, TensorRT FP16, 1024x2048", "ddrnet23_slim 45.2 ms; ddrnet23 106.3 ms"),
)


class GpuArtifacts:
    def __init__(self, folder: str):
        self.fp32_dir = os.path.join(folder, "fp32")  # Paddle + ONNX, argmax output
        self.int8_trt = os.path.join(folder, "int8_tensorrt.onnx")


def build(weights: str, hw: Tuple[int, int], frames: List[np.ndarray], folder: str) -> GpuArtifacts:
    art = GpuArtifacts(folder)
    variants.export_fp32(weights, art.fp32_dir, hw)
    variants.quantize_ours(art.fp32_dir, frames, art.int8_trt, target="tensorrt")
    return art


def openers(art: GpuArtifacts) -> List[Tuple[str, str, str, Callable[[], object]]]:
    """(format key, label, precision, backend factory) for every GPU path."""
    from ddrnet.runtime.backends import OnnxRuntimeBackend, PaddleInferenceBackend, TensorRTBackend

    onnx_fp32 = os.path.join(art.fp32_dir, "model.onnx")
    paddle = [os.path.join(art.fp32_dir, "inference." + ext) for ext in ("pdmodel", "pdiparams")]
    return [
        ("onnxruntime_gpu_fp32", "onnxruntime GPU providers (TensorRT EP or CUDA)", "fp32",
         lambda: OnnxRuntimeBackend(onnx_fp32, "gpu")),
        ("tensorrt_fp32", "TensorRT (native)", "fp32", lambda: TensorRTBackend(onnx_fp32, "gpu", "fp32")),
        ("tensorrt_fp16", "TensorRT (native)", "fp16", lambda: TensorRTBackend(onnx_fp32, "gpu", "fp16")),
        ("tensorrt_int8", "TensorRT (native, Q/DQ)", "int8", lambda: TensorRTBackend(art.int8_trt, "gpu", "int8")),
        ("paddle_gpu_fp32", "Paddle Inference GPU", "fp32",
         lambda: PaddleInferenceBackend(paddle[0], paddle[1], "gpu")),
    ]


def subjects(art: GpuArtifacts, tensor: np.ndarray, base: Dict[str, object]
             ) -> Tuple[List[timing.Subject], Dict[str, str]]:
    """The timed subjects that could start, and a note for each one that could not."""
    found, notes = [], {}  # type: List[timing.Subject], Dict[str, str]
    for key, label, precision, open_backend in openers(art):
        try:
            backend = open_backend()
        except Exception as err:  # noqa: BLE001  any start failure is reported, not timed
            notes[key] = "{}: {}".format(type(err).__name__, str(err).strip().splitlines()[0] if str(err) else "")
            continue
        providers = getattr(backend, "providers", None)
        device = getattr(backend, "device_name", None) or "GPU"
        row = dict(base, format=key, precision=precision, device=device, format_label="{}{} on {}".format(
            label, " [{}]".format(providers[0]) if providers else "", device))
        found.append(timing.Subject(row, lambda b=backend: b.run(tensor)))
    return found, notes
