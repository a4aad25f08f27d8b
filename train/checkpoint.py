"""Atomic checkpoints and loading weights with the model description that travels with them.

A checkpoint is a folder: `model.pdparams`, `model.pdopt` (training only) and `state.json`
(iteration, model description, RNG state, metrics and the SHA-256 of every file). It is written
under a temporary name and renamed, so a crash never leaves a half-written checkpoint, and a
folder whose files do not match the hashes in its state.json is never picked up by `--resume`.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Optional, Tuple

import paddle

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.manifest import sha256_file
from ddrnet.train.model import ARCHS, DualResNet, build_model

STATE = "state.json"
PARAMS = "model.pdparams"
OPT = "model.pdopt"


def save_checkpoint(folder: str, model: paddle.nn.Layer, state: dict, optimizer=None) -> str:
    """Write `folder` atomically; `state` must hold a `model` description (see `model_meta`)."""
    parent = os.path.dirname(os.path.abspath(folder))
    tmp = os.path.join(parent, ".tmp-" + os.path.basename(folder))
    try:
        os.makedirs(parent, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        paddle.save(model.state_dict(), os.path.join(tmp, PARAMS))
        if optimizer is not None:
            paddle.save(optimizer.state_dict(), os.path.join(tmp, OPT))
        files = {name: sha256_file(os.path.join(tmp, name)) for name in (PARAMS, OPT)
                 if os.path.exists(os.path.join(tmp, name))}
        with open(os.path.join(tmp, STATE), "w") as f:
            json.dump(dict(state, files=files), f, indent=1)
        old = folder + ".old"
        if os.path.exists(folder):
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DDRNetError("{}: cannot write checkpoint ({})".format(folder, err.strerror or err)) from None
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


def load_model(weights: str, model_name: Optional[str] = None, num_classes: Optional[int] = None,
               aux_head: Optional[bool] = None) -> Tuple[DualResNet, dict]:
    """Build the model the weights were trained as and load them (eval mode).

    PaddleSeg's released weights have no description: pass `model_name` (PaddleSeg's DDRNet_23 is
    "ddrnet23"). `aux_head=None` takes it from the description; their lack of `aux_head.*` keys is
    accepted when `aux_head=True` is asked for.
    """
    weights = resolve_weights(weights)
    meta = dict(weights_meta(weights) or {})
    name = model_name or meta.get("name")
    if name is None:
        raise DDRNetError("{}: no state.json or .json sidecar tells the architecture; pass the model name "
                          "(one of {})".format(weights, ", ".join(ARCHS)))
    aux_head = meta.get("aux_head", False) if aux_head is None else aux_head
    meta = model_meta(name, num_classes or meta.get("num_classes", 19), aux_head,
                      meta.get("avg_pool_exclusive", True), meta.get("down3_same_padding", True))
    model = build_model(**meta)
    load_weights(model, weights)
    model.eval()
    return model, meta


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
    print("pretrained {}: {loaded} tensors loaded, {skipped} skipped, {not_initialised} left at init".format(
        weights, **report))
    return report
