"""Paddle Inference program -> FP32 ONNX that TensorRT 8.x and onnxruntime both take.

paddle2onnx does the conversion; this module then
- names the input `x` and the output `output` (paddle2onnx's `save_infer_model/scale_0.tmp_1` is
  an implementation detail) and the dynamic dims `batch`, `height`, `width`;
- refuses a bilinear Resize that is not half-pixel: Paddle's `align_corners=False, align_mode=0`
  is half-pixel, anything else would drift from Paddle at every upsampling;
- optionally runs onnxruntime's provider-independent (basic) optimizations offline: BN folded into
  the convolutions and, for a fixed input shape, the Shape -> Slice -> Cast -> Concat chains that
  compute every Resize size folded into constants (no INT64 shape arithmetic left for TensorRT);
- writes the deploy metadata (class names, palette, mean/std, output op) into `metadata_props`.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Dict

import onnx

from ddrnet.runtime.errors import DDRNetError

INPUT_NAME = "x"
OUTPUT_NAME = "output"
MIN_OPSET, MAX_OPSET = 11, 17  # 11: half-pixel Resize; 17: the newest TensorRT 8.x parses
DYNAMIC_DIMS = ("batch", None, "height", "width")


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise DDRNetError("--opset {}: choose {}..{} (13 is the default)"
                          .format(opset, MIN_OPSET, MAX_OPSET))


def paddle_to_onnx(model_file: str, params_file: str, opset: int) -> onnx.ModelProto:
    import paddle2onnx

    check_opset(opset)
    try:
        data = paddle2onnx.export(model_file, params_file, opset_version=opset, auto_upgrade_opset=False,
                                  verbose=False, enable_onnx_checker=True)
    except Exception as err:  # paddle2onnx raises bare RuntimeErrors from C++
        raise DDRNetError("{}: paddle2onnx failed ({})".format(model_file, str(err).strip().splitlines()[0]))
    if not data:
        raise DDRNetError("{}: paddle2onnx produced no model (unsupported op at opset {}?)".format(model_file, opset))
    return onnx.load_from_string(data)


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new


def name_io(model: onnx.ModelProto) -> None:
    """One input `x`, one output `output`, dynamic dims named batch / height / width."""
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise DDRNetError("exported graph has {} inputs and {} outputs, expected 1 and 1".format(
            len(graph.input), len(graph.output)))
    _rename_tensor(graph, graph.input[0].name, INPUT_NAME)
    _rename_tensor(graph, graph.output[0].name, OUTPUT_NAME)
    for value, prefix in ((graph.input[0], ""), (graph.output[0], "out_")):
        dims = value.type.tensor_type.shape.dim
        # the output is [N, H, W] for argmax, [N, C, H, W] otherwise: name by position from the end;
        # its own names, since lowres_logits outputs are smaller than the input
        names = tuple(prefix + n if n and n != "batch" else n for n in DYNAMIC_DIMS)
        names = names if len(dims) == 4 else (names[0],) + names[2:]
        for dim, name in zip(dims, names):
            if name is not None and not dim.HasField("dim_value"):
                dim.dim_param = name


def check_resize_modes(model: onnx.ModelProto) -> None:
    """Every Resize must be half-pixel (Paddle's align_corners=False, align_mode=0)."""
    for node in [n for n in model.graph.node if n.op_type == "Resize"]:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
        if mode != "half_pixel":
            raise DDRNetError("paddle2onnx wrote Resize {} with coordinate_transformation_mode={}: it would "
                              "drift from Paddle's half-pixel bilinear interp".format(node.name, mode))


def optimize_basic(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's basic (provider-independent) optimizations, saved as a plain ONNX graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = os.path.join(tmp, "basic.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def set_metadata(model: onnx.ModelProto, metadata: Dict[str, object]) -> None:
    """Strings stay strings, everything else is written as JSON."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)


def save(model: onnx.ModelProto, path: str) -> None:
    """Check and write; onnxruntime's optimizers declare every domain they know, so only the ones
    the graph uses are kept (TensorRT warns about the others)."""
    used = {node.domain for node in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, path)
