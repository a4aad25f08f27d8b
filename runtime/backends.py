"""Inference backends behind one small interface (like onnxruntime's InferenceSession):
`input_name`, `input_shape` (-1 for dynamic dims), `output_names`, `run(tensor) -> first output`.

Each backend imports its library only when created, so the runtime works with just one of them
installed; Paddle in particular is imported only by the paddle backend.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from typing import List, Optional, Tuple

import numpy as np

from ddrnet.runtime.errors import DDRNetError

BACKENDS = ("onnxruntime", "paddle", "tensorrt")
DEVICES = ("cpu", "gpu")


class Backend:
    """What the Predictor needs from an inference engine."""

    name: str  # "onnxruntime" | "paddle" | "tensorrt"
    input_name: str
    input_shape: List[int]  # [N, C, H, W], -1 where dynamic
    output_names: List[str]
    model_files: List[str]  # what the model costs on disk

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Run on a float32 NCHW tensor and return the first output."""
        raise NotImplementedError


def _static_dims(shape) -> List[int]:
    """Symbolic / unknown dims (strings, None, <= 0) become -1."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: str, device: str = "cpu", threads: Optional[int] = None,
                 profile_prefix: Optional[str] = None, spinning: bool = True):
        """`spinning`: onnxruntime's idle worker threads busy-wait for the next run (its default, the
        lowest latency for one model); off, they sleep and leave the cores to other sessions."""
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
        providers = self._providers(ort, device, os.path.dirname(path))
        try:
            self._session = ort.InferenceSession(path, sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception classes for bad graphs
            raise DDRNetError("{}: onnxruntime cannot load it ({})".format(
                path, str(err).splitlines()[0])) from None
        first = self._session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = _static_dims(first.shape)
        self.output_names = [o.name for o in self._session.get_outputs()]
        self._fetch = self.output_names[:1]
        self.providers = self._session.get_providers()
        if device == "gpu" and self.providers == ["CPUExecutionProvider"]:
            # onnxruntime falls back to the CPU silently when the CUDA libraries fail to load
            raise DDRNetError("{}: onnxruntime could not start a GPU provider (CUDA / cuDNN libraries "
                              "missing or of another version? see its log above)".format(path))
        self.model_files = [path]

    @staticmethod
    def _providers(ort, device: str, cache_dir: str) -> list:
        if device == "cpu":
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        providers = []  # type: list
        # onnxruntime-gpu lists TensorRT even when libnvinfer is absent; only ask for it when the
        # tensorrt package is installed, otherwise every session start logs a load failure
        if "TensorrtExecutionProvider" in available and importlib.util.find_spec("tensorrt"):
            cache = os.path.join(cache_dir, "ort_trt_cache")
            trt_options = {}  # type: dict
            try:
                os.makedirs(cache, exist_ok=True)
                trt_options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache}
            except OSError:
                pass  # read-only model dir: TensorRT rebuilds its engine every session
            providers.append(("TensorrtExecutionProvider", trt_options))
        if "CUDAExecutionProvider" in available:
            providers.append("CUDAExecutionProvider")
        if not providers:
            raise DDRNetError("--device gpu: this onnxruntime has no CUDA provider (available: {}); "
                              "install onnxruntime-gpu".format(", ".join(available)))
        return providers + ["CPUExecutionProvider"]

    def run(self, tensor: np.ndarray) -> np.ndarray:
        return self._session.run(self._fetch, {self.input_name: tensor})[0]

    def end_profiling(self) -> str:
        """Stop profiling (profile_prefix) and return the trace file's path."""
        return self._session.end_profiling()


class PaddleInferenceBackend(Backend):
    name = "paddle"

    def __init__(self, model_file: str, params_file: str, device: str = "cpu",
                 threads: Optional[int] = None, input_shape: Optional[List[int]] = None,
                 precision: str = "fp32"):
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
            config.enable_mkldnn()
            if precision == "int8":
                config.enable_mkldnn_int8()
            config.set_cpu_math_library_num_threads(int(threads or os.cpu_count() or 1))
        config.switch_ir_optim(True)
        config.enable_memory_optim()
        config.disable_glog_info()
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

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self._input.reshape(list(tensor.shape))
        self._input.copy_from_cpu(tensor)
        self._predictor.run()
        return self._output.copy_to_cpu()


# TensorRT optimisation profile for dynamic dims: (min, opt, max) of (N, H, W). Tactics are tuned
# for opt (a Cityscapes frame); max covers 1080p and bounds the activation memory TensorRT reserves.
DEFAULT_PROFILE = ((1, 64, 64), (1, 1024, 2048), (4, 2048, 2048))
TRT_PRECISIONS = ("fp32", "fp16", "int8")


class TensorRTBackend(Backend):
    """TensorRT engine built from the ONNX file and cached next to it.

    The cache name carries everything that invalidates an engine: the ONNX file's hash, the GPU,
    its compute capability, the TensorRT version, the precision and the dynamic-shape profile.
    INT8 uses the Q/DQ scales in the graph (explicit quantization), no calibration.
    Needs TensorRT >= 8.5 (tensor-address API) and pycuda.
    """

    name = "tensorrt"

    def __init__(self, onnx_path: str, device: str = "gpu", precision: str = "fp16",
                 cache_dir: Optional[str] = None, profile: Tuple = DEFAULT_PROFILE,
                 workspace_mb: int = 2048):
        if device != "gpu":
            raise DDRNetError("the tensorrt backend runs on a GPU only: use --device gpu")
        if precision not in TRT_PRECISIONS:
            raise DDRNetError("tensorrt precision must be one of {}, got {!r}".format(
                ", ".join(TRT_PRECISIONS), precision))
        try:
            import tensorrt as trt
            import pycuda.driver as cuda
        except ImportError as err:
            raise DDRNetError("the tensorrt backend needs the tensorrt and pycuda packages "
                              "({}); on Jetson use JetPack's wheels".format(err)) from None
        if not hasattr(trt.ICudaEngine, "num_io_tensors"):
            raise DDRNetError("tensorrt {} is too old: the tensorrt backend needs 8.5 or newer".format(
                trt.__version__))
        try:
            cuda.init()
            if cuda.Device.count() == 0:
                raise DDRNetError("the tensorrt backend found no CUDA GPU")
            gpu = cuda.Device(0)
        except cuda.Error as err:
            raise DDRNetError("the tensorrt backend found no usable CUDA GPU ({})".format(err)) from None
        self._trt, self._cuda = trt, cuda
        # the primary context is the one the CUDA runtime (and so TensorRT) uses; pushing it in
        # run() lets any thread call run()
        self._context = gpu.retain_primary_context()
        self.device_name = gpu.name()
        self.precision = precision
        self.model_files = [onnx_path]
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._context.push()
        try:
            engine_path = self._engine_path(onnx_path, cache_dir, gpu, precision, profile)
            self._engine = self._load_or_build(onnx_path, engine_path, precision, profile, workspace_mb)
            self._exec = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            self._describe_io()
            self._buffers_shape = None  # type: Optional[tuple]
            self._host = {}  # type: dict
            self._device = {}  # type: dict
        finally:
            self._context.pop()
        self.engine_path = engine_path

    def _engine_path(self, onnx_path: str, cache_dir: Optional[str], gpu, precision: str,
                     profile: Tuple) -> str:
        from ddrnet.runtime.manifest import sha256_file

        major, minor = gpu.compute_capability()
        key = "{}|{}|{}".format(sha256_file(onnx_path), repr(profile), self._trt.__version__)
        stem = os.path.splitext(os.path.basename(onnx_path))[0]
        gpu_tag = re.sub(r"[^A-Za-z0-9]+", "-", self.device_name).strip("-")
        name = "{}.{}.sm{}{}.trt{}.{}.{}.engine".format(
            stem, gpu_tag, major, minor, self._trt.__version__, precision,
            hashlib.sha256(key.encode()).hexdigest()[:12])
        return os.path.join(cache_dir or os.path.dirname(os.path.abspath(onnx_path)), name)

    def _load_or_build(self, onnx_path: str, engine_path: str, precision: str, profile: Tuple,
                       workspace_mb: int):
        trt = self._trt
        runtime = trt.Runtime(self._logger)
        if os.path.isfile(engine_path):
            with open(engine_path, "rb") as f:
                engine = runtime.deserialize_cuda_engine(f.read())
            if engine is not None:
                return engine
        serialized = self._build(onnx_path, precision, profile, workspace_mb)
        tmp = engine_path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(serialized)
            os.replace(tmp, engine_path)
        except OSError:
            pass  # a read-only model dir only costs a rebuild next time
        engine = runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise DDRNetError("{}: TensorRT built an engine it cannot load".format(onnx_path))
        return engine

    def _build(self, onnx_path: str, precision: str, profile: Tuple, workspace_mb: int):
        trt = self._trt
        builder = trt.Builder(self._logger)
        flags = 0
        if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from 10 on
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(onnx_path):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise DDRNetError("{}: TensorRT cannot parse it ({})".format(
                onnx_path, errors[0] if errors else "unknown error"))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        self._set_precision(builder, config, precision)
        self._add_profile(builder, network, config, profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise DDRNetError("{}: TensorRT failed to build an engine (see its log above)".format(onnx_path))
        return serialized

    def _set_precision(self, builder, config, precision: str) -> None:
        flags = self._trt.BuilderFlag
        if precision == "fp32":
            return
        # INT8 takes its scales from the graph's Q/DQ pairs; layers outside them may run in FP16.
        # TensorRT 11 dropped both flags (strongly typed networks): Q/DQ graphs still run INT8.
        if precision == "int8" and hasattr(flags, "INT8"):
            config.set_flag(flags.INT8)
        if hasattr(flags, "FP16"):
            if getattr(builder, "platform_has_fast_fp16", True):
                config.set_flag(flags.FP16)
        elif precision == "fp16":
            raise DDRNetError("TensorRT {} builds strongly typed networks only: export an FP16 ONNX "
                              "or use --precision fp32".format(self._trt.__version__))

    @staticmethod
    def _add_profile(builder, network, config, profile: Tuple) -> None:
        tensor = network.get_input(0)
        shape = list(tensor.shape)
        if all(d > 0 for d in shape):
            return
        ranges = []
        for (n, h, w) in profile:
            dims = [n, shape[1], h, w]
            ranges.append(tuple(d if d > 0 else dims[i] for i, d in enumerate(shape)))
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(tensor.name, ranges[0], ranges[1], ranges[2])
        config.add_optimization_profile(opt_profile)

    def _describe_io(self) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name = inputs[0]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_shape = [int(d) for d in engine.get_tensor_shape(self.input_name)]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}

    def _allocate(self, shape: tuple) -> None:
        """Pinned host + device buffers for one input shape (reallocated only when it changes)."""
        cuda = self._cuda
        if not self._exec.set_input_shape(self.input_name, shape):
            raise DDRNetError("input shape {} is outside the TensorRT engine's profile {}".format(
                shape, self.input_shape))
        for name in [self.input_name] + self.output_names:
            dims = tuple(self._exec.get_tensor_shape(name))
            self._host[name] = cuda.pagelocked_empty(dims, self._dtypes[name])
            self._device[name] = cuda.mem_alloc(self._host[name].nbytes)
            self._exec.set_tensor_address(name, int(self._device[name]))
        self._buffers_shape = shape

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Returns the pinned output buffer: valid until the next run."""
        cuda = self._cuda
        self._context.push()
        try:
            if tensor.shape != self._buffers_shape:
                self._allocate(tuple(tensor.shape))
            host_in, out = self._host[self.input_name], self.output_names[0]
            np.copyto(host_in, tensor, casting="same_kind")
            cuda.memcpy_htod_async(self._device[self.input_name], host_in, self._stream)
            if not self._exec.execute_async_v3(self._stream.handle):
                raise DDRNetError("TensorRT execution failed")
            for name in self.output_names:
                cuda.memcpy_dtoh_async(self._host[name], self._device[name], self._stream)
            self._stream.synchronize()
            return self._host[out]
        finally:
            self._context.pop()


def create_backend(manifest: dict, model_dir: str, backend: str = "onnxruntime", device: str = "cpu",
                   threads: Optional[int] = None, precision: Optional[str] = None,
                   spinning: bool = True) -> Backend:
    """Open the manifest's file for `backend` (already verified by load_manifest).
    `precision` is for tensorrt only (fp32 | fp16 | int8); by default the manifest's.
    `spinning` is onnxruntime's (see OnnxRuntimeBackend)."""
    from ddrnet.runtime.manifest import find_file, formats

    if backend not in BACKENDS:
        raise DDRNetError("unknown backend {!r}: choose one of {}".format(backend, ", ".join(BACKENDS)))
    if device not in DEVICES:
        raise DDRNetError("unknown device {!r}: choose cpu or gpu".format(device))
    if precision and backend != "tensorrt":
        raise DDRNetError("precision {} is for the tensorrt backend; {} runs the model as exported ({})"
                          .format(precision, backend, manifest["precision"]))
    fmt = "paddle" if backend == "paddle" else "onnx"
    model_file = find_file(manifest, model_dir, fmt)
    if model_file is None:
        raise DDRNetError("{}: no {} model listed in deploy.yaml (it has: {}); the {} backend needs one"
                          .format(model_dir, fmt, ", ".join(formats(manifest)), backend))
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(model_file, device, threads, spinning=spinning)
    if backend == "paddle":
        params = find_file(manifest, model_dir, "paddle", role="params")
        if params is None:
            raise DDRNetError("{}: deploy.yaml lists no paddle params file (role: params)".format(model_dir))
        return PaddleInferenceBackend(model_file, params, device, threads,
                                      input_shape=manifest["input"]["shape"],
                                      precision=manifest["precision"])
    return TensorRTBackend(model_file, device, precision or _trt_precision(manifest["precision"]))


def _trt_precision(manifest_precision: str) -> str:
    return manifest_precision if manifest_precision in TRT_PRECISIONS else "fp32"
