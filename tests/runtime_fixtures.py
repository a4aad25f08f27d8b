"""Tiny exported models for runtime tests: a 1x1 convolution 3 -> C classes written with
onnx.helper, plus its deploy.yaml, and the same computation in numpy as the reference."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from ddrnet.runtime.labels import CLASS_NAMES, PALETTE

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def tiny_weights(num_classes: int = 19, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(num_classes, 3, 1, 1)).astype(np.float32),
            rng.normal(scale=0.1, size=(num_classes,)).astype(np.float32))


def write_tiny_onnx(path: str, shape: Sequence = (1, 3, 8, 16), output: str = "argmax",
                    argmax_dtype: str = "int32", keepdims: bool = False, seed: int = 0) -> None:
    """`shape` may hold strings (symbolic dims) for dynamic models. output: argmax | softmax | none."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = tiny_weights(seed=seed)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["logits"])]
    out_name, out_type = "logits", TensorProto.FLOAT
    out_shape = [shape[0], weight.shape[0], shape[2], shape[3]]
    if output == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1))
        out_name = "prob"
    elif output == "argmax":
        nodes.append(helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=int(keepdims)))
        out_name, out_type = "idx", TensorProto.INT64
        out_shape = [shape[0], 1, shape[2], shape[3]] if keepdims else [shape[0], shape[2], shape[3]]
        if argmax_dtype == "int32":
            nodes.append(helper.make_node("Cast", ["idx"], ["idx32"], to=TensorProto.INT32))
            out_name, out_type = "idx32", TensorProto.INT32
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(out_name, out_type, out_shape)],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def manifest_for(shape: Sequence[int], output: str = "argmax", files: Optional[list] = None,
                 precision: str = "fp32") -> dict:
    return {
        "schema_version": 1,
        "model_name": "tiny",
        "num_classes": len(CLASS_NAMES),
        "class_names": list(CLASS_NAMES),
        "palette": PALETTE,
        "precision": precision,
        "input": {"name": "x", "shape": list(shape), "color_order": "RGB", "layout": "NCHW",
                  "mean": list(MEAN), "std": list(STD)},
        "output": {"op": output},
        "files": files or [{"format": "onnx", "role": "model", "path": "model.onnx"}],
        "versions": {"onnx": "test"},
    }


def make_model_dir(model_dir: str, shape: Sequence = (1, 3, 8, 16), output: str = "argmax", **onnx_kw) -> str:
    """Write model.onnx + deploy.yaml; -1 in `shape` makes that dim dynamic."""
    from ddrnet.runtime.manifest import write_manifest

    os.makedirs(model_dir, exist_ok=True)
    symbolic = ["N", "C", "H", "W"]
    graph_shape = [d if d > 0 else symbolic[i] for i, d in enumerate(shape)]
    write_tiny_onnx(os.path.join(model_dir, "model.onnx"), graph_shape, output, **onnx_kw)
    write_manifest(model_dir, manifest_for(shape, output))
    return model_dir


def reference_logits(bgr: np.ndarray, seed: int = 0) -> np.ndarray:
    """HxWxC logits of the tiny model in float64 for a frame already at network size."""
    weight, bias = tiny_weights(seed=seed)
    x = (bgr[..., ::-1].astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)
    return x @ weight[:, :, 0, 0].T.astype(np.float64) + bias


def assert_mask_matches(mask: np.ndarray, logits: np.ndarray, margin: float = 1e-4) -> None:
    """Equal to the reference argmax wherever the top two scores are not a float32 near-tie."""
    top2 = np.sort(logits, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > margin
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(mask[clear], logits.argmax(-1)[clear])


def write_tiny_cityscapes(root: str, split: str = "val", count: int = 2, hw=(12, 20), seed: int = 0) -> list:
    """Cityscapes-layout folder with random images and labelIds (incl. unlabeled = ignore);
    returns the frame keys."""
    import cv2

    rng = np.random.default_rng(seed)
    keys = []
    for i in range(count):
        city = "testcity"
        key = "{}_{:06d}_{:06d}".format(city, 0, i)
        image_dir = os.path.join(root, "leftImg8bit", split, city)
        label_dir = os.path.join(root, "gtFine", split, city)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        image = rng.integers(0, 256, size=(hw[0], hw[1], 3), dtype=np.uint8)
        ids = rng.choice([0, 7, 8, 11, 21, 23, 26], size=hw).astype(np.uint8)
        cv2.imwrite(os.path.join(image_dir, key + "_leftImg8bit.png"), image)
        cv2.imwrite(os.path.join(label_dir, key + "_gtFine_labelIds.png"), ids)
        keys.append(key)
    return keys


_SAVE_PADDLE = """
import sys, paddle
sys.path.insert(0, {tests!r})
from runtime_fixtures import tiny_weights
w, b = tiny_weights()
class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 19, 1)
        self.conv.weight.set_value(w)
        self.conv.bias.set_value(b)
    def forward(self, x):
        return paddle.argmax(self.conv(x), axis=1).astype("int32")
spec = [paddle.static.InputSpec([None, 3, None, None], "float32", "x")]
paddle.jit.save(paddle.jit.to_static(Net(), input_spec=spec), {prefix!r})
"""


def add_paddle_model(model_dir: str) -> str:
    """Add inference.pdmodel/.pdiparams with the tiny model's weights (dynamic N/H/W, argmax in
    the graph) to a dynamic-shape model dir made by make_model_dir, and list both formats.
    Runs Paddle in a subprocess so the test process itself never imports it."""
    import subprocess
    import sys

    from ddrnet.runtime.manifest import write_manifest

    script = os.path.join(model_dir, "save_paddle.py")  # to_static needs the source in a file
    with open(script, "w") as f:
        f.write(_SAVE_PADDLE.format(tests=os.path.dirname(os.path.abspath(__file__)),
                                    prefix=os.path.join(model_dir, "inference")))
    subprocess.run([sys.executable, script], check=True, cwd=model_dir, timeout=300,
                   capture_output=True)
    os.remove(script)
    write_manifest(model_dir, manifest_for([-1, 3, -1, -1], files=[
        {"format": "onnx", "role": "model", "path": "model.onnx"},
        {"format": "paddle", "role": "model", "path": "inference.pdmodel"},
        {"format": "paddle", "role": "params", "path": "inference.pdiparams"}]))
    return model_dir
