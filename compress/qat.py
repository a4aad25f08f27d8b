"""Quantization-aware training settings, and saving a quantization-aware model as Paddle Inference INT8.

The model is BN-folded (train/structure.py), then fake-quantized on exactly the tensors the deployed
INT8 graph quantizes (train/quant.py: one symmetric 8-bit quantizer per tensor, rounding and
saturating as QuantizeLinear does; per-channel 8-bit weights). The exporter writes the learned
ranges into every INT8 format instead of calibrating again, so the model QAT trained is the model
that ships. The checkpoint's state.json records `compression.qat = {config, points, ...}` and every
loader rebuilds the same structure (train/checkpoint.load_checkpoint).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import paddle
import paddle.nn as nn

from ddrnet.runtime.errors import DDRNetError
from ddrnet.train import compat
from ddrnet.train.quant import QUANT_BITS, quantize_model
from ddrnet.train.structure import fold_bn

DEFAULT_QUANT = {
    "weight_quantize_type": "channel_wise_abs_max",  # per output channel; abs_max: one per tensor
    "activation_quantize_type": "moving_average_abs_max",
    "weight_bits": QUANT_BITS,
    "activation_bits": QUANT_BITS,
    "moving_rate": 0.9,
    # unsigned: ReLU outputs on 256 steps over [0, range] (onnxruntime uint8, oneDNN u8: exact there);
    # signed: symmetric like every other tensor (TensorRT's int8: exact there); see train/quant.py
    "relu_outputs": "unsigned",
}
# what may be chosen in a config's qat.quant section
WEIGHT_TYPES = ("channel_wise_abs_max", "abs_max")
ACTIVATION_TYPES = ("moving_average_abs_max",)
RELU_OUTPUTS = ("unsigned", "signed")


def quant_config(overrides: Optional[dict] = None) -> dict:
    """QAT config: the defaults above with a config's `qat.quant` overrides, checked."""
    config = dict(DEFAULT_QUANT, **(overrides or {}))
    unknown = sorted(set(config) - set(DEFAULT_QUANT))
    if unknown:
        raise DDRNetError("qat.quant: unknown keys {} (known: {})".format(unknown, ", ".join(DEFAULT_QUANT)))
    if config["weight_quantize_type"] not in WEIGHT_TYPES:
        raise DDRNetError("qat.quant.weight_quantize_type {!r}: choose {}".format(
            config["weight_quantize_type"], " or ".join(WEIGHT_TYPES)))
    if config["activation_quantize_type"] not in ACTIVATION_TYPES:
        raise DDRNetError("qat.quant.activation_quantize_type {!r}: only {} (static ranges for INT8 kernels)".format(
            config["activation_quantize_type"], ACTIVATION_TYPES[0]))
    if int(config["weight_bits"]) != QUANT_BITS or int(config["activation_bits"]) != QUANT_BITS:
        raise DDRNetError("qat.quant: weight_bits and activation_bits must be {} (the INT8 kernels)".format(QUANT_BITS))
    if config["relu_outputs"] not in RELU_OUTPUTS:
        raise DDRNetError("qat.quant.relu_outputs {!r}: choose {} (cpu / Paddle oneDNN) or {} (TensorRT)".format(
            config["relu_outputs"], *RELU_OUTPUTS))
    config["moving_rate"] = float(config["moving_rate"])
    if not 0.0 < config["moving_rate"] < 1.0:
        raise DDRNetError("qat.quant.moving_rate {}: must be in (0, 1)".format(config["moving_rate"]))
    return config


def make_quantization_aware(model: nn.Layer, config: dict) -> dict:
    """Fold BN, then fake-quantize in place (train/quant.py); returns the quantization plan
    ({"points", "unsigned_points"}) for state.json."""
    fold_bn(model)
    return quantize_model(model, config["weight_quantize_type"], config["moving_rate"],
                          unsigned_relu=config["relu_outputs"] == "unsigned")


def save_quant_inference_model(model: nn.Layer, path_prefix: str, input_spec: Sequence) -> Tuple[str, str]:
    """Paddle Inference INT8 model of a quantization-aware model or of a layer wrapping one (e.g. with
    an argmax output op): quantize_linear / dequantize_linear pairs with the learned ranges, INT8
    weights. Returns (.pdmodel, .pdiparams). The model is left in eval mode and still runs eagerly."""
    model.eval()
    # converted here with the whole-graph (AST) translator; the save would convert it itself and
    # leave the instance's forward replaced by a static function
    paddle.jit.to_static(model, input_spec=list(input_spec), full_graph=True)
    try:
        compat.save_quantized_program(model, path_prefix, None, QUANT_BITS)
    finally:
        model.__dict__.pop("forward", None)
    info = path_prefix + ".pdiparams.info"  # only needed to train the program further
    if os.path.exists(info):
        os.remove(info)
    return path_prefix + ".pdmodel", path_prefix + ".pdiparams"
