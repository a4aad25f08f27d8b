"""OpenVINO backend: the exported ONNX file (FP32, or INT8 Q/DQ) compiled by OpenVINO's CPU plugin.

Precision: OpenVINO runs float layers in BF16 by default where the CPU has AMX or AVX512-BF16
("auto" here); `fp32` forces FP32 and `bf16` asks for BF16 (refused where the CPU lacks it). The
precision really used is read back from the compiled model (`INFERENCE_PRECISION_HINT`) and
reported, since the default changes with the host. INT8 Q/DQ models run their quantized layers as
integer kernels whatever the hint; it applies to the float layers around them.

Given the model's input spec (deploy.yaml `input`: mean, std, colour order), the backend takes what a
camera gives, [N, H, W, 3] uint8 BGR frames (`takes_frames`): OpenVINO's pre-processing steps convert,
reorder and normalise them inside the compiled graph, fused with the first layers, instead of numpy /
OpenCV writing a float32 tensor first (measured 3-5 % of the end-to-end p50 on 23-slim, README).

A model with dynamic dims (`ddrnet export --input-shape dynamic`) is compiled again for
each input shape it meets, with that shape fixed (at most STATIC_SHAPES of them, the least recently used
dropped): OpenVINO runs a static shape 14-19 % faster (23-slim INT8 at 512x1024, 1 and 2 threads,
interleaved), and a camera's frames all have one shape, so that compile happens once per stream.

Compiled models are cached (OpenVINO's CACHE_DIR) in a folder named after the model file's
SHA-256 and the OpenVINO version, so a changed model or another OpenVINO never meets an old blob
and a second start loads the compiled graph instead of compiling it again (README: "OpenVINO and
`--backend auto`").
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from ddrnet.runtime.backends import Backend
from ddrnet.runtime.errors import DDRNetError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
_HINTS = {"fp32": "f32", "bf16": "bf16"}  # our precision names -> OpenVINO's element types
_READ_BACK = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
CACHE_ENV = "DDRNET_CACHE_DIR"
STATIC_SHAPES = 4  # compiled static-shape copies a dynamic model keeps (one per input shape in use)
INSTALL_HINT = "pip install openvino (or the suite's extra: pip install -e '.[openvino]')"


def default_cache_root() -> str:
    """$DDRNET_CACHE_DIR, else $XDG_CACHE_HOME/ddrnet, else ~/.cache/ddrnet."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return root
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "ddrnet")


def cache_folder(cache_root: str, model_sha256: str, ov_version: str) -> str:
    """One folder per model content and OpenVINO build: nothing else can ever share a blob."""
    build = ov_version.split("-")[0]
    return os.path.join(cache_root, "openvino", "{}-ov{}".format(model_sha256[:16], build))


def has_bf16(core) -> bool:
    """OpenVINO's own view of the CPU: BF16 kernels (AMX or AVX512-BF16) available."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _dims(shape) -> List[int]:
    """An OpenVINO PartialShape as a list, -1 for dynamic dims."""
    return [d.get_length() if d.is_static else -1 for d in shape]


def _frame_input(ov, model, spec: Mapping) -> None:
    """Make `model` take [N, H, W, 3] uint8 BGR frames: convert, reorder the colours to the model's order,
    normalise ((pixel / 255 - mean) / std) in the graph."""
    from openvino.preprocess import ColorFormat, PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    steps = ppp.input().preprocess().convert_element_type(ov.Type.f32)
    if spec["color_order"] == "RGB":
        steps = steps.convert_color(ColorFormat.RGB)
    steps.mean([255.0 * m for m in spec["mean"]]).scale([255.0 * s for s in spec["std"]])
    ppp.build()


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise DDRNetError("the openvino backend needs OpenVINO: " + INSTALL_HINT) from None
    return openvino


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(self, path: str, device: str = "cpu", threads: Optional[int] = None, precision: str = "auto",
                 model_precision: str = "fp32", model_sha256: Optional[str] = None,
                 cache_root: Optional[str] = None, cache: bool = True, profile: bool = False,
                 frames: Optional[Mapping] = None):
        """`model_precision`: the file's (deploy.yaml); `model_sha256`: the file's hash when the caller
        already verified it, else computed here; `cache_root`: where compiled blobs go
        (default_cache_root()); `cache=False` compiles on every start; `profile`: per-layer
        performance counters after each run (profiling_info, ddrnet.runtime.opprofile); `frames`: the
        model's input spec (deploy.yaml `input`): run() then takes uint8 BGR frames (takes_frames),
        else the float32 NCHW tensor."""
        if device != "cpu":
            raise DDRNetError("the openvino backend runs on the CPU: use --device cpu (NVIDIA GPUs: "
                              "--backend onnxruntime or tensorrt)")
        if precision not in PRECISIONS:
            raise DDRNetError("openvino precision must be one of {}, got {!r}".format(", ".join(PRECISIONS),
                                                                                    precision))
        ov = _import_openvino()
        core = ov.Core()
        if precision == "bf16" and not has_bf16(core):
            raise DDRNetError("--precision bf16: this CPU has no BF16 kernels for OpenVINO (it needs AMX or "
                              "AVX512-BF16); use --precision fp32 or auto")
        self.cache_dir = self._cache_dir(path, model_sha256, cache_root, ov.get_version()) if cache else None
        self.cache_hit = bool(self.cache_dir and any(f.endswith(".blob") for f in os.listdir(self.cache_dir)))
        config = self._config(threads, precision, profile, self.cache_dir)
        t0 = time.perf_counter()
        try:
            self._compile(ov, core, path, config, frames)
        except Exception as err:  # OpenVINO raises RuntimeError subclasses for unreadable or bad graphs
            raise DDRNetError("{}: OpenVINO cannot load it ({})".format(
                path, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)) from None
        self.start_s = time.perf_counter() - t0
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.inference_precision = _READ_BACK.get(hint, hint)  # what OpenVINO runs the float layers in
        self.requested_precision = precision
        # an INT8 model stays int8 (its float layers run in inference_precision); a float one runs in it
        self.precision = "int8" if model_precision == "int8" else self.inference_precision
        self.takes_frames = frames is not None
        self._describe_io()
        self.model_files = [path]
        self._request = self._compiled.create_infer_request()  # the last one run (profiling_info)
        self._static = collections.OrderedDict()  # type: collections.OrderedDict  # input shape -> request
        self._lock = threading.Lock()

    @staticmethod
    def _config(threads: Optional[int], precision: str, profile: bool, cache_dir: Optional[str]) -> Dict[str, object]:
        config = {"PERFORMANCE_HINT": "LATENCY"}  # type: Dict[str, object]  # one stream: one frame at a time
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision in _HINTS:
            config["INFERENCE_PRECISION_HINT"] = _HINTS[precision]
        if profile:
            config["PERF_COUNT"] = True
        if cache_dir:
            config["CACHE_DIR"] = cache_dir
        return config

    def _compile(self, ov, core, path: str, config: Dict[str, object], frames: Optional[Mapping]) -> None:
        self._dynamic = None  # the model to fix each input shape in, for a model with dynamic dims
        if frames is None:
            # compiling from the path lets a cache hit skip reading the ONNX file altogether
            self._compiled = core.compile_model(path, "CPU", config)
            self._model_input = self._compiled.inputs[0].get_partial_shape()
            if self._model_input.is_static:
                return
            model = core.read_model(path)
        else:
            model = core.read_model(path)
            self._model_input = model.inputs[0].get_partial_shape()  # NCHW, before the frame input replaces it
            _frame_input(ov, model, frames)
            self._compiled = core.compile_model(model, "CPU", config)
        if not self._model_input.is_static:
            self._dynamic = (ov, core, model, config)

    def _request_for(self, shape: Tuple[int, ...]):
        """The infer request for an input of `shape`: a static model's own, or for a dynamic model that
        of its copy compiled with that shape fixed (compiled on first use; STATIC_SHAPES kept)."""
        if self._dynamic is None:
            return self._request
        request = self._static.pop(shape, None)
        if request is None:
            ov, core, model, config = self._dynamic
            fixed = model.clone()
            try:
                fixed.reshape({fixed.inputs[0]: ov.PartialShape(list(shape))})
                request = core.compile_model(fixed, "CPU", config).create_infer_request()
            except Exception as err:  # OpenVINO raises RuntimeError subclasses for shapes the graph refuses
                raise DDRNetError("{}: OpenVINO cannot run it on an input of shape {} ({})".format(
                    self.model_files[0], list(shape), str(err).strip().splitlines()[0] if str(err).strip()
                    else type(err).__name__)) from None
            if len(self._static) >= STATIC_SHAPES:
                self._static.popitem(last=False)
        self._static[shape] = request
        self._request = request
        return request

    def _describe_io(self) -> None:
        first, out = self._compiled.inputs[0], self._compiled.outputs[0]
        self.input_name = first.get_any_name()
        self.input_shape = _dims(self._model_input)  # the model's [N, 3, H, W], whatever run() takes
        self.output_names = [o.get_any_name() for o in self._compiled.outputs]
        self.output_dtype = out.get_element_type().to_dtype().name
        self.output_shape = _dims(out.get_partial_shape())

    @staticmethod
    def _cache_dir(path: str, model_sha256: Optional[str], cache_root: Optional[str],
                   ov_version: str) -> Optional[str]:
        from ddrnet.runtime.manifest import sha256_file

        folder = cache_folder(cache_root or default_cache_root(), model_sha256 or sha256_file(path), ov_version)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            log.info("openvino: no compiled-model cache (%s: %s); compiling on every start", folder,
                     err.strerror or err)
            return None
        return folder

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """`tensor`: [N, H, W, 3] uint8 BGR frames at the network's size (takes_frames), else the float32
        [N, 3, H, W] tensor. The first output, copied out of OpenVINO's buffer (the caller owns it).
        One infer request serves every thread, one call at a time."""
        if self.takes_frames and (tensor.dtype != np.uint8 or tensor.ndim != 4 or tensor.shape[3] != 3):
            raise DDRNetError("this openvino backend takes [N, H, W, 3] uint8 BGR frames (Predictor.preprocess), "
                              "got {} {}".format(tensor.dtype, list(tensor.shape)))
        with self._lock:
            return self._request_for(tensor.shape).infer({0: tensor}, share_inputs=True)[0]

    def profiling_info(self) -> list:
        """OpenVINO's per-layer counters of the last run (needs profile=True)."""
        return self._request.profiling_info
