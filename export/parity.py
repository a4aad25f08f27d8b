"""Parity at export: the exported files, run through the runtime's own Predictor, against the Paddle
model in dygraph on the same input tensors.

For an argmax output the labels are compared (agreement only: there are no values to diff); for
softmax and none, also the largest absolute difference of the probabilities / logits.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import paddle
from tqdm import tqdm

from ddrnet.runtime import Predictor


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _labels(output: np.ndarray) -> np.ndarray:
    """[N, H, W] labels of an argmax output ([N, H, W] or [N, 1, H, W]) or of scores [N, C, H, W]."""
    if output.dtype.kind in "iu":
        return output.reshape(output.shape[0], output.shape[-2], output.shape[-1])
    return output.argmax(axis=1)


def compare(reference_logits: Sequence[np.ndarray], outputs: Sequence[np.ndarray], output_op: str) -> dict:
    """Largest absolute difference (None for argmax) and the fraction of pixels with the same label."""
    same = total = 0
    max_abs: Optional[float] = None
    for logits, out in zip(reference_logits, outputs):
        ref_labels = logits.argmax(axis=1)
        labels = _labels(out)
        if labels.shape != ref_labels.shape:
            raise ValueError("exported output {} vs Paddle {}".format(labels.shape, ref_labels.shape))
        same += int((labels == ref_labels).sum())
        total += labels.size
        if output_op != "argmax":
            expected = _softmax(logits) if output_op == "softmax" else logits
            diff = float(np.abs(out.astype(np.float64) - expected).max())
            max_abs = diff if max_abs is None else max(max_abs, diff)
    return {"max_abs_diff": max_abs, "argmax_agreement": same / total, "images": len(outputs)}


def measure(model_dir: str, backend: str, frames: Sequence[np.ndarray], reference: paddle.nn.Layer,
            output_op: str) -> dict:
    """Parity of one backend of an exported dir (its deploy.yaml already written) with `reference`,
    an eval-mode Paddle layer returning logits."""
    predictor = Predictor(model_dir, backend=backend)
    expected: List[np.ndarray] = []
    got: List[np.ndarray] = []
    for frame in tqdm(frames, desc="parity " + backend, unit="img", leave=False):
        tensor = predictor.preprocess(frame)
        with paddle.no_grad():
            expected.append(reference(paddle.to_tensor(tensor)).numpy())
        out = predictor.backend.run(tensor)
        # low-resolution scores are compared as the labels the runtime makes of them
        got.append(predictor.class_maps(out, tensor.shape[2:]) if output_op == "lowres_logits" else out)
    return compare(expected, got, "argmax" if output_op == "lowres_logits" else output_op)

