"""Quantization-aware training with PaddleSlim, and rebuilding compressed models from checkpoints.

The model is folded first (BN into conv, `fold_bn`), then PaddleSlim's dygraph QAT wraps every
Conv2D: per-channel INT8 weights (`channel_wise_abs_max`), per-tensor INT8 activations with moving
average ranges (`moving_average_abs_max`), ONNX-format fake quantization (Q/DQ), so the same
fine-tuned model saves as a Paddle Inference INT8 model and converts to ONNX. PaddleSlim's QAT is
used rather than `paddle.quantization.QAT`, which gives wrong INT8 results under oneDNN here.

A compressed checkpoint's state.json carries a `compression` section (see `load_compressed`):
  prune:   {ratio, criterion, shapes: {tensor: shape}, ...}   pruned tensor shapes
  fold_bn: true                                               true Conv->BN pairs folded
  qat:     {config: {...}, ...}                               PaddleSlim QAT config
so the same structure is rebuilt before the state dict is loaded.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn

from ddrnet.compress.fold_bn import fold_bn
from ddrnet.compress.prune import resize_to_shapes
from ddrnet.runtime.errors import DDRNetError
from ddrnet.train.checkpoint import STATE, load_weights, model_meta, resolve_weights, weights_meta
from ddrnet.train.model import ARCHS, DualResNet, build_model

DEFAULT_QUANT = {
    "weight_quantize_type": "channel_wise_abs_max",
    "activation_quantize_type": "moving_average_abs_max",
    "weight_bits": 8,
    "activation_bits": 8,
    "moving_rate": 0.9,
    "quantizable_layer_type": ["Conv2D"],
    "onnx_format": True,
}
# what may be chosen in a config's qat.quant section
WEIGHT_TYPES = ("channel_wise_abs_max", "abs_max")
ACTIVATION_TYPES = ("moving_average_abs_max",)


def quant_config(overrides: Optional[dict] = None) -> dict:
    """PaddleSlim QAT config: the defaults above with a config's `qat.quant` overrides, checked."""
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
    if not config["onnx_format"]:
        raise DDRNetError("qat.quant.onnx_format must stay true: the exporters read Q/DQ models")
    config["moving_rate"] = float(config["moving_rate"])
    return config


def _paddleslim_qat(config: dict):
    from paddleslim import QAT

    return QAT(config=dict(config))


def quantize_model(model: nn.Layer, config: dict) -> nn.Layer:
    """Fold BN, then insert PaddleSlim's fake quantization in place; returns the model."""
    fold_bn(model)
    _paddleslim_qat(config).quantize(model)
    _fake_quantize_conv_outputs(model, config)
    return model


def _fake_quantize_conv_outputs(model: nn.Layer, config: dict) -> None:
    """PaddleSlim only observes each conv's output range in training (MAOutputScaleLayer), but its
    ONNX-format save turns every observer into a real quantize/dequantize pair: the saved INT8 model
    would quantize tensors the fine-tuning never saw quantized. Fake-quantizing the conv outputs
    during training as well makes the saved model compute what was trained (and gives every conv
    the quantized output an integer kernel needs)."""
    from paddle.nn.quant.quant_layers import FakeQuantMAOutputScaleLayer, MAOutputScaleLayer

    for name, layer in list(model.named_sublayers()):
        if isinstance(layer, MAOutputScaleLayer):
            parent = model
            *path, last = name.split(".")
            for part in path:
                parent = parent._sub_layers[part]
            parent._sub_layers[last] = FakeQuantMAOutputScaleLayer(
                layer._layer, activation_bits=config["activation_bits"], moving_rate=config["moving_rate"])


def save_quant_inference_model(model: nn.Layer, path_prefix: str, input_spec: Sequence,
                               config: Optional[dict] = None) -> Tuple[str, str]:
    """Paddle Inference INT8 model (Q/DQ ops, INT8 weights) of a QAT model or of a layer wrapping
    one (e.g. with an argmax output op): PaddleSlim's `save_quantized_model`. `config` is the
    checkpoint's `compression.qat.config` (default: this module's). Returns (.pdmodel, .pdiparams).
    The model is left in eval mode and still runs eagerly afterwards."""
    model.eval()
    # Converted here with the whole-graph (AST) translator; PaddleSlim would convert it itself and
    # leave the instance's forward replaced by a static function.
    paddle.jit.to_static(model, input_spec=list(input_spec), full_graph=True)
    try:
        _paddleslim_qat(quant_config(config)).save_quantized_model(model, path_prefix, input_spec=None)
    finally:
        model.__dict__.pop("forward", None)
    info = path_prefix + ".pdiparams.info"  # only needed to train the program further
    if os.path.exists(info):
        os.remove(info)
    return path_prefix + ".pdmodel", path_prefix + ".pdiparams"


def read_checkpoint_state(weights: str) -> dict:
    """The state.json beside a weights file ({} when there is none, e.g. PaddleSeg's weights)."""
    path = os.path.join(os.path.dirname(weights), STATE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as err:
        raise DDRNetError("{}: unreadable state.json ({})".format(path, err)) from None
    return state if isinstance(state, dict) else {}


def build_compressed(meta: dict, compression: Dict) -> DualResNet:
    """A freshly built model with the structure `compression` describes (weights not loaded)."""
    model = build_model(**meta)
    if compression.get("prune"):
        resize_to_shapes(model, compression["prune"]["shapes"])
    if compression.get("qat"):
        quantize_model(model, quant_config(compression["qat"].get("config")))
    elif compression.get("fold_bn"):
        fold_bn(model)
    return model


def load_compressed(weights: str, model_name: Optional[str] = None) -> Tuple[DualResNet, dict, dict]:
    """(model in eval mode, model meta, compression description) of any checkpoint: plain FP32,
    pruned, BN-folded and/or quantization-aware. Weights of another structure are refused with a
    one-line DDRNetError. `model_name`: the architecture expected (checked against the weights'
    description; needed for bare .pdparams, e.g. PaddleSeg's)."""
    weights = resolve_weights(weights)
    state = read_checkpoint_state(weights)
    described = weights_meta(weights) or {}
    name = described.get("name") or model_name
    if name is None:
        raise DDRNetError("{}: no state.json tells the architecture; pass the model name (one of {})".format(
            weights, ", ".join(ARCHS)))
    if model_name and name != model_name:
        raise DDRNetError("{}: weights of {}, not {}".format(weights, name, model_name))
    meta = model_meta(name, int(described.get("num_classes", 19)), bool(described.get("aux_head", False)),
                      bool(described.get("avg_pool_exclusive", True)), bool(described.get("down3_same_padding", True)))
    compression = state.get("compression") or {}
    model = build_compressed(meta, compression)
    load_weights(model, weights)
    model.eval()
    return model, meta, compression
