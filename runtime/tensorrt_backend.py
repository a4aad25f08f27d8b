"""Native TensorRT backend, and the engines `ddrnet engine` builds ahead of time.

An engine is specific to one GPU model and one TensorRT version, so it is built on (a twin of) the
device: `ddrnet engine --model BUNDLE` builds it from the bundle's ONNX file, writes it to
`BUNDLE/engines/` and records it in deploy.yaml with its SHA-256, the GPU, its compute capability,
the TensorRT version, the precision and the optimisation profile. The runtime loads the recorded
engine that matches the GPU and TensorRT it finds (after checking its hash, like every file it loads);
when none matches it builds one in memory for this run only and says so (minutes on a Jetson), so no
unlisted binary in the model dir is ever loaded.

Precisions: fp32, fp16, and int8 from an INT8 Q/DQ model exported for TensorRT (explicit
quantization: the scales are the graph's; no calibration). An FP32 model is never built as int8, and
a Q/DQ model only as int8.

Needs TensorRT 8.5 to 10.x (the tensor-address API of 8.5; 11 dropped the FP16 / INT8 builder flags)
and pycuda. Every TensorRT attribute used here is listed in `API`, checked when the backend starts;
tests/test_tensorrt.py checks the list against the real TensorRT Python bindings without a GPU.

Why one ~520-line module: the backend and `ddrnet engine` share one engine life cycle (API check,
profile, precision rules, engine names, selection by GPU and TensorRT version), and keeping it in one
place is what guarantees the runtime loads exactly what the engine command recorded.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ddrnet.runtime.backends import Backend
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import atomic_path, write_bytes
from ddrnet.runtime.manifest import MANIFEST_NAME, file_entry, find_file, load_manifest, resolve_file, write_manifest

log = logging.getLogger(__name__)

TRT_PRECISIONS = ("fp32", "fp16", "int8")
SUPPORTED_VERSIONS = "8.5 to 10.x"
ENGINE_DIR = "engines"
DEFAULT_WORKSPACE_MB = 2048

# Every TensorRT attribute this module uses: {"" (the module) or a class: attribute names}.
# EXPLICIT_BATCH is needed before 10 only (explicit batch is the only mode from 10 on).
API = {
    "": ("__version__", "Logger", "Runtime", "Builder", "OnnxParser", "BuilderFlag", "MemoryPoolType",
         "TensorIOMode", "LayerType", "nptype", "NetworkDefinitionCreationFlag"),
    "Logger": ("WARNING",),
    "BuilderFlag": ("FP16", "INT8"),
    "MemoryPoolType": ("WORKSPACE",),
    "TensorIOMode": ("INPUT", "OUTPUT"),
    "LayerType": ("QUANTIZE", "DEQUANTIZE"),
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network"),
    "IBuilderConfig": ("set_memory_pool_limit", "set_flag", "add_optimization_profile", "create_timing_cache",
                       "set_timing_cache", "get_timing_cache"),
    "ITimingCache": ("serialize",),
    "IOptimizationProfile": ("set_shape",),
    "INetworkDefinition": ("get_input", "num_layers", "get_layer"),
    "ILayer": ("type",),
    "ITensor": ("name", "shape"),
    "OnnxParser": ("parse_from_file", "num_errors", "get_error"),
    "Runtime": ("deserialize_cuda_engine",),
    "ICudaEngine": ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_shape", "get_tensor_dtype",
                    "get_tensor_profile_shape", "create_execution_context"),
    "IExecutionContext": ("set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3"),
}
API_BEFORE_10 = {"NetworkDefinitionCreationFlag": ("EXPLICIT_BATCH",)}

Dims = Tuple[int, int, int]  # (N, H, W)


class Profile:
    """A TensorRT optimisation profile for the dynamic dims of an NCHW input: (N, H, W) at min, opt, max.
    Tactics are tuned for `opt`; `max` bounds the activation memory TensorRT reserves."""

    def __init__(self, min: Sequence[int], opt: Sequence[int], max: Sequence[int]):  # noqa: A002
        self.min, self.opt, self.max = (tuple(int(d) for d in dims) for dims in (min, opt, max))
        for name, dims in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if len(dims) != 3 or any(d < 1 for d in dims):
                raise DDRNetError("profile {} {}: expected three positive dims (batch, height, width)".format(
                    name, list(dims)))
        for i, dim in enumerate(("batch", "height", "width")):
            if not self.min[i] <= self.opt[i] <= self.max[i]:
                raise DDRNetError("profile {}: needs min <= opt <= max, got min {}, opt {}, max {}".format(
                    dim, self.min[i], self.opt[i], self.max[i]))

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        try:
            return cls(data["min"], data["opt"], data["max"])
        except (KeyError, TypeError, ValueError):
            raise DDRNetError("profile {!r}: expected min, opt and max as [batch, height, width]".format(
                data)) from None

    def to_dict(self) -> Dict[str, List[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def contains(self, shape: Sequence[int]) -> bool:
        """Whether an NCHW shape fits between min and max."""
        n, _, h, w = shape
        return all(lo <= v <= hi for v, lo, hi in zip((n, h, w), self.min, self.max))

    def describe(self) -> str:
        return "batch {}..{}, height {}..{}, width {}..{} (tuned for {}x3x{}x{})".format(
            self.min[0], self.max[0], self.min[1], self.max[1], self.min[2], self.max[2], *self.opt)

    def __eq__(self, other) -> bool:
        return isinstance(other, Profile) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "Profile({})".format(self.describe())


# for a model dir whose deploy.yaml names no target (a plain `ddrnet export`): a server GPU
DEFAULT_PROFILE = Profile((1, 64, 64), (1, 1024, 2048), (4, 2048, 2048))


# -- TensorRT and the GPU ------------------------------------------------------------------------

def missing_api(trt) -> List[str]:
    """The attributes of `API` that this tensorrt module lacks (empty when it is usable)."""
    wanted = dict(API)
    if _major(trt) < 10:
        wanted.update(API_BEFORE_10)
    missing = []
    for owner, names in wanted.items():
        holder = getattr(trt, owner, None) if owner else trt
        if holder is None:
            missing.append(owner)
            continue
        missing += ["{}.{}".format(owner, n) if owner else n for n in names if not hasattr(holder, n)]
    return missing


def _major(trt) -> int:
    return int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)


def import_tensorrt():
    """(tensorrt, pycuda.driver), or a one-line DDRNetError naming what is missing."""
    try:
        import tensorrt as trt
        import pycuda.driver as cuda
    except ImportError as err:
        raise DDRNetError("the tensorrt backend needs the tensorrt and pycuda packages ({}): pip install "
                          "-c constraints.txt -e '.[runtime-gpu]', on a Jetson JetPack's wheels (docs/jetson.md)"
                          .format(err)) from None
    check_supported(trt)
    return trt, cuda


def check_supported(trt) -> None:
    """Refuse, naming what it lacks, a tensorrt module without the API this backend uses."""
    missing = missing_api(trt)
    if missing:
        raise DDRNetError("tensorrt {} is not supported (this runtime needs {}; it lacks {})".format(
            getattr(trt, "__version__", "?"), SUPPORTED_VERSIONS, ", ".join(missing[:4])))


class Gpu:
    """The CUDA device engines are built for and run on (device 0 of CUDA_VISIBLE_DEVICES), with its
    primary context: the one the CUDA runtime, and so TensorRT, uses."""

    def __init__(self, cuda):
        try:
            cuda.init()
            if cuda.Device.count() == 0:
                raise DDRNetError("the tensorrt backend found no CUDA GPU")
            device = cuda.Device(0)
            self.name = str(device.name())
            self.compute_capability = "{}.{}".format(*device.compute_capability())
            self.context = device.retain_primary_context()
        except cuda.Error as err:
            raise DDRNetError("the tensorrt backend found no usable CUDA GPU ({})".format(err)) from None


def engine_file_name(onnx_path: str, precision: str, gpu: Gpu, trt_version: str, key: str) -> str:
    """`<model>.<precision>.<gpu>.sm<cc>.trt<version>.<key hash>.engine`: what invalidates an engine is in
    its name, so two builds with other settings never write the same file."""
    stem = os.path.splitext(os.path.basename(onnx_path))[0]
    gpu_tag = re.sub(r"[^A-Za-z0-9]+", "-", gpu.name).strip("-")
    return "{}.{}.{}.sm{}.trt{}.{}.engine".format(stem, precision, gpu_tag, gpu.compute_capability.replace(".", ""),
                                                   trt_version, hashlib.sha256(key.encode()).hexdigest()[:12])


# -- what deploy.yaml says ---------------------------------------------------------------------

def int8_flavour(manifest: dict) -> Optional[str]:
    """The INT8 target an INT8 model was quantized for ("tensorrt": symmetric int8 Q/DQ; "cpu": uint8
    activations for x86), or None when deploy.yaml does not say."""
    flavour = manifest.get("target", {}).get("int8_target") or (manifest.get("quantization") or {}).get("target")
    return flavour if isinstance(flavour, str) else None


def default_precision(manifest: dict) -> str:
    """int8 for an INT8 (Q/DQ) model, else the bundle target's engine precision, else fp16."""
    if manifest["precision"] == "int8":
        return "int8"
    precision = (manifest.get("target", {}).get("engine") or {}).get("precision")
    return precision if precision in TRT_PRECISIONS else "fp16"


def check_precision(manifest: dict, model_dir: str, precision: str) -> None:
    """Refuse, before any work, a precision this model cannot be built at."""
    if precision not in TRT_PRECISIONS:
        raise DDRNetError("tensorrt precision must be one of {}, got {!r}".format(", ".join(TRT_PRECISIONS), precision))
    model_int8 = manifest["precision"] == "int8"
    if precision == "int8" and not model_int8:
        raise DDRNetError("{}: precision int8 needs an INT8 Q/DQ model exported for TensorRT (ddrnet export --int8 "
                          "--target tensorrt or jetson); this model is {}, and an FP16 engine labelled int8 would "
                          "be wrong".format(model_dir, manifest["precision"]))
    if model_int8 and precision != "int8":
        raise DDRNetError("{}: this model is INT8 (Q/DQ): TensorRT builds it as int8 only, not {}".format(
            model_dir, precision))
    if model_int8 and int8_flavour(manifest) == "cpu":
        raise DDRNetError("{}: this INT8 model was quantized for onnxruntime on x86 (uint8 activations), which "
                          "TensorRT does not take: export it with --target tensorrt or jetson".format(model_dir))


def target_settings(manifest: dict) -> Tuple[Profile, int]:
    """The profile and workspace (MB) the bundle's target asks for, else this module's defaults."""
    engine = manifest.get("target", {}).get("engine") or {}
    profile = Profile.from_dict(engine["profile"]) if engine.get("profile") else DEFAULT_PROFILE
    return profile, int(engine.get("workspace_mb", DEFAULT_WORKSPACE_MB))


def _onnx_entry(manifest: dict) -> dict:
    return file_entry(manifest, "onnx", backend="tensorrt")  # never the OpenVINO-shaped INT8 graph


def select_engine(manifest: dict, precision: str, gpu: Gpu, trt_version: str) -> Optional[dict]:
    """The recorded engine built for this model, precision, GPU and TensorRT version (the newest), or None."""
    onnx_sha = _onnx_entry(manifest).get("sha256")
    found = [e for e in manifest.get("engines", [])
             if e.get("precision") == precision and e.get("tensorrt") == trt_version and e.get("gpu") == gpu.name
             and e.get("compute_capability") == gpu.compute_capability and e.get("onnx_sha256") == onnx_sha]
    return found[-1] if found else None


# -- building ----------------------------------------------------------------------------------

def _quantize_layers(trt, network) -> int:
    kinds = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return sum(1 for i in range(network.num_layers) if network.get_layer(i).type in kinds)


def _set_precision(trt, config, network, onnx_path: str, precision: str) -> None:
    qdq = _quantize_layers(trt, network)
    if precision == "int8" and not qdq:
        raise DDRNetError("{}: precision int8 needs Q/DQ nodes and this graph has none (an FP32 model); "
                          "export with --int8 --target tensorrt".format(onnx_path))
    if qdq and precision != "int8":
        raise DDRNetError("{}: the graph has {} Q/DQ nodes: build it as int8".format(onnx_path, qdq))
    if precision in ("fp16", "int8"):  # layers outside the Q/DQ pairs run in FP16 rather than FP32
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":  # explicit quantization: the graph's scales, no calibrator
        config.set_flag(trt.BuilderFlag.INT8)


def _set_profile(builder, network, config, profile: Profile) -> Optional[Profile]:
    """Add `profile` for the input's dynamic dims; returns what the engine will accept (None: all fixed)."""
    tensor = network.get_input(0)
    shape = [int(d) for d in tensor.shape]
    if all(d > 0 for d in shape):
        return None
    bounds = []
    for dims in (profile.min, profile.opt, profile.max):
        wanted = (dims[0], shape[1], dims[1], dims[2])
        bounds.append(tuple(d if d > 0 else wanted[i] for i, d in enumerate(shape)))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(tensor.name, bounds[0], bounds[1], bounds[2])
    config.add_optimization_profile(opt_profile)
    return Profile(*[(b[0], b[2], b[3]) for b in bounds])


def build_serialized(trt, onnx_path: str, precision: str, profile: Profile, workspace_mb: int,
                     timing_cache: Optional[str] = None) -> Tuple[bytes, Optional[Profile]]:
    """Parse the ONNX file and build an engine; returns (serialized engine, the profile it accepts or None).
    `timing_cache`: a file of measured tactic timings, read when present and written back (faster rebuilds)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if _major(trt) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise DDRNetError("{}: TensorRT cannot parse it ({})".format(
            onnx_path, errors[0].splitlines()[0] if errors else "unknown error"))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    _set_precision(trt, config, network, onnx_path, precision)
    accepted = _set_profile(builder, network, config, profile)
    if timing_cache:
        previous = b""
        if os.path.isfile(timing_cache):
            with open(timing_cache, "rb") as f:
                previous = f.read()
        config.set_timing_cache(config.create_timing_cache(previous), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DDRNetError("{}: TensorRT failed to build an engine (see its log above)".format(onnx_path))
    if timing_cache:
        write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized), accepted


def build_engine(model_dir: str, manifest: dict, precision: Optional[str] = None, profile: Optional[Profile] = None,
                 workspace_mb: Optional[int] = None, timing_cache: Optional[str] = None) -> dict:
    """`ddrnet engine`: build the engine for this GPU, write it to `model_dir/engines/` and record it in
    deploy.yaml (replacing the entry of an earlier build for the same GPU, TensorRT and precision).
    Defaults come from the bundle's target (deploy.yaml `target.engine`). Returns the new entry."""
    precision = precision or default_precision(manifest)
    check_precision(manifest, model_dir, precision)
    default_profile, default_workspace = target_settings(manifest)
    profile, workspace_mb = profile or default_profile, workspace_mb or default_workspace
    onnx_path = _onnx_path(manifest, model_dir)
    for listed in manifest["files"]:
        full = resolve_file(model_dir, listed["path"])
        if not os.path.isfile(full):
            raise DDRNetError("{}: listed in {} but missing; `ddrnet engine` rewrites {}, which must vouch for every "
                              "file it lists (copy it back, or export a bundle with --target)".format(
                                  full, MANIFEST_NAME, MANIFEST_NAME))
    trt, cuda = import_tensorrt()
    gpu = Gpu(cuda)
    onnx_sha = _onnx_entry(manifest)["sha256"]  # checked by load_manifest
    key = "{}|{}|{}|{}".format(onnx_sha, profile.to_dict(), workspace_mb, trt.__version__)
    rel_path = "{}/{}".format(ENGINE_DIR, engine_file_name(onnx_path, precision, gpu, trt.__version__, key))
    log.info("building a TensorRT %s engine of %s for %s (TensorRT %s; profile for dynamic dims: %s) ...",
             precision, os.path.basename(onnx_path), gpu.name, trt.__version__, profile.describe())
    started = time.perf_counter()
    gpu.context.push()
    try:
        serialized, accepted = build_serialized(trt, onnx_path, precision, profile, workspace_mb, timing_cache)
        if trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(serialized) is None:
            raise DDRNetError("{}: TensorRT built an engine it cannot load".format(onnx_path))
    finally:
        gpu.context.pop()
    with atomic_path(resolve_file(model_dir, rel_path)) as tmp:
        with open(tmp, "wb") as f:
            f.write(serialized)
    entry = {"path": rel_path, "precision": precision, "onnx": _onnx_entry(manifest)["path"],
             "onnx_sha256": onnx_sha, "tensorrt": trt.__version__, "gpu": gpu.name,
             "compute_capability": gpu.compute_capability,
             "profile": accepted.to_dict() if accepted else None, "workspace_mb": workspace_mb,
             "build_s": round(time.perf_counter() - started, 1),
             "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    entry["sha256"] = _record(model_dir, entry)["engines"][-1]["sha256"]
    return entry


def _record(model_dir: str, entry: dict) -> dict:
    """Add `entry` to deploy.yaml and return what was written. deploy.yaml is read afresh under a lock, so
    two `ddrnet engine` runs on one bundle keep both engines. The engine `entry` supersedes (same GPU,
    TensorRT, precision) is deleted, entries whose file is gone are dropped, and if deploy.yaml cannot be
    written the new engine goes too."""
    import fcntl  # POSIX only: imported here, so that export/targets.py can import this module anywhere

    same = ("precision", "tensorrt", "gpu", "compute_capability")
    with open(resolve_file(model_dir, ENGINE_DIR + "/.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        manifest = load_manifest(model_dir, verify=False)
        engines = [e for e in manifest.get("engines", []) if os.path.isfile(resolve_file(model_dir, e["path"]))]
        old = [e for e in engines if all(e.get(k) == entry[k] for k in same)]
        manifest["engines"] = [e for e in engines if e not in old] + [entry]
        try:
            written = write_manifest(model_dir, manifest)
        except BaseException:
            os.remove(resolve_file(model_dir, entry["path"]))
            raise
    for stale in old:
        if stale["path"] != entry["path"]:
            try:
                os.remove(resolve_file(model_dir, stale["path"]))
            except OSError:
                pass  # already gone
    return written


def _onnx_path(manifest: dict, model_dir: str) -> str:
    path = find_file(manifest, model_dir, "onnx", needed_by="tensorrt")
    if path is None:
        raise DDRNetError("{}: no onnx model listed in {}; the tensorrt backend builds its engine from one (export "
                          "with --target tensorrt or jetson)".format(model_dir, MANIFEST_NAME))
    return path


# -- running -----------------------------------------------------------------------------------

class TensorRTBackend(Backend):
    """A TensorRT engine with pinned host buffers and one CUDA stream.

    `engine_file`: a serialized engine to load (its hash already checked); without one the engine is
    built in memory from `onnx_path` at `precision` with `profile` (dynamic dims only).
    run() may be called from any thread: calls are serialised by a lock (one execution context) and
    each returns its own output array.
    """

    name = "tensorrt"

    def __init__(self, onnx_path: str, device: str = "gpu", precision: str = "fp16",
                 profile: Profile = DEFAULT_PROFILE, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                 engine_file: Optional[str] = None):
        if device != "gpu":
            raise DDRNetError("the tensorrt backend runs on a GPU only: use --device gpu")
        if precision not in TRT_PRECISIONS:
            raise DDRNetError("tensorrt precision must be one of {}, got {!r}".format(
                ", ".join(TRT_PRECISIONS), precision))
        trt, cuda = import_tensorrt()
        gpu = Gpu(cuda)
        self._trt, self._cuda, self._gpu_context = trt, cuda, gpu.context
        self.device_name = gpu.name
        self.precision = precision
        self.model_files = [onnx_path] + ([engine_file] if engine_file else [])  # what the device holds
        self.engine_path = engine_file
        self._lock = threading.Lock()
        self._gpu_context.push()
        try:
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
            if engine_file:
                with open(engine_file, "rb") as f:
                    serialized = f.read()
            else:
                serialized, _ = build_serialized(trt, onnx_path, precision, profile, workspace_mb)
            self._engine = self._runtime.deserialize_cuda_engine(serialized)
            if self._engine is None:
                raise DDRNetError("{}: TensorRT {} cannot load this engine (built by another TensorRT version or "
                                  "corrupt?): rebuild it with `ddrnet engine`".format(engine_file or onnx_path,
                                                                                   trt.__version__))
            self._exec = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            self._describe_io()
        finally:
            self._gpu_context.pop()
        self._buffers_shape = None  # type: Optional[tuple]
        self._host = {}  # type: dict
        self._device = {}  # type: dict

    def _describe_io(self) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name = inputs[0]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_shape = [int(d) for d in engine.get_tensor_shape(self.input_name)]
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.output_dtype = self._dtypes[self.output_names[0]].name
        self.output_shape = [int(d) for d in engine.get_tensor_shape(self.output_names[0])]
        if all(d > 0 for d in self.input_shape):
            n, _, h, w = self.input_shape
            self.profile = Profile((n, h, w), (n, h, w), (n, h, w))
        else:
            low, opt, high = (tuple(int(d) for d in dims)
                              for dims in engine.get_tensor_profile_shape(self.input_name, 0))
            self.profile = Profile(*[(d[0], d[2], d[3]) for d in (low, opt, high)])
        # the stream splits a batch of sources into chunks of at most this many frames
        self.max_batch = self.profile.max[0]  # type: Optional[int]

    def _allocate(self, shape: tuple) -> None:
        """Pinned host + device buffers for one input shape (reallocated only when it changes)."""
        cuda = self._cuda
        if len(shape) != 4 or not self.profile.contains(shape):
            raise DDRNetError("input shape {} is outside the TensorRT engine's profile: {} (build an engine for "
                              "it: ddrnet engine --max-batch / --max-size)".format(list(shape),
                                                                                   self.profile.describe()))
        if not self._exec.set_input_shape(self.input_name, shape):
            raise DDRNetError("TensorRT refused input shape {} (engine profile: {})".format(
                list(shape), self.profile.describe()))
        for name in [self.input_name] + self.output_names:
            dims = tuple(self._exec.get_tensor_shape(name))
            self._host[name] = cuda.pagelocked_empty(dims, self._dtypes[name])
            self._device[name] = cuda.mem_alloc(max(self._host[name].nbytes, 1))
            self._exec.set_tensor_address(name, int(self._device[name]))
        self._buffers_shape = shape

    def run(self, tensor: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        with self._lock:
            self._gpu_context.push()
            try:
                if tensor.shape != self._buffers_shape:
                    self._allocate(tuple(tensor.shape))
                host_in, out = self._host[self.input_name], self.output_names[0]
                np.copyto(host_in, tensor, casting="same_kind")
                cuda.memcpy_htod_async(self._device[self.input_name], host_in, self._stream)
                if not self._exec.execute_async_v3(self._stream.handle):
                    raise DDRNetError("TensorRT execution failed")
                cuda.memcpy_dtoh_async(self._host[out], self._device[out], self._stream)
                self._stream.synchronize()
                return self._host[out].copy()  # the pinned buffer is reused by the next call
            finally:
                self._gpu_context.pop()


def open_backend(manifest: dict, model_dir: str, device: str, precision: Optional[str]) -> TensorRTBackend:
    """The tensorrt backend for a model dir: its recorded engine for this GPU and TensorRT when there is one,
    else an engine built now, in memory, with the bundle target's profile. `precision` None or "auto":
    default_precision."""
    if device != "gpu":
        raise DDRNetError("the tensorrt backend runs on a GPU only: use --device gpu")
    precision = default_precision(manifest) if precision in (None, "auto") else precision
    check_precision(manifest, model_dir, precision)
    onnx_path = _onnx_path(manifest, model_dir)
    trt, cuda = import_tensorrt()
    entry = select_engine(manifest, precision, Gpu(cuda), trt.__version__)
    if entry is not None:
        engine_file = resolve_file(model_dir, entry["path"])
        if not os.path.isfile(engine_file):
            raise DDRNetError("{}: listed in {} but missing; rebuild it with `ddrnet engine --model {}`".format(
                engine_file, MANIFEST_NAME, model_dir))
        return TensorRTBackend(onnx_path, device, precision, engine_file=engine_file)
    profile, workspace_mb = target_settings(manifest)
    log.warning("%s: no %s engine for this GPU and TensorRT %s in %s: building one now, for this run only "
                "(minutes on a Jetson; `ddrnet engine --model %s` builds it ahead of time)", model_dir, precision,
                trt.__version__, MANIFEST_NAME, model_dir)
    return TensorRTBackend(onnx_path, device, precision, profile, workspace_mb)
