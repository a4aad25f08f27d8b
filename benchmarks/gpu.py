"""GPU rows of the suite (`run.py --device gpu`) and the short GPU check (`benchmarks/gpu_check.sh`).

Per model and input size, every GPU path of the runtime on the same prepared tensor:
- onnxruntime with its CUDA provider, and with its TensorRT provider (engine cache keyed by the model's
  SHA-256);
- native TensorRT at FP32 and FP16 (from the FP32 ONNX) and INT8 (our symmetric Q/DQ ONNX for TensorRT),
  each engine built ahead of time as `ddrnet engine` builds it, recorded in the bundle's deploy.yaml and then
  loaded the way the runtime loads it (a rebuild instead of a load is a failure);
- Paddle Inference on the GPU.

Every row carries its argmax agreement with the CPU FP32 output (onnxruntime on the CPU, same tensor);
INT8 rows also with the same Q/DQ model on the CPU. Loud: on a machine with a CUDA GPU, a path whose
library is installed must start, run on the GPU and agree (FP32 >= 99.9 % and FP16 >= 99 % of pixels with
CPU FP32; INT8 >= 98 % with the same Q/DQ model on the CPU: INT8 against FP32 depends on the weights and is
recorded, not judged), else it is a failure and the run exits non-zero. A path whose library is not
installed is skipped, with the reason; without a GPU every path is skipped. Every backend returns host
arrays, so a timed run includes its copies.

    python benchmarks/gpu.py            # ~8 min: 23-slim and 23 at 1024x2048 (benchmarks/gpu_check.sh)
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import shutil
import sys
import tempfile
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # run as a script: the sibling modules import by name
    sys.path.insert(0, HERE)

import timing  # noqa: E402
import variants  # noqa: E402

FP32_MIN, FP16_MIN, INT8_SAME_MODEL_MIN = 0.999, 0.99, 0.98

# published figures, for comparison only (not measured here)
ANCHORS = (
    ("paper (Hong et al. 2021), RTX 2080Ti, 1024x2048", "ddrnet23_slim 101.6 FPS; ddrnet23 37.1 FPS"),
    ("PaddleSeg model zoo, V100, Paddle-TensorRT FP32, 1024x2048", "DDRNet_23 42.6 FPS"),
    ("Jetson Xavier NX, TensorRT FP16, 1024x2048", "ddrnet23_slim 45.2 ms; ddrnet23 106.3 ms"),
)


class GpuArtifacts:
    def __init__(self, folder: str):
        self.fp32_dir = os.path.join(folder, "fp32")  # Paddle + ONNX, argmax output
        self.int8_dir = os.path.join(folder, "int8_tensorrt")  # bundle: symmetric int8 Q/DQ ONNX for TensorRT


def build(weights: str, hw: Tuple[int, int], frames: List[np.ndarray], folder: str) -> GpuArtifacts:
    """The FP32 export and an INT8 bundle for TensorRT (what `ddrnet export --int8 --target tensorrt` writes,
    without its parity gate: randomly initialised weights have no meaningful INT8 parity)."""
    from ddrnet.export import targets
    from ddrnet.runtime.manifest import load_manifest, write_manifest

    art = GpuArtifacts(folder)
    variants.export_fp32(weights, art.fp32_dir, hw)
    os.makedirs(art.int8_dir, exist_ok=True)
    info = variants.quantize_ours(art.fp32_dir, frames, os.path.join(art.int8_dir, "model.onnx"), target="tensorrt")
    manifest = load_manifest(art.fp32_dir)
    manifest.pop("parity", None)
    manifest.update(precision="int8", quantization=info, target=targets.section("tensorrt", int8=True),
                    files=[{"format": "onnx", "role": "model", "path": "model.onnx"}])
    write_manifest(art.int8_dir, manifest)
    return art


# -- what this machine can run -----------------------------------------------------------------

def gpu_absent() -> Optional[str]:
    """Why this machine has no CUDA GPU (None when it has one), asked of the CUDA driver itself."""
    import ctypes

    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no CUDA driver (libcuda.so.1)"
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "the CUDA driver sees no GPU"
    return None


def _installed(*modules: str) -> Optional[str]:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return "not installed: " + ", ".join(missing) if missing else None


def _ort_provider(provider: str) -> Callable[[], Optional[str]]:
    def needs() -> Optional[str]:
        import onnxruntime as ort

        if provider not in ort.get_available_providers():
            return "this onnxruntime has no {} (pip install onnxruntime-gpu)".format(provider)
        return _installed("tensorrt") if provider == "TensorrtExecutionProvider" else None
    return needs


def _paddle_gpu() -> Optional[str]:
    if importlib.util.find_spec("paddle") is None:
        return "not installed: paddle"
    import paddle

    return None if paddle.device.is_compiled_with_cuda() else "this paddlepaddle has no CUDA (paddlepaddle-gpu)"


# -- the paths -----------------------------------------------------------------------------------

class GpuPath(NamedTuple):
    key: str
    label: str
    precision: str
    needs: Callable[[], Optional[str]]  # why this machine cannot run it (None: it must)
    open: Callable[[], object]  # the started backend; raises when it cannot start
    same_model: bool = False  # INT8: also judged against the same model on the CPU


def _ort(path: str, provider: str):
    from ddrnet.runtime.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path, "gpu", spinning=False,
                                 gpu_providers=("tensorrt",) if provider.startswith("Tensorrt") else ("cuda",))
    if backend.providers[0] != provider:  # onnxruntime falls back to the next provider without a word
        raise RuntimeError("asked for {}, onnxruntime runs {}".format(provider, backend.providers[0]))
    return backend


def _tensorrt(model_dir: str, precision: str):
    """Build the engine as `ddrnet engine` does, then open the bundle as the runtime does: it must load
    the recorded engine, not build another."""
    from ddrnet.runtime.manifest import load_manifest
    from ddrnet.runtime.tensorrt_backend import build_engine, open_backend

    entry = build_engine(model_dir, load_manifest(model_dir), precision)
    backend = open_backend(load_manifest(model_dir), model_dir, "gpu", precision)
    if not backend.engine_path or not backend.engine_path.endswith(entry["path"]):
        raise RuntimeError("the runtime built a new engine instead of loading {}".format(entry["path"]))
    backend.build_s = entry["build_s"]
    return backend


def _paddle(model_dir: str):
    from ddrnet.runtime.backends import PaddleInferenceBackend

    return PaddleInferenceBackend(os.path.join(model_dir, "inference.pdmodel"),
                                  os.path.join(model_dir, "inference.pdiparams"), "gpu")


def paths(art: GpuArtifacts) -> List[GpuPath]:
    onnx_fp32 = os.path.join(art.fp32_dir, "model.onnx")
    trt = lambda: _installed("tensorrt", "pycuda")  # noqa: E731
    return [
        GpuPath("onnxruntime_cuda_fp32", "onnxruntime CUDA provider", "fp32",
                _ort_provider("CUDAExecutionProvider"), lambda: _ort(onnx_fp32, "CUDAExecutionProvider")),
        GpuPath("onnxruntime_tensorrt_fp32", "onnxruntime TensorRT provider", "fp32",
                _ort_provider("TensorrtExecutionProvider"), lambda: _ort(onnx_fp32, "TensorrtExecutionProvider")),
        GpuPath("tensorrt_fp32", "TensorRT (native)", "fp32", trt, lambda: _tensorrt(art.fp32_dir, "fp32")),
        GpuPath("tensorrt_fp16", "TensorRT (native)", "fp16", trt, lambda: _tensorrt(art.fp32_dir, "fp16")),
        GpuPath("tensorrt_int8", "TensorRT (native, Q/DQ)", "int8", trt, lambda: _tensorrt(art.int8_dir, "int8"),
                same_model=True),
        GpuPath("paddle_gpu_fp32", "Paddle Inference GPU", "fp32", _paddle_gpu, lambda: _paddle(art.fp32_dir)),
    ]


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return "{}: {}".format(type(err).__name__, text.splitlines()[0] if text else "")


def minimum(path: GpuPath) -> float:
    return {"fp32": FP32_MIN, "fp16": FP16_MIN}.get(path.precision, INT8_SAME_MODEL_MIN)


def subjects(art: GpuArtifacts, tensor: np.ndarray, base: Dict[str, object],
             chosen: Optional[Sequence[GpuPath]] = None, no_gpu: Optional[str] = "ask"
             ) -> Tuple[List[object], Dict[str, str], List[str]]:
    """(timed subjects, {key: why skipped}, failures) for `chosen` paths (default: all).
    `no_gpu`: why there is no GPU (None: there is one; "ask": ask the CUDA driver)."""
    from ddrnet.runtime.backends import OnnxRuntimeBackend
    from ddrnet.runtime.timing import Subject

    no_gpu = gpu_absent() if no_gpu == "ask" else no_gpu
    chosen = paths(art) if chosen is None else chosen
    found, skipped, failures = [], {}, []  # type: List[object], Dict[str, str], List[str]
    references = {}  # type: Dict[str, np.ndarray]
    for path in chosen:
        reason = no_gpu or path.needs()
        if reason:
            skipped[path.key] = reason
            continue
        try:
            backend = path.open()
            out = backend.run(tensor)
        except Exception as err:  # noqa: BLE001  reported as a failure with its one-line reason
            failures.append("{}: should run on this GPU and did not start ({})".format(path.key, _one_line(err)))
            continue
        if not references:
            references["fp32"] = OnnxRuntimeBackend(os.path.join(art.fp32_dir, "model.onnx"), "cpu").run(tensor)
            references["int8"] = OnnxRuntimeBackend(os.path.join(art.int8_dir, "model.onnx"), "cpu").run(tensor)
        row = dict(base, format=path.key, precision=path.precision, device=getattr(backend, "device_name", "GPU"),
                   format_label=path.label, agreement_cpu_fp32=timing.agreement(out, references["fp32"]))
        judged = "agreement_cpu_fp32"
        if path.same_model:
            row["agreement_cpu_same_model"] = timing.agreement(out, references["int8"])
            judged = "agreement_cpu_same_model"
        for field in ("providers", "build_s"):
            if getattr(backend, field, None) is not None:
                row["engine_build_s" if field == "build_s" else field] = getattr(backend, field)
        if row[judged] < minimum(path):
            row["failed"] = "{} {:.3%} < {:.1%}".format(judged, row[judged], minimum(path))
            failures.append("{}: {}".format(path.key, row["failed"]))
        found.append(Subject(row, lambda b=backend: b.run(tensor)))
    return found, skipped, failures


# -- the short GPU check -------------------------------------------------------------------------

def check(models: Sequence[str], hw: Tuple[int, int], seconds: float, out: str, weights: Optional[str]) -> int:
    """Every GPU path of `models` at `hw`: p50 / p99 / FPS and agreement; returns 1 on any failure, or when
    nothing could be measured."""
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.bench import host_info, versions
    from ddrnet.runtime.fileio import write_json
    from ddrnet.runtime.timing import measure_for

    if importlib.util.find_spec("paddle") is None:
        print("the GPU check exports its models with Paddle: pip install -c constraints.txt -e '.[train-gpu]'")
        return 2
    no_gpu = gpu_absent()
    print("GPU: {}".format(no_gpu or "present"))
    work = tempfile.mkdtemp(prefix="ddrnet-gpu-check-")
    results = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "host": host_info(), "versions": versions(), "rows": [], "skipped": {}, "failures": []}
    for model in models:
        key = "{}@{}x{}".format(model, *hw)
        print("building {} (FP32 export, INT8 Q/DQ for TensorRT) ...".format(key))
        ckpt = weights or variants.random_checkpoint(model, os.path.join(work, "weights"))
        frames = variants.calibration_frames(2, hw, None)
        art = build(ckpt, hw, frames, os.path.join(work, key))
        tensor = Predictor(art.fp32_dir).preprocess(frames[0])
        found, skipped, failures = subjects(art, tensor, {"model": model, "hw": list(hw)}, no_gpu=no_gpu)
        results["skipped"].update({key + " " + k: v for k, v in skipped.items()})
        results["failures"] += [key + " " + f for f in failures]
        if found:
            results["rows"] += measure_for(found, seconds, 20, 500, progress=key)
        write_json(results, os.path.join(out, "gpu_check.json"))
    shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    for line in results["failures"]:
        print("FAILED " + line)
    if not results["rows"]:
        print("FAILED nothing was measured: {}".format(no_gpu or "no GPU path could run (see skipped)"))
    print("wrote {}".format(os.path.join(out, "gpu_check.json")))
    return 1 if results["failures"] or not results["rows"] else 0


def table(results: dict) -> str:
    lines = ["| model | path | precision | GPU | engine build s | p50 ms | p99 ms | FPS (p50) | agree CPU FP32 | "
             "agree CPU same model |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lat = r["latency_ms"]
        lines.append("| {} {}x{} | {} | {} | {} | {} | {:.2f} | {:.2f} | {:.1f} | {:.3%} | {} |".format(
            r["model"], r["hw"][0], r["hw"][1], r["format_label"], r["precision"], r["device"],
            r.get("engine_build_s", ""), lat["p50"], lat["p99"], r["fps_p50"], r["agreement_cpu_fp32"],
            "{:.3%}".format(r["agreement_cpu_same_model"]) if "agreement_cpu_same_model" in r else ""))
    lines += ["skipped {}: {}".format(k, v) for k, v in results["skipped"].items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from ddrnet.runtime.options import parse_hw

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ddrnet23_slim,ddrnet23", help="comma-separated (default both)")
    parser.add_argument("--size", default="1024x2048", help="HxW (default 1024x2048)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per model (default 3)")
    parser.add_argument("--weights", help="a trained checkpoint of the one model in --models (default: random "
                                          "weights: speed does not depend on them)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "gpu_check"))
    args = parser.parse_args(argv)
    if args.weights and "," in args.models:
        parser.error("--weights fits one model: give it with --models NAME")
    return check(args.models.split(","), parse_hw(args.size), args.seconds, args.out, args.weights)


if __name__ == "__main__":
    raise SystemExit(main())
