"""The Predictor: BGR frame in, HxW uint8 trainId mask out, from an exported model dir.

    from ddrnet.runtime import Predictor
    predictor = Predictor("runs/export/fp32", backend="onnxruntime", device="cpu")
    mask = predictor(bgr)                       # HxW uint8, same size as the frame
    cv2.imwrite("overlay.png", predictor.overlay(bgr, mask))

Pre- and post-processing are a handful of whole-image OpenCV calls writing into buffers kept
between calls, so the runtime adds little to the backend's own time (`ddrnet bench` reports the
ratio). Because of those buffers, use one Predictor per thread.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ddrnet.runtime import visualize
from ddrnet.runtime.backends import Backend, create_backend
from ddrnet.runtime.consistency import check_model
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.imageio import to_bgr8
from ddrnet.runtime.manifest import load_manifest, to_plain, validate_manifest
from ddrnet.runtime.options import cpu_count
from ddrnet.runtime.signing import Trust, accept, authenticate
from ddrnet.runtime.upsample import upsample_argmax


class Predictor:
    def __init__(self, model_dir: str, backend: str = "onnxruntime", device: str = "cpu",
                 threads: Optional[int] = None, precision: Optional[str] = None, spinning: bool = True,
                 trust: Trust = None):
        """`backend`: one of backends.BACKENDS, or "auto" (the fastest installed for this host: the
        choice is `backend_name`, the reason `backend.chosen_because`). `precision`: tensorrt's
        (fp32 | fp16 | int8; default from deploy.yaml), openvino's (auto | fp32 | bf16), paddle's bf16;
        `spinning=False` lets onnxruntime's idle threads sleep (for several models sharing the cores).
        `trust`: the fleet's public key (`ddrnet keygen`'s .pub); the bundle must then carry its valid,
        unexpired signature of a version not older than this device already ran (`ddrnet sign`,
        runtime/signing.py). None reads DDRNET_TRUST; without a key the bundle runs unauthenticated
        (warned once). False skips the check, for a model dir this process has just written."""
        data, accepted = authenticate(model_dir, trust)  # the signature, before any model file is read
        # refuses files that do not match their SHA-256; the backend names a missing file it needs
        manifest = load_manifest(model_dir, data=data, missing_ok=True)
        engine = create_backend(manifest, model_dir, backend, device, threads, precision, spinning)
        self._setup(model_dir, manifest, engine, engine.name, device, head_threads=threads or cpu_count())
        check_model(manifest, engine, self.input_shape)  # a swapped model, even with its hash updated
        accept(accepted, trust)  # only a bundle that loaded becomes the newest version this device ran

    @classmethod
    def from_backend(cls, backend: Backend, manifest: dict, source: str = "<in-memory model>",
                     device: str = "cpu") -> "Predictor":
        """A Predictor around a backend object and an in-memory manifest (no files needed), so a
        model that was never exported (e.g. a training checkpoint) gets the same pre/post-processing."""
        manifest = to_plain(manifest)  # tuples / numpy arrays (CLASS_NAMES, PALETTE) welcome
        validate_manifest(manifest, source, require_files=False)
        predictor = cls.__new__(cls)
        predictor._setup(source, manifest, backend, getattr(backend, "name", type(backend).__name__), device)
        return predictor

    def _setup(self, model_dir: str, manifest: dict, backend: Backend, backend_name: str, device: str,
               head_threads: int = 1) -> None:
        self.model_dir = model_dir
        self.manifest = manifest
        self.class_names = list(manifest["class_names"])  # type: List[str]
        self.palette = np.asarray(manifest["palette"], dtype=np.uint8)
        self.backend = backend
        self._takes_frames = bool(getattr(backend, "takes_frames", False))  # Backend.takes_frames
        self.backend_name = backend_name
        self.device = device
        self.precision = getattr(backend, "precision", manifest["precision"])  # type: str
        self.output_op = manifest["output"]["op"]  # type: str
        self.input_shape = self._merge_shapes(backend.input_shape, manifest["input"]["shape"])  # type: List[int]
        spec = manifest["input"]
        mean = np.asarray(spec["mean"], dtype=np.float64)
        std = np.asarray(spec["std"], dtype=np.float64)
        # (pixel / 255 - mean) / std == pixel * scale + bias: one fused pass per channel
        self._scale = (1.0 / (255.0 * std)).tolist()
        self._bias = (-mean / std).tolist()
        # which plane of the BGR frame feeds each model input channel
        self._source_plane = (2, 1, 0) if spec["color_order"] == "RGB" else (0, 1, 2)
        self._buffers = {}  # type: Dict[str, np.ndarray]
        self.head_threads = head_threads  # upsample_argmax's (output op lowres_logits): as many as the backend's
        self.last_timing = {}  # type: Dict[str, float]

    def _merge_shapes(self, graph: Sequence[int], declared: Sequence[int]) -> List[int]:
        """The model file is the truth; deploy.yaml must agree wherever both fix a dim."""
        if len(graph) != 4:
            raise DDRNetError("{}: model input has rank {}, expected NCHW".format(self.model_dir, len(graph)))
        for g, d in zip(graph, declared):
            if g > 0 and d > 0 and g != d:
                raise DDRNetError("{}: model input shape {} does not match deploy.yaml's {}".format(
                    self.model_dir, list(graph), list(declared)))
        merged = [g if g > 0 else d for g, d in zip(graph, declared)]
        if merged[0] not in (1, -1):
            raise DDRNetError("{}: a fixed batch of {} is not supported (export with batch 1 or "
                              "dynamic)".format(self.model_dir, merged[0]))
        return merged

    @property
    def model_name(self) -> str:
        return self.manifest["model_name"]

    @property
    def dynamic_batch(self) -> bool:
        return self.input_shape[0] == -1

    def network_hw(self, frame_hw: Tuple[int, int]) -> Tuple[int, int]:
        """Size the network runs at: the fixed input size, or the frame's for dynamic dims."""
        h, w = self.input_shape[2], self.input_shape[3]
        return (h if h > 0 else frame_hw[0], w if w > 0 else frame_hw[1])

    # -- pre-processing ----------------------------------------------------------------------

    def _scratch(self, name: str, shape: Tuple[int, ...], dtype=np.uint8) -> np.ndarray:
        """A buffer kept between calls: fresh multi-MB arrays cost page faults on every frame
        (measured: pre-processing a 1024x2048 frame 2-4x slower with them)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._buffers[name] = np.empty(shape, dtype=dtype)
        return buf

    def _batch(self, n: int, hw: Tuple[int, int], scratch: bool = True) -> np.ndarray:
        """The input the backend takes for n frames: [N, 3, H, W] float32, or [N, H, W, 3] uint8 BGR frames
        for a backend that normalises in its graph (`takes_frames`)."""
        shape, dtype = (((n,) + tuple(hw) + (3,), np.uint8) if self._takes_frames
                        else ((n, 3) + tuple(hw), np.float32))
        return self._scratch("input", shape, dtype) if scratch else np.empty(shape, dtype)

    def _fill(self, bgr: np.ndarray, out: np.ndarray) -> None:
        """One frame straight into its slot of _batch(): resized, and unless the backend takes frames,
        channels reordered and normalised into out [3, H, W]."""
        if self._takes_frames:
            h, w = out.shape[:2]
            if bgr.shape[:2] != (h, w):
                cv2.resize(bgr, (w, h), dst=out, interpolation=cv2.INTER_LINEAR)
            else:
                np.copyto(out, bgr)
            return
        h, w = out.shape[1:]
        if bgr.shape[:2] != (h, w):
            bgr = cv2.resize(bgr, (w, h), dst=self._scratch("resized", (h, w, 3)),
                             interpolation=cv2.INTER_LINEAR)
        planes = cv2.split(bgr, [self._scratch("plane{}".format(i), (h, w)) for i in range(3)])
        for c, src in enumerate(self._source_plane):
            # src * scale + bias as float32 in one pass, written into the channel view
            res = cv2.addWeighted(planes[src], self._scale[c], planes[src], 0.0, self._bias[c],
                                  dst=out[c], dtype=cv2.CV_32F)
            if not np.may_share_memory(res, out):  # a binding that did not write in place
                out[c] = res

    def preprocess(self, bgr: np.ndarray) -> np.ndarray:
        """What the backend gets for this frame (a new array): the [1, 3, H, W] float32 tensor, or the
        [1, H, W, 3] uint8 frame at network size for a backend that `takes_frames`."""
        bgr = to_bgr8(bgr, "frame")
        tensor = self._batch(1, self.network_hw(bgr.shape[:2]), scratch=False)
        self._fill(bgr, tensor[0])
        return tensor

    # -- post-processing ---------------------------------------------------------------------

    def class_maps(self, out: np.ndarray, network_hw: Tuple[int, int]) -> np.ndarray:
        """[N, H, W] integer class map from argmax [N,H,W] / [N,1,H,W], scores [N,C,H,W], or (output
        op lowres_logits) scores at a lower resolution, upsampled to `network_hw` and argmaxed."""
        if self.output_op == "lowres_logits" and out.dtype.kind == "f" and out.ndim == 4 \
                and out.shape[1] == len(self.class_names):
            return np.stack([upsample_argmax(scores, network_hw, self.head_threads) for scores in out])
        if out.dtype.kind in "iu":
            if out.ndim == 4 and out.shape[1] == 1:
                out = out[:, 0]
            if out.ndim == 3:
                return out
        elif out.dtype.kind == "f" and out.ndim == 4 and out.shape[1] == len(self.class_names):
            return out.argmax(axis=1)
        raise DDRNetError("{}: model output {} {} is neither a class map [N,H,W] nor {}-class scores "
                          "[N,C,H,W]".format(self.model_dir, out.dtype, list(out.shape),
                                             len(self.class_names)))

    @staticmethod
    def _to_mask(class_map: np.ndarray, frame_hw: Tuple[int, int]) -> np.ndarray:
        mask = class_map.astype(np.uint8)  # also detaches from backend-owned buffers
        if mask.shape != frame_hw:
            mask = cv2.resize(mask, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_NEAREST)
        return mask

    # -- inference ---------------------------------------------------------------------------

    def __call__(self, bgr: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 BGR frame -> HxW uint8 trainId mask of the same size."""
        t0 = time.perf_counter()
        bgr = to_bgr8(bgr, "frame")
        frame_hw = bgr.shape[:2]
        net_hw = self.network_hw(frame_hw)
        tensor = self._batch(1, net_hw)
        self._fill(bgr, tensor[0])
        t1 = time.perf_counter()
        out = self.backend.run(tensor)
        t2 = time.perf_counter()
        mask = self._to_mask(self.class_maps(out, net_hw)[0], frame_hw)
        self._record(t0, t1, t2, time.perf_counter())
        return mask

    def predict_batch(self, frames: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Masks for several frames: one inference call when the model's batch dim is dynamic and
        the frames share a network size, one call per frame otherwise."""
        t0 = time.perf_counter()
        frames = [to_bgr8(f, "frame {}".format(i)) for i, f in enumerate(frames)]
        if not frames:
            return []
        sizes = [f.shape[:2] for f in frames]
        net_hw = {self.network_hw(hw) for hw in sizes}
        if not self.dynamic_batch or len(net_hw) != 1:
            return self._predict_each(frames)
        network = net_hw.pop()
        tensor = self._batch(len(frames), network)
        for frame, slot in zip(frames, tensor):
            self._fill(frame, slot)
        t1 = time.perf_counter()
        out = self.backend.run(tensor)
        t2 = time.perf_counter()
        maps = self.class_maps(out, network)
        masks = [self._to_mask(m, hw) for m, hw in zip(maps, sizes)]
        self._record(t0, t1, t2, time.perf_counter())
        return masks

    def _predict_each(self, frames: List[np.ndarray]) -> List[np.ndarray]:
        masks = []  # type: List[np.ndarray]
        total = {}  # type: Dict[str, float]
        for frame in frames:
            masks.append(self(frame))
            for key, ms in self.last_timing.items():
                total[key] = total.get(key, 0.0) + ms
        self.last_timing = total
        return masks

    def _record(self, t0: float, t1: float, t2: float, t3: float) -> None:
        self.last_timing = {"pre_ms": (t1 - t0) * 1e3, "infer_ms": (t2 - t1) * 1e3,
                            "post_ms": (t3 - t2) * 1e3, "total_ms": (t3 - t0) * 1e3}

    # -- visualisation -----------------------------------------------------------------------

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """HxW mask -> HxWx3 BGR image in the model's class colours."""
        return visualize.colorize(mask, self.palette)

    def overlay(self, bgr: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        return visualize.overlay(bgr, mask, self.palette, alpha)

    def __repr__(self) -> str:
        return "Predictor({!r}, backend={!r}, device={!r}, model={}, precision={}, input={})".format(
            self.model_dir, self.backend_name, self.device, self.model_name, self.precision,
            self.input_shape)
