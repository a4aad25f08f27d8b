"""Parity at export: the exported files, run through the runtime's own Predictor, against the Paddle
model in dygraph on the same input tensors.

For an argmax output the labels are compared (agreement only: there are no values to diff); for
softmax and none, also the largest absolute difference of the probabilities / logits.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import cv2
import numpy as np
import paddle
from tqdm import tqdm

from ddrnet.runtime import Predictor
from ddrnet.runtime.metrics import ConfusionMatrix

CONFIDENT_MARGIN = 0.5  # see compare()


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _labels(output: np.ndarray) -> np.ndarray:
    """[N, H, W] labels of an argmax output ([N, H, W] or [N, 1, H, W]) or of scores [N, C, H, W]."""
    if output.dtype.kind in "iu":
        return output.reshape(output.shape[0], output.shape[-2], output.shape[-1])
    return output.argmax(axis=1)


def _margin(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 softmax probability per pixel [N, H, W]: how sure the reference is."""
    top2 = np.partition(_softmax(logits), -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def compare(reference_logits: Sequence[np.ndarray], outputs: Sequence[np.ndarray], output_op: str,
            labels: Optional[Sequence[np.ndarray]] = None, num_classes: int = 0) -> dict:
    """Largest absolute difference (None for argmax), the fraction of pixels with the same label, the
    same on the pixels where the reference is confident (top-1 minus top-2 probability >=
    CONFIDENT_MARGIN: a sound quantization keeps those, a broken one does not), and, given
    ground-truth `labels` ([H, W] trainIds per image at the compared size), both models' mIoU."""
    same = total = confident_same = confident_total = 0
    max_abs: Optional[float] = None
    matrices = (ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)) if labels is not None else None
    for i, (logits, out) in enumerate(zip(reference_logits, outputs)):
        ref_labels = logits.argmax(axis=1)
        got = _labels(out)
        if got.shape != ref_labels.shape:
            raise ValueError("exported output {} vs Paddle {}".format(got.shape, ref_labels.shape))
        agree = got == ref_labels
        confident = _margin(logits) >= CONFIDENT_MARGIN
        same += int(agree.sum())
        total += agree.size
        confident_same += int((agree & confident).sum())
        confident_total += int(confident.sum())
        if matrices is not None:
            for matrix, pred in zip(matrices, (ref_labels, got)):
                matrix.update(pred[0].astype(np.uint8), labels[i])
        if output_op != "argmax":
            expected = _softmax(logits) if output_op == "softmax" else logits
            diff = float(np.abs(out.astype(np.float64) - expected).max())
            max_abs = diff if max_abs is None else max(max_abs, diff)
    result = {"max_abs_diff": max_abs, "argmax_agreement": same / total,
              "confident_agreement": confident_same / confident_total if confident_total else None,
              "confident_fraction": confident_total / total, "confident_margin": CONFIDENT_MARGIN,
              "images": len(outputs)}
    if matrices is not None:
        reference, export = (m.result()["miou"] for m in matrices)
        result.update(reference_miou=reference, miou=export, miou_delta_points=100.0 * (export - reference))
    return result


def _float_tensor(batch: np.ndarray, spec: dict) -> np.ndarray:
    """The normalised float32 [N, 3, H, W] tensor of a backend's input: a backend that normalises in its
    graph (OpenVINO, `takes_frames`) gets [N, H, W, 3] uint8 BGR frames, the Paddle reference the tensor."""
    if batch.dtype == np.float32:
        return batch
    planes = batch[..., ::-1] if spec["color_order"] == "RGB" else batch
    mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(((planes.astype(np.float32) / 255.0 - mean) / std).transpose(0, 3, 1, 2))


def _predictor(model_dir: str, backend: str, model_file: Optional[str]) -> Predictor:
    if model_file is None:  # the file the runtime's backend picks
        return Predictor(model_dir, backend=backend, trust=False)  # this export's own files: unsigned
    from ddrnet.runtime.backends import OnnxRuntimeBackend
    from ddrnet.runtime.manifest import load_manifest

    return Predictor.from_backend(OnnxRuntimeBackend(model_file), load_manifest(model_dir), model_file)


def measure(model_dir: str, backend: str, frames: Sequence[np.ndarray], reference: paddle.nn.Layer,
            output_op: str, labels: Optional[Sequence[np.ndarray]] = None, model_file: Optional[str] = None) -> dict:
    """Parity of one backend of an exported dir (its deploy.yaml already written) with `reference`,
    an eval-mode Paddle layer returning logits. `labels`: trainIds per frame (frame size), or None.
    `model_file`: an ONNX file of the dir to run on onnxruntime instead of the one `backend` opens (the
    OpenVINO graph where OpenVINO is not installed)."""
    predictor = _predictor(model_dir, backend, model_file)
    expected: List[np.ndarray] = []
    got: List[np.ndarray] = []
    sized: List[np.ndarray] = []
    for i, frame in enumerate(tqdm(frames, desc="parity " + backend, unit="img", leave=False)):
        batch = predictor.preprocess(frame)
        tensor = _float_tensor(batch, predictor.manifest["input"])
        with paddle.no_grad():
            expected.append(reference(paddle.to_tensor(tensor)).numpy())
        out = predictor.backend.run(batch)
        # low-resolution scores are compared as the labels the runtime makes of them
        got.append(predictor.class_maps(out, tensor.shape[2:]) if output_op == "lowres_logits" else out)
        if labels is not None:  # compared at the network's size
            h, w = tensor.shape[2:]
            sized.append(cv2.resize(labels[i], (w, h), interpolation=cv2.INTER_NEAREST))
    return compare(expected, got, "argmax" if output_op == "lowres_logits" else output_op,
                   sized if labels is not None else None, len(predictor.class_names))
