"""The official Cityscapes folder layout, shared by training, evaluation and the runtime.

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
"""
from __future__ import annotations

import glob
import os
import re
from typing import List, Optional, Tuple

import numpy as np

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.imageio import read_label
from ddrnet.runtime.labels import ID_TO_TRAIN_ID, MAX_LABEL_ID

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"

# <city>_<seq>_<frame> at the start of a file name; whatever follows (suffix, extension) is ignored
_KEY_PATTERN = re.compile(r"^(.+?_\d+_\d+)(?:_|\.|$)")


def _split_dir(root: str, kind: str, split: str) -> str:
    path = os.path.join(root, kind, split)
    if not os.path.isdir(path):
        raise DDRNetError("{}: no such folder (expected the Cityscapes layout {}/<split>/<city>/)".format(
            path, kind))
    return path


def label_path_for(image_path: str, root: str, split: str) -> str:
    """The `_gtFine_labelIds.png` that belongs to a `_leftImg8bit.png` of the same split."""
    city = os.path.basename(os.path.dirname(image_path))
    stem = os.path.basename(image_path)[:-len(IMAGE_SUFFIX)]
    return os.path.join(root, "gtFine", split, city, stem + LABEL_SUFFIX)


def list_samples(root: str, split: str) -> List[Tuple[str, str]]:
    """Sorted (image, labelIds) path pairs of one split; every image must have its label."""
    if not os.path.isdir(root):
        raise DDRNetError("{}: no such data folder (--data-root names the Cityscapes-layout root)".format(root))
    image_dir = _split_dir(root, "leftImg8bit", split)
    _split_dir(root, "gtFine", split)
    images = sorted(glob.glob(os.path.join(image_dir, "*", "*" + IMAGE_SUFFIX)))
    if not images:
        raise DDRNetError("{}: no *{} images in its city folders".format(image_dir, IMAGE_SUFFIX))
    pairs = []
    for image in images:
        label = label_path_for(image, root, split)
        if not os.path.isfile(label):
            raise DDRNetError("{}: image without its label (expected {})".format(image, label))
        pairs.append((image, label))
    return pairs


def load_train_ids(label_path: str, expected_hw: Optional[Tuple[int, int]] = None,
                   image_path: Optional[str] = None, lookup: np.ndarray = ID_TO_TRAIN_ID) -> np.ndarray:
    """Read a `_labelIds` PNG and map it to trainIds (HxW uint8, 255 = ignore), or to the classes of
    another label set (`lookup`: runtime/labels.py LABEL_SETS).

    expected_hw: the (height, width) of the image the label belongs to (image_path names it in
    the error message).
    """
    ids = read_label(label_path)
    bad = np.unique(ids[ids > MAX_LABEL_ID])
    if bad.size:
        raise DDRNetError("{}: label ids outside 0..{}: {} (a _labelTrainIds or _color file given "
                          "instead of _labelIds?)".format(label_path, MAX_LABEL_ID, bad[:10].tolist()))
    if expected_hw is not None and tuple(ids.shape) != tuple(expected_hw):
        raise DDRNetError("{}: label size {}x{} differs from its image {}{}x{}".format(
            label_path, ids.shape[0], ids.shape[1], image_path + " " if image_path else "",
            expected_hw[0], expected_hw[1]))
    return lookup[ids]


def city_frame_key(path: str) -> str:
    """`aachen_000000_000019` from any file named after a Cityscapes frame (image, label, prediction)."""
    match = _KEY_PATTERN.match(os.path.basename(path))
    if not match:
        raise DDRNetError("{}: not named like a Cityscapes frame (<city>_<seq>_<frame>...)".format(path))
    return match.group(1)
