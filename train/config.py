"""YAML training configs: PaddleSeg 2.8's files as they are, `_base_` inheritance and overrides.

A PaddleSeg config reads unchanged (both forms of its DDRNet config: release 2.8's string `_base_`
and the newer list `_base_` that adds `_base_/runtime.yml` with `global:` / `train:` / `test:`
sections). Inheritance follows PaddleSeg's `parse_from_yaml`: bases are paths relative to the file
that names them; the file's own keys win over its bases, an earlier base wins over a later one,
mappings merge key by key, lists are replaced, and `_inherited_: false` in a mapping drops what
the bases had there.

Every file is read into one set of key names (PaddleSeg's, where PaddleSeg has the key), so a
config that mixes both spellings merges correctly:

  PaddleSeg                         here
  model.type: DDRNet_23             model.name: ddrnet23 (our names work in `type` too)
  model.enable_auxiliary_loss       model.aux_head
  global.num_workers / .device      num_workers / device
  train.<key> (runtime.yml)         <key> (save_interval, log_iters, keep_checkpoint_max, seed,
                                    precision, amp_level, do_eval, use_vdl, save_dir, resume_model)
  test.<key> (runtime.yml)          test_config.<key> (aug_eval, scales, flip_*, is_slide, crop_size, stride)
  amp: true (this project's older)  precision: fp16

`--opt key=value` (ours: the value is a YAML literal) and `--opts key=value ...` (PaddleSeg's: a
Python literal, e.g. `test_config.scales=0.75,1.0,1.25`) are parsed as data, never evaluated.
"""
from __future__ import annotations

import ast
import copy
import os
from typing import Any, Iterable, List, Optional

import yaml

from ddrnet.runtime.errors import DDRNetError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
BASE_KEY, INHERIT_KEY = "_base_", "_inherited_"

# PaddleSeg model type -> our architecture name
MODEL_TYPES = {"DDRNet_23": "ddrnet23"}
# sections of PaddleSeg's runtime.yml whose keys are top-level keys here
FLATTENED_SECTIONS = ("global", "train")
RENAMED = {"test": "test_config"}
MODEL_RENAMED = {"type": "name", "enable_auxiliary_loss": "aux_head"}


def resolve_config_path(path: str) -> str:
    """A path, or the name of a bundled config (`ddrnet23_cityscapes_1024x1024_120k.yml`)."""
    if os.path.isfile(path):
        return path
    bundled = os.path.join(CONFIG_DIR, os.path.basename(path))
    if os.path.isfile(bundled):
        return bundled
    raise DDRNetError("{}: no such config (bundled configs: {})".format(
        path, ", ".join(sorted(n for n in os.listdir(CONFIG_DIR) if n.endswith(".yml")))))


def merge_configs(base: dict, over: dict) -> dict:
    """`over` on top of `base` (PaddleSeg's merge_config_dicts): mappings merge, the rest is replaced;
    a mapping of `over` holding `_inherited_: false` replaces the base's mapping whole."""
    if not over.get(INHERIT_KEY, True):
        return {k: copy.deepcopy(v) for k, v in over.items() if k != INHERIT_KEY}
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key == INHERIT_KEY:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def normalize(cfg: dict) -> dict:
    """One file's keys in this project's spelling (see the module docstring); values are unchanged
    except PaddleSeg's model type names."""
    out = {}  # type: dict
    for key, value in cfg.items():
        if key in FLATTENED_SECTIONS and isinstance(value, dict):
            out.update(value)
        elif key == "amp" and isinstance(value, bool):
            out["precision"] = "fp16" if value else "fp32"
        else:
            out[RENAMED.get(key, key)] = value
    model = out.get("model")
    if isinstance(model, dict):
        model = {MODEL_RENAMED.get(k, k): v for k, v in model.items()}
        if isinstance(model.get("name"), str):
            model["name"] = MODEL_TYPES.get(model["name"], model["name"])
        out["model"] = model
    return out


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise DDRNetError("{}: invalid YAML ({})".format(path, str(err).splitlines()[0])) from None
    except OSError as err:
        raise DDRNetError("{}: cannot read config ({})".format(path, err.strerror)) from None
    if not isinstance(cfg, dict):
        raise DDRNetError("{}: a config must be a mapping".format(path))
    return cfg


def _base_paths(path: str, base: Any) -> List[str]:
    names = [base] if isinstance(base, str) else base
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DDRNetError("{}: _base_ must be a file name or a list of file names, got {!r}".format(path, base))
    return [os.path.join(os.path.dirname(path), name) for name in names]


def _load_tree(path: str, seen: tuple = ()) -> dict:
    path = resolve_config_path(path)
    if os.path.abspath(path) in seen:
        raise DDRNetError("{}: _base_ cycle ({})".format(path, " -> ".join(seen + (path,))))
    cfg = _read_yaml(path)
    base = cfg.pop(BASE_KEY, None)
    cfg = normalize(cfg)
    if base is None:
        return cfg
    for base_path in _base_paths(path, base):  # the file wins over its bases, earlier bases over later
        cfg = merge_configs(_load_tree(base_path, seen + (os.path.abspath(path),)), cfg)
    return cfg


def _drop_inherit_keys(node: Any) -> Any:
    """`_inherited_` marks left where no base had the section (PaddleSeg passes them on as options)."""
    if not isinstance(node, dict):
        return node
    return {k: _drop_inherit_keys(v) for k, v in node.items() if k != INHERIT_KEY}


def load_config(path: str, opts: Optional[Iterable[str]] = None, paddleseg_opts: Optional[Iterable[str]] = None
                ) -> dict:
    """The merged config of `path`, then `opts` (`--opt`, YAML literals) and `paddleseg_opts`
    (`--opts`, Python literals) applied in that order."""
    cfg = _drop_inherit_keys(_load_tree(path))
    for opt in opts or ():
        apply_opt(cfg, opt)
    for opt in paddleseg_opts or ():
        apply_opt(cfg, opt, python_literal=True)
    return cfg


def _yaml11_float(text: str):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; every user means the number."""
    try:
        return float(text) if any(c.isdigit() for c in text) and "e" in text.lower() else text
    except ValueError:
        return text


def _parse_value(opt: str, raw: str, python_literal: bool):
    if python_literal:  # PaddleSeg's --opts: ast.literal_eval, a plain string when it is none
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise DDRNetError("--opt {!r}: value is not a literal".format(opt)) from None
    return _yaml11_float(value) if isinstance(value, str) else value


def _canonical(parts: List[str], value: Any):
    """A dotted override key and its value in this project's spelling (as `normalize` reads files)."""
    if parts[0] in FLATTENED_SECTIONS and len(parts) > 1:
        parts = parts[1:]
    if parts == ["amp"] and isinstance(value, bool):
        return ["precision"], "fp16" if value else "fp32"
    parts = [RENAMED.get(parts[0], parts[0])] + parts[1:]
    if parts[0] == "model" and len(parts) == 2:
        parts = ["model", MODEL_RENAMED.get(parts[1], parts[1])]
        if parts[1] == "name" and isinstance(value, str):
            value = MODEL_TYPES.get(value, value)
    return parts, value


def apply_opt(cfg: dict, opt: str, python_literal: bool = False) -> None:
    """`a.b.c=value`: the value is a literal (number, bool, list...), never evaluated. PaddleSeg's key
    names are accepted (`model.type`, `train.seed`, `test.scales` ...)."""
    flag = "--opts" if python_literal else "--opt"
    key, sep, raw = opt.partition("=")
    if not sep or not key or "" in key.split("."):
        raise DDRNetError("{} {!r}: expected key=value".format(flag, opt))
    parts, value = _canonical(key.split("."), _parse_value(opt, raw, python_literal))
    node = cfg
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DDRNetError("{} {!r}: {} is not a section".format(flag, opt, part))
    node[parts[-1]] = value
