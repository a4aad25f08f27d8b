"""Atomic checkpoints and loading weights with the model description that travels with them.

A checkpoint is a folder: `model.pdparams`, `model.pdopt` (training only) and `state.json`
(iteration, model description, RNG state, metrics and the SHA-256 of every file). It is written
under a temporary name and renamed, so a crash never leaves a half-written checkpoint, and a
folder whose files do not match the hashes in its state.json is never picked up by `--resume`.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import NamedTuple, Optional, Tuple

import paddle

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.labels import DEFAULT_LABEL_SET, label_set
from ddrnet.runtime.fileio import atomic_dir, write_json
from ddrnet.runtime.manifest import sha256_file
from ddrnet.train.data import Normalize
from ddrnet.train.model import ARCHS, DualResNet
from ddrnet.train.structure import build_compressed

STATE = "state.json"
PARAMS = "model.pdparams"
OPT = "model.pdopt"

log = logging.getLogger(__name__)


def save_checkpoint(folder: str, model: paddle.nn.Layer, state: dict, optimizer=None) -> str:
    """Write `folder` atomically; `state` must hold a `model` description (see `model_meta`)."""
    with atomic_dir(folder) as tmp:
        paddle.save(model.state_dict(), os.path.join(tmp, PARAMS))
        if optimizer is not None:
            paddle.save(optimizer.state_dict(), os.path.join(tmp, OPT))
        files = {name: sha256_file(os.path.join(tmp, name)) for name in (PARAMS, OPT)
                 if os.path.exists(os.path.join(tmp, name))}
        write_json(dict(state, files=files), os.path.join(tmp, STATE), indent=1)
    return folder


def read_state(folder: str) -> Optional[dict]:
    """The state of a complete, uncorrupted checkpoint folder, else None."""
    try:
        with open(os.path.join(folder, STATE)) as f:
            state = json.load(f)
        for name, digest in state["files"].items():
            if sha256_file(os.path.join(folder, name)) != digest:
                return None
        return state
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_checkpoint(save_dir: str) -> Optional[Tuple[str, dict]]:
    """The newest complete `iter_*` checkpoint under `save_dir` (corrupt or partial ones skipped)."""
    found = []
    for folder in glob.glob(os.path.join(save_dir, "iter_*")):
        state = read_state(folder)
        if state is not None:
            found.append((state["iteration"], folder, state))
    if not found:
        return None
    _, folder, state = max(found, key=lambda t: t[0])
    return folder, state


def model_meta(name: str, num_classes: int = 19, aux_head: bool = False, avg_pool_exclusive: bool = True,
               down3_same_padding: bool = True) -> dict:
    """The `build_model` arguments recorded with every checkpoint, export and converted weights."""
    return dict(name=name, num_classes=num_classes, aux_head=aux_head, avg_pool_exclusive=avg_pool_exclusive,
                down3_same_padding=down3_same_padding)


def weights_meta(weights: str) -> Optional[dict]:
    """The model description for a weights file: its checkpoint's state.json or the converter's sidecar."""
    candidates = [os.path.splitext(weights)[0] + ".json", os.path.join(os.path.dirname(weights), STATE)]
    for path in candidates:
        if os.path.isfile(path):
            with open(path) as f:
                meta = json.load(f)
            if "model" in meta:
                return meta["model"]
    return None


def resolve_weights(path: str) -> str:
    """Accept a checkpoint folder or a .pdparams file."""
    if os.path.isdir(path):
        path = os.path.join(path, PARAMS)
    if not os.path.isfile(path):
        raise DDRNetError("{}: no such weights file".format(path))
    return path


class Checkpoint(NamedTuple):
    """A loaded checkpoint: the model in eval mode and what state.json says about it."""
    model: DualResNet
    meta: dict         # the build_model arguments (`model_meta`)
    compression: dict  # state.json's `compression` ({} for plain weights): see train/structure.py
    config: dict       # the training config it was trained with ({} when unknown, e.g. PaddleSeg's weights)


def _checkpoint_state(weights: str) -> dict:
    """The state.json beside a weights file ({} when there is none, e.g. PaddleSeg's weights)."""
    path = os.path.join(os.path.dirname(weights), STATE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as err:
        raise DDRNetError("{}: unreadable state.json ({})".format(path, err)) from None
    return state if isinstance(state, dict) else {}


def load_checkpoint(weights: str, model_name: Optional[str] = None, aux_head: Optional[bool] = None) -> Checkpoint:
    """The one loader: any checkpoint (FP32, pruned, BN-folded, quantization-aware, pruned + QAT) or
    bare weights, rebuilt with the structure its state.json describes and loaded strictly (eval mode).

    `model_name`: the architecture expected (checked against the description; needed for bare
    .pdparams such as PaddleSeg's, whose DDRNet_23 is "ddrnet23"). `aux_head=None` takes it from the
    description; True builds the aux head and accepts weights without its keys.
    """
    weights = resolve_weights(weights)
    described = dict(weights_meta(weights) or {})
    name = described.get("name") or model_name
    if name is None:
        raise DDRNetError("{}: no state.json or .json sidecar tells the architecture; pass the model name "
                          "(one of {})".format(weights, ", ".join(ARCHS)))
    if model_name and name != model_name:
        raise DDRNetError("{}: weights of {}, not {}".format(weights, name, model_name))
    meta = model_meta(name, int(described.get("num_classes", 19)),
                      bool(described.get("aux_head", False) if aux_head is None else aux_head),
                      bool(described.get("avg_pool_exclusive", True)), bool(described.get("down3_same_padding", True)))
    state = _checkpoint_state(weights)
    compression = state.get("compression") or {}
    model = build_compressed(meta, compression)
    load_weights(model, weights)
    model.eval()
    return Checkpoint(model, meta, compression, state.get("config") or {})


def load_weights(model: paddle.nn.Layer, weights: str) -> None:
    """`set_state_dict` that refuses weights of another architecture; only aux-head keys may be missing."""
    try:
        state = paddle.load(weights)
    except Exception as err:  # paddle raises bare Exceptions for foreign files
        raise DDRNetError("{}: not a Paddle weights file ({})".format(weights, str(err).splitlines()[0]
                                                                          if str(err) else type(err).__name__))
    if not isinstance(state, dict):
        raise DDRNetError("{}: not a state dict".format(weights))
    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and list(state[k].shape) != list(expected[k].shape)]
    missing = [k for k in expected if k not in state and not k.startswith("aux_head.")]
    if unexpected or mismatched or missing:
        key = (mismatched or unexpected or missing)[0]
        what = ("shape {} vs model {}".format(list(state[key].shape), list(expected[key].shape)) if mismatched
                else "not in this model" if unexpected else "missing")
        raise DDRNetError("{}: weights do not fit this model ({} keys mismatched, {} unexpected, {} missing; "
                          "first: {} {})".format(weights, len(mismatched), len(unexpected), len(missing), key, what))
    model.set_state_dict(state)


def load_weights_lenient(model: paddle.nn.Layer, weights: str) -> dict:
    """Initialise from pretrained weights (e.g. converted ImageNet weights): keys the model lacks or
    with other shapes are skipped, and the counts are reported rather than silently ignored."""
    state = paddle.load(resolve_weights(weights))
    expected = model.state_dict()
    usable = {k: v for k, v in state.items() if k in expected and list(v.shape) == list(expected[k].shape)}
    if not usable:
        raise DDRNetError("{}: no parameter of these weights fits {}".format(weights, type(model).__name__))
    model.set_state_dict(usable)
    report = {"loaded": len(usable), "skipped": len(state) - len(usable), "not_initialised": len(expected) - len(usable)}
    log.info("pretrained %s: %d tensors loaded, %d skipped, %d left at init", weights, report["loaded"],
             report["skipped"], report["not_initialised"])
    return report


def deploy_info(checkpoint: Checkpoint) -> dict:
    """What a deployed model must know from the checkpoint's training config: the classes it predicts
    (label set, names, palette) and the Normalize it was trained with (mean, std over RGB / 255).
    Config-less weights (e.g. PaddleSeg's) get the Cityscapes classes and mean = std = 0.5."""
    cfg = checkpoint.config
    datasets = [cfg.get(key) or {} for key in ("val_dataset", "train_dataset")]
    found = next((t for d in datasets for t in d.get("transforms") or [] if t.get("type") == "Normalize"), {})
    normalize = Normalize(**{key: found[key] for key in ("mean", "std") if key in found})
    name = next((d["label_set"] for d in datasets if d.get("label_set")), DEFAULT_LABEL_SET)
    labels = label_set(name)
    classes = checkpoint.meta["num_classes"]
    if classes == len(labels.names):
        names, palette = list(labels.names), labels.palette.tolist()
    else:  # a custom class count: neutral names and distinct colours
        names = ["class_{}".format(i) for i in range(classes)]
        palette = [[(37 * i) % 256, (91 * i) % 256, (151 * i) % 256] for i in range(classes)]
    return {"label_set": name, "class_names": names, "palette": palette,
            "mean": [float(v) for v in found.get("mean", normalize.mean)],
            "std": [float(v) for v in found.get("std", normalize.std)]}
