"""Calibration sets for post-training quantization: which images set the INT8 ranges.

A calibration source is one of
- a Cityscapes-layout root: a fixed-seed sample of its `leftImg8bit/train` split;
- a folder of images (searched recursively);
- a list file (`.txt`, one image path per line, `#` comments), paths relative to `--data-root`
  when given, else to the list file's folder; `ddrnet compress calib-list` writes one.
The val split is what the quantized model is judged on, so it never calibrates: paths under
`leftImg8bit/val` are refused. See calib_data/README.md.
"""
from __future__ import annotations

import glob
import os
from typing import List, Optional, Tuple

import numpy as np
import yaml

from ddrnet.runtime.cityscapes import IMAGE_SUFFIX
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import check_output_file, write_text
from ddrnet.runtime.metrics import evaluation_inputs

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# the demo's calibration set: the first 32 frames of its train split (generator seed 0, 256x512)
SYNTHETIC_RECIPE = {"seed": 0, "count": 32, "size": (256, 512)}
LIST_HEADER = ("# DDRNet calibration list: Cityscapes train images relative to the data root\n"
               "# (a fixed-seed sample of the train split; never val). Written by `ddrnet compress calib-list`.\n")


def _in_val_split(path: str) -> bool:
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    return any(a == "leftImg8bit" and b == "val" for a, b in zip(parts, parts[1:]))


def cityscapes_train_images(root: str) -> List[str]:
    """Sorted `_leftImg8bit.png` images of a Cityscapes root's train split."""
    folder = os.path.join(root, "leftImg8bit", "train")
    if not os.path.isdir(folder):
        raise DDRNetError("{}: no leftImg8bit/train folder (a Cityscapes-layout root is needed)".format(root))
    images = sorted(glob.glob(os.path.join(folder, "*", "*" + IMAGE_SUFFIX)))
    if not images:
        raise DDRNetError("{}: no *{} images to calibrate on".format(folder, IMAGE_SUFFIX))
    return images


def sample(paths: List[str], num: Optional[int], seed: int = 0) -> List[str]:
    """A fixed-seed sample of `num` paths (all when num is None or not smaller), in sorted order."""
    if num is None or num >= len(paths):
        return list(paths)
    if num <= 0:
        raise DDRNetError("calibration image count must be positive, got {}".format(num))
    picked = np.random.default_rng(seed).choice(len(paths), size=num, replace=False)
    return [paths[i] for i in sorted(picked)]


def read_list(list_file: str, data_root: Optional[str] = None) -> List[str]:
    try:
        with open(list_file) as f:
            lines = [line.strip() for line in f]
    except OSError as err:
        raise DDRNetError("{}: cannot read the calibration list ({})".format(list_file, err.strerror)) from None
    base = data_root or os.path.dirname(os.path.abspath(list_file))
    paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in lines if p and not p.startswith("#")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DDRNetError("{}: {} listed images do not exist (first: {}){}".format(
            list_file, len(missing), missing[0], "" if data_root else "; pass --data-root for root-relative lists"))
    return paths


def _images_under(folder: str) -> List[str]:
    found = glob.glob(os.path.join(folder, "**", "*"), recursive=True)
    return sorted(p for p in found if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p))


def calibration_images(source: str, num: Optional[int] = None, seed: int = 0,
                       data_root: Optional[str] = None) -> List[str]:
    """The image paths a calibration source stands for (see the module docstring)."""
    if os.path.isfile(source):
        paths = sample(read_list(source, data_root), num, seed)
    elif os.path.isdir(os.path.join(source, "leftImg8bit")):
        paths = sample(cityscapes_train_images(source), num, seed)
    elif os.path.isdir(source):
        if _in_val_split(source):
            raise DDRNetError("{}: the val split is for evaluation; calibrate on train images".format(source))
        paths = sample(_images_under(source), num, seed)
    else:
        raise DDRNetError("{}: no such calibration folder or list file".format(source))
    if not paths:
        raise DDRNetError("{}: no calibration images ({})".format(source, ", ".join(IMAGE_EXTENSIONS)))
    val = [p for p in paths if _in_val_split(p)]
    if val:
        raise DDRNetError("{}: {} images from the val split (first: {}); calibrate on train images".format(
            source, len(val), val[0]))
    return paths


def write_calib_list(data_root: str, num: int, seed: int, out: str) -> List[str]:
    """Write a fixed-seed sample of `num` train images of a Cityscapes root as root-relative paths."""
    if num < 1:
        raise DDRNetError("--num {}: must be at least 1".format(num))
    check_output_file(out, "--out", inputs=evaluation_inputs(data_root))
    pool = cityscapes_train_images(data_root)
    if num > len(pool):
        raise DDRNetError("--num {}: {} has only {} train images".format(num, data_root, len(pool)))
    paths = sample(pool, num, seed)
    body = "".join(os.path.relpath(p, data_root).replace(os.sep, "/") + "\n" for p in paths)
    write_text(out, LIST_HEADER + "# num={} seed={}\n".format(num, seed) + body)
    return paths


def load_recipe(path: Optional[str] = None) -> dict:
    """A synthetic calibration recipe (calib_data/synthetic.yaml): generator seed, count and size;
    None: the built-in one (the demo's; calib_data/synthetic.yaml holds the same values)."""
    if path is None:
        return dict(SYNTHETIC_RECIPE)
    try:
        with open(path) as f:
            recipe = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise DDRNetError("{}: cannot read the recipe ({})".format(path, getattr(err, "strerror", None) or err))
    if not isinstance(recipe, dict) or recipe.get("split", "train") != "train":
        raise DDRNetError("{}: a recipe is a mapping and calibrates on the train split only".format(path))
    try:
        size = recipe.get("size", [256, 512])
        return {"seed": int(recipe.get("seed", 0)), "count": int(recipe["count"]),
                "size": (int(size[0]), int(size[1]))}
    except (KeyError, TypeError, ValueError, IndexError):
        raise DDRNetError("{}: needs count (int), and optionally seed (int) and size [H, W]".format(path)) from None


def materialise_synthetic(recipe_path: Optional[str], out: str) -> Tuple[str, List[str]]:
    """Render the recipe's frames as a Cityscapes-layout train split under `out`; (root, images)."""
    from ddrnet.train.synth import generate

    recipe = load_recipe(recipe_path)
    generate(out, recipe["count"], 0, size=recipe["size"], seed=recipe["seed"])
    return out, cityscapes_train_images(out)
