"""Semantic-segmentation metrics with the official Cityscapes rules (cityscapesScripts'
evalPixelLevelSemanticLabeling): one confusion matrix over the whole split, pixels labelled
ignore (255) skipped, a class with neither ground truth nor prediction is null and left out of
the mean, predictions always compared at full label resolution (labels are never resized)."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.labels import CLASS_NAMES, ID_TO_TRAIN_ID, IGNORE_INDEX, MAX_LABEL_ID, NUM_CLASSES

PRED_FORMATS = ("labelids", "trainids")


class ConfusionMatrix:
    """Rows: ground-truth class, columns: predicted class plus one "void" column.

    A prediction outside 0..num_classes-1 (e.g. a labelId such as "unlabeled" that maps to no
    train class) is void: it is a miss for the true class but a false positive for no class,
    exactly as cityscapesScripts counts predictions of ignored labels.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX,
                 class_names: Optional[Sequence[str]] = None):
        if not 0 < num_classes < 256 or not 0 <= ignore_index <= 255:
            raise ValueError("num_classes must be 1..255 and ignore_index 0..255")
        if class_names is None:
            class_names = CLASS_NAMES if num_classes == NUM_CLASSES else [
                "class_{}".format(i) for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError("{} class names for {} classes".format(len(class_names), num_classes))
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names)
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
        self.num_images = 0

    def update(self, pred: np.ndarray, label: np.ndarray, source: str = "prediction") -> None:
        """Add one image: `pred` and `label` are HxW integer arrays of the same size."""
        if pred.shape != label.shape:
            raise DDRNetError("{}: prediction is {} but its label is {}; predictions must be at full "
                              "label resolution (labels are never resized)".format(
                                  source, _hw(pred), _hw(label)))
        label = _as_uint8(label, source, "label")
        cols = self.num_classes + 1
        # one uint16 code per pixel (label * cols + prediction, predictions past the last class in
        # the void column) and one bincount: 3x faster than masking out ignore pixels first
        code = label.astype(np.uint16)
        code *= np.uint16(cols)
        code += np.minimum(_as_uint8(pred, source, "prediction"), self.num_classes)
        rows = np.bincount(code.ravel(), minlength=256 * cols).reshape(256, cols)
        rows[self.ignore_index] = 0
        stray = np.flatnonzero(rows[self.num_classes:].sum(axis=1))
        if stray.size:
            raise DDRNetError("{}: label value {} is neither a class (0..{}) nor ignore ({})".format(
                source, int(stray[0]) + self.num_classes, self.num_classes - 1, self.ignore_index))
        self.matrix += rows[:self.num_classes]
        self.num_images += 1

    def result(self) -> dict:
        """The eval JSON (docs/design-notes.md): miou, per_class_iou (null where undefined), pixel_acc, num_images."""
        total = int(self.matrix.sum())
        if total == 0:
            raise DDRNetError("nothing to evaluate: no labelled (non-ignore) pixels seen")
        tp = np.diag(self.matrix[:, :self.num_classes]).astype(np.float64)
        gt = self.matrix.sum(axis=1)
        predicted = self.matrix[:, :self.num_classes].sum(axis=0)
        union = gt + predicted - tp
        per_class = {}  # type: Dict[str, Optional[float]]
        for name, inter, uni in zip(self.class_names, tp, union):
            per_class[name] = float(inter / uni) if uni > 0 else None
        defined = [v for v in per_class.values() if v is not None]
        return {
            "miou": float(np.mean(defined)),
            "per_class_iou": per_class,
            "pixel_acc": float(tp.sum() / total),
            "num_images": self.num_images,
        }


def _as_uint8(array: np.ndarray, source: str, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.size and (array.min() < 0 or array.max() > 255):
        raise DDRNetError("{}: {} values must be 0..255, got {}..{}".format(
            source, what, array.min(), array.max()))
    return array.astype(np.uint8)


def _hw(array: np.ndarray) -> str:
    return "x".join(str(d) for d in array.shape)


def format_table(result: dict) -> str:
    """Per-class IoU table for the terminal."""
    width = max(len(n) for n in result["per_class_iou"]) + 2
    lines = ["{:<{w}}{:>8}".format("class", "IoU", w=width), "-" * (width + 8)]
    for name, iou in result["per_class_iou"].items():
        lines.append("{:<{w}}{:>8}".format(name, "-" if iou is None else "{:.4f}".format(iou), w=width))
    lines.append("-" * (width + 8))
    lines.append("{:<{w}}{:>8.4f}".format("mIoU", result["miou"], w=width))
    lines.append("{:<{w}}{:>8.4f}".format("pixel acc", result["pixel_acc"], w=width))
    lines.append("{:<{w}}{:>8d}".format("images", result["num_images"], w=width))
    return "\n".join(lines)


def evaluation_inputs(data_root: Optional[str], pred_dir: Optional[str] = None) -> List[str]:
    """What an evaluation reads, for output checks (`fileio.refuse_overwrite`): the data root's image
    and label trees and the prediction PNGs; other files there (an earlier eval.json) are not inputs."""
    inputs = [os.path.join(data_root, tree) for tree in ("leftImg8bit", "gtFine")] if data_root else []
    if pred_dir and os.path.isdir(pred_dir):
        inputs += [os.path.join(folder, name) for folder, _, names in os.walk(pred_dir)
                   for name in names if name.lower().endswith(".png")]
    return inputs


def _index_predictions(pred_dir: str) -> Dict[str, str]:
    """city_seq_frame key -> prediction PNG, searching the folder recursively."""
    from ddrnet.runtime.cityscapes import city_frame_key

    if not os.path.isdir(pred_dir):
        raise DDRNetError("{}: no such prediction folder".format(pred_dir))
    found = {}  # type: Dict[str, str]
    for folder, _, names in os.walk(pred_dir):
        for name in sorted(names):
            if not name.lower().endswith(".png"):
                continue
            path = os.path.join(folder, name)
            try:
                key = city_frame_key(path)
            except DDRNetError:
                continue  # not a frame's prediction (a legend, a plot): not ours to judge
            if key in found:
                raise DDRNetError("{}: two predictions for {}: {} and {}".format(
                    pred_dir, key, found[key], path))
            found[key] = path
    return found


def _prediction_to_train_ids(pred: np.ndarray, pred_format: str, path: str) -> np.ndarray:
    """Map a submission-format prediction to trainIds; out-of-set values are errors."""
    top = int(pred.max())
    if pred_format == "labelids":
        if top > MAX_LABEL_ID:
            raise DDRNetError("{}: value {} is not a Cityscapes labelId (0..{}); is this a trainIds "
                              "prediction? (--pred-format trainids)".format(path, top, MAX_LABEL_ID))
        return ID_TO_TRAIN_ID[pred]
    if top >= NUM_CLASSES and top != IGNORE_INDEX:
        raise DDRNetError("{}: value {} is not a trainId (0..{}); is this a labelIds prediction? "
                          "(--pred-format labelids)".format(path, top, NUM_CLASSES - 1))
    return pred


def evaluate_prediction_dir(pred_dir: str, data_root: str, split: str = "val",
                            pred_format: str = "labelids", progress: bool = True) -> dict:
    """Evaluate a folder of prediction PNGs (Cityscapes submission style: one single-channel PNG
    per image, its name containing city_seq_frame) against the split's ground truth."""
    from ddrnet.runtime.cityscapes import city_frame_key, list_samples, load_train_ids
    from ddrnet.runtime.imageio import read_label

    if pred_format not in PRED_FORMATS:
        raise DDRNetError("--pred-format must be one of {}, got {!r}".format(", ".join(PRED_FORMATS),
                                                                            pred_format))
    samples = list_samples(data_root, split)
    predictions = _index_predictions(pred_dir)
    matrix = ConfusionMatrix()
    for _, label_path in _progress(samples, progress, "eval"):
        key = city_frame_key(label_path)
        pred_path = predictions.get(key)
        if pred_path is None:
            raise DDRNetError("{}: no prediction for {} (expected a PNG named like {}*.png)".format(
                pred_dir, key, key))
        pred = _prediction_to_train_ids(read_label(pred_path), pred_format, pred_path)
        matrix.update(pred, load_train_ids(label_path), source=pred_path)
    return matrix.result()


def evaluate_model_dir(predictor, data_root: str, split: str = "val", progress: bool = True,
                       limit: Optional[int] = None) -> dict:
    """mIoU of a runtime Predictor over a Cityscapes-layout split at full label resolution
    (the Predictor returns masks at the frame size; labels are never resized)."""
    from ddrnet.runtime.cityscapes import list_samples, load_train_ids
    from ddrnet.runtime.imageio import read_image
    from ddrnet.runtime.labels import DEFAULT_LABEL_SET, label_set

    lookup = label_set(predictor.manifest.get("label_set", DEFAULT_LABEL_SET)).from_label_ids
    samples: List = list_samples(data_root, split)
    if limit is not None:
        samples = samples[:limit]
    matrix = ConfusionMatrix(len(predictor.class_names), class_names=predictor.class_names)
    for image_path, label_path in _progress(samples, progress, "eval " + split):
        bgr = read_image(image_path)
        label = load_train_ids(label_path, expected_hw=bgr.shape[:2], image_path=image_path, lookup=lookup)
        matrix.update(predictor(bgr), label, source=image_path)
    return matrix.result()


def _progress(items: list, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", leave=False)
