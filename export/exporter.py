"""Export a DDRNet checkpoint to Paddle Inference and ONNX (FP32 or INT8) with its deploy.yaml.

    from ddrnet.export.exporter import export_model
    manifest = export_model("runs/train/best", "runs/export/fp32", formats=("paddle", "onnx"))
    manifest = export_model("runs/qat/best_model", "runs/export/int8", int8=True, calib_dir="data/cityscapes")

Defaults give the fastest CPU path: the output op is the target's (export/targets.py: lowres_logits
without --target, the runtime upsamples), and an INT8 ONNX export without --target / --int8-target holds
two graphs of the same quantization (DEFAULT_INT8_TARGETS): model.onnx shaped for onnxruntime's QLinear
kernels (also what TensorRT reads) and model.openvino.onnx shaped for OpenVINO's fusions
(export/openvino_int8.py), listed in deploy.yaml with `backend: openvino`, so `--backend openvino` (and
`auto` where it picks OpenVINO) opens that one and every other backend model.onnx (runtime/manifest.py
file_entry). FP32 exports hold one model.onnx for every backend.

Any checkpoint loads (train/checkpoint.load_checkpoint: FP32, pruned, QAT, pruned + QAT), and the
classes, palette and Normalize come from its own training config (deploy_info). INT8 from a QAT
checkpoint carries the ranges QAT learned into every format, with no calibration: the ONNX models
are the FP32 graph of the QAT float weights with those Q/DQ pairs written in (onnx_int8.quantize_qat;
openvino_int8.quantize_for_openvino with qat_scales), the Paddle Inference model is the QAT model's own
quantize_linear / dequantize_linear program. INT8 from FP32 weights (PTQ) is calibrated on --calib-dir
(onnxruntime's static quantization; min/max for the OpenVINO graph); Paddle Inference INT8 needs a QAT
checkpoint.

Everything is written into a temporary folder next to `out_dir` and renamed at the end, so a failed
export (including a failed parity check) leaves nothing half-written behind.

Parity gates (`_gate`): FP32 exports must agree with the Paddle model on >= 99.9 % of pixels. INT8 is
judged on the pixels where its reference is confident (export/parity.py): a QAT export against its
fake-quant model ("paddle-fakequant", the same function) >= 99.5 %, a PTQ export against the FP32
model ("paddle-fp32", quantization error included) >= 99 %. The raw agreement, and with a labelled
calibration root both models' mIoU on the parity images, are recorded too; --accept-parity writes
an export that fails its gate and records that. Each file is measured through the backend it is for
(model.openvino.onnx through OpenVINO where it is installed, else onnxruntime: the parity entry says).

Why one ~510-line module: an export is one transaction (load, trace, quantize, gate, manifest, rename)
whose steps share the job's options and scratch folder; the format-specific work lives in onnx_int8.py,
openvino_int8.py, parity.py, check.py and targets.py.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import tempfile
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import paddle
import paddle.nn.functional as F

from ddrnet.export import frames as frame_sources
from ddrnet.export import onnx_fp32, parity, targets
from ddrnet.export.check import (float_conv_count, openvino_float_conv_count, openvino_layer_histogram,
                                 optimized_op_histogram, tensorrt_qdq_violations)
from ddrnet.export.onnx_int8 import quantize_onnx, quantize_qat
from ddrnet.export.openvino_int8 import qat_scales, quantize_for_openvino
from ddrnet.export.targets import DEFAULT_INT8_TARGETS, INT8_FLAVOURS, INT8_TARGETS, ONNX_FILE
from ddrnet.runtime import Predictor
from ddrnet.runtime.backends import installed
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import atomic_dir, check_output_dir, refuse_replacing
from ddrnet.runtime.labels import label_set
from ddrnet.runtime.manifest import MANIFEST_NAME, OUTPUT_OPS, sha256_file, write_manifest
from ddrnet.compress.calib import calibration_images, sample
from ddrnet.compress.qat import save_quant_inference_model
from ddrnet.train.checkpoint import Checkpoint, deploy_info, load_checkpoint, resolve_weights
from ddrnet.train.quant import point_anchor, point_ranges
from ddrnet.train.structure import build_compressed

FORMATS = ("paddle", "onnx")
DYNAMIC_SHAPE = (-1, 3, -1, -1)
DEFAULT_SAMPLE_HW = (512, 1024)  # calibration / parity size for dynamic-shape exports
MIN_INT8_OPSET = 13  # per-channel QuantizeLinear / DequantizeLinear
# parity gates (see the module docstring): (figure, minimum) per kind of export
FP32_MIN_AGREEMENT = 0.999
QAT_MIN_CONFIDENT_AGREEMENT = 0.995
PTQ_MIN_CONFIDENT_AGREEMENT = 0.99
PADDLE_FILES = ("inference.pdmodel", "inference.pdiparams")

Shape = Tuple[int, int, int, int]
log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Job:
    """What one export_model call asked for, after validation."""
    shape: Shape
    formats: List[str]
    output_op: str
    opset: int
    optimize: bool
    int8: bool
    int8_targets: List[str]  # the INT8 ONNX flavours written (INT8_FLAVOURS)
    parity_num: int
    sample_hw: Optional[Tuple[int, int]]
    calib_source: str = ""  # folder or list file
    pool: List[str] = dataclasses.field(default_factory=list)  # every image of the calibration source
    calibration: List[str] = dataclasses.field(default_factory=list)  # the ones calibration uses
    accept_parity: bool = False  # export even below the parity gate (recorded in deploy.yaml)
    deploy: dict = dataclasses.field(default_factory=dict)  # classes and Normalize of the checkpoint


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


def _check_options(formats: Sequence[str], output_op: str, opset: int, int8: bool,
                   int8_target: Optional[str]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise DDRNetError("--format {}: choose from {}".format(",".join(formats) or "''", ",".join(FORMATS)))
    if output_op not in OUTPUT_OPS:
        raise DDRNetError("--output-op {}: choose one of {}".format(output_op, ", ".join(OUTPUT_OPS)))
    onnx_fp32.check_opset(opset)
    if int8 and opset < MIN_INT8_OPSET:
        raise DDRNetError("--int8 needs --opset {} or newer (per-channel Q/DQ), got {}".format(MIN_INT8_OPSET, opset))
    if int8 and int8_target is not None and int8_target not in INT8_TARGETS:
        raise DDRNetError("--int8-target {}: choose {}".format(int8_target, " or ".join(INT8_TARGETS)))


def _check_out_dir(out_dir: str, inputs: Sequence[Optional[str]]) -> None:
    """Before any work: `out_dir` is a folder that may be replaced (missing, empty or an exported model
    dir) and holds none of the inputs."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DDRNetError("{}: exists and is not a folder".format(out_dir))
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, MANIFEST_NAME)):
        raise DDRNetError("{}: not empty and not an exported model dir; refusing to replace it".format(out_dir))
    refuse_replacing(out_dir, inputs, "--out")
    check_output_dir(out_dir, "--out")


def save_paddle(model: paddle.nn.Layer, output_op: str, shape: Shape, folder: str) -> Tuple[str, str]:
    """`paddle.jit.save` of model + output op -> (inference.pdmodel, inference.pdiparams)."""
    prefix = os.path.join(folder, "inference")
    spec = [paddle.static.InputSpec(list(shape), "float32", name=onnx_fp32.INPUT_NAME)]
    paddle.jit.save(WithOutputOp(model, output_op), prefix, input_spec=spec)
    info = prefix + ".pdiparams.info"  # only needed to load the program back for training
    if os.path.exists(info):
        os.remove(info)
    return prefix + ".pdmodel", prefix + ".pdiparams"


def _metadata(meta: dict, job: _Job, precision: str) -> dict:
    from ddrnet import __version__

    deploy = job.deploy
    return {"model_name": meta["name"], "precision": precision, "class_names": deploy["class_names"],
            "palette": deploy["palette"], "label_set": deploy["label_set"], "input_shape": list(job.shape),
            "color_order": "RGB", "mean": deploy["mean"], "std": deploy["std"], "output_op": job.output_op,
            "ddrnet_version": __version__}


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


def _manifest(meta: dict, job: _Job, precision: str, files: List[dict], weights: str) -> dict:
    """deploy.yaml; classes and Normalize are the checkpoint's own (train/checkpoint.deploy_info)."""
    deploy = job.deploy
    return {
        "schema_version": 1,
        "model_name": meta["name"],
        "num_classes": meta["num_classes"],
        "label_set": deploy["label_set"],
        "class_names": deploy["class_names"],
        "palette": deploy["palette"],
        "precision": precision,
        "input": {"name": onnx_fp32.INPUT_NAME, "shape": list(job.shape), "color_order": "RGB", "layout": "NCHW",
                  "mean": deploy["mean"], "std": deploy["std"]},
        "output": {"op": job.output_op},
        "files": files,
        "source_checkpoint": {"path": os.path.abspath(weights), "sha256": sha256_file(weights)},
        "versions": _versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _onnx_entries(flavours: Sequence[str]) -> List[dict]:
    """One entry per ONNX file: FP32 (no flavours) model.onnx, else each INT8 flavour's file, with the
    backend it is for."""
    entries = []  # type: List[dict]
    for path, backend in [INT8_FLAVOURS[f] for f in flavours] or [(ONNX_FILE, None)]:
        entry = {"format": "onnx", "role": "model", "path": path}
        if backend:
            entry["backend"] = backend
        if entry not in entries:
            entries.append(entry)
    return entries


def _file_entries(formats: Sequence[str], flavours: Sequence[str] = ()) -> List[dict]:
    entries = []
    if "onnx" in formats:
        entries += _onnx_entries(flavours)
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


def _gate(kind: str) -> Tuple[str, float]:
    """(figure, minimum) an export must reach. INT8 is judged on the pixels where its reference is
    confident (export/parity.py): rounding is chaotic in a quantized network (one value on the other
    side of a rounding boundary moves a whole receptive field), so even the fake-quant model itself,
    evaluated in float64 instead of float32, disagrees with itself on 0.4-0.8 % of the pixels of the
    demo's model at 512x1024 (README, "Faithful INT8"), where two classes are nearly tied."""
    if kind == "qat":  # the same function as its fake-quant model
        return "confident_agreement", QAT_MIN_CONFIDENT_AGREEMENT
    if kind == "ptq":  # the quantization error included
        return "confident_agreement", PTQ_MIN_CONFIDENT_AGREEMENT
    return "argmax_agreement", FP32_MIN_AGREEMENT


def _check_parity(results: dict, kind: str, accept: bool) -> None:
    """Record each format's gate in its parity entry; refuse a failed one unless `accept`
    (--accept-parity, recorded as such)."""
    figure, minimum = _gate(kind)
    for fmt, result in results.items():
        value = result[figure]
        passed = value is not None and value >= minimum
        result["gate"] = {"figure": figure, "minimum": minimum, "passed": passed}
        if passed:
            continue
        if accept:
            result["gate"]["accepted_by"] = "--accept-parity"
            continue
        raise DDRNetError("parity check failed: {} {} {} with {} is {} (< {:.1%}; raw agreement {:.3%}); "
                          "nothing written (--accept-parity overrides, recorded in deploy.yaml)".format(
                              kind.upper(), fmt, figure.replace("_", " "), result["reference"],
                              "n/a" if value is None else "{:.3%}".format(value), minimum,
                              result["argmax_agreement"]))


def export_model(weights: str, out_dir: str, formats: Sequence[str] = FORMATS,
                 input_shape: Union[str, Sequence[int]] = (1, 3, 1024, 2048), output_op: Optional[str] = None,
                 opset: int = 13, model_name: Optional[str] = None, optimize: bool = True,
                 int8: bool = False, calib_dir: Optional[str] = None, calib_num: int = 32,
                 int8_target: Optional[str] = None, parity_num: int = 8, sample_hw: Optional[Tuple[int, int]] = None,
                 target: Optional[str] = None, accept_parity: bool = False) -> dict:
    """Export `weights` (checkpoint folder or .pdparams) into `out_dir`; returns the deploy.yaml written.

    target: a bundle of only what that target loads (export/targets.py: it sets formats and int8_target).
    output_op: None = the target's default (targets.default_output_op: lowres_logits without a target).

    int8: quantize the ONNX model (Q/DQ) for `int8_target` ("cpu": onnxruntime on x86, "openvino",
    "tensorrt"; None: both CPU graphs, DEFAULT_INT8_TARGETS) with the ranges of a QAT checkpoint, or
    calibrated on `calib_num` images of `calib_dir`; the paddle format needs a QAT checkpoint.
    sample_hw: size of calibration and parity images for dynamic-shape exports (default 512x1024).
    """
    if target:
        formats, int8_target = targets.resolve(target)
    output_op = output_op or targets.default_output_op(target)
    job = _Job(shape=parse_input_shape(input_shape), formats=[f.strip().lower() for f in formats if f.strip()],
               output_op=output_op, opset=opset, optimize=optimize, int8=int8,
               int8_targets=[int8_target] if int8_target else list(DEFAULT_INT8_TARGETS),
               parity_num=parity_num, sample_hw=sample_hw, accept_parity=accept_parity)
    _check_options(job.formats, output_op, opset, int8, int8_target)
    weights = resolve_weights(weights)
    if int8 and calib_dir:  # a bad calibration source fails before any work
        job.calib_source = os.path.abspath(calib_dir)
        job.pool = calibration_images(calib_dir)
        job.calibration = sample(job.pool, calib_num)  # the images `ddrnet compress --ptq` would take
    _check_out_dir(out_dir, [weights, calib_dir])
    with atomic_dir(out_dir) as stage:
        model, fakequant, checkpoint = load_for_export(weights, model_name)
        meta, compression = checkpoint.meta, checkpoint.compression
        job.deploy = deploy_info(checkpoint)
        if int8 and fakequant is None and not calib_dir:
            raise DDRNetError("{}: --int8 of FP32 weights calibrates: it needs --calib-dir (Cityscapes root: its "
                              "train split; image folder; list file)".format(weights))
        if int8 and "paddle" in job.formats and fakequant is None:
            raise DDRNetError("{}: INT8 Paddle Inference is the fake-quant model of a QAT checkpoint (`ddrnet "
                              "compress --qat`); for INT8 from FP32 weights use --format onnx".format(weights))
        with tempfile.TemporaryDirectory() as scratch:
            written = _export_into(stage, scratch, model, fakequant if int8 else None, meta, compression, weights, job)
        if target:
            written = write_manifest(stage, dict(written, target=targets.section(target, int8)))
    return written


def load_for_export(weights: str, model_name: Optional[str]) -> Tuple[paddle.nn.Layer, Optional[paddle.nn.Layer],
                                                                      Checkpoint]:
    """(float model, quantization-aware model or None, the checkpoint) of any checkpoint, in eval mode.
    A QAT checkpoint's float model is its fine-tuned weights in the BN-folded (and pruned) network."""
    checkpoint = load_checkpoint(weights, model_name)
    if not checkpoint.compression.get("qat"):
        return checkpoint.model, None, checkpoint
    plain = build_compressed(checkpoint.meta, dict(checkpoint.compression, qat=None, fold_bn=True))
    expected = plain.state_dict()
    # the quantization-aware model holds the same parameters plus its quantizers' ranges
    state = {key: value for key, value in checkpoint.model.state_dict().items() if key in expected}
    if set(state) != set(expected):
        raise DDRNetError("{}: QAT weights do not map onto the BN-folded model ({} vs {} tensors)".format(
            weights, len(state), len(expected)))
    plain.set_state_dict(state)
    plain.eval()
    return plain, checkpoint.model, checkpoint


def _export_into(stage: str, scratch: str, model: paddle.nn.Layer, fakequant: Optional[paddle.nn.Layer],
                 meta: dict, compression: dict, weights: str, job: _Job) -> dict:
    """Write every file and deploy.yaml into `stage`; `scratch` holds what the model dir does not keep.
    `fakequant`: the QAT model of an INT8 export from a QAT checkpoint (else None)."""
    shape, output_op, formats = job.shape, job.output_op, job.formats
    precision = "int8" if job.int8 else "fp32"
    if "paddle" in formats and fakequant is not None:
        spec = [paddle.static.InputSpec(list(shape), "float32", name=onnx_fp32.INPUT_NAME)]
        save_quant_inference_model(WithOutputOp(fakequant, output_op), os.path.join(stage, "inference"), spec)
    float_paddle_in_dir = "paddle" in formats and fakequant is None
    if float_paddle_in_dir or "onnx" in formats:  # ONNX is converted from the float Paddle program
        model_file, params_file = save_paddle(model, output_op, shape, stage if float_paddle_in_dir else scratch)
    quantization = None
    if job.int8:
        quantization = {"weights": "qat-fine-tuned" if fakequant is not None else "fp32"}
        if "onnx" in formats:
            fp32_path = _fp32_onnx_for_int8(model_file, params_file, scratch, meta, weights, job)
            for flavour in job.int8_targets:
                int8_model, info = (_quantize_qat(fp32_path, model, fakequant, compression["qat"].get("config"),
                                                  job, flavour)
                                    if fakequant is not None else _quantize_ptq(fp32_path, scratch, job, flavour))
                info = _write_int8(int8_model, info, stage, meta, job, flavour)
                if INT8_FLAVOURS[flavour][1]:  # a file for one backend: its own section
                    quantization[INT8_FLAVOURS[flavour][1]] = dict(info, file=INT8_FLAVOURS[flavour][0])
                else:  # model.onnx: at the top, where the tensorrt backend reads its `target`
                    quantization.update(info)
        if "paddle" in formats:
            quantization["paddle"] = {"method": "QAT ranges as quantize_linear / dequantize_linear (no calibration)",
                                      "config": compression["qat"].get("config") or {}}
    elif "onnx" in formats:
        save_onnx_fp32(model_file, params_file, os.path.join(stage, ONNX_FILE), job.opset, job.optimize,
                       _metadata(meta, job, precision))
    manifest = _manifest(meta, job, precision, _file_entries(formats, job.int8_targets if job.int8 else ()), weights)
    write_manifest(stage, manifest)  # without parity yet: the runtime's Predictor needs it to open the files
    manifest["parity"] = _parity(stage, model if fakequant is None else fakequant,
                                 "paddle-fp32" if fakequant is None else "paddle-fakequant", job)
    _check_parity(manifest["parity"], "fp32" if not job.int8 else "qat" if fakequant is not None else "ptq",
                  job.accept_parity)
    if quantization is not None:
        manifest["quantization"] = quantization
    return write_manifest(stage, manifest)


def _parity(model_dir: str, reference: paddle.nn.Layer, reference_name: str, job: _Job) -> dict:
    """Parity of every model file in `model_dir` with `reference` on the same images, each through the
    backend it is for (keyed by format; an ONNX file for one backend by that backend's name)."""
    sizes = _sample_sizes(job.shape, job.sample_hw, job.parity_num)
    checked = frame_sources.parity_frames(job.pool, job.calibration, job.parity_num, sizes[0],
                                          source=job.calib_source)
    frames = _resize_for(checked.frames, sizes, job.shape)
    labels = (frame_sources.train_labels(checked.paths, job.calib_source, label_set(job.deploy["label_set"]).from_label_ids)
              if os.path.isdir(job.calib_source) else None)
    results = {}
    for key, path, backend, model_file in _parity_subjects(model_dir, job):
        measured = parity.measure(model_dir, backend, frames, reference, job.output_op, labels, model_file)
        results[key] = dict(measured, reference=reference_name, source=checked.source, file=path, backend=backend)
    return results


def _parity_subjects(model_dir: str, job: _Job) -> List[Tuple[str, str, str, Optional[str]]]:
    """(parity key, file, backend, file to open instead of the backend's own choice) of every model file.
    An ONNX file for one backend runs there; where that backend is not installed, on onnxruntime."""
    subjects = []  # type: List[Tuple[str, str, str, Optional[str]]]
    if "onnx" in job.formats:
        for entry in _onnx_entries(job.int8_targets if job.int8 else ()):
            own = entry.get("backend")
            if own is None:
                subjects.append(("onnx", entry["path"], "onnxruntime", None))
            elif installed(own):
                subjects.append((own, entry["path"], own, None))
            else:
                subjects.append((own, entry["path"], "onnxruntime", os.path.join(model_dir, entry["path"])))
    if "paddle" in job.formats:
        subjects.append(("paddle", PADDLE_FILES[0], "paddle", None))
    return subjects


def _fp32_onnx_for_int8(model_file: str, params_file: str, scratch: str, meta: dict, weights: str, job: _Job) -> str:
    """The FP32 ONNX both INT8 routes start from, in `scratch` as a complete model dir (so the runtime's
    preprocessing can be reused)."""
    fp32_path = os.path.join(scratch, ONNX_FILE)
    save_onnx_fp32(model_file, params_file, fp32_path, job.opset, job.optimize,
                   _metadata(meta, job, "fp32"))
    write_manifest(scratch, _manifest(meta, job, "fp32", _file_entries(["onnx"]), weights))
    return fp32_path


def _quantize_qat(fp32_path: str, model: paddle.nn.Layer, fakequant: paddle.nn.Layer, config: Optional[dict],
                  job: _Job, flavour: str):
    """INT8 ONNX of `flavour` with the QAT model's own ranges (no calibration). Returns (model, info)."""
    config = config or {}
    ranges = point_ranges(fakequant)
    anchors = {key: point_anchor(model, key) for key in ranges}
    per_channel = config.get("weight_quantize_type", "channel_wise_abs_max") != "abs_max"
    if flavour == "openvino":  # symmetric with uint8 for the unsigned points: QAT's grids exactly
        return quantize_for_openvino(fp32_path, scales=qat_scales(fp32_path, anchors, ranges), per_channel=per_channel)
    relu_outputs = config.get("relu_outputs", "unsigned")
    suited = "signed" if flavour == "tensorrt" else "unsigned"
    if relu_outputs != suited:  # exported anyway: the parity gate judges the approximation
        log.warning("QAT with qat.quant.relu_outputs: %s, exported for --int8-target %s, is an approximation "
                    "there: QAT with relu_outputs: %s for this target", relu_outputs, flavour, suited)
    return quantize_qat(fp32_path, anchors, ranges, flavour, per_channel=per_channel,
                        argmax_output=job.output_op == "argmax")


def _quantize_ptq(fp32_path: str, scratch: str, job: _Job, flavour: str):
    """INT8 ONNX of `flavour` calibrated on the calibration images. Returns (model, info)."""
    preprocess = Predictor(scratch, backend="onnxruntime", trust=False).preprocess  # written just now: unsigned
    size = _sample_sizes(job.shape, job.sample_hw, 1)[0]
    frames = _resize_for(frame_sources.read_frames(job.calibration), [size] * len(job.calibration), job.shape)
    int8_model, info = (quantize_for_openvino(fp32_path, frames, preprocess) if flavour == "openvino"
                        else quantize_onnx(fp32_path, frames, preprocess, flavour))
    root = job.calib_source if os.path.isdir(job.calib_source) else os.path.dirname(job.calib_source)
    info["calibration"] = {"path": job.calib_source, "count": len(job.calibration),
                           "sha256": frame_sources.paths_digest(job.calibration, root), "size": list(size)}
    return int8_model, info


def _write_int8(int8_model, info: dict, stage: str, meta: dict, job: _Job, flavour: str) -> dict:
    """Save the `flavour` INT8 ONNX into `stage` and check what its backend makes of it: every convolution
    an integer kernel (onnxruntime's optimized graph for cpu, OpenVINO's compiled graph for openvino, where
    installed), TensorRT's Q/DQ rules for tensorrt. Returns `info` completed."""
    onnx_fp32.set_metadata(int8_model, _metadata(meta, job, "int8"))
    path = os.path.join(stage, INT8_FLAVOURS[flavour][0])
    onnx_fp32.save(int8_model, path)
    if flavour == "openvino":
        return dict(info, compiled_graph=_check_openvino_graph(path))
    histogram = optimized_op_histogram(path)
    float_convs = float_conv_count(histogram)
    # the TensorRT target keeps ReLUs between Q/DQ pairs for TensorRT to fuse: onnxruntime's CPU graph
    # is not what runs there, so the check applies to the CPU target
    if flavour == "cpu" and float_convs:
        raise DDRNetError("INT8 export: {} convolutions still run in float in onnxruntime's optimized graph "
                          "(op histogram {}); nothing written".format(float_convs, histogram))
    if flavour == "tensorrt":
        problems = tensorrt_qdq_violations(int8_model)
        if problems:
            raise DDRNetError("INT8 export: TensorRT would not parse the graph ({} problems; first: {}); nothing "
                              "written".format(len(problems), problems[0]))
    info["optimized_graph"] = {"float_convs": float_convs, "op_histogram": histogram}
    return info


def _check_openvino_graph(path: str) -> dict:
    """OpenVINO's compiled graph of the OpenVINO INT8 file: refused with a float convolution in it."""
    if not installed("openvino"):
        return {"checked": False, "why": "OpenVINO is not installed where this was exported"}
    histogram = openvino_layer_histogram(path)
    float_convs = openvino_float_conv_count(histogram)
    if float_convs:
        raise DDRNetError("INT8 export: {} convolutions still run in float in OpenVINO's compiled graph (layers "
                          "{}); nothing written".format(float_convs, histogram))
    return {"checked": True, "float_convs": float_convs, "layers": histogram}
