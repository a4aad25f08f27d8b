"""PaddleSeg's evaluation modes in numpy: multi-scale + flip (`aug_inference`) and sliding-window
(`slide_inference`) over any "logits of a tensor" function, so exported models (no Paddle) and
checkpoints (a Paddle model behind the same function) get the same math.

The operations are those of paddleseg/core/infer.py (release 2.8): for each scale s the normalised
image is resized to (int(H*s + 0.5), int(W*s + 0.5)) with Paddle's bilinear interpolation
(align_corners False), each flip combination (none, horizontal, vertical, both, in PaddleSeg's order)
is run, optionally window by window, flipped back, resized to H x W, and the logits are averaged.
tests/test_eval_modes.py checks the result against PaddleSeg's own functions.

`AugmentedBackend` wraps a runtime Backend so that the Predictor, `ddrnet eval` and `ddrnet predict`
use these modes unchanged; the wrapped model must output class scores (logits, probabilities or
`lowres_logits`), not labels.
"""
from __future__ import annotations

import argparse
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ddrnet.runtime.backends import Backend
from ddrnet.runtime.errors import DDRNetError

LogitsFn = Callable[[np.ndarray], np.ndarray]  # [1, 3, h, w] float32 -> [1, C, h', w'] scores


def bilinear_taps(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index along one axis: the two source indices and the weight of the second, as
    Paddle's CPU bilinear kernel (align_corners False, align_mode 0) computes them, in float32:
    source = ratio * (i + 0.5) - 0.5 with ratio = float32(n_in / n_out) (0 for one output pixel: the
    first source pixel), clamped at 0 and n_in - 1."""
    ratio = np.float32(n_in) / np.float32(n_out) if n_out > 1 else np.float32(0.0)
    src = float(ratio) * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
    lo = np.maximum(src.astype(np.int64), 0)  # truncation toward zero, as the C++ int cast
    hi = np.minimum(lo + 1, n_in - 1)
    lo = np.minimum(lo, n_in - 1)
    weight = np.maximum(src, 0.0).astype(np.float32) - lo.astype(np.float32)
    return lo, hi, weight


def interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float32 matrix of the same interpolation along one axis (y = M @ x)."""
    lo, hi, weight = bilinear_taps(n_in, n_out)
    matrix = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, lo), 1.0 - weight)
    np.add.at(matrix, (rows, hi), weight)
    return matrix


def _resize_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    if x.shape[axis] == size:
        return x  # ratio 1: every source index is exact, the weights are 1 and 0
    lo, hi, weight = bilinear_taps(x.shape[axis], size)
    shape = [1] * x.ndim
    shape[axis] = size
    weight = weight.reshape(shape)
    return np.take(x, lo, axis=axis) * (1.0 - weight) + np.take(x, hi, axis=axis) * weight


def resize_bilinear(x: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """[..., H, W] -> [..., h, w]: Paddle's `F.interpolate(x, [h, w], mode="bilinear")` in numpy."""
    return _resize_axis(_resize_axis(x, hw[0], x.ndim - 2), hw[1], x.ndim - 1)


def flip_combinations(horizontal: bool, vertical: bool) -> List[Tuple[bool, bool]]:
    """(flip W, flip H) pairs in PaddleSeg's order."""
    combos = [(False, False)]
    if horizontal:
        combos.append((True, False))
    if vertical:
        combos.append((False, True))
        if horizontal:
            combos.append((True, True))
    return combos


def _flip(x: np.ndarray, flip: Tuple[bool, bool]) -> np.ndarray:
    if flip[0]:
        x = x[..., ::-1]
    if flip[1]:
        x = x[..., ::-1, :]
    return np.ascontiguousarray(x)


def windows(hw: Tuple[int, int], crop_wh: Sequence[int], stride_wh: Sequence[int]) -> List[Tuple[int, int, int, int]]:
    """(top, bottom, left, right) of PaddleSeg's sliding windows over an image of size hw."""
    (h, w), (crop_w, crop_h), (stride_w, stride_h) = hw, crop_wh, stride_wh
    rows = 1 if h <= crop_h else int(np.ceil((h - crop_h) / stride_h)) + 1
    cols = 1 if w <= crop_w else int(np.ceil((w - crop_w) / stride_w)) + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            bottom, right = min(r * stride_h + crop_h, h), min(c * stride_w + crop_w, w)
            boxes.append((max(bottom - crop_h, 0), bottom, max(right - crop_w, 0), right))
    return boxes


def slide_logits(logits_fn: LogitsFn, image: np.ndarray, crop_wh: Sequence[int], stride_wh: Sequence[int]
                 ) -> np.ndarray:
    """PaddleSeg's slide_inference: logits of each window, averaged where windows overlap."""
    h, w = image.shape[-2:]
    total = count = None
    for top, bottom, left, right in windows((h, w), crop_wh, stride_wh):
        logit = logits_fn(np.ascontiguousarray(image[..., top:bottom, left:right]))
        if total is None:
            total = np.zeros(logit.shape[:2] + (h, w), np.float64)
            count = np.zeros((h, w), np.float64)
        total[..., top:bottom, left:right] += logit[..., :bottom - top, :right - left]
        count[top:bottom, left:right] += 1
    return total / count


class EvalMode:
    """The evaluation options of PaddleSeg's val.py (and its config's test_config); plain
    single-scale inference when none is set."""

    def __init__(self, aug: bool = False, scales: Sequence[float] = (1.0,), flip_horizontal: bool = False,
                 flip_vertical: bool = False, slide: bool = False, crop_wh: Optional[Sequence[int]] = None,
                 stride_wh: Optional[Sequence[int]] = None):
        self.aug, self.slide = aug, slide
        self.scales = [float(s) for s in scales] if aug else [1.0]
        self.flips = flip_combinations(flip_horizontal, flip_vertical) if aug else [(False, False)]
        self.crop_wh = tuple(int(v) for v in crop_wh) if crop_wh else None
        self.stride_wh = tuple(int(v) for v in stride_wh) if stride_wh else None
        self.check()

    @property
    def plain(self) -> bool:
        return not self.slide and self.scales == [1.0] and self.flips == [(False, False)]

    def check(self) -> None:
        """Refuse inconsistent options in one line, before any work (as PaddleSeg's asserts would)."""
        if any(s <= 0 for s in self.scales):
            raise DDRNetError("--scales {}: scales must be positive".format(" ".join(map(str, self.scales))))
        if not self.slide:
            return
        if not self.crop_wh or not self.stride_wh:
            raise DDRNetError("--is_slide needs --crop_size W H and --stride W H")
        if min(self.crop_wh + self.stride_wh) <= 0:
            raise DDRNetError("--crop_size / --stride: sizes must be positive")
        if self.stride_wh[0] > self.crop_wh[0] or self.stride_wh[1] > self.crop_wh[1]:
            raise DDRNetError("--stride {} {}: larger than --crop_size {} {}, some pixels would never be "
                              "predicted".format(*(self.stride_wh + self.crop_wh)))

    def describe(self) -> dict:
        return {"aug_eval": self.aug, "scales": self.scales, "flips": self.flips, "is_slide": self.slide,
                "crop_size": self.crop_wh, "stride": self.stride_wh}

    def network_sizes(self, hw: Tuple[int, int]) -> List[Tuple[int, int]]:
        """The input sizes the model sees for an image of size hw (a fixed-shape model needs one size)."""
        sizes = set()
        for scale in self.scales:
            scaled = (int(hw[0] * scale + 0.5), int(hw[1] * scale + 0.5))
            if self.slide:
                sizes.update((b - t, r - l) for t, b, l, r in windows(scaled, self.crop_wh, self.stride_wh))
            else:
                sizes.add(scaled)
        return sorted(sizes)

    def logits(self, logits_fn: LogitsFn, image: np.ndarray) -> np.ndarray:
        """PaddleSeg's aug_inference (or inference with is_slide) of a [1, 3, H, W] normalised image:
        averaged [1, C, H, W] scores at the image size."""
        h, w = image.shape[-2:]
        total = None
        for scale in self.scales:
            scaled = resize_bilinear(image, (int(h * scale + 0.5), int(w * scale + 0.5)))
            for flip in self.flips:
                flipped = _flip(scaled, flip)
                logit = (slide_logits(logits_fn, flipped, self.crop_wh, self.stride_wh) if self.slide
                         else logits_fn(flipped))
                logit = resize_bilinear(_flip(logit, flip), (h, w))
                total = logit if total is None else total + logit
        return (total / (len(self.scales) * len(self.flips))).astype(np.float32)


def add_mode_arguments(parser: argparse.ArgumentParser, aug_flag: str) -> None:
    """PaddleSeg's val.py / predict.py flags for these modes (`aug_flag`: --aug_eval or --aug_pred)."""
    group = parser.add_argument_group("PaddleSeg evaluation modes (same flags and meaning as its val.py / predict.py)")
    group.add_argument(aug_flag, dest="aug", action="store_true", help="average over --scales and flips")
    group.add_argument("--scales", type=float, nargs="+", default=[1.0], help="scales with {} (default 1.0)".format(
        aug_flag))
    group.add_argument("--flip_horizontal", action="store_true", help="with {}: add horizontal flips".format(aug_flag))
    group.add_argument("--flip_vertical", action="store_true", help="with {}: add vertical flips".format(aug_flag))
    group.add_argument("--is_slide", action="store_true", help="sliding-window inference")
    group.add_argument("--crop_size", type=int, nargs=2, metavar=("W", "H"), help="window size with --is_slide")
    group.add_argument("--stride", type=int, nargs=2, metavar=("W", "H"), help="window stride with --is_slide")


def mode_from_args(args: argparse.Namespace, test_config: Optional[dict] = None) -> EvalMode:
    """PaddleSeg's merge_test_config: a config's test_config, each flag group over it as a whole."""
    test = dict(test_config or {})
    if args.aug:
        test.update(aug_eval=True, scales=args.scales, flip_horizontal=args.flip_horizontal,
                    flip_vertical=args.flip_vertical)
    if args.is_slide:
        test.update(is_slide=True, crop_size=args.crop_size, stride=args.stride)
    return mode_from_config(test)


def mode_from_config(test: Optional[dict]) -> EvalMode:
    """The mode a config's test_config (PaddleSeg's keys) describes."""
    test = test or {}
    scales = test.get("scales", 1.0)
    return EvalMode(aug=bool(test.get("aug_eval")), scales=scales if isinstance(scales, (list, tuple)) else [scales],
                    flip_horizontal=bool(test.get("flip_horizontal")), flip_vertical=bool(test.get("flip_vertical")),
                    slide=bool(test.get("is_slide")), crop_wh=test.get("crop_size"), stride_wh=test.get("stride"))


class AugmentedBackend(Backend):
    """A backend whose run() is `mode.logits` over the wrapped backend's scores, one image at a time;
    low-resolution scores (`lowres_logits`) are first upsampled to their input's size."""

    def __init__(self, inner: Backend, mode: EvalMode, output_op: str, source: str = "model"):
        if output_op not in ("none", "softmax", "lowres_logits"):
            raise DDRNetError("{}: the model outputs labels (output op {}); multi-scale, flip and sliding-window "
                              "evaluation average class scores: export with --output-op none (logits, as "
                              "PaddleSeg) or softmax".format(source, output_op))
        self.inner, self.mode, self.source = inner, mode, source
        self.name = getattr(inner, "name", type(inner).__name__)
        self.input_name = inner.input_name
        self.input_shape = [inner.input_shape[0], inner.input_shape[1], -1, -1]
        self.output_names = list(getattr(inner, "output_names", ["logits"]))
        self.model_files = list(getattr(inner, "model_files", []))
        self.output_dtype = "float32"
        self.precision = getattr(inner, "precision", None)
        self.fixed_hw = tuple(inner.input_shape[2:]) if min(inner.input_shape[2:]) > 0 else None

    def check_size(self, hw: Tuple[int, int]) -> None:
        """A fixed-shape model can only run this mode when every network input has its size."""
        sizes = self.mode.network_sizes(hw)
        if self.fixed_hw and any(s != self.fixed_hw for s in sizes):
            bad = next(s for s in sizes if s != self.fixed_hw)
            raise DDRNetError("{}: the model's input is fixed at {}x{}, this evaluation mode runs it at {}x{}; "
                              "export with --input-shape dynamic".format(
                                  self.source, self.fixed_hw[0], self.fixed_hw[1], bad[0], bad[1]))

    def _scores(self, tensor: np.ndarray) -> np.ndarray:
        out = np.asarray(self.inner.run(tensor), dtype=np.float32)
        if out.shape[2:] != tensor.shape[2:]:
            out = resize_bilinear(out, tensor.shape[2:])
        return out

    def run(self, tensor: np.ndarray) -> np.ndarray:
        self.check_size(tensor.shape[2:])
        return np.concatenate([self.mode.logits(self._scores, tensor[i:i + 1]) for i in range(tensor.shape[0])])


def augmented_predictor(predictor, mode: EvalMode):
    """A Predictor (same pre/post-processing and classes) whose model is `predictor`'s under `mode`; the
    frame reaches the mode at its own size, as PaddleSeg's val.py feeds the full image."""
    from ddrnet.runtime.predictor import Predictor

    backend = AugmentedBackend(predictor.backend, mode, predictor.output_op, source=predictor.model_dir)
    manifest = dict(predictor.manifest, input=dict(predictor.manifest["input"], shape=[-1, 3, -1, -1]),
                    output=dict(predictor.manifest["output"], op="none"))
    return Predictor.from_backend(backend, manifest, source=predictor.model_dir, device=predictor.device)
