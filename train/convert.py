"""Convert official PyTorch DDRNet weights (ydhongHIT/DDRNet: ImageNet-pretrained or Cityscapes) to .pdparams.

The official code builds convolutions and BatchNorms as separate modules (`layer1.0.conv1`,
`layer1.0.bn1`, `down4.3`, `final_layer.conv2`); this model zoo uses PaddleSeg's names, which group
them (`layer1.0.conv_bn_relu._conv`, `._batch_norm`, `down4.1._conv`, `head.conv`). Conversion is
that renaming plus PyTorch's BatchNorm buffer names (`running_mean` -> `_mean`, `running_var` ->
`_variance`), after unwrapping the training wrappers. Convolution weights have the same
[out, in, kh, kw] layout in both frameworks; the only Linear layer (`linear`, which would need a
transpose) belongs to the ImageNet classifier head and is skipped with the rest of that head.

Two numerical rules differ between the official code and PaddleSeg, and the converted weights
reproduce PyTorch's outputs only in a model built the PyTorch way: its AvgPool2d counts the zero
padding in the mean (`avg_pool_exclusive=False`) and its stage-3 down-sampling conv pads 1 on each
side (`down3_same_padding=False`). The sidecar JSON written next to the weights records both, and
the checkpoint loader builds the model from it.
"""
from __future__ import annotations

import os
import re
import zipfile
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import atomic_path, check_output_file, write_json
from ddrnet.runtime.manifest import sha256_file
from ddrnet.train.model import ARCHS

# training wrappers: DataParallel (`module.`) and HRNet's FullModel (`model.`), possibly nested
WRAPPER_PREFIXES = ("module.", "model.")
# dict keys under which checkpoints keep the state dict next to epoch / optimizer entries
WRAPPER_KEYS = ("state_dict", "model")
# source keys with no counterpart in the segmentation model, by reason
SKIPPED_PREFIXES = {
    "classification head": ("down5.", "last_layer.", "linear."),
    "training loss": ("loss.",),  # HRNet's FullModel keeps the criterion's class weights as buffers
}
BN_BUFFER_NAMES = {"running_mean": "_mean", "running_var": "_variance"}
BN_STEP_COUNTER = "num_batches_tracked"  # PyTorch-only bookkeeping, nothing to convert

_BLOCK = r"(layer[\d_]+\.\d+)"  # a residual block: layer1.0, layer3_.1, layer3_1_.0 ...
_BOTTLENECK = r"(layer5_?\.\d+)"  # stage 5 of both branches is built of Bottlenecks
_CONV_BN = r"((?:compression|down)\d(?:_\d)?)"  # compression3, down3_1 ... (Sequential(conv, bn))
_HEADS = {"final_layer": "head", "seghead_extra": "aux_head"}
# official module path -> this model's, first full match wins; unlisted paths (spp.*, downsample) are equal
MODULE_RENAMES: List[Tuple[str, str]] = [
    # stem and down4: Sequential(conv, bn, relu, conv, bn[, relu]) -> two ConvBN(ReLU) layers
    (r"(conv1|down4)\.0", r"\1.0._conv"), (r"(conv1|down4)\.1", r"\1.0._batch_norm"),
    (r"(conv1|down4)\.3", r"\1.1._conv"), (r"(conv1|down4)\.4", r"\1.1._batch_norm"),
    (_CONV_BN + r"\.0", r"\1._conv"), (_CONV_BN + r"\.1", r"\1._batch_norm"),
    (_BOTTLENECK + r"\.conv([12])", r"\1.conv_bn_relu\2._conv"),
    (_BOTTLENECK + r"\.bn([12])", r"\1.conv_bn_relu\2._batch_norm"),
    (_BOTTLENECK + r"\.conv3", r"\1.conv_bn._conv"), (_BOTTLENECK + r"\.bn3", r"\1.conv_bn._batch_norm"),
    (_BLOCK + r"\.conv1", r"\1.conv_bn_relu._conv"), (_BLOCK + r"\.bn1", r"\1.conv_bn_relu._batch_norm"),
    (_BLOCK + r"\.conv2", r"\1.conv_bn._conv"), (_BLOCK + r"\.bn2", r"\1.conv_bn._batch_norm"),
] + [rule for old, new in _HEADS.items() for rule in [
    (old + r"\.bn1", new + ".bn1"), (old + r"\.conv1", new + ".conv_bn_relu._conv"),
    (old + r"\.bn2", new + ".conv_bn_relu._batch_norm"), (old + r"\.conv2", new + ".conv"),
]]


def load_torch_state_dict(src: str) -> "OrderedDict[str, object]":
    """The tensors of a .pth file, unwrapped from {"state_dict": ...} / {"model": ...} containers."""
    try:
        import torch
    except ImportError:
        raise DDRNetError("converting PyTorch weights needs torch: pip install -e .[convert]") from None
    if not os.path.isfile(src):
        raise DDRNetError("{}: no such file".format(src))
    if not _is_torch_save_format(src):
        raise DDRNetError("{}: not a PyTorch checkpoint (neither torch.save's zip nor its legacy pickle "
                          "format)".format(src))
    try:
        # weights_only: tensors and plain containers only, no arbitrary pickled code runs
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises anything from KeyError to EOFError for foreign files
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if pickled:
            raise DDRNetError("{}: holds a pickled {} besides tensors, which is not loaded for safety; "
                              "re-save it with torch.save(model.state_dict(), ...)".format(src, pickled.group(1))
                              ) from None
        raise DDRNetError("{}: not a PyTorch checkpoint ({})".format(src, type(err).__name__)) from None
    state = _unwrap(obj, torch.Tensor)
    if not state:
        raise DDRNetError("{}: no tensors found in the checkpoint".format(src))
    return state


def _is_torch_save_format(path: str) -> bool:
    # torch.save writes a zip archive (torch >= 1.6) or a pickle starting with the PROTO opcode 0x80;
    # checked first because torch.load's errors for other files are arbitrary (KeyError, EOFError...)
    with open(path, "rb") as f:
        first = f.read(1)
    return first == b"\x80" or zipfile.is_zipfile(path)


def _unwrap(obj, tensor_type) -> "OrderedDict[str, object]":
    while isinstance(obj, dict):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            return OrderedDict((k, v) for k, v in obj.items() if isinstance(v, tensor_type))
        obj = inner
    return OrderedDict()


def strip_wrappers(key: str) -> str:
    """`module.model.conv1.0.weight` -> `conv1.0.weight`."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def paddle_name(key: str) -> str:
    """Official PyTorch key (wrappers stripped) -> this model's key."""
    module, _, param = key.rpartition(".")
    for pattern, replacement in MODULE_RENAMES:
        match = re.fullmatch(pattern, module)
        if match:
            module = match.expand(replacement)
            break
    return module + "." + BN_BUFFER_NAMES.get(param, param)


def skip_reason(key: str) -> Optional[str]:
    return next((reason for reason, prefixes in SKIPPED_PREFIXES.items() if key.startswith(prefixes)), None)


def split_keys(state: Dict[str, object]) -> Tuple["OrderedDict[str, object]", Dict[str, List[str]]]:
    """(tensors to convert under their official names, skipped official keys by reason)."""
    kept: "OrderedDict[str, object]" = OrderedDict()
    skipped: Dict[str, List[str]] = {}
    for key, value in state.items():
        key = strip_wrappers(key)
        if key.endswith("." + BN_STEP_COUNTER):
            continue
        reason = skip_reason(key)
        if reason is None:
            kept[key] = value
        else:
            skipped.setdefault(reason, []).append(key)
    return kept, skipped


def detect_arch(state: Dict[str, object], src: str) -> str:
    """The architecture by shapes: stem width (32 slim, 64 full) and DDRNet-39's split stage 3."""
    stem = state.get("conv1.0.weight")
    if stem is None:
        raise DDRNetError("{}: cannot tell the architecture (no conv1.0.weight); pass the model name "
                          "(one of {})".format(src, ", ".join(ARCHS)))
    split_stage3 = any(k.startswith("layer3_1.") for k in state)
    for name, arch in ARCHS.items():
        if arch["planes"] == stem.shape[0] and (arch["stage3_splits"] > 1) == split_stage3:
            return name
    raise DDRNetError("{}: stem width {} matches no DDRNet architecture ({})".format(
        src, stem.shape[0], ", ".join(ARCHS)))


def check_fit(state: Dict[str, object], expected: Dict[str, List[int]], src: str, model_name: str) -> None:
    """Every official key must have a counterpart of the same shape; name the first that does not."""
    hint = "a checkpoint of another architecture? try --model auto"
    for key, value in state.items():
        name = paddle_name(key)
        if name not in expected:
            raise DDRNetError("{}: {} has no counterpart in {} ({})".format(src, key, model_name, hint))
        shape = list(value.shape)
        if shape != expected[name]:
            if key.startswith(tuple(h + ".conv2." for h in _HEADS)):
                hint = "the checkpoint has {0} classes: pass --num-classes {0}".format(shape[0])
            raise DDRNetError("{}: {} has shape {} in the checkpoint but {} in {} ({})".format(
                src, key, shape, expected[name], model_name, hint))


def to_numpy(value) -> np.ndarray:
    # .float(): half / bfloat16 checkpoints become the model's float32 (numpy has no bfloat16)
    return value.detach().cpu().float().numpy()


def sidecar_path(dst: str) -> str:
    return dst[: -len(".pdparams")] + ".json"


def convert_torch_checkpoint(src: str, dst: str, model_name: Optional[str] = None,
                             num_classes: int = 19) -> dict:
    """Convert `src` (.pth) to `dst` (.pdparams) plus its sidecar `dst`.json; return a report.

    `model_name` None detects the architecture from the shapes. Keys of the model the checkpoint
    does not have (ImageNet weights: `spp.*`, `head.*`) are reported as missing: they keep their
    initialisation when the weights are loaded for training. Skipped keys keep their official names.
    """
    import paddle

    from ddrnet.train.checkpoint import model_meta
    from ddrnet.train.model import build_model

    if not dst.endswith(".pdparams"):
        raise DDRNetError("{}: the output name must end with .pdparams".format(dst))
    for out in (dst, sidecar_path(dst)):
        check_output_file(out, "OUT.pdparams", inputs=[src])
    kept, skipped = split_keys(load_torch_state_dict(src))
    if not kept:
        raise DDRNetError("{}: no DDRNet weights in the checkpoint (only {})".format(src, ", ".join(skipped)))
    model_name = model_name or detect_arch(kept, src)
    meta = model_meta(model_name, num_classes, aux_head=any(k.startswith("seghead_extra.") for k in kept),
                      avg_pool_exclusive=False, down3_same_padding=False)
    expected = {k: list(v.shape) for k, v in build_model(**meta).state_dict().items()}
    check_fit(kept, expected, src, model_name)
    arrays = OrderedDict((paddle_name(k), to_numpy(v)) for k, v in kept.items())
    sidecar = {
        "model": meta,
        "source": {"path": os.path.abspath(src), "sha256": sha256_file(src)},
        "converted_from": "pytorch",
        "missing_keys": [k for k in expected if k not in arrays],
        "skipped_keys": [k for keys in skipped.values() for k in keys],
    }
    with atomic_path(dst) as tmp:
        paddle.save(arrays, tmp)
    write_json(sidecar, sidecar_path(dst))
    return dict(sidecar, dst=dst, sidecar=sidecar_path(dst), converted=len(arrays), skipped=skipped)
