"""The OpenVINO backend (runtime/openvino_backend.py) and `--backend auto`, on tiny exported models:
same masks as the reference, hashes checked, precision chosen and read back, compiled-model cache
keyed by content, INT8 Q/DQ models, one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from runtime_fixtures import assert_mask_matches, make_model_dir, reference_logits

ov = pytest.importorskip("openvino")


def _ddrnet(*args):
    return subprocess.run([sys.executable, "-m", "ddrnet"] + list(args), capture_output=True, text=True, timeout=180)


def _frame(hw, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=hw + (3,), dtype=np.uint8)


@pytest.fixture()
def cache_root(tmp_path, monkeypatch):
    root = str(tmp_path / "cache")
    monkeypatch.setenv("DDRNET_CACHE_DIR", root)
    return root


def test_fp32_masks_match_the_reference_and_onnxruntime(tmp_path, cache_root):
    from ddrnet.runtime import Predictor

    model = make_model_dir(str(tmp_path / "m"), shape=(-1, 3, -1, -1))
    predictor = Predictor(model, backend="openvino", precision="fp32", threads=1)
    assert (predictor.backend_name, predictor.precision) == ("openvino", "fp32")
    assert predictor.backend.inference_precision == "fp32" and predictor.input_shape == [-1, 3, -1, -1]
    reference = Predictor(model, backend="onnxruntime")
    for hw in ((8, 16), (12, 20)):  # a dynamic model at two sizes
        frame = _frame(hw)
        mask = predictor(frame)
        assert mask.shape == hw and mask.dtype == np.uint8
        assert_mask_matches(mask, reference_logits(frame))
        np.testing.assert_array_equal(mask, reference(frame))
    frames = [_frame((8, 16), seed) for seed in (1, 2, 3)]  # dynamic batch: one call
    for mask, frame in zip(predictor.predict_batch(frames), frames):
        assert_mask_matches(mask, reference_logits(frame))


def test_precision_auto_is_what_openvino_picks_and_is_read_back(tmp_path, cache_root):
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.openvino_backend import has_bf16

    model = make_model_dir(str(tmp_path / "m"), shape=(1, 3, 8, 16))
    auto = Predictor(model, backend="openvino")
    expected = "bf16" if has_bf16(ov.Core()) else "fp32"
    assert auto.precision == auto.backend.inference_precision == expected
    assert auto.backend.requested_precision == "auto"
    if expected == "bf16":
        bf16 = Predictor(model, backend="openvino", precision="bf16")
        frame = _frame((8, 16))
        # BF16 keeps 8 bits of mantissa: the labels agree except at near-ties
        assert (bf16(frame) == Predictor(model, backend="openvino", precision="fp32")(frame)).mean() > 0.9


def test_bf16_is_refused_where_the_cpu_lacks_it(tmp_path, cache_root, monkeypatch):
    from ddrnet.runtime import Predictor, openvino_backend
    from ddrnet.runtime.errors import DDRNetError

    model = make_model_dir(str(tmp_path / "m"))
    monkeypatch.setattr(openvino_backend, "has_bf16", lambda core: False)
    with pytest.raises(DDRNetError, match="no BF16 kernels"):
        Predictor(model, backend="openvino", precision="bf16")
    with pytest.raises(DDRNetError, match="openvino precision must be one of"):
        Predictor(model, backend="openvino", precision="fp16")


def test_compiled_model_cache_is_keyed_by_the_model_content(tmp_path, cache_root):
    from ddrnet.runtime import Predictor

    model = str(tmp_path / "m")
    make_model_dir(model)
    first = Predictor(model, backend="openvino", precision="fp32").backend
    second = Predictor(model, backend="openvino", precision="fp32").backend
    assert first.cache_dir == second.cache_dir and first.cache_dir.startswith(cache_root)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert any(f.endswith(".blob") for f in os.listdir(first.cache_dir))
    shutil.rmtree(model)
    make_model_dir(model, seed=1)  # other weights, same path
    changed = Predictor(model, backend="openvino", precision="fp32")
    assert changed.backend.cache_dir != first.cache_dir and not changed.backend.cache_hit
    frame = _frame((8, 16))
    assert_mask_matches(changed(frame), reference_logits(frame, seed=1))


def test_read_only_cache_folder_only_costs_the_cache(tmp_path, monkeypatch):
    from ddrnet.runtime import Predictor

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DDRNET_CACHE_DIR", str(blocker / "cache"))
    predictor = Predictor(make_model_dir(str(tmp_path / "m")), backend="openvino")
    assert predictor.backend.cache_dir is None and predictor(_frame((8, 16))).shape == (8, 16)


def test_tampered_model_is_refused_before_openvino_sees_it(tmp_path, cache_root):
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.errors import DDRNetError

    model = make_model_dir(str(tmp_path / "m"))
    with open(os.path.join(model, "model.onnx"), "ab") as f:
        f.write(b"\0")
    with pytest.raises(DDRNetError, match="SHA-256 mismatch"):
        Predictor(model, backend="openvino")
    assert not os.path.exists(cache_root)


def test_int8_qdq_model_runs_as_int8(tmp_path, cache_root):
    """An onnxruntime-quantized Q/DQ model: OpenVINO runs it, agrees with onnxruntime on it, and the
    Predictor reports int8 (the float layers' precision separately)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from ddrnet.runtime import Predictor
    from ddrnet.runtime.manifest import write_manifest
    from runtime_fixtures import manifest_for

    model = make_model_dir(str(tmp_path / "fp32"), shape=(1, 3, 8, 16), output="none")
    fp32 = Predictor(model)
    tensors = [fp32.preprocess(_frame((8, 16), seed)) for seed in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": t} for t in tensors])

        def get_next(self):
            return next(self.items, None)

    int8_dir = tmp_path / "int8"
    int8_dir.mkdir()
    quantize_static(os.path.join(model, "model.onnx"), str(int8_dir / "model.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    write_manifest(str(int8_dir), manifest_for([1, 3, 8, 16], output="none", precision="int8"))
    openvino = Predictor(str(int8_dir), backend="openvino", precision="fp32")
    assert openvino.precision == "int8" and openvino.backend.inference_precision == "fp32"
    frame = _frame((8, 16), 7)
    assert (openvino(frame) == Predictor(str(int8_dir))(frame)).mean() > 0.9


def test_auto_picks_openvino_on_x86_else_onnxruntime_else_paddle(tmp_path, monkeypatch):
    import platform

    from ddrnet.runtime import backends
    from ddrnet.runtime.errors import DDRNetError
    from runtime_fixtures import manifest_for

    onnx_only = manifest_for([1, 3, 8, 16])
    paddle_only = manifest_for([1, 3, 8, 16], files=[{"format": "paddle", "role": "model", "path": "m.pdmodel"}])
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert backends.choose_backend(onnx_only, "cpu")[0] == ("openvino" if x86 else "onnxruntime")
    present = {"onnxruntime", "paddle"}
    monkeypatch.setattr(backends, "installed", lambda name: name in present)
    name, why = backends.choose_backend(onnx_only, "cpu")
    assert name == "onnxruntime" and why == "onnxruntime ({})".format(
        "OpenVINO not installed" if x86 else "not an x86 CPU")
    assert backends.choose_backend(onnx_only, "gpu")[0] == "onnxruntime"
    assert backends.choose_backend(paddle_only, "cpu")[0] == "paddle"
    present.clear()
    with pytest.raises(DDRNetError, match="no installed backend runs this model"):
        backends.choose_backend(onnx_only, "cpu")


def test_precision_auto_is_every_backends_default(tmp_path):
    from ddrnet.runtime import Predictor

    model = make_model_dir(str(tmp_path / "m"))
    assert Predictor(model, backend="onnxruntime", precision="auto").precision == "fp32"


def test_bench_cli_records_backend_precision_and_start(tmp_path, cache_root):
    model = make_model_dir(str(tmp_path / "m"), shape=(-1, 3, -1, -1))
    out = str(tmp_path / "b.json")
    proc = _ddrnet("bench", "--model", model, "--backend", "auto", "--threads", "1", "--frame", "16x32",
                   "--iters", "3", "--warmup", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    result = json.load(open(out))
    assert result["backend"] == "openvino" and "x86" in result["backend_info"]["chosen_because"]
    assert result["precision"] == result["backend_info"]["inference_precision"]
    assert result["backend_info"]["cache_hit"] is False and result["start_s"] > 0
    assert result["frame_hw"] == [16, 32] and result["latency_ms"]["total"]["p50"] > 0
    assert "openvino" in result["versions"] and "backend auto -> openvino" in proc.stdout
    again = _ddrnet("bench", "--model", model, "--backend", "openvino", "--threads", "1", "--frame", "16x32",
                    "--iters", "2", "--json", out)
    assert again.returncode == 0 and json.load(open(out))["backend_info"]["cache_hit"] is True


@pytest.mark.parametrize("args,problem", [
    (["--backend", "openvino", "--device", "gpu"], "the openvino backend runs on the CPU"),
    (["--backend", "onnxruntime", "--precision", "bf16"], "--precision bf16: the onnxruntime backend runs"),
    (["--backend", "openvino", "--frame", "16by32"], "--frame '16by32': expected HEIGHTxWIDTH"),
])
def test_bench_cli_errors_are_one_line(tmp_path, cache_root, args, problem):
    model = make_model_dir(str(tmp_path / "m"))
    proc = _ddrnet("bench", "--model", model, "--iters", "1", *args)
    assert proc.returncode == 2 and problem in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_openvino_is_one_line(tmp_path):
    model = make_model_dir(str(tmp_path / "m"))
    code = ("import sys; sys.modules['openvino'] = None\n"
            "from ddrnet.runtime import Predictor\n"
            "from ddrnet.runtime.errors import DDRNetError\n"
            "try:\n    Predictor({!r}, backend='openvino')\n"
            "except DDRNetError as err:\n    print(err)\n").format(model)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "the openvino backend needs OpenVINO: pip install openvino" in proc.stdout


def test_bench_profile_names_each_layer_and_kernel(tmp_path, cache_root):
    model = make_model_dir(str(tmp_path / "m"))
    out = str(tmp_path / "profile.json")
    proc = _ddrnet("bench", "--model", model, "--backend", "openvino", "--precision", "fp32", "--profile",
                   "--iters", "3", "--warmup", "1", "--threads", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "openvino profile: 3 runs" in proc.stdout and "slowest nodes:" in proc.stdout
    result = json.load(open(out))
    assert (result["backend"], result["runs"], result["inference_precision"]) == ("openvino", 3, "fp32")
    assert sum(op["share"] for op in result["ops"]) == pytest.approx(1.0)
    assert any(op["op"].startswith("Convolution ") for op in result["ops"])  # layer type + the kernel that ran it


def test_run_returns_an_owned_array_and_serves_threads(tmp_path, cache_root):
    from concurrent.futures import ThreadPoolExecutor

    from ddrnet.runtime import Predictor

    predictor = Predictor(make_model_dir(str(tmp_path / "m"), shape=(-1, 3, -1, -1)), backend="openvino",
                          precision="fp32")
    tensors = [predictor.preprocess(_frame((8, 16), seed)) for seed in range(6)]
    expected = [predictor.backend.run(t) for t in tensors]
    assert not np.shares_memory(expected[0], predictor.backend.run(tensors[1]))  # not overwritten by later runs
    with ThreadPoolExecutor(3) as pool:
        for got, want in zip(pool.map(predictor.backend.run, tensors * 3), expected * 3):
            np.testing.assert_array_equal(got, want)


def _residual_model(path):
    """x -> Conv -> Relu -> Conv -> (+ x) -> Conv -> y: the shapes of DDRNet's blocks, 3 -> 8 channels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(scale=0.5, size=shape).astype(np.float32), name) for name, shape in (
        ("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (3, 8, 3, 3)), ("b2", (3,)), ("w3", (8, 3, 1, 1)), ("b3", (8,)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "x"], ["s"]),
             helper.make_node("Conv", ["s", "w3", "b3"], ["y"])]
    graph = helper.make_graph(nodes, "residual",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def test_openvino_int8_places_symmetric_qdq_where_openvino_fuses_them(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from ddrnet.export.openvino_int8 import quantize_for_openvino
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.openvino_backend import OpenVINOBackend

    path = str(tmp_path / "fp32.onnx")
    _residual_model(path)
    frames = [np.random.default_rng(s).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32) for s in range(4)]
    model, info = quantize_for_openvino(path, frames, lambda f: f)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantized = {n.input[0]: inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    # the Conv inputs and both Add inputs, nothing on a Conv's output that only a ReLU reads
    assert set(quantized) == {"x", "r1", "c2", "s"} and "c1" not in quantized
    assert quantized["r1"].dtype == np.uint8 and all(quantized[t].dtype == np.int8 for t in ("x", "c2", "s"))
    assert all(int(z) == 0 for z in quantized.values())  # symmetric: no zero-point compensation
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
               and inits[n.input[0]].ndim == 4]
    assert len(weights) == 3 and all(inits[n.input[0]].dtype == np.int8 and inits[n.input[1]].shape == (
        inits[n.input[0]].shape[0],) for n in weights)  # per-output-channel int8 weights
    assert all(inits[name].dtype == np.float32 for name in ("b1", "b2", "b3"))  # float bias
    assert info["activations"] == {"points": 4, "left_float": 0, "uint8": 1, "int8": 3, "symmetric": True}
    out = str(tmp_path / "int8.onnx")
    onnx.save(model, out)
    reference = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": frames[0]})[0]
    for got in (ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"x": frames[0]})[0],
                OpenVINOBackend(out, precision="fp32", model_precision="int8", cache=False).run(frames[0])):
        assert np.abs(got - reference).max() < 0.05 * np.abs(reference).max()  # 8-bit error, not a broken scale
    # given (QAT's) scales: exactly the points that have one are quantized, nothing is calibrated
    model, info = quantize_for_openvino(path, scales={"c1": (0.5, False), "s": (0.25, False), "x": (0.1, True)})
    given = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"} == {"x", "r1", "s"}
    assert info["activations"] == {"points": 3, "left_float": 1, "uint8": 2, "int8": 1, "symmetric": True}
    # a ReLU keeps its input's grid, its output unsigned; a given point keeps its own signedness
    assert (float(given["r1_qscale"]), given["r1_qzero"].dtype) == (0.5, np.uint8)
    assert (float(given["s_qscale"]), given["s_qzero"].dtype) == (0.25, np.int8)
    assert (float(given["x_qscale"]), given["x_qzero"].dtype) == (np.float32(0.1), np.uint8)
    with pytest.raises(DDRNetError, match="needs calibration images"):
        quantize_for_openvino(path)


def test_qat_ranges_become_per_tensor_scales(tmp_path):
    """QAT points (train/quant.py anchors: a weight's node, in/out, ops to follow) map to ONNX tensors."""
    from ddrnet.export.openvino_int8 import qat_scales
    from ddrnet.train.quant import grid

    path = str(tmp_path / "fp32.onnx")
    _residual_model(path)
    anchors = {"stem:out": ("w1", "out", ["Relu"]), "block:in": ("w3", "in", [])}
    scales = qat_scales(path, anchors, {"stem:out": (2.0, True), "block:in": (4.0, False)})
    # the step QAT trained with: unsigned ranges on the finer unsigned grid, and their signedness
    assert scales == {"r1": (pytest.approx(2.0 / grid(True)[0]), True),
                      "s": (pytest.approx(4.0 / grid(False)[0]), False)}
    assert grid(True)[0] > grid(False)[0]


@pytest.mark.parametrize("color_order", ["RGB", "BGR"])
def test_frames_are_normalised_inside_the_graph(tmp_path, cache_root, color_order):
    """The Predictor hands OpenVINO uint8 BGR frames (resized to a fixed input when needed) and the graph
    normalises them: the same masks as onnxruntime's float path, for either colour order."""
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.manifest import load_manifest, write_manifest

    model = make_model_dir(str(tmp_path / "m"), shape=(1, 3, 8, 16))
    manifest = load_manifest(model)
    manifest["input"]["color_order"] = color_order
    write_manifest(model, manifest)
    openvino = Predictor(model, backend="openvino", precision="fp32")
    assert openvino.backend.takes_frames and openvino.backend.input_shape == [1, 3, 8, 16]
    frame = _frame((12, 20))  # not the network size: resized first
    batch = openvino.preprocess(frame)
    assert batch.dtype == np.uint8 and batch.shape == (1, 8, 16, 3)
    reference = Predictor(model)
    mask = openvino(frame)
    assert mask.shape == (12, 20)
    np.testing.assert_array_equal(mask, reference(frame))
    # the raw run on preprocess()'s output is what the Predictor runs
    np.testing.assert_array_equal(openvino.backend.run(batch), reference.backend.run(reference.preprocess(frame)))


def _two_graph_dir(path: str, own_only: bool = False) -> str:
    """A model dir like a default INT8 export: model.onnx for every backend and model.openvino.onnx
    (other weights, so the masks tell which file ran) listed for OpenVINO; `own_only`: only the latter
    (an `--target openvino` INT8 bundle)."""
    from runtime_fixtures import manifest_for, write_tiny_onnx

    from ddrnet.runtime.manifest import write_manifest

    model_dir = make_model_dir(path, shape=(1, 3, 8, 16))
    write_tiny_onnx(os.path.join(model_dir, "model.openvino.onnx"), (1, 3, 8, 16), seed=1)
    files = [{"format": "onnx", "role": "model", "path": "model.openvino.onnx", "backend": "openvino"}]
    if own_only:
        os.remove(os.path.join(model_dir, "model.onnx"))
    else:
        files.insert(0, {"format": "onnx", "role": "model", "path": "model.onnx"})
    write_manifest(model_dir, manifest_for([1, 3, 8, 16], files=files))
    return model_dir


def test_each_backend_opens_its_own_onnx_file(tmp_path, cache_root, monkeypatch):
    """OpenVINO opens the file listed for it; onnxruntime, TensorRT and `bench --all`'s onnxruntime row
    never do; an OpenVINO-only bundle names what the other backends miss."""
    from ddrnet.runtime import Predictor, backends
    from ddrnet.runtime.bench import backends_for
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.manifest import load_manifest
    from ddrnet.runtime.tensorrt_backend import _onnx_entry

    model = _two_graph_dir(str(tmp_path / "both"))
    frame = _frame((8, 16))
    openvino = Predictor(model, backend="openvino", precision="fp32")
    assert os.path.basename(openvino.backend.model_files[0]) == "model.openvino.onnx"
    assert_mask_matches(openvino(frame), reference_logits(frame, seed=1))
    onnxruntime = Predictor(model, backend="onnxruntime")
    assert os.path.basename(onnxruntime.backend.model_files[0]) == "model.onnx"
    assert_mask_matches(onnxruntime(frame), reference_logits(frame, seed=0))
    assert _onnx_entry(load_manifest(model))["path"] == "model.onnx"
    assert [b for b, _ in backends_for(model, "cpu")[0]][:2] == ["onnxruntime", "openvino"]

    only = _two_graph_dir(str(tmp_path / "only"), own_only=True)
    assert_mask_matches(Predictor(only, backend="auto")(frame), reference_logits(frame, seed=1))
    assert {b for b, _ in backends_for(only, "cpu")[0]} == {"openvino"}  # fp32 and bf16 where the CPU has it
    with pytest.raises(DDRNetError, match="no onnx model listed in deploy.yaml .*the onnxruntime backend needs one"):
        Predictor(only, backend="onnxruntime")
    monkeypatch.setattr(backends, "installed", lambda name: name != "openvino")
    with pytest.raises(DDRNetError, match="no installed backend runs this model"):
        Predictor(only, backend="auto")
    assert backends.choose_backend(load_manifest(model), "cpu")[0] == "onnxruntime"


def test_a_dynamic_model_runs_each_input_shape_compiled_static(tmp_path, cache_root, monkeypatch):
    """OpenVINO runs a fixed shape faster: a dynamic model gets a copy compiled per input shape, the
    least recently used dropped beyond STATIC_SHAPES; the masks stay onnxruntime's."""
    from ddrnet.runtime import Predictor, openvino_backend

    monkeypatch.setattr(openvino_backend, "STATIC_SHAPES", 2)
    model = make_model_dir(str(tmp_path / "m"), shape=(-1, 3, -1, -1))
    openvino, reference = Predictor(model, backend="openvino", precision="fp32"), Predictor(model)
    for hw in ((8, 16), (12, 20), (8, 16), (16, 24)):
        frame = _frame(hw)
        np.testing.assert_array_equal(openvino(frame), reference(frame))
    assert list(openvino.backend._static) == [(1, 8, 16, 3), (1, 16, 24, 3)]  # (12, 20) dropped
