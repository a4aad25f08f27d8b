"""Cityscapes label definitions (the official cityscapesScripts table) and lookup tables."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE_INDEX = 255


class Label(NamedTuple):
    name: str
    id: int
    train_id: int
    color: tuple  # RGB


# id, trainId and colour exactly as cityscapesscripts/helpers/labels.py
LABELS = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
    Label("license plate", -1, 255, (0, 0, 142)),
)

_TRAIN = sorted((lb for lb in LABELS if lb.train_id != IGNORE_INDEX), key=lambda lb: lb.train_id)
CLASS_NAMES = tuple(lb.name for lb in _TRAIN)
NUM_CLASSES = len(CLASS_NAMES)  # 19
PALETTE = np.array([lb.color for lb in _TRAIN], dtype=np.uint8)  # [19, 3] RGB
MAX_LABEL_ID = 33

# labelIds -> trainIds; any id that is not a Cityscapes id maps to ignore as well
ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _lb in LABELS:
    if _lb.id >= 0:
        ID_TO_TRAIN_ID[_lb.id] = _lb.train_id

# trainIds -> labelIds (the benchmark submission format); ignore maps to 0 (unlabeled)
TRAIN_ID_TO_ID = np.zeros(256, dtype=np.uint8)
for _lb in _TRAIN:
    TRAIN_ID_TO_ID[_lb.train_id] = _lb.id

# Cityscapes' 7 categories (cityscapesScripts' `category` of each evaluated class; void excluded),
# coloured like their most common class
CATEGORY_NAMES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
CATEGORY_OF_TRAIN_ID = (0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6)
CATEGORY_PALETTE = PALETTE[[0, 2, 5, 8, 10, 11, 13]]  # road, building, pole, vegetation, sky, person, car
ID_TO_CATEGORY = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _lb in _TRAIN:
    ID_TO_CATEGORY[_lb.id] = CATEGORY_OF_TRAIN_ID[_lb.train_id]


class LabelSet(NamedTuple):
    names: tuple
    palette: np.ndarray  # [classes, 3] RGB
    from_label_ids: np.ndarray  # 256-entry lookup: Cityscapes labelIds -> class (255 ignore)


# what a model predicts: `label_set` in a dataset config and in deploy.yaml (default cityscapes)
LABEL_SETS = {
    "cityscapes": LabelSet(CLASS_NAMES, PALETTE, ID_TO_TRAIN_ID),  # the 19 trainIds
    "categories": LabelSet(CATEGORY_NAMES, CATEGORY_PALETTE, ID_TO_CATEGORY),
}
DEFAULT_LABEL_SET = "cityscapes"


def label_set(name: str) -> LabelSet:
    if name not in LABEL_SETS:
        from ddrnet.runtime.errors import DDRNetError

        raise DDRNetError("label_set {!r}: choose {}".format(name, " or ".join(LABEL_SETS)))
    return LABEL_SETS[name]
