"""Predict straight from a checkpoint: the runtime's Predictor (same pre/post-processing, colours and
mask semantics as an exported model) over a Paddle dygraph backend."""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import paddle

from ddrnet.runtime import Predictor
from ddrnet.runtime.backends import Backend
from ddrnet.train.checkpoint import Checkpoint, deploy_info, load_checkpoint


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


def checkpoint_manifest(checkpoint: Checkpoint) -> dict:
    """The deploy.yaml fields the Predictor needs, for a model that has not been exported: the same
    classes and Normalize an export of it would record (train/checkpoint.deploy_info)."""
    deploy, meta = deploy_info(checkpoint), checkpoint.meta
    return {"schema_version": 1, "model_name": meta["name"], "num_classes": meta["num_classes"],
            "label_set": deploy["label_set"], "class_names": deploy["class_names"], "palette": deploy["palette"],
            "precision": "int8" if checkpoint.compression.get("qat") else "fp32",
            "input": {"name": "x", "shape": [-1, 3, -1, -1], "color_order": "RGB", "layout": "NCHW",
                      "mean": deploy["mean"], "std": deploy["std"]},
            "output": {"op": "none"}, "files": []}


def checkpoint_predictor(weights: str, model_name: Optional[str] = None) -> Predictor:
    """FP32, pruned, QAT (its fake-quant model) or pruned + QAT checkpoints alike."""
    checkpoint = load_checkpoint(weights, model_name=model_name)
    return Predictor.from_backend(DygraphBackend(checkpoint.model), checkpoint_manifest(checkpoint), source=weights)
