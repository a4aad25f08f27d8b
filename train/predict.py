"""Predict straight from a checkpoint: the runtime's Predictor (same pre/post-processing, colours and
mask semantics as an exported model) over a Paddle dygraph backend."""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import paddle

from ddrnet.runtime import Predictor
from ddrnet.runtime.backends import Backend
from ddrnet.runtime.labels import CLASS_NAMES, PALETTE
from ddrnet.train.checkpoint import load_model

MEAN_STD = [0.5, 0.5, 0.5]  # PaddleSeg's Normalize, used by every training config


class DygraphBackend(Backend):
    """The Paddle model itself behind the runtime's backend interface (logits out)."""

    def __init__(self, model: paddle.nn.Layer):
        self.model = model
        self.input_name = "x"
        self.input_shape = [-1, 3, -1, -1]  # type: List[int]
        self.output_names = ["logits"]

    def run(self, tensor: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return self.model(paddle.to_tensor(tensor)).numpy()


def checkpoint_manifest(meta: dict) -> dict:
    """The deploy.yaml fields the Predictor needs, for a model that has not been exported."""
    names = list(CLASS_NAMES) if meta["num_classes"] == len(CLASS_NAMES) else [
        "class_{}".format(i) for i in range(meta["num_classes"])]
    palette = PALETTE.tolist() if meta["num_classes"] == len(CLASS_NAMES) else [
        [(37 * i) % 256, (91 * i) % 256, (151 * i) % 256] for i in range(meta["num_classes"])]
    return {"schema_version": 1, "model_name": meta["name"], "num_classes": meta["num_classes"],
            "class_names": names, "palette": palette, "precision": "fp32",
            "input": {"name": "x", "shape": [-1, 3, -1, -1], "color_order": "RGB", "layout": "NCHW",
                      "mean": MEAN_STD, "std": MEAN_STD},
            "output": {"op": "none"}, "files": []}


def checkpoint_predictor(weights: str, model_name: Optional[str] = None) -> Predictor:
    model, meta = load_model(weights, model_name=model_name)
    return Predictor.from_backend(DygraphBackend(model), checkpoint_manifest(meta), source=weights)
