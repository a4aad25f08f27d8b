"""The models under test, built by the project's own exporter and quantizer.

Per architecture and input size: the FP32 export (Paddle Inference + ONNX, argmax output, the way
it ships), the same as `lowres_logits` (the runtime upsamples + argmaxes), our INT8 ONNX of both
(`ddrnet.export.onnx_int8.quantize_onnx`), onnxruntime's plain
`quantize_static` of the very same FP32 ONNX (the baseline to beat), a 30 %-pruned FP32 ONNX, and,
given a QAT checkpoint, the exporter's INT8 Paddle (oneDNN) + ONNX model dir. Ours end to end is the
exporter's default INT8 export (`export_default_int8`: QAT's ranges when there is a QAT checkpoint, else
calibrated; lowres_logits; model.onnx for onnxruntime and model.openvino.onnx for OpenVINO), what
`ddrnet export --int8` gives users. For OpenVINO: NNCF's `nncf.quantize` of the FP32 ONNX (the peer an
Intel user would pick).
Random weights serve speed figures (dense convolution cost does not depend on the values).
"""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

PRUNE_RATIO = 0.3
# what a user who reads onnxruntime's docs would run: QDQ, per-channel int8 weights, uint8 activations
# (the x86 u8s8 kernels), MinMax calibration, onnxruntime's recommended pre-processing
PLAIN_QUANTIZE_STATIC = {"quant_format": "QDQ", "per_channel": True, "activation_type": "QUInt8",
                         "weight_type": "QInt8", "calibrate_method": "MinMax", "pre_process": True}


def random_checkpoint(name: str, folder: str, seed: int = 0) -> str:
    """A randomly initialised `name` saved as .pdparams with the sidecar the exporter reads."""
    import paddle

    from ddrnet.train.checkpoint import model_meta
    from ddrnet.train.model import build_model

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".pdparams")
    paddle.seed(seed)
    paddle.save(build_model(name).state_dict(), path)
    with open(path[:-len(".pdparams")] + ".json", "w") as f:
        json.dump({"model": model_meta(name)}, f)
    return path


def model_macs(weights: str, hw: Tuple[int, int]) -> int:
    """MACs of one forward at `hw` of the (possibly pruned) network in `weights`."""
    from ddrnet.compress.prune import model_cost
    from ddrnet.train.checkpoint import load_checkpoint

    model = load_checkpoint(weights).model
    return model_cost(model, hw)["macs"]


def export_fp32(weights: str, out_dir: str, hw: Tuple[int, int], formats: Sequence[str] = ("paddle", "onnx"),
                output_op: str = "argmax") -> str:
    from ddrnet.export.exporter import export_model

    export_model(weights, out_dir, formats=formats, input_shape=(1, 3, hw[0], hw[1]), output_op=output_op,
                 parity_num=1)
    return out_dir


def pruned_checkpoint(weights: str, folder: str, ratio: float = PRUNE_RATIO) -> str:
    """`weights` with `ratio` of every prunable conv group's channels removed (L1 norm, PaddleSlim),
    saved as a checkpoint the exporter loads (state.json records the pruned shapes)."""
    from ddrnet.compress.prune import prune_model
    from ddrnet.train.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(weights)[:2]
    shapes = prune_model(model, ratio)
    save_checkpoint(folder, model, {"model": meta, "compression": {"prune": {"ratio": ratio, "criterion": "l1",
                                                                            "shapes": shapes}}})
    return folder


def calibration_frames(count: int, hw: Tuple[int, int], data_root: Optional[str]) -> List[np.ndarray]:
    """Train-split images of `data_root` (resized), else the exporter's synthetic frames."""
    import cv2

    from ddrnet.export.frames import synthetic_frames

    if not data_root:
        return synthetic_frames(count, hw)
    from ddrnet.runtime.cityscapes import list_samples
    from ddrnet.runtime.imageio import read_image

    images = [read_image(image) for image, _ in list_samples(data_root, "train")[:count]]
    return [cv2.resize(im, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR) for im in images]


def quantize_ours(fp32_dir: str, frames: Sequence[np.ndarray], out_path: str, target: str = "cpu") -> dict:
    """Our INT8 ONNX of the FP32 dir's model.onnx for `target` (cpu | tensorrt); returns quantize_onnx's
    description."""
    from ddrnet.export.onnx_fp32 import save
    from ddrnet.export.onnx_int8 import quantize_onnx
    from ddrnet.runtime import Predictor

    model, info = quantize_onnx(os.path.join(fp32_dir, "model.onnx"), frames, Predictor(fp32_dir).preprocess, target)
    save(model, out_path)
    return info


def quantize_plain(fp32_dir: str, frames: Sequence[np.ndarray], out_path: str, workdir: str) -> dict:
    """onnxruntime's own quantize_static of the same FP32 ONNX, with PLAIN_QUANTIZE_STATIC."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from tqdm import tqdm

    from ddrnet.export.onnx_int8 import calibration_reader
    from ddrnet.runtime import Predictor

    fp32 = os.path.join(fp32_dir, "model.onnx")
    prepared = os.path.join(workdir, "plain_prepared.onnx")
    quant_pre_process(fp32, prepared)
    input_name = onnx.load(fp32, load_external_data=False).graph.input[0].name
    with tqdm(total=len(frames), desc="calibrating (quantize_static)", unit="img", leave=False) as progress:
        # the exporter's chunked calibration reader: only the data feed, the quantization settings are plain
        reader = calibration_reader(frames, Predictor(fp32_dir).preprocess, input_name, progress)
        quantize_static(prepared, out_path, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        # one frame at a time: the same min/max, without holding every frame's activations
                        extra_options={"CalibStridedMinMax": 1})
    return dict(PLAIN_QUANTIZE_STATIC)


def quantize_nncf(fp32_dir: str, frames: Sequence[np.ndarray], out_path: str) -> dict:
    """NNCF's post-training quantization of the FP32 dir's model.onnx with its defaults, calibrated on the
    same frames as ours: what an engineer on an Intel machine would run."""
    import nncf
    import onnx

    from ddrnet.runtime import Predictor

    model = onnx.load(os.path.join(fp32_dir, "model.onnx"))
    input_name = model.graph.input[0].name
    to_tensor = Predictor(fp32_dir).preprocess
    quantized = nncf.quantize(model, nncf.Dataset(list(frames), lambda f: {input_name: to_tensor(f)}),
                              subset_size=len(frames))
    onnx.save(quantized, out_path)
    return {"method": "nncf.quantize (defaults)", "nncf": nncf.__version__, "subset_size": len(frames)}


def frames_dir(frames: Sequence[np.ndarray], folder: str) -> str:
    """`frames` as PNG files in `folder`: a calibration source the exporter reads (--calib-dir)."""
    import cv2

    os.makedirs(folder, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(os.path.join(folder, "{:03d}.png".format(i)), frame)
    return folder


def export_default_int8(weights: str, out_dir: str, hw: Tuple[int, int], calib_dir: str, calib_num: int) -> dict:
    """What `ddrnet export --weights W --int8 --calib-dir DIR` writes with no other option (at the suite's
    fixed input size): model.onnx for onnxruntime and model.openvino.onnx for OpenVINO, both lowres_logits,
    QAT's ranges from a QAT checkpoint, calibrated from FP32 weights: the INT8 users get. Its parity is
    recorded, not enforced (random weights have hardly a confident pixel to gate on). Returns deploy.yaml."""
    from ddrnet.export.exporter import export_model

    return export_model(weights, out_dir, formats=("onnx",), input_shape=(1, 3, hw[0], hw[1]), int8=True,
                        calib_dir=calib_dir, calib_num=calib_num, parity_num=2, accept_parity=True)


def optimized_graph(path: str) -> dict:
    """What onnxruntime actually runs: op histogram of its optimized CPU graph and the float convolutions
    left in it (each one is a convolution the INT8 model still computes in FP32)."""
    from ddrnet.export.check import float_conv_count, optimized_op_histogram

    histogram = optimized_op_histogram(path)
    return {"float_convs": float_conv_count(histogram), "op_histogram": histogram}


def export_qat_int8(qat_weights: str, out_dir: str, hw: Tuple[int, int], calib_dir: str, calib_num: int) -> str:
    """The exporter's INT8 model dir of a QAT checkpoint: Paddle fake-quant (oneDNN INT8) + INT8 ONNX."""
    from ddrnet.export.exporter import export_model

    export_model(qat_weights, out_dir, formats=("paddle", "onnx"), input_shape=(1, 3, hw[0], hw[1]),
                 output_op="argmax", int8=True, int8_target="cpu", calib_dir=calib_dir, calib_num=calib_num,
                 parity_num=2)
    return out_dir
