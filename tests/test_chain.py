"""The whole chain through the CLI only, on tiny data, like PaddleSeg TIPC's `lite_train_lite_infer`:
data synth -> train -> compress --qat -> export (FP32 + INT8, Paddle + ONNX, two input sizes; the INT8
ONNX as both default graphs, onnxruntime's and OpenVINO's) -> eval --model (onnxruntime, paddle, and
openvino where installed) -> bench --backend onnxruntime -> predict, each step's figures checked against
the previous one.

The model is not the demo's: Cityscapes' 7 categories (`label_set: categories`) and ImageNet's
mean/std, so every step must read the classes and the Normalize from the checkpoint's own config
(a 19-class palette or mean = std = 0.5 anywhere would show up as a wrong mask or mIoU).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ddrnet.cli import main
from ddrnet.runtime.backends import installed
from ddrnet.runtime.labels import CATEGORY_NAMES, CATEGORY_PALETTE
from ddrnet.runtime.manifest import load_manifest
from ddrnet.train.checkpoint import read_state

HW = (64, 128)
SMALL_HW = (32, 64)
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
DATA = ["train_dataset.label_set=categories", "val_dataset.label_set=categories", "model.num_classes=7",
        "num_workers=0", "batch_size=4",
        "train_dataset.transforms=[{type: RandomHorizontalFlip}, {type: Normalize, mean: %s, std: %s}]" % (MEAN, STD),
        "val_dataset.transforms=[{type: Normalize, mean: %s, std: %s}]" % (MEAN, STD)]
TRAIN = DATA + ["iters=30", "eval_interval=30", "save_interval=30", "lr_scheduler.warmup_iters=0",
                "lr_scheduler.learning_rate=0.01"]
QAT = DATA + ["qat.finetune.iters=4", "qat.finetune.batch_size=4", "qat.finetune.eval_interval=4",
              "qat.finetune.save_interval=4"]


def cli(*args: str, opts=()) -> None:
    assert main([*args, *[a for opt in opts for a in ("--opt", opt)]]) == 0, args


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    paths = {name: str(root / name) for name in ("data", "train", "qat", "export", "pred")}
    cli("data", "synth", "--out", paths["data"], "--train", "16", "--val", "4", "--size", "{}x{}".format(*HW))
    cli("train", "--config", "ddrnet23_slim_synthetic_cpu.yml", "--save-dir", paths["train"],
        "--data-root", paths["data"], opts=TRAIN)
    cli("compress", "--qat", "--config", "qat_ddrnet23_slim_synthetic_cpu.yml", "--weights",
        os.path.join(paths["train"], "best_model"), "--save-dir", paths["qat"], "--data-root", paths["data"], opts=QAT)
    return paths


def export(chain: dict, name: str, weights: str, hw, *extra: str) -> dict:
    out = os.path.join(chain["export"], name)
    cli("export", "--weights", weights, "--format", "paddle,onnx", "--input-shape", "1,3,{},{}".format(*hw),
        "--calib-dir", chain["data"], "--parity-num", "4", "--out", out, *extra)
    return load_manifest(out)


def test_chain_train_qat_export_eval_bench_predict(chain):
    fp32_weights = os.path.join(chain["train"], "best_model")
    qat_weights = os.path.join(chain["qat"], "best_model")
    trained = read_state(fp32_weights)
    qat = read_state(qat_weights)["compression"]["qat"]["report"]
    assert qat["fp32_miou"] == pytest.approx(trained["metrics"]["miou"], abs=1e-9)  # QAT started from it

    for hw in (HW, SMALL_HW):
        for name, weights, extra in (("fp32", fp32_weights, ()), ("int8", qat_weights, ("--int8",))):
            manifest = export(chain, "{}_{}x{}".format(name, *hw), weights, hw, *extra)
            # the checkpoint's own classes and Normalize, not the Cityscapes defaults
            assert manifest["class_names"] == list(CATEGORY_NAMES) and manifest["label_set"] == "categories"
            assert manifest["palette"] == CATEGORY_PALETTE.tolist() and manifest["num_classes"] == 7
            assert manifest["input"]["mean"] == MEAN and manifest["input"]["std"] == STD
            assert manifest["output"]["op"] == "lowres_logits"  # the default: the runtime head
            for key in ("paddle", "onnx") + (("openvino",) if extra else ()):
                parity = manifest["parity"][key]
                assert parity["gate"]["passed"], (name, hw, key, parity)
                assert parity["reference"] == ("paddle-fakequant" if extra else "paddle-fp32")

    # at the size it was trained and evaluated on, each export scores what its checkpoint scored
    evals = {}
    openvino = ("openvino",) if installed("openvino") else ()  # the INT8 export's own OpenVINO graph
    for name, expected in (("fp32", trained["metrics"]["miou"]), ("int8", qat["miou"])):
        model = os.path.join(chain["export"], "{}_{}x{}".format(name, *HW))
        for backend in ("onnxruntime", "paddle") + (openvino if name == "int8" else ()):
            out = os.path.join(chain["export"], "{}_{}.json".format(name, backend))
            cli("eval", "--model", model, "--backend", backend, "--data-root", chain["data"], "--json", out)
            evals[name, backend] = read_json(out)
            assert set(evals[name, backend]["per_class_iou"]) == set(CATEGORY_NAMES)
            # FP32: the same function; INT8: the same function up to integer-kernel rounding (>= 99.5 % of pixels)
            assert evals[name, backend]["miou"] == pytest.approx(expected, abs=1e-4 if name == "fp32" else 0.02)

    int8 = os.path.join(chain["export"], "int8_{}x{}".format(*HW))
    bench = os.path.join(chain["export"], "bench.json")
    cli("bench", "--model", int8, "--backend", "onnxruntime", "--iters", "3", "--warmup", "1",
        "--data-root", chain["data"], "--json", bench)
    result = read_json(bench)
    assert result["precision"] == "int8" and result["fps_p50"] > 0
    assert result["miou"] == pytest.approx(evals["int8", "onnxruntime"]["miou"], abs=1e-9)

    cli("predict", "--model", int8, "--input", os.path.join(chain["data"], "leftImg8bit", "val"),
        "--out", chain["pred"], "--format", "trainids")
    from ddrnet.runtime.imageio import read_label

    masks = [read_label(os.path.join(chain["pred"], name)) for name in sorted(os.listdir(chain["pred"]))]
    assert len(masks) == 4 and all(m.shape == HW and m.max() < 7 for m in masks)
    assert len(np.unique(np.concatenate([m.ravel() for m in masks]))) > 1  # a real segmentation
