"""Post-training quantization with PaddleSlim's static PTQ (`quant_post_static`), for users without
the budget for QAT.

The FP32 (or pruned) model is BN-folded and saved with `paddle.jit.save` (dynamic input size),
calibrated on a calibration set (calib_data/README.md: a fixed-seed sample of the train split,
never val) with a selectable method, and written as a Q/DQ Paddle inference model (per-channel INT8
weights, per-tensor INT8 activations). Its mIoU on the val split is measured by running that
fake-quant program in Paddle Inference, side by side with FP32 (and a QAT checkpoint when given).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np
import paddle

from ddrnet.compress.calib import calibration_images
from ddrnet.compress.pipeline import load_source, source_info
from ddrnet.train.trainer import build_dataset
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import atomic_dir, write_json
from ddrnet.runtime.imageio import read_image
from ddrnet.train.checkpoint import load_checkpoint
from ddrnet.train.data import build_transforms
from ddrnet.train.structure import fold_bn
from ddrnet.train.evaluate import evaluate

# --calib-method -> PaddleSlim's algo
METHODS = {"kl": "KL", "hist": "hist", "mse": "mse", "avg": "avg", "abs_max": "abs_max"}
MODEL_FILE, PARAMS_FILE = "model.pdmodel", "model.pdiparams"
INPUT_NAME = "x"
REPORT = "ptq_report.json"
log = logging.getLogger(__name__)


def parse_methods(value: str) -> List[str]:
    methods = [m.strip().lower() for m in value.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise DDRNetError("--calib-method {}: choose from {} (comma-separated for several)".format(
            value, "|".join(METHODS)))
    return methods


class InferenceModel:
    """A saved Paddle inference program with the call/eval interface `evaluate` expects. IR passes
    are off, so Q/DQ ops run as written (simulated INT8: what the quantized model computes)."""

    def __init__(self, folder: str, num_classes: int):
        from ddrnet.runtime.backends import paddle_config

        config = paddle_config(os.path.join(folder, MODEL_FILE), os.path.join(folder, PARAMS_FILE), optimize=False)
        self.predictor = paddle.inference.create_predictor(config)
        self.num_classes = num_classes

    def eval(self) -> None:
        pass

    def __call__(self, image: paddle.Tensor) -> paddle.Tensor:
        handle = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        handle.copy_from_cpu(np.ascontiguousarray(image.numpy()))
        self.predictor.run()
        return paddle.to_tensor(self.predictor.get_output_handle(self.predictor.get_output_names()[0]).copy_to_cpu())


class CalibrationSet(paddle.io.Dataset):
    """Calibration images preprocessed as for evaluation (CHW float32, RGB, normalised)."""

    def __init__(self, paths: Sequence[str], transforms):
        super().__init__()
        self.paths, self.transforms = list(paths), transforms

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.transforms(read_image(self.paths[index]))[0]


def _save_fp32(model: paddle.nn.Layer, folder: str) -> None:
    spec = [paddle.static.InputSpec([None, 3, None, None], "float32", name=INPUT_NAME)]
    paddle.jit.save(model, os.path.join(folder, "model"), input_spec=spec)


def quantize_post_static(fp32_dir: str, out_dir: str, method: str, paths: Sequence[str], transforms,
                         hist_percent: float = 0.9999) -> None:
    """PaddleSlim static PTQ of the saved FP32 model in `fp32_dir` into `out_dir`."""
    from paddleslim.quant import quant_post_static

    paddle.enable_static()
    try:
        image = paddle.static.data(INPUT_NAME, [None, 3, None, None], "float32")
        # Paddle 2.6's PTQ takes only a DataLoader; in static mode it yields feed dicts
        loader = paddle.io.DataLoader(CalibrationSet(paths, transforms), feed_list=[image], batch_size=1,
                                      return_list=False, places=paddle.CPUPlace())
        scope = paddle.static.Scope()  # a fresh one per run: the model loads its parameters into it
        with paddle.static.scope_guard(scope):
            quant_post_static(
                executor=paddle.static.Executor(paddle.CPUPlace()), model_dir=fp32_dir, quantize_model_path=out_dir,
                data_loader=loader, model_filename=MODEL_FILE, params_filename=PARAMS_FILE,
                save_model_filename=MODEL_FILE, save_params_filename=PARAMS_FILE, batch_nums=len(paths),
                scope=scope, algo=METHODS[method], hist_percent=hist_percent, quantizable_op_type=["conv2d"],
                weight_quantize_type="channel_wise_abs_max", onnx_format=True)
    finally:
        paddle.disable_static()


def run_ptq(cfg: dict, weights: str, save_dir: str, calib_source: Optional[str], methods: Sequence[str],
            data_root: Optional[str] = None, calib_num: Optional[int] = None, qat_weights: Optional[str] = None,
            resume: bool = False) -> dict:
    """PTQ with each calibration method into SAVE_DIR/<method>/; returns (and writes) the mIoU report."""
    pcfg = cfg.get("ptq") or {}
    calib_source = calib_source or pcfg.get("calib_dir")
    if not calib_source:
        raise DDRNetError("--ptq needs --calib-dir (a Cityscapes root, an image folder or a list file)")
    calib_num = calib_num if calib_num is not None else pcfg.get("calib_num")
    paths = calibration_images(calib_source, calib_num, int(pcfg.get("calib_seed", 0)), data_root)
    model, meta, compression = load_source(weights, cfg)
    if compression.get("qat"):
        raise DDRNetError("{}: already quantization-aware trained; PTQ takes FP32 (or pruned) weights".format(weights))
    val = build_dataset(cfg, "val_dataset", data_root)
    qat_model = load_checkpoint(qat_weights, model_name=meta["name"]).model if qat_weights else None
    transforms = build_transforms((cfg.get("val_dataset") or {}).get("transforms"), train=False)

    report = _load_report(save_dir) if resume else {}
    if "fp32_miou" not in report:
        log.info("evaluating the FP32 model on %d val images", len(val))
        report["fp32_miou"] = float(evaluate(model, val)["miou"])
    report.update(source=source_info(weights), calibration={"source": os.path.abspath(calib_source),
                                                            "count": len(paths), "num": calib_num})
    if qat_model is not None:
        report["qat_miou"] = float(evaluate(qat_model, val)["miou"])
        report["qat_weights"] = os.path.abspath(qat_weights)
    fold_bn(model)
    model.eval()
    results: Dict[str, dict] = report.setdefault("methods", {})
    os.makedirs(save_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=save_dir, prefix=".tmp-fp32-") as fp32_dir:
        _save_fp32(model, fp32_dir)
        for method in methods:
            out_dir = os.path.join(save_dir, method)
            if resume and method in results and os.path.isfile(os.path.join(out_dir, MODEL_FILE)):
                continue
            results[method] = _quantize_and_evaluate(fp32_dir, out_dir, method, paths, transforms, val,
                                                     meta["num_classes"], float(pcfg.get("hist_percent", 0.9999)))
            results[method]["delta_points"] = 100.0 * (results[method]["miou"] - report["fp32_miou"])
            write_json(report, os.path.join(save_dir, REPORT))
    write_json(report, os.path.join(save_dir, REPORT))
    _print_report(report)
    return report


def _quantize_and_evaluate(fp32_dir: str, out_dir: str, method: str, paths: Sequence[str], transforms, val,
                           num_classes: int, hist_percent: float) -> dict:
    """Quantize into a temporary folder, measure it, then rename it into place."""
    with atomic_dir(out_dir) as stage:
        quantize_post_static(fp32_dir, stage, method, paths, transforms, hist_percent)
        miou = float(evaluate(InferenceModel(stage, num_classes), val)["miou"])
    return {"miou": miou, "model": os.path.abspath(os.path.join(out_dir, MODEL_FILE))}


def _load_report(save_dir: str) -> dict:
    try:
        with open(os.path.join(save_dir, REPORT)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _print_report(report: dict) -> None:
    log.info("FP32 mIoU %.4f", report["fp32_miou"])
    if "qat_miou" in report:
        log.info("QAT  mIoU %.4f (%+.2f points)", report["qat_miou"], 100 * (report["qat_miou"] - report["fp32_miou"]))
    for method, result in report["methods"].items():
        log.info("PTQ %-8s mIoU %.4f (%+.2f points)", method, result["miou"], result["delta_points"])
