"""Export a DDRNet checkpoint to Paddle Inference and ONNX (FP32 or INT8) with its deploy.yaml.

    from ddrnet.export.exporter import export_model
    manifest = export_model("runs/train/best", "runs/export/fp32", formats=("paddle", "onnx"))
    manifest = export_model("runs/qat/best_model", "runs/export/int8", int8=True, calib_dir="data/cityscapes")

Any checkpoint `ddrnet compress` writes loads (`load_compressed`: plain, pruned, BN-folded, QAT).
INT8 ONNX is always onnxruntime's static quantization of an FP32 graph (see onnx_int8: that is what
makes it faster than FP32 on CPU); from a QAT checkpoint that graph carries the QAT-fine-tuned
weights, and the Paddle Inference INT8 model is the QAT model's own fake-quant program
(PaddleSlim). INT8 Paddle Inference therefore needs a QAT checkpoint.

Everything is written into a temporary folder next to `out_dir` and renamed at the end, so a failed
export (including a failed parity check) leaves nothing half-written behind.

Parity gates: FP32 exports must agree with the Paddle model on >= 99.9 % of pixels; INT8 on >= 99 %
with its reference: the fake-quant Paddle model of a QAT checkpoint ("paddle-fakequant"), or, for
INT8 made from plain FP32 weights, the FP32 Paddle model ("paddle-fp32"), so the INT8 figure then
includes the quantization error itself.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import tempfile
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import paddle
import paddle.nn.functional as F

from ddrnet.export import frames as frame_sources
from ddrnet.export import onnx_fp32, parity
from ddrnet.export.check import float_conv_count, optimized_op_histogram
from ddrnet.export.onnx_int8 import TARGETS as INT8_TARGETS
from ddrnet.export.onnx_int8 import quantize_onnx
from ddrnet.runtime import Predictor
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.labels import CLASS_NAMES, PALETTE
from ddrnet.runtime.manifest import MANIFEST_NAME, OUTPUT_OPS, sha256_file, write_manifest
from ddrnet.compress.calib import calibration_images, sample
from ddrnet.compress.qat import build_compressed, load_compressed, save_quant_inference_model
from ddrnet.train.checkpoint import resolve_weights

FORMATS = ("paddle", "onnx")
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
DYNAMIC_SHAPE = (-1, 3, -1, -1)
DEFAULT_SAMPLE_HW = (512, 1024)  # calibration / parity size for dynamic-shape exports
MIN_INT8_OPSET = 13  # per-channel QuantizeLinear / DequantizeLinear
FP32_MIN_AGREEMENT = 0.999
INT8_MIN_AGREEMENT = 0.99
PADDLE_FILES = ("inference.pdmodel", "inference.pdiparams")
ONNX_FILE = "model.onnx"

Shape = Tuple[int, int, int, int]


@dataclasses.dataclass
class _Job:
    """What one export_model call asked for, after validation."""
    shape: Shape
    formats: List[str]
    output_op: str
    opset: int
    optimize: bool
    int8: bool
    int8_target: str
    parity_num: int
    sample_hw: Optional[Tuple[int, int]]
    calib_source: str = ""  # folder or list file
    pool: List[str] = dataclasses.field(default_factory=list)  # every image of the calibration source
    calibration: List[str] = dataclasses.field(default_factory=list)  # the ones calibration uses


class WithOutputOp(paddle.nn.Layer):
    """The model plus its output op, so the exported graph ends where the runtime wants it:
    argmax -> int32 labels [N, H, W]; softmax -> probabilities; none -> logits; lowres_logits ->
    logits at 1/8 of the input (the runtime upsamples them)."""

    def __init__(self, model: paddle.nn.Layer, output_op: str):
        super().__init__()
        self.model = model
        self.output_op = output_op

    def forward(self, x):
        if self.output_op == "lowres_logits":
            return self.model.lowres_logits(x)
        logits = self.model(x)
        if self.output_op == "argmax":
            return paddle.argmax(logits, axis=1, dtype="int32")
        if self.output_op == "softmax":
            return F.softmax(logits, axis=1)
        return logits


def parse_input_shape(value: Union[str, Sequence[int]]) -> Shape:
    """`1,3,H,W` (or a sequence of 4 ints) or `dynamic` (= -1,3,-1,-1); -1 marks a dynamic dim."""
    if isinstance(value, str) and value.strip().lower() == "dynamic":
        return DYNAMIC_SHAPE
    try:
        dims = tuple(int(d) for d in (value.replace("x", ",").split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 4 or dims[1] != 3 or any(d == 0 or d < -1 for d in dims):
        raise DDRNetError("--input-shape {!r}: expected N,3,H,W (e.g. 1,3,1024,2048; -1 for a dynamic dim) "
                          "or 'dynamic'".format(value if isinstance(value, str) else ",".join(map(str, value))))
    return dims  # type: ignore[return-value]


def _check_options(formats: Sequence[str], output_op: str, opset: int, int8: bool, calib_dir: Optional[str],
                   int8_target: str) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise DDRNetError("--format {}: choose from {}".format(",".join(formats) or "''", ",".join(FORMATS)))
    if output_op not in OUTPUT_OPS:
        raise DDRNetError("--output-op {}: choose one of {}".format(output_op, ", ".join(OUTPUT_OPS)))
    onnx_fp32.check_opset(opset)
    if int8 and opset < MIN_INT8_OPSET:
        raise DDRNetError("--int8 needs --opset {} or newer (per-channel Q/DQ), got {}".format(MIN_INT8_OPSET, opset))
    if int8 and int8_target not in INT8_TARGETS:
        raise DDRNetError("--int8-target {}: choose {}".format(int8_target, " or ".join(INT8_TARGETS)))
    if int8 and not calib_dir:
        raise DDRNetError("--int8 needs --calib-dir (Cityscapes root: its train split; image folder; list file)")


def _stage_dir(out_dir: str) -> str:
    """A fresh temporary folder beside `out_dir` (same file system, so the final rename is atomic)."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DDRNetError("{}: exists and is not a folder".format(out_dir))
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, MANIFEST_NAME)):
        raise DDRNetError("{}: not empty and not an exported model dir; refusing to replace it".format(out_dir))
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        return tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out_dir) + "-", dir=parent)
    except OSError as err:
        raise DDRNetError("{}: cannot write the output folder ({})".format(out_dir, err.strerror or err)) from None


def _publish(stage: str, out_dir: str) -> None:
    """Replace `out_dir` by the finished `stage` folder."""
    out_dir = os.path.abspath(out_dir)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp made it private
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=".old-" + os.path.basename(out_dir) + "-", dir=os.path.dirname(out_dir))
        os.replace(out_dir, os.path.join(old, "dir"))
    os.replace(stage, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def save_paddle(model: paddle.nn.Layer, output_op: str, shape: Shape, folder: str) -> Tuple[str, str]:
    """`paddle.jit.save` of model + output op -> (inference.pdmodel, inference.pdiparams)."""
    prefix = os.path.join(folder, "inference")
    spec = [paddle.static.InputSpec(list(shape), "float32", name=onnx_fp32.INPUT_NAME)]
    paddle.jit.save(WithOutputOp(model, output_op), prefix, input_spec=spec)
    info = prefix + ".pdiparams.info"  # only needed to load the program back for training
    if os.path.exists(info):
        os.remove(info)
    return prefix + ".pdmodel", prefix + ".pdiparams"


def _metadata(meta: dict, shape: Shape, output_op: str, precision: str) -> dict:
    from ddrnet import __version__

    return {"model_name": meta["name"], "precision": precision, "class_names": list(CLASS_NAMES),
            "palette": PALETTE.tolist(), "input_shape": list(shape), "color_order": "RGB",
            "mean": list(MEAN), "std": list(STD), "output_op": output_op, "ddrnet_version": __version__}


def save_onnx_fp32(model_file: str, params_file: str, path: str, opset: int, optimize: bool, metadata: dict) -> None:
    model = onnx_fp32.paddle_to_onnx(model_file, params_file, opset)
    onnx_fp32.name_io(model)
    onnx_fp32.check_resize_modes(model)
    if optimize:
        model = onnx_fp32.optimize_basic(model)
    onnx_fp32.set_metadata(model, metadata)
    onnx_fp32.save(model, path)


def _versions() -> dict:
    import onnx
    import onnxruntime
    import paddle2onnx

    from ddrnet import __version__

    return {"ddrnet": __version__, "paddle": paddle.__version__, "paddle2onnx": paddle2onnx.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _manifest(meta: dict, shape: Shape, output_op: str, precision: str, files: List[dict], weights: str) -> dict:
    return {
        "schema_version": 1,
        "model_name": meta["name"],
        "num_classes": meta["num_classes"],
        "class_names": list(CLASS_NAMES),
        "palette": PALETTE,
        "precision": precision,
        "input": {"name": onnx_fp32.INPUT_NAME, "shape": list(shape), "color_order": "RGB", "layout": "NCHW",
                  "mean": list(MEAN), "std": list(STD)},
        "output": {"op": output_op},
        "files": files,
        "source_checkpoint": {"path": os.path.abspath(weights), "sha256": sha256_file(weights)},
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _file_entries(formats: Sequence[str]) -> List[dict]:
    entries = []
    if "onnx" in formats:
        entries.append({"format": "onnx", "role": "model", "path": ONNX_FILE})
    if "paddle" in formats:
        entries += [{"format": "paddle", "role": "model", "path": PADDLE_FILES[0]},
                    {"format": "paddle", "role": "params", "path": PADDLE_FILES[1]}]
    return entries


def _sample_sizes(shape: Shape, sample_hw: Optional[Tuple[int, int]], count: int) -> List[Tuple[int, int]]:
    """Network sizes the parity images run at. Dynamic exports alternate the sample size with an
    odd size, so a graph that only works at multiples of 64 fails at export, not in the field."""
    if shape[2] > 0 and shape[3] > 0:
        return [(shape[2], shape[3])] * count
    h, w = sample_hw or DEFAULT_SAMPLE_HW
    return [(h, w) if i % 2 == 0 else (h | 1, w | 1) for i in range(count)]


def _resize_for(frames_bgr: list, sizes: List[Tuple[int, int]], shape: Shape) -> list:
    """Frames at the sizes a dynamic model runs them (fixed models resize inside the Predictor)."""
    if shape[2] > 0 and shape[3] > 0:
        return frames_bgr
    return [cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f, (h, w) in zip(frames_bgr, sizes)]


def _check_parity(results: dict, int8: bool) -> None:
    for fmt, result in results.items():
        minimum = INT8_MIN_AGREEMENT if int8 else FP32_MIN_AGREEMENT
        if result["argmax_agreement"] < minimum:
            raise DDRNetError("parity check failed: {} {} agrees with {} on {:.3%} of pixels (< {:.1%}); nothing "
                              "written".format("INT8" if int8 else "FP32", fmt, result["reference"],
                                               result["argmax_agreement"], minimum))


def export_model(weights: str, out_dir: str, formats: Sequence[str] = FORMATS,
                 input_shape: Union[str, Sequence[int]] = (1, 3, 1024, 2048), output_op: str = "argmax",
                 opset: int = 13, model_name: Optional[str] = None, optimize: bool = True,
                 int8: bool = False, calib_dir: Optional[str] = None, calib_num: int = 32,
                 int8_target: str = "cpu", parity_num: int = 8, sample_hw: Optional[Tuple[int, int]] = None) -> dict:
    """Export `weights` (checkpoint folder or .pdparams) into `out_dir`; returns the deploy.yaml written.

    int8: calibrate on `calib_num` images of `calib_dir` and quantize the ONNX model (Q/DQ) for
    `int8_target` ("cpu": onnxruntime on x86, "tensorrt"); the paddle format needs a QAT checkpoint.
    sample_hw: size of calibration and parity images for dynamic-shape exports (default 512x1024).
    """
    job = _Job(shape=parse_input_shape(input_shape), formats=[f.strip().lower() for f in formats if f.strip()],
               output_op=output_op, opset=opset, optimize=optimize, int8=int8, int8_target=int8_target,
               parity_num=parity_num, sample_hw=sample_hw)
    _check_options(job.formats, output_op, opset, int8, calib_dir, int8_target)
    weights = resolve_weights(weights)
    if int8:  # a bad calibration source fails before any work
        job.calib_source = os.path.abspath(calib_dir)
        job.pool = calibration_images(calib_dir)
        job.calibration = sample(job.pool, calib_num)  # the images `ddrnet compress --ptq` would take
    stage = _stage_dir(out_dir)
    try:
        model, fakequant, meta, compression = load_for_export(weights, model_name)
        if int8 and "paddle" in job.formats and fakequant is None:
            raise DDRNetError("{}: INT8 Paddle Inference is the fake-quant model of a QAT checkpoint (`ddrnet "
                              "compress --qat`); for INT8 from FP32 weights use --format onnx".format(weights))
        with tempfile.TemporaryDirectory() as scratch:
            written = _export_into(stage, scratch, model, fakequant if int8 else None, meta, compression, weights, job)
        _publish(stage, out_dir)
    finally:
        if os.path.isdir(stage):
            shutil.rmtree(stage, ignore_errors=True)
    return written


def load_for_export(weights: str, model_name: Optional[str]) -> Tuple[paddle.nn.Layer, Optional[paddle.nn.Layer],
                                                                      dict, dict]:
    """(float model, fake-quant model or None, meta, compression) of any checkpoint, in eval mode.
    A QAT checkpoint's float model is its fine-tuned weights in the BN-folded (and pruned) network."""
    model, meta, compression = load_compressed(weights, model_name)
    if not compression.get("qat"):
        return model, None, meta, compression
    plain = build_compressed(meta, {key: value for key, value in compression.items() if key != "qat"})
    # PaddleSlim wraps each conv: `<conv>._layer.weight` is the float weight; `_fake_quant_*` the ranges
    state = {key.replace("._layer.", "."): value for key, value in model.state_dict().items()
             if "_fake_quant" not in key}
    if set(state) != set(plain.state_dict()):
        raise DDRNetError("{}: QAT weights do not map onto the BN-folded model ({} vs {} tensors)".format(
            weights, len(state), len(plain.state_dict())))
    plain.set_state_dict(state)
    plain.eval()
    return plain, model, meta, compression


def _export_into(stage: str, scratch: str, model: paddle.nn.Layer, fakequant: Optional[paddle.nn.Layer],
                 meta: dict, compression: dict, weights: str, job: _Job) -> dict:
    """Write every file and deploy.yaml into `stage`; `scratch` holds what the model dir does not keep.
    `fakequant`: the QAT model of an INT8 export from a QAT checkpoint (else None)."""
    shape, output_op, formats = job.shape, job.output_op, job.formats
    precision = "int8" if job.int8 else "fp32"
    if "paddle" in formats and fakequant is not None:
        spec = [paddle.static.InputSpec(list(shape), "float32", name=onnx_fp32.INPUT_NAME)]
        save_quant_inference_model(WithOutputOp(fakequant, output_op), os.path.join(stage, "inference"), spec,
                                   compression["qat"].get("config"))
    float_paddle_in_dir = "paddle" in formats and fakequant is None
    if float_paddle_in_dir or "onnx" in formats:  # ONNX is converted from the float Paddle program
        model_file, params_file = save_paddle(model, output_op, shape, stage if float_paddle_in_dir else scratch)
    quantization = None
    if job.int8:
        quantization = {"weights": "qat-fine-tuned" if fakequant is not None else "fp32"}
        if "onnx" in formats:
            quantization.update(_quantize(model_file, params_file, scratch, stage, meta, weights, job))
        if "paddle" in formats:
            quantization["paddle"] = {"method": "PaddleSlim QAT (fake-quant Q/DQ program)",
                                      "config": compression["qat"].get("config") or {}}
    elif "onnx" in formats:
        save_onnx_fp32(model_file, params_file, os.path.join(stage, ONNX_FILE), job.opset, job.optimize,
                       _metadata(meta, shape, output_op, precision))
    manifest = _manifest(meta, shape, output_op, precision, _file_entries(formats), weights)
    write_manifest(stage, manifest)  # without parity yet: the runtime's Predictor needs it to open the files
    manifest["parity"] = _parity(stage, model if fakequant is None else fakequant,
                                 "paddle-fp32" if fakequant is None else "paddle-fakequant", job)
    _check_parity(manifest["parity"], job.int8)
    if quantization is not None:
        manifest["quantization"] = quantization
    return write_manifest(stage, manifest)


def _parity(model_dir: str, reference: paddle.nn.Layer, reference_name: str, job: _Job) -> dict:
    """Parity of every format in `model_dir` with `reference` on the same images."""
    sizes = _sample_sizes(job.shape, job.sample_hw, job.parity_num)
    checked = frame_sources.parity_frames(job.pool, job.calibration, job.parity_num, sizes[0],
                                          source=job.calib_source)
    frames = _resize_for(checked.frames, sizes, job.shape)
    results = {}
    for fmt in job.formats:
        backend = "paddle" if fmt == "paddle" else "onnxruntime"
        results[fmt] = dict(parity.measure(model_dir, backend, frames, reference, job.output_op),
                            reference=reference_name, source=checked.source)
    return results


def _quantize(model_file: str, params_file: str, scratch: str, stage: str, meta: dict, weights: str,
              job: _Job) -> dict:
    """FP32 ONNX in `scratch` (a complete model dir, so the runtime's preprocessing can be reused),
    quantized into `stage`/model.onnx. Returns deploy.yaml's quantization section."""
    shape, output_op, calibration = job.shape, job.output_op, job.calibration
    fp32_path = os.path.join(scratch, ONNX_FILE)
    save_onnx_fp32(model_file, params_file, fp32_path, job.opset, job.optimize,
                   _metadata(meta, shape, output_op, "fp32"))
    write_manifest(scratch, _manifest(meta, shape, output_op, "fp32", _file_entries(["onnx"]), weights))
    preprocess = Predictor(scratch, backend="onnxruntime").preprocess
    size = _sample_sizes(shape, job.sample_hw, 1)[0]
    frames = _resize_for(frame_sources.read_frames(calibration), [size] * len(calibration), shape)
    int8_model, info = quantize_onnx(fp32_path, frames, preprocess, job.int8_target)
    onnx_fp32.set_metadata(int8_model, _metadata(meta, shape, output_op, "int8"))
    path = os.path.join(stage, ONNX_FILE)
    onnx_fp32.save(int8_model, path)
    histogram = optimized_op_histogram(path)
    float_convs = float_conv_count(histogram)
    # the TensorRT target keeps ReLUs between Q/DQ pairs for TensorRT to fuse: onnxruntime's CPU graph
    # is not what runs there, so the check applies to the CPU target
    if job.int8_target == "cpu" and float_convs:
        raise DDRNetError("INT8 export: {} convolutions still run in float in onnxruntime's optimized graph "
                          "(op histogram {}); nothing written".format(float_convs, histogram))
    root = job.calib_source if os.path.isdir(job.calib_source) else os.path.dirname(job.calib_source)
    info["calibration"] = {"path": job.calib_source, "count": len(calibration),
                           "sha256": frame_sources.paths_digest(calibration, root), "size": list(size)}
    info["optimized_graph"] = {"float_convs": float_convs, "op_histogram": histogram}
    return info
