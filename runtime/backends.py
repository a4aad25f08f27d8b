"""Inference backends behind one small interface (like onnxruntime's InferenceSession):
`input_name`, `input_shape` (-1 for dynamic dims), `output_names`, `run(tensor) -> first output`.

Each backend imports its library only when created, so the runtime works with just one of them
installed; Paddle in particular is imported only by the paddle backend.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import platform
import threading
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.options import cpu_count

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "openvino", "paddle", "tensorrt")
AUTO = "auto"  # the fastest installed backend for the host (choose_backend)
DEVICES = ("cpu", "gpu")


class Backend:
    """What the Predictor needs from an inference engine."""

    name: str  # one of BACKENDS
    input_name: str
    input_shape: List[int]  # [N, C, H, W], -1 where dynamic
    output_names: List[str]
    model_files: List[str]  # what the model costs on disk
    # the first output as loaded, for the check against deploy.yaml (runtime/consistency.py);
    # None where a backend cannot tell before running
    output_dtype: Optional[str] = None  # numpy dtype name
    output_shape: Optional[List[int]] = None  # -1 where dynamic
    chosen_because: Optional[str] = None  # why `--backend auto` picked this one (create_backend)
    # True: run() takes [N, H, W, 3] uint8 BGR frames at the network's size and normalises them in its
    # graph (the Predictor then only resizes); False: the float32 [N, 3, H, W] tensor
    takes_frames: bool = False
    # the most frames one run() takes (None: no limit); the stream splits larger batches into chunks
    max_batch: Optional[int] = None

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Run on a float32 NCHW tensor and return the first output, an array the caller owns.
        Any thread may call it: a backend whose library is not thread-safe serialises calls with a lock
        (onnxruntime's session.run is thread-safe itself)."""
        raise NotImplementedError


# onnxruntime's tensor type names -> numpy dtype names
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(uint8)": "uint8",
              "tensor(int8)": "int8"}


def _static_dims(shape) -> List[int]:
    """Symbolic / unknown dims (strings, None, <= 0) become -1."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


# onnxruntime's GPU providers, in the order the runtime prefers them (TensorRT only with the tensorrt package)
GPU_PROVIDERS = ("tensorrt", "cuda")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str, device: str = "cpu", threads: Optional[int] = None,
                 profile_prefix: Optional[str] = None, spinning: bool = True,
                 gpu_providers: Sequence[str] = GPU_PROVIDERS):
        """`spinning`: onnxruntime's idle worker threads busy-wait for the next run (its default, the
        lowest latency for one model); off, they sleep and leave the cores to other sessions.
        `gpu_providers`: for device gpu, the providers to use where available, in order of preference."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise DDRNetError("the onnxruntime backend needs onnxruntime "
                              "(pip install onnxruntime, or onnxruntime-gpu for --device gpu)") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix:  # onnxruntime's per-node trace (see ddrnet.runtime.opprofile)
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        providers = self._providers(ort, device, path, gpu_providers)
        try:
            self._session = ort.InferenceSession(path, sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception classes for bad graphs
            raise DDRNetError("{}: onnxruntime cannot load it ({})".format(
                path, str(err).splitlines()[0])) from None
        first = self._session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = _static_dims(first.shape)
        outputs = self._session.get_outputs()
        self.output_names = [o.name for o in outputs]
        self.output_dtype = ORT_DTYPES.get(outputs[0].type)
        self.output_shape = _static_dims(outputs[0].shape)
        self._fetch = self.output_names[:1]
        self.providers = self._session.get_providers()
        if device == "gpu" and self.providers == ["CPUExecutionProvider"]:
            # onnxruntime falls back to the CPU silently when the CUDA libraries fail to load
            raise DDRNetError("{}: onnxruntime could not start a GPU provider (CUDA / cuDNN libraries "
                              "missing or of another version? see its log above)".format(path))
        self.model_files = [path]

    @staticmethod
    def _providers(ort, device: str, model_path: str, wanted: Sequence[str] = GPU_PROVIDERS) -> list:
        if device == "cpu":
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        providers = []  # type: list
        # onnxruntime-gpu lists TensorRT even when libnvinfer is absent; only ask for it when the
        # tensorrt package is installed, otherwise every session start logs a load failure
        if "tensorrt" in wanted and "TensorrtExecutionProvider" in available and importlib.util.find_spec("tensorrt"):
            from ddrnet.runtime.manifest import sha256_file

            # keyed by the model's bytes: onnxruntime keys its engines by file name, so a model re-exported
            # into the same dir would reuse the old engine
            cache = os.path.join(os.path.dirname(model_path), "ort_trt_cache", sha256_file(model_path)[:16])
            trt_options = {}  # type: dict
            try:
                os.makedirs(cache, exist_ok=True)
                trt_options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache}
            except OSError:
                pass  # read-only model dir: TensorRT rebuilds its engine every session
            providers.append(("TensorrtExecutionProvider", trt_options))
        if "cuda" in wanted and "CUDAExecutionProvider" in available:
            providers.append("CUDAExecutionProvider")
        if not providers:
            kind, extra = ("CUDA", "") if "cuda" in wanted else ("TensorRT", " and tensorrt")
            raise DDRNetError("--device gpu: this onnxruntime has no {} provider (available: {}); install "
                              "onnxruntime-gpu{}".format(kind, ", ".join(available), extra))
        return providers + ["CPUExecutionProvider"]

    def run(self, tensor: np.ndarray) -> np.ndarray:
        return self._session.run(self._fetch, {self.input_name: tensor})[0]

    def end_profiling(self) -> str:
        """Stop profiling (profile_prefix) and return the trace file's path."""
        return self._session.end_profiling()


def paddle_config(model_file: str, params_file: str, device: str = "cpu", threads: Optional[int] = None,
                  precision: str = "fp32", optimize: bool = True):
    """The suite's one Paddle Inference setup (the paddle backend, benchmarks/, compress/ptq.py).
    CPU: oneDNN with `threads` math threads (default all cores) and its INT8 or BF16 kernels for
    precision int8 / bf16; GPU: CUDA device 0. `optimize=False` runs the program exactly as written
    (no IR passes, no oneDNN): what a fake-quant program computes, for accuracy checks."""
    try:
        from paddle import inference as paddle_infer
    except ImportError:
        raise DDRNetError("the paddle backend needs paddlepaddle "
                          "(pip install paddlepaddle==2.6.2, or paddlepaddle-gpu)") from None
    config = paddle_infer.Config(model_file, params_file)
    if device == "gpu":
        config.enable_use_gpu(256, 0)
        if not config.use_gpu():  # a CPU-only wheel logs an error and would quietly run on the CPU
            raise DDRNetError("--device gpu: this paddlepaddle has no CUDA support "
                              "(pip install paddlepaddle-gpu==2.6.2)")
    else:
        config.disable_gpu()
        if optimize:
            config.enable_mkldnn()
            if precision == "int8":
                config.enable_mkldnn_int8()
            elif precision == "bf16":
                config.enable_mkldnn_bfloat16()
        config.set_cpu_math_library_num_threads(int(threads or cpu_count()))
    config.switch_ir_optim(optimize)
    if optimize:
        config.enable_memory_optim()
    config.disable_glog_info()
    return config


class PaddleInferenceBackend(Backend):
    name = "paddle"

    def __init__(self, model_file: str, params_file: str, device: str = "cpu",
                 threads: Optional[int] = None, input_shape: Optional[List[int]] = None,
                 precision: str = "fp32"):
        """`precision`: the model's (int8 selects oneDNN's INT8 kernels), or bf16 on a BF16 CPU."""
        from paddle import inference as paddle_infer

        config = paddle_config(model_file, params_file, device, threads, precision)
        try:
            self._predictor = paddle_infer.create_predictor(config)
        except Exception as err:  # Paddle raises its own enforce errors for bad programs
            raise DDRNetError("{}: Paddle Inference cannot load it ({})".format(
                model_file, str(err).strip().splitlines()[0])) from None
        self.input_name = self._predictor.get_input_names()[0]
        self.output_names = list(self._predictor.get_output_names())
        # Paddle Inference does not report the declared input shape; deploy.yaml does
        self.input_shape = list(input_shape) if input_shape else [-1, 3, -1, -1]
        self._input = self._predictor.get_input_handle(self.input_name)
        self._output = self._predictor.get_output_handle(self.output_names[0])
        self.model_files = [model_file, params_file]
        self._lock = threading.Lock()
        self.precision = precision

    def run(self, tensor: np.ndarray) -> np.ndarray:
        with self._lock:  # one predictor: its input and output handles are shared
            self._input.reshape(list(tensor.shape))
            self._input.copy_from_cpu(tensor)
            self._predictor.run()
            return self._output.copy_to_cpu()


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it); a broken package counts as absent."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def choose_backend(manifest: dict, device: str) -> Tuple[str, str]:
    """`--backend auto`: (backend, why), by the rule README "Which backend wins where" measures:
    on an x86 CPU OpenVINO (FP32 models in BF16 on AMX / AVX512-BF16 CPUs, INT8 Q/DQ as integer
    kernels), else onnxruntime, else Paddle Inference; on a GPU native TensorRT, else onnxruntime's
    GPU providers, else Paddle. Only backends that are installed and whose format the model has."""
    from ddrnet.runtime.manifest import file_entry, formats

    listed = formats(manifest)

    def onnx(backend: str) -> bool:  # an ONNX file this backend opens (a default INT8 export has one for each)
        return file_entry(manifest, "onnx", backend=backend) is not None

    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    if device == "gpu":
        rules = [(onnx("tensorrt") and installed("tensorrt") and installed("pycuda"), "tensorrt",
                  "native TensorRT on the GPU"),
                 (onnx("onnxruntime") and installed("onnxruntime"), "onnxruntime",
                  "onnxruntime GPU providers (no tensorrt/pycuda)")]
    else:
        rules = [(onnx("openvino") and x86 and installed("openvino"), "openvino",
                  "OpenVINO is the fastest on x86 CPUs"),
                 (onnx("onnxruntime") and installed("onnxruntime"), "onnxruntime",
                  "onnxruntime ({})".format("OpenVINO not installed" if x86 else "not an x86 CPU"))]
    rules.append(("paddle" in listed and installed("paddle"), "paddle", "Paddle Inference (no ONNX backend for it)"))
    for usable, name, why in rules:
        if usable:
            return name, why
    raise DDRNetError("--backend auto: no installed backend runs this model on the {} (it has: {})".format(
        device, ", ".join(listed)))


def create_backend(manifest: dict, model_dir: str, backend: str = "onnxruntime", device: str = "cpu",
                   threads: Optional[int] = None, precision: Optional[str] = None,
                   spinning: bool = True) -> Backend:
    """Open the manifest's file for `backend` (already verified by load_manifest); `auto` picks one
    with choose_backend and sets `chosen_because` on the result.
    `precision`: tensorrt's engine precision (fp32 | fp16 | int8; default the manifest's), openvino's
    (auto | fp32 | bf16; default auto), paddle's bf16 (oneDNN on the CPU); the others run the model as
    exported; "auto" is each backend's default. `spinning` is onnxruntime's (see OnnxRuntimeBackend)."""
    from ddrnet.runtime.manifest import find_file, formats

    if backend not in BACKENDS + (AUTO,):
        raise DDRNetError("unknown backend {!r}: choose one of {}".format(backend, ", ".join(BACKENDS + (AUTO,))))
    if device not in DEVICES:
        raise DDRNetError("unknown device {!r}: choose cpu or gpu".format(device))
    reason = None
    if backend == AUTO:
        backend, reason = choose_backend(manifest, device)
        log.info("backend auto: %s (%s)", backend, reason)
    if precision == "auto" and backend not in ("openvino", "tensorrt"):
        precision = None  # "auto" is every backend's default
    _check_precision(backend, precision, manifest["precision"])
    fmt = "paddle" if backend == "paddle" else "onnx"
    model_file = find_file(manifest, model_dir, fmt, needed_by=backend)
    if model_file is None:
        raise DDRNetError("{}: no {} model listed in deploy.yaml (it has: {}); the {} backend needs one"
                          .format(model_dir, fmt, ", ".join(formats(manifest)), backend))
    engine = _open(backend, manifest, model_dir, model_file, device, threads, precision, spinning)
    engine.chosen_because = reason
    return engine


def _check_precision(backend: str, precision: Optional[str], model_precision: str) -> None:
    if not precision or backend in ("tensorrt", "openvino") or (backend == "paddle" and precision == "bf16"):
        return  # tensorrt and openvino check their own choices
    raise DDRNetError("--precision {}: the {} backend runs the model as exported ({}); precision is a choice "
                      "for tensorrt (fp32, fp16, int8), openvino (auto, fp32, bf16) and paddle (bf16)".format(
                          precision, backend, model_precision))


def _open(backend: str, manifest: dict, model_dir: str, model_file: str, device: str, threads: Optional[int],
          precision: Optional[str], spinning: bool) -> Backend:
    from ddrnet.runtime.manifest import file_entry, find_file

    if backend == "onnxruntime":
        return OnnxRuntimeBackend(model_file, device, threads, spinning=spinning)
    if backend == "openvino":
        from ddrnet.runtime.openvino_backend import OpenVINOBackend

        # the hash load_manifest verified keys the compiled-model cache
        sha = file_entry(manifest, "onnx", backend=backend).get("sha256")
        return OpenVINOBackend(model_file, device, threads, precision or "auto", model_precision=manifest["precision"],
                               model_sha256=sha, frames=manifest["input"])
    if backend == "paddle":
        params = find_file(manifest, model_dir, "paddle", role="params", needed_by=backend)
        if params is None:
            raise DDRNetError("{}: deploy.yaml lists no paddle params file (role: params)".format(model_dir))
        return PaddleInferenceBackend(model_file, params, device, threads,
                                      input_shape=manifest["input"]["shape"],
                                      precision=precision or manifest["precision"])
    from ddrnet.runtime.tensorrt_backend import open_backend

    return open_backend(manifest, model_dir, device, precision)
