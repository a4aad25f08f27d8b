"""Export: FP32 Paddle Inference + ONNX, INT8 ONNX, deploy.yaml, parity, the CLI.

Small on purpose (DDRNet-23-slim at 64x128). The INT8 test needs a model whose argmax means
something: a randomly initialised DDRNet gives near-uniform logits, so INT8-vs-FP32 agreement on it
measures noise. The `trained` fixture trains the slim model for a few seconds on synthetic scenes
(coloured rectangles, one class per colour) until it segments them, and the INT8 check runs on
held-out scenes of the same kind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import onnx
import paddle
import pytest

from ddrnet.export import exporter
from ddrnet.export.check import float_conv_count, optimized_op_histogram
from ddrnet.export.exporter import export_model
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.labels import CLASS_NAMES, PALETTE
from ddrnet.runtime.manifest import load_manifest, sha256_file
from ddrnet.train.checkpoint import load_checkpoint
from ddrnet.train.model import build_model

HW = (64, 128)
SIDECAR = {"model": {"name": "ddrnet23_slim", "num_classes": 19, "aux_head": False, "avg_pool_exclusive": True}}
SCENE_COLORS = np.array([[128, 64, 128], [70, 70, 70], [35, 142, 107], [142, 0, 0]], np.uint8)  # BGR
SCENE_CLASSES = np.array([0, 2, 8, 13])


def save_weights(model: paddle.nn.Layer, path: str) -> str:
    paddle.save(model.state_dict(), path)
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(SIDECAR, f)
    return path


def scene(rng: np.random.Generator, hw=HW):
    """A BGR image of noisy coloured rectangles and its trainId labels."""
    h, w = hw
    index = np.zeros(hw, np.int64)
    for _ in range(5):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        index[y0:y0 + rng.integers(h // 4, h // 2 + 1), x0:x0 + rng.integers(w // 4, w // 2 + 1)] = rng.integers(0, 4)
    noisy = SCENE_COLORS[index].astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8), SCENE_CLASSES[index]


def to_tensor(bgr: np.ndarray) -> np.ndarray:
    return ((bgr[:, :, ::-1].astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> str:
    paddle.seed(0)
    return save_weights(build_model("ddrnet23_slim"), str(tmp_path_factory.mktemp("w") / "slim.pdparams"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(weights, folder of 12 scene images) after 50 Adam steps: ~90 % pixel accuracy on the scenes."""
    import paddle.nn.functional as F

    paddle.seed(0)
    rng = np.random.default_rng(0)
    model = build_model("ddrnet23_slim")
    model.train()
    optimizer = paddle.optimizer.Adam(learning_rate=3e-3, parameters=model.parameters())
    for _ in range(50):
        batch = [scene(rng) for _ in range(4)]
        images = paddle.to_tensor(np.stack([to_tensor(image) for image, _ in batch]))
        labels = paddle.to_tensor(np.stack([label for _, label in batch]))
        loss = F.cross_entropy(model(images)[0], labels, axis=1)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    model.eval()
    with paddle.no_grad():
        held_out = [scene(rng) for _ in range(4)]
        logits = model(paddle.to_tensor(np.stack([to_tensor(image) for image, _ in held_out]))).numpy()
    accuracy = (logits.argmax(axis=1) == np.stack([label for _, label in held_out])).mean()
    assert accuracy > 0.8, "the fixture model did not learn the scenes ({:.1%})".format(accuracy)
    root = tmp_path_factory.mktemp("trained")
    images = root / "scenes"
    images.mkdir()
    for i in range(12):
        cv2.imwrite(str(images / "{:02d}.png".format(i)), scene(rng)[0])
    return save_weights(model, str(root / "scenes.pdparams")), str(images)


@pytest.fixture(scope="module")
def fp32_fixed(random_weights, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fp32") / "fixed")
    return out, export_model(random_weights, out, formats=("paddle", "onnx"), input_shape=(1, 3) + HW,
                             output_op="argmax", parity_num=2)


@pytest.fixture(scope="module")
def fp32_dynamic_logits(random_weights, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fp32") / "dynamic")
    return out, export_model(random_weights, out, formats=("paddle", "onnx"), input_shape="dynamic",
                             output_op="none", parity_num=2, sample_hw=HW)


def test_fp32_manifest_lists_every_file_with_its_hash(fp32_fixed, random_weights):
    out, manifest = fp32_fixed
    assert load_manifest(out) == manifest  # load_manifest re-hashes every file
    assert sorted(os.listdir(out)) == ["deploy.yaml", "inference.pdiparams", "inference.pdmodel", "model.onnx"]
    assert [(e["format"], e.get("role")) for e in manifest["files"]] == [
        ("onnx", "model"), ("paddle", "model"), ("paddle", "params")]
    assert manifest["precision"] == "fp32" and manifest["model_name"] == "ddrnet23_slim"
    assert manifest["input"]["shape"] == [1, 3, 64, 128] and manifest["input"]["color_order"] == "RGB"
    assert manifest["output"] == {"op": "argmax"}
    assert manifest["class_names"] == list(CLASS_NAMES) and manifest["palette"] == PALETTE.tolist()
    assert manifest["source_checkpoint"]["sha256"] == sha256_file(random_weights)
    assert {"paddle", "paddle2onnx", "onnx", "onnxruntime"} <= set(manifest["versions"])
    for fmt in ("onnx", "paddle"):
        parity = manifest["parity"][fmt]
        assert parity["images"] == 2 and parity["reference"] == "paddle-fp32" and parity["source"] == "synthetic"
        assert parity["argmax_agreement"] >= exporter.FP32_MIN_AGREEMENT
        assert parity["max_abs_diff"] is None  # labels only: nothing to diff


def test_fp32_onnx_is_tensorrt_friendly_and_carries_metadata(fp32_fixed):
    out, _ = fp32_fixed
    model = onnx.load(os.path.join(out, "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert model.opset_import[0].version == 13
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["output"]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32  # argmax in the graph
    assert "GlobalAveragePool" not in ops and "ReduceMean" in ops  # DAPPM's global pool, dynamic-H/W safe
    assert "BatchNormalization" in ops and ops.count("Conv") == 55  # conv BNs folded, pre-activation BNs kept
    assert "Shape" not in ops  # fixed shape: every Resize size is a constant, no INT64 shape arithmetic
    for node in model.graph.node:
        if node.op_type == "Resize":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["coordinate_transformation_mode"] == b"half_pixel" and attrs["mode"] == b"linear"
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_names"]) == list(CLASS_NAMES)
    assert json.loads(meta["palette"]) == PALETTE.tolist()
    assert json.loads(meta["mean"]) == [0.5, 0.5, 0.5] and json.loads(meta["std"]) == [0.5, 0.5, 0.5]
    assert meta["output_op"] == "argmax" and meta["precision"] == "fp32" and meta["color_order"] == "RGB"


def test_dynamic_export_matches_paddle_logits_at_an_odd_size(fp32_dynamic_logits, random_weights):
    import onnxruntime as ort
    from paddle import inference

    out, manifest = fp32_dynamic_logits
    assert manifest["input"]["shape"] == [-1, 3, -1, -1] and manifest["output"] == {"op": "none"}
    for fmt in ("onnx", "paddle"):  # the export's own parity ran at 64x128 and 65x129
        assert manifest["parity"][fmt]["max_abs_diff"] < 1e-3
    onnx_input = onnx.load(os.path.join(out, "model.onnx")).graph.input[0]
    assert [d.dim_param or d.dim_value for d in onnx_input.type.tensor_type.shape.dim] == ["batch", 3, "height",
                                                                                          "width"]
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 67, 133)).astype(np.float32)
    model = load_checkpoint(random_weights).model
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()
    got_onnx = ort.InferenceSession(os.path.join(out, "model.onnx")).run(None, {"x": x})[0]
    config = inference.Config(os.path.join(out, "inference.pdmodel"), os.path.join(out, "inference.pdiparams"))
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(x.shape))
    handle.copy_from_cpu(x)
    predictor.run()
    got_paddle = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    scale = np.abs(expected).max()
    for got in (got_onnx, got_paddle):
        assert got.shape == (1, 19, 67, 133)
        # a half-pixel / align-corners mismatch in any upsample shows up as errors of the order of the logits
        assert np.abs(got - expected).max() < 1e-4 * scale


def test_failed_parity_leaves_nothing_behind(random_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "FP32_MIN_AGREEMENT", 1.01)  # unreachable: the gate must trip
    out = tmp_path / "model"
    with pytest.raises(DDRNetError, match="parity check failed"):
        export_model(random_weights, str(out), formats=("onnx",), input_shape=(1, 3) + HW, parity_num=1)
    assert os.listdir(tmp_path) == []


def test_int8_onnx_runs_integer_convolutions_and_agrees_with_paddle(trained, tmp_path):
    """PTQ: INT8 of FP32 weights, calibrated; gated on the pixels FP32 is sure of."""
    weights, scenes = trained
    out = str(tmp_path / "int8")
    manifest = export_model(weights, out, formats=("onnx",), input_shape=(1, 3) + HW, output_op="argmax", int8=True,
                            int8_target="cpu", calib_dir=scenes, calib_num=8, parity_num=4)
    assert load_manifest(out)["precision"] == "int8" and sorted(os.listdir(out)) == ["deploy.yaml", "model.onnx"]
    quant = manifest["quantization"]
    assert quant["per_channel"] and quant["activation_type"] == "uint8" and quant["weight_type"] == "int8"
    assert quant["calibration"]["count"] == 8 and len(quant["calibration"]["sha256"]) == 64
    assert quant["head_resize_quantized"]
    histogram = optimized_op_histogram(os.path.join(out, "model.onnx"))
    assert float_conv_count(histogram) == 0 == quant["optimized_graph"]["float_convs"]
    # 55 convolutions + the 12 pre-activation BNs (as depthwise convs), 24 adds: all integer kernels
    assert quant["batchnorm_as_depthwise_conv"] == 12 and "BatchNormalization" not in histogram
    assert histogram["QLinearConv"] == 55 + 12 and histogram["QLinearAdd"] == 24
    parity = manifest["parity"]["onnx"]
    assert parity["reference"] == "paddle-fp32" and "not used for calibration" in parity["source"]
    assert parity["gate"] == {"figure": "confident_agreement", "minimum": exporter.PTQ_MIN_CONFIDENT_AGREEMENT,
                              "passed": True}
    assert parity["images"] == 4 and 0 < parity["confident_fraction"] <= 1 and parity["argmax_agreement"] > 0.9


def test_lowres_logits_export_gives_the_masks_of_the_argmax_export(trained, tmp_path):
    """The graph stops before the final 8x upsample; the runtime's exact upsample + argmax of those
    scores gives the argmax export's masks, in FP32 (Paddle and ONNX) and INT8."""
    from ddrnet.runtime import Predictor

    weights, scenes = trained
    frames = [cv2.imread(os.path.join(scenes, name)) for name in sorted(os.listdir(scenes))[:4]]
    masks = {}
    for int8 in (False, True):
        for op in ("argmax", "lowres_logits"):
            out = str(tmp_path / "{}_{}".format(op, "int8" if int8 else "fp32"))
            manifest = export_model(weights, out, formats=("onnx",) if int8 else ("paddle", "onnx"),
                                    input_shape=(1, 3) + HW, output_op=op, int8=int8, int8_target="cpu",
                                    calib_dir=scenes if int8 else None,
                                    calib_num=8, parity_num=2)
            assert manifest["output"]["op"] == op
            assert all(p["gate"]["passed"] for p in manifest["parity"].values())
            if op == "lowres_logits":
                output = onnx.load(os.path.join(out, "model.onnx")).graph.output[0]
                assert [d.dim_value for d in output.type.tensor_type.shape.dim] == [1, 19, HW[0] // 8, HW[1] // 8]
            if int8:
                assert manifest["quantization"]["optimized_graph"]["float_convs"] == 0
            backends = ("onnxruntime",) if int8 else ("onnxruntime", "paddle")
            for backend in backends:
                predictor = Predictor(out, backend=backend)
                masks[op, int8, backend] = np.stack([predictor(frame) for frame in frames])
    for int8, backend in ((False, "onnxruntime"), (False, "paddle"), (True, "onnxruntime")):
        same = (masks["argmax", int8, backend] == masks["lowres_logits", int8, backend]).mean()
        # INT8: the argmax graph interpolates 8-bit scores with rounding, the runtime the dequantized ones
        assert same >= (0.99 if int8 else 0.999), (int8, backend, same)


def make_qat_checkpoint(weights: str, folder: str, **quant) -> str:
    """`weights` made quantization-aware (BN folded, one quantizer per deployed tensor; `quant`: qat.quant
    settings) and fine-tuned for 10 steps, saved as `ddrnet compress --qat` saves it."""
    import paddle.nn.functional as F

    from ddrnet.compress.qat import make_quantization_aware, quant_config
    from ddrnet.train.checkpoint import save_checkpoint

    model, meta = load_checkpoint(weights)[:2]
    config = quant_config(quant)
    plan = make_quantization_aware(model, config)
    model.train()
    rng = np.random.default_rng(3)
    optimizer = paddle.optimizer.Adam(learning_rate=2e-4, parameters=model.parameters())
    for _ in range(10):  # QAT steps: the ranges settle, the weights move
        batch = [scene(rng) for _ in range(4)]
        loss = F.cross_entropy(model(paddle.to_tensor(np.stack([to_tensor(image) for image, _ in batch])))[0],
                               paddle.to_tensor(np.stack([label for _, label in batch])), axis=1)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    model.eval()
    state = {"iteration": 10, "model": meta, "compression": {"fold_bn": True, "qat": dict(plan, config=config)}}
    return save_checkpoint(folder, model, state)


@pytest.fixture(scope="module")
def qat_checkpoint(trained, tmp_path_factory):
    return make_qat_checkpoint(trained[0], str(tmp_path_factory.mktemp("qat") / "best_model"))


def test_int8_from_a_qat_checkpoint_carries_its_ranges_into_both_formats(qat_checkpoint, trained, tmp_path):
    """No calibration: the Q/DQ models' activation scales are the ranges QAT learned (/ 127, or / 255
    for the non-negative tensors), and both formats (both ONNX graphs: onnxruntime's and OpenVINO's)
    compute what the fake-quant model computes."""
    from ddrnet.train.quant import point_ranges

    _, scenes = trained
    out = str(tmp_path / "int8")
    manifest = export_model(qat_checkpoint, out, formats=("paddle", "onnx"), input_shape=(1, 3) + HW, int8=True,
                            calib_dir=scenes, parity_num=4)
    assert sorted(os.listdir(out)) == ["deploy.yaml", "inference.pdiparams", "inference.pdmodel", "model.onnx",
                                       "model.openvino.onnx"]
    quant = manifest["quantization"]
    assert quant["weights"] == "qat-fine-tuned" and "calibration" not in quant and "paddle" in quant
    assert quant["points"] == 96 and quant["optimized_graph"]["float_convs"] == 0
    assert os.path.getsize(os.path.join(out, "model.onnx")) < 8e6  # INT8 weights only (FP32: 23 MB)
    assert quant["optimized_graph"]["op_histogram"]["QLinearConv"] == 55 + 12
    for key in ("paddle", "onnx", "openvino"):
        parity = manifest["parity"][key]
        assert parity["reference"] == "paddle-fakequant" and parity["gate"]["figure"] == "confident_agreement"
        assert parity["confident_agreement"] >= exporter.QAT_MIN_CONFIDENT_AGREEMENT
        assert parity["argmax_agreement"] >= 0.98, parity  # raw, low-margin pixels included
    assert manifest["parity"]["openvino"]["file"] == "model.openvino.onnx"
    learned = {float(np.float32(max(value, 1e-8)) / np.float32(255 if unsigned else 127))
               for value, unsigned in point_ranges(load_checkpoint(qat_checkpoint).model).values()}
    scales = _activation_scales(os.path.join(out, "model.onnx"))
    assert set(scales.values()) == learned  # every activation scale is a QAT range, and every range is used
    openvino = quant["openvino"]
    assert openvino["method"].startswith("QAT ranges") and "calibration" not in openvino
    # OpenVINO's graph: only QAT ranges, on the tensors QAT quantized (its upsampled fusion inputs stay float)
    assert set(_activation_scales(os.path.join(out, "model.openvino.onnx")).values()) <= learned
    assert openvino["activations"]["left_float"] > 0 and openvino["weights"]["convs"] == 55


def _activation_scales(path: str) -> dict:
    """{tensor: scale} of every activation QuantizeLinear of an ONNX file."""
    graph = onnx.load(path).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def test_int8_tensorrt_target_follows_the_tensorrt_graph_rules(qat_checkpoint, trained, tmp_path):
    """Issue 16 item 1: symmetric int8 Q/DQ, zero points 0, FP32 weights with Q -> DQ, no int32 bias,
    on the real DDRNet export, from QAT and from PTQ."""
    from ddrnet.export.check import tensorrt_qdq_violations

    weights, scenes = trained
    for source, name in ((qat_checkpoint, "qat"), (weights, "ptq")):
        out = str(tmp_path / name)
        manifest = export_model(source, out, formats=("onnx",), input_shape=(1, 3) + HW, int8=True,
                                int8_target="tensorrt", calib_dir=scenes, calib_num=8, parity_num=2)
        model = onnx.load(os.path.join(out, "model.onnx"))
        assert tensorrt_qdq_violations(model) == []
        assert manifest["quantization"]["weight_storage"] == "fp32 with Q/DQ" and manifest["quantization"]["bias"] == "fp32"
        inits = {i.name: i for i in model.graph.initializer}
        dq_inputs = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
        assert dq_inputs and not [n for n in dq_inputs if n in inits]  # every DQ reads a QuantizeLinear
        zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert {z.data_type for z in zero_points} == {onnx.TensorProto.INT8}
        assert not any(onnx.numpy_helper.to_array(z).any() for z in zero_points)
        assert manifest["parity"]["onnx"]["gate"]["passed"]


def test_qat_for_tensorrt_keeps_relu_outputs_symmetric(trained, tmp_path):
    """qat.quant.relu_outputs: signed: every tensor symmetric, which TensorRT's int8 stores exactly; the
    cpu target still folds the ReLUs (uint8 zero point 0, not clipped at 127 steps: counted)."""
    weights, scenes = trained
    checkpoint = make_qat_checkpoint(weights, str(tmp_path / "qat"), relu_outputs="signed")
    assert load_checkpoint(checkpoint).compression["qat"]["unsigned_points"] == []
    args = dict(formats=("onnx",), input_shape=(1, 3) + HW, int8=True, calib_dir=scenes, parity_num=2)
    trt = export_model(checkpoint, str(tmp_path / "trt"), int8_target="tensorrt", **args)["quantization"]
    cpu = export_model(checkpoint, str(tmp_path / "cpu"), int8_target="cpu", **args)["quantization"]
    assert trt["unsigned_points_at_half_resolution"] == 0 == trt["signed_relu_outputs_unclipped"]
    assert cpu["signed_relu_outputs_unclipped"] > 0 and cpu["optimized_graph"]["float_convs"] == 0


def _break_one_scale(model: onnx.ModelProto, factor: float) -> None:
    """Multiply the scale of one activation QuantizeLinear by `factor`: the class scores' (the output
    of the last convolution), which no bias scale depends on, so the graph still fuses as before."""
    inits = {i.name: i for i in model.graph.initializer}
    logits = [n for n in model.graph.node if n.op_type == "Conv"][-1].output[0]
    quantize = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == logits)
    scale = inits[quantize.input[1]]
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * np.float32(factor), scale.name))


def _break_openvino_scale(model: onnx.ModelProto, factor: float) -> None:
    """Multiply the scale of the last activation QuantizeLinear (the head's last convolution reads it)."""
    inits = {i.name: i for i in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits][-1]
    scale = inits[quantize.input[1]]
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * np.float32(factor), scale.name))


@pytest.mark.parametrize("source, flavour", [("ptq", "cpu"), ("qat", "cpu"), ("qat", "openvino")])
def test_a_scale_off_by_10x_is_refused_unless_accepted(source, flavour, qat_checkpoint, trained, tmp_path,
                                                       monkeypatch):
    from ddrnet.export import onnx_int8, openvino_int8

    weights, scenes = trained
    module, route, breaker, key = ((openvino_int8, "quantize_for_openvino", _break_openvino_scale, "openvino")
                                   if flavour == "openvino" else
                                   (onnx_int8, "quantize_onnx" if source == "ptq" else "quantize_qat", _break_one_scale,
                                    "onnx"))
    sound = getattr(exporter, route)

    def broken(*args, **kwargs):
        model, info = sound(*args, **kwargs)
        breaker(model, 0.1)
        return model, info

    monkeypatch.setattr(exporter, route, broken)
    assert getattr(module, route) is sound
    args = dict(formats=("onnx",), input_shape=(1, 3) + HW, output_op="argmax", int8=True, int8_target=flavour,
                calib_dir=scenes, calib_num=8, parity_num=4)
    checkpoint = weights if source == "ptq" else qat_checkpoint
    with pytest.raises(DDRNetError, match="parity check failed: {} {} ".format(source.upper(), key)):
        export_model(checkpoint, str(tmp_path / "refused"), **args)
    assert not (tmp_path / "refused").exists()
    manifest = export_model(checkpoint, str(tmp_path / "accepted"), accept_parity=True, **args)
    gate = manifest["parity"][key]["gate"]
    assert gate["passed"] is False and gate["accepted_by"] == "--accept-parity"
    assert load_manifest(str(tmp_path / "accepted"))["parity"][key]["gate"] == gate


def test_default_int8_export_holds_a_graph_for_each_cpu_backend(trained, tmp_path):
    """No --target: model.onnx for onnxruntime and model.openvino.onnx for OpenVINO, each gated through
    the backend it is for, with the runtime head; `auto` opens OpenVINO's where it is installed.
    --target openvino holds only OpenVINO's graph, --target cpu only onnxruntime's."""
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.backends import installed

    weights, scenes = trained
    args = dict(input_shape=(1, 3) + HW, int8=True, calib_dir=scenes, calib_num=8, parity_num=2)
    out = str(tmp_path / "default")
    manifest = export_model(weights, out, formats=("onnx",), **args)
    assert manifest["output"]["op"] == "lowres_logits"
    assert manifest["files"] == [
        {"format": "onnx", "role": "model", "path": "model.onnx",
         "sha256": sha256_file(os.path.join(out, "model.onnx"))},
        {"format": "onnx", "role": "model", "path": "model.openvino.onnx", "backend": "openvino",
         "sha256": sha256_file(os.path.join(out, "model.openvino.onnx"))}]
    ov_backend = "openvino" if installed("openvino") else "onnxruntime"
    assert {k: (p["file"], p["backend"], p["gate"]["passed"]) for k, p in manifest["parity"].items()} == {
        "onnx": ("model.onnx", "onnxruntime", True), "openvino": ("model.openvino.onnx", ov_backend, True)}
    quant = manifest["quantization"]
    assert quant["target"] == "cpu" and quant["optimized_graph"]["float_convs"] == 0
    openvino = quant["openvino"]
    assert openvino["file"] == "model.openvino.onnx" and openvino["calibration"] == quant["calibration"]
    assert openvino["activations"]["left_float"] == 0 and openvino["activations"]["symmetric"]
    assert openvino["compiled_graph"]["checked"] is installed("openvino")
    if installed("openvino"):  # every convolution an integer kernel in OpenVINO's compiled graph
        layers = openvino["compiled_graph"]["layers"]
        assert openvino["compiled_graph"]["float_convs"] == 0 and layers["Convolution:u8"] > 50, layers
        auto = Predictor(out, backend="auto")
        assert auto.backend_name == "openvino" and auto.backend.model_files[0].endswith("model.openvino.onnx")
    onnxruntime = Predictor(out, backend="onnxruntime")
    assert onnxruntime.backend.model_files[0].endswith(os.sep + "model.onnx")

    for target, files in (("openvino", ["deploy.yaml", "model.openvino.onnx"]), ("cpu", ["deploy.yaml", "model.onnx"])):
        bundle = str(tmp_path / target)
        manifest = export_model(weights, bundle, target=target, **args)
        assert sorted(os.listdir(bundle)) == files and list(manifest["parity"]) == [
            "openvino" if target == "openvino" else "onnx"]
        assert manifest["output"]["op"] == "lowres_logits" and manifest["target"]["int8_target"] == target


def test_openvino_graph_is_gated_on_onnxruntime_where_openvino_is_not_installed(trained, tmp_path, monkeypatch):
    weights, scenes = trained
    monkeypatch.setattr(exporter, "installed", lambda name: name != "openvino")
    manifest = export_model(weights, str(tmp_path / "int8"), formats=("onnx",), input_shape=(1, 3) + HW, int8=True,
                            int8_target="openvino", calib_dir=scenes, calib_num=8, parity_num=2)
    parity = manifest["parity"]["openvino"]
    assert (parity["file"], parity["backend"], parity["gate"]["passed"]) == ("model.openvino.onnx", "onnxruntime", True)
    assert manifest["quantization"]["openvino"]["compiled_graph"]["checked"] is False


def test_output_op_defaults_by_target():
    from ddrnet.export import targets

    assert targets.default_output_op(None) == "lowres_logits"  # the ddrnet runtime's head: fastest on CPUs
    assert {name: targets.default_output_op(name) for name in targets.TARGETS} == {
        "cpu": "lowres_logits", "openvino": "lowres_logits", "tensorrt": "argmax", "jetson": "argmax",
        "paddle": "argmax"}


def test_int8_paddle_format_needs_a_qat_checkpoint(trained, tmp_path):
    weights, scenes = trained
    with pytest.raises(DDRNetError, match="QAT checkpoint"):
        export_model(weights, str(tmp_path / "int8"), formats=("paddle", "onnx"), input_shape=(1, 3) + HW,
                     int8=True, calib_dir=scenes)
    assert os.listdir(tmp_path) == []


def test_int8_never_calibrates_on_the_val_split(random_weights, tmp_path):
    city = tmp_path / "leftImg8bit" / "val" / "aachen"
    city.mkdir(parents=True)
    cv2.imwrite(str(city / "aachen_000000_000019_leftImg8bit.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DDRNetError, match="val split"):
        export_model(random_weights, str(tmp_path / "int8"), formats=("onnx",), int8=True,
                     calib_dir=str(tmp_path / "leftImg8bit" / "val"))
    assert not (tmp_path / "int8").exists()


def _run_onnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _graph(nodes, weights: dict, out_shape) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_int8_graph_rewrites_are_exact_in_float():
    from onnx import helper

    from ddrnet.export.onnx_int8 import batchnorm_to_depthwise_conv, stem_space_to_depth

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 16, 32)).astype(np.float32)
    stem = _graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                    pads=[1, 1, 1, 1])],
                  {"w": rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "b": rng.normal(size=8).astype(np.float32)},
                  [1, 8, 8, 16])
    bn = _graph([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-5)],
                {"g": rng.normal(size=3).astype(np.float32), "b": rng.normal(size=3).astype(np.float32),
                 "m": rng.normal(size=3).astype(np.float32), "v": rng.uniform(0.5, 2, 3).astype(np.float32)},
                [1, 3, 16, 32])
    expected = [_run_onnx(stem, x), _run_onnx(bn, x)]
    assert stem_space_to_depth(stem) and batchnorm_to_depthwise_conv(bn) == 1
    assert [n.op_type for n in stem.graph.node] == ["SpaceToDepth", "Conv"]
    assert [n.op_type for n in bn.graph.node] == ["Conv"] and len(bn.graph.initializer) == 2
    np.testing.assert_allclose(_run_onnx(stem, x), expected[0], atol=1e-5)
    np.testing.assert_allclose(_run_onnx(bn, x), expected[1], atol=1e-5)


def test_a_resize_that_is_not_half_pixel_is_refused():
    from onnx import helper

    from ddrnet.export.onnx_fp32 import check_resize_modes

    model = _graph([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear",
                                     coordinate_transformation_mode="align_corners")],
                   {"s": np.array([1, 1, 2, 2], np.float32)}, [1, 3, 32, 64])
    with pytest.raises(DDRNetError, match="align_corners"):
        check_resize_modes(model)


def _cli(*args: str):
    return subprocess.run([sys.executable, "-m", "ddrnet", "export", *args], capture_output=True, text=True)


def test_cli_exports_and_prints_one_line(random_weights, tmp_path):
    out = tmp_path / "cli"
    result = _cli("--weights", random_weights, "--format", "onnx", "--input-shape", "1,3,64,128",
                  "--parity-num", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "exported ddrnet23_slim fp32" in result.stdout
    manifest = load_manifest(str(out))
    assert [e["path"] for e in manifest["files"]] == ["model.onnx"]  # FP32: one file for every backend
    assert manifest["output"]["op"] == "lowres_logits"  # the default: the runtime head


def test_cli_help_shows_the_format_table():
    result = _cli("--help")
    assert result.returncode == 0
    assert "Paddle Inference  paddle" in result.stdout and "ONNX              onnx" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--weights", "{missing}"], "no such weights file"),
    (["--weights", "{weights}", "--model-name", "ddrnet23"], "weights of ddrnet23_slim, not ddrnet23"),
    (["--weights", "{weights}", "--input-shape", "1,3,64"], "--input-shape"),
    (["--weights", "{weights}", "--format", "tflite"], "--format tflite"),
    (["--weights", "{weights}", "--format", "onnx", "--int8", "--calib-dir", "{empty}"], "no calibration images"),
    (["--weights", "{weights}", "--out", "/proc/ddrnet/model"], "cannot write --out"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, random_weights, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    values = {"missing": str(tmp_path / "missing.pdparams"), "weights": random_weights, "empty": str(empty)}
    args = [a.format(**values) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = _cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddrnet export: error:") and message in lines[0], result.stderr
