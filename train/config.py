"""YAML training configs (PaddleSeg-style keys), `_base_` inheritance and `--opt key=value` overrides."""
from __future__ import annotations

import copy
import os
from typing import Iterable, Optional

import yaml

from ddrnet.runtime.errors import DDRNetError

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def resolve_config_path(path: str) -> str:
    """A path, or the name of a bundled config (`ddrnet23_cityscapes_1024x1024_120k.yml`)."""
    if os.path.isfile(path):
        return path
    bundled = os.path.join(CONFIG_DIR, os.path.basename(path))
    if os.path.isfile(bundled):
        return bundled
    raise DDRNetError("{}: no such config (bundled configs: {})".format(
        path, ", ".join(sorted(os.listdir(CONFIG_DIR)))))


def merge_configs(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str, opts: Optional[Iterable[str]] = None) -> dict:
    path = resolve_config_path(path)
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise DDRNetError("{}: invalid YAML ({})".format(path, str(err).splitlines()[0])) from None
    if not isinstance(cfg, dict):
        raise DDRNetError("{}: a config must be a mapping".format(path))
    base = cfg.pop("_base_", None)
    if base:
        cfg = merge_configs(load_config(os.path.join(os.path.dirname(path), base)), cfg)
    for opt in opts or ():
        apply_opt(cfg, opt)
    return cfg


def _yaml11_float(text: str):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; every user means the number."""
    try:
        return float(text) if any(c.isdigit() for c in text) and "e" in text.lower() else text
    except ValueError:
        return text


def apply_opt(cfg: dict, opt: str) -> None:
    """`a.b.c=value`; the value is parsed as a YAML literal (number, bool, list...), never evaluated."""
    key, sep, raw = opt.partition("=")
    if not sep or not key:
        raise DDRNetError("--opt {!r}: expected key=value".format(opt))
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise DDRNetError("--opt {!r}: value is not a literal".format(opt)) from None
    if isinstance(value, str):
        value = _yaml11_float(value)
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DDRNetError("--opt {!r}: {} is not a section".format(opt, part))
    node[parts[-1]] = value
