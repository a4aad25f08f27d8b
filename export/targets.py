"""Deployment targets of `ddrnet export --target`: one table of what each target's bundle holds.

A bundle is a model dir with only the files its target loads, and a deploy.yaml whose `target:`
section tells the runtime what it was made for (backend, device, the INT8 flavour of its ONNX, and for
TensorRT targets the engine defaults `ddrnet engine` builds with on the device):

  target    files (FP32; INT8 where other)        INT8 (--int8)                   output op      runs with
  --------  ------------------------------------  ------------------------------  -------------  --------------------
  cpu       model.onnx                            uint8 Q/DQ for x86 kernels      lowres_logits  onnxruntime, CPU
  openvino  model.onnx; model.openvino.onnx       symmetric Q/DQ where OpenVINO   lowres_logits  OpenVINO, CPU
                                                  fuses it (openvino_int8.py)
  tensorrt  model.onnx                            symmetric int8 Q/DQ             argmax         TensorRT, server GPU
  jetson    model.onnx                            symmetric int8 Q/DQ             argmax         TensorRT, Jetson
  paddle    inference.pdmodel, .pdiparams         fake-quant program (QAT ckpt)   argmax         Paddle Inference

The output op is each target's default (an explicit --output-op wins): lowres_logits where the ddrnet
runtime runs the model (it upsamples and argmaxes the 1/8 scores itself, faster on CPUs), argmax where
TensorRT / C++ consumers read labels. An export without --target gets DEFAULT_OUTPUT_OP, and with
--int8 both CPU graphs (DEFAULT_INT8_TARGETS).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.tensorrt_backend import DEFAULT_PROFILE, Profile


@dataclasses.dataclass(frozen=True)
class Target:
    formats: Tuple[str, ...]
    int8_target: str  # the ONNX INT8 flavour (export/exporter.py INT8_FLAVOURS); unused without ONNX
    backend: str
    device: str
    output_op: str  # the default --output-op
    engine: Optional[dict] = None  # `ddrnet engine` defaults: precision, workspace_mb, profile


# Jetson: the whole profile fits an 8 GB Orin / Xavier NX beside the camera pipeline; one frame of up to
# 1024x2048 per run (the stream splits a batch of sources into single frames), tuned for a Cityscapes frame
JETSON_PROFILE = Profile((1, 256, 256), (1, 1024, 2048), (1, 1024, 2048))

ONNX_FILE = "model.onnx"
OPENVINO_FILE = "model.openvino.onnx"
# INT8 ONNX flavours (--int8-target): (file, the one backend that opens it; None: every ONNX backend).
# cpu and tensorrt: export/onnx_int8.py TARGET_SETTINGS; openvino: export/openvino_int8.py
INT8_FLAVOURS = {"cpu": (ONNX_FILE, None), "tensorrt": (ONNX_FILE, None), "openvino": (OPENVINO_FILE, "openvino")}
INT8_TARGETS = tuple(INT8_FLAVOURS)
DEFAULT_INT8_TARGETS = ("cpu", "openvino")  # INT8 without --target / --int8-target: both CPU graphs
DEFAULT_OUTPUT_OP = "lowres_logits"  # without --target: the CPU runtime's fastest head (README "Export")
TARGETS = {
    "cpu": Target(("onnx",), "cpu", "onnxruntime", "cpu", "lowres_logits"),
    "openvino": Target(("onnx",), "openvino", "openvino", "cpu", "lowres_logits"),
    "tensorrt": Target(("onnx",), "tensorrt", "tensorrt", "gpu", "argmax",
                       {"precision": "fp16", "workspace_mb": 4096, "profile": DEFAULT_PROFILE.to_dict()}),
    "jetson": Target(("onnx",), "tensorrt", "tensorrt", "gpu", "argmax",
                     {"precision": "fp16", "workspace_mb": 1024, "profile": JETSON_PROFILE.to_dict()}),
    "paddle": Target(("paddle",), "cpu", "paddle", "cpu or gpu", "argmax"),
}


def get(name: str) -> Target:
    if name not in TARGETS:
        raise DDRNetError("--target {}: choose one of {}".format(name, ", ".join(TARGETS)))
    return TARGETS[name]


def resolve(name: str, formats: Optional[Sequence[str]] = None, int8_target: Optional[str] = None
            ) -> Tuple[List[str], str]:
    """(formats, int8_target) of a target; refuses an explicit --format / --int8-target that contradicts it."""
    target = get(name)
    if formats and sorted(f.strip().lower() for f in formats if f.strip()) != sorted(target.formats):
        raise DDRNetError("--format {} contradicts --target {} (its bundle holds {})".format(
            ",".join(formats), name, ",".join(target.formats)))
    if int8_target and int8_target != target.int8_target:
        raise DDRNetError("--int8-target {} contradicts --target {} (its INT8 is {})".format(
            int8_target, name, target.int8_target))
    return list(target.formats), target.int8_target


def default_output_op(name: Optional[str]) -> str:
    """The output op of an export for target `name` (None: no --target) when --output-op is not given."""
    return get(name).output_op if name else DEFAULT_OUTPUT_OP


def section(name: str, int8: bool) -> Dict[str, object]:
    """deploy.yaml's `target:` for a bundle of `name`."""
    target = get(name)
    data = {"name": name, "backend": target.backend, "device": target.device}  # type: Dict[str, object]
    if int8 and "onnx" in target.formats:
        data["int8_target"] = target.int8_target
    if target.engine:
        data["engine"] = dict(target.engine, precision="int8" if int8 else target.engine["precision"])
    return data


def copy_hint(name: str, out_dir: str) -> str:
    """What to do with the bundle next (the export command prints it)."""
    target = get(name)
    line = "copy it to the device: rsync -a {}/ DEVICE:models/{}/".format(out_dir.rstrip("/"), name)
    if target.engine:
        line += ", then on the device: ddrnet engine --model models/{}".format(name)
    return line
