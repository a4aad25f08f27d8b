"""Runtime: Predictor on tiny ONNX models, deploy.yaml integrity, input validation, backends,
visualisation, running without Paddle, Python 3.8 compatibility."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import yaml

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.manifest import load_manifest, sha256_file, write_manifest
from runtime_fixtures import (add_paddle_model, assert_mask_matches, make_model_dir, manifest_for,
                              reference_logits)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _frame(h, w, seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def fixed_dir(tmp_path_factory):
    return make_model_dir(str(tmp_path_factory.mktemp("fixed") / "m"), shape=(1, 3, 8, 16))


@pytest.fixture(scope="module")
def dynamic_dir(tmp_path_factory):
    return make_model_dir(str(tmp_path_factory.mktemp("dynamic") / "m"), shape=(-1, 3, -1, -1))


# -- Predictor ---------------------------------------------------------------------------------

def test_predictor_matches_numpy_reference(fixed_dir):
    from ddrnet.runtime import Predictor

    predictor = Predictor(fixed_dir)
    frame = _frame(8, 16)
    mask = predictor(frame)
    assert mask.dtype == np.uint8 and mask.shape == (8, 16)
    assert_mask_matches(mask, reference_logits(frame))
    assert set(predictor.last_timing) == {"pre_ms", "infer_ms", "post_ms", "total_ms"}
    assert predictor.input_shape == [1, 3, 8, 16]
    assert predictor.class_names[0] == "road" and predictor.palette.shape == (19, 3)
    assert (predictor.backend_name, predictor.device) == ("onnxruntime", "cpu")


def test_preprocess_is_rgb_normalised_nchw(fixed_dir):
    from ddrnet.runtime import Predictor

    frame = _frame(8, 16)
    tensor = Predictor(fixed_dir).preprocess(frame)
    expected = (frame[..., ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5
    assert tensor.shape == (1, 3, 8, 16) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0], expected.transpose(2, 0, 1), atol=1e-6)


def test_fixed_input_resizes_frame_and_mask_back(fixed_dir):
    from ddrnet.runtime import Predictor

    frame = _frame(21, 30, seed=2)
    mask = Predictor(fixed_dir)(frame)
    assert mask.shape == (21, 30)
    network_frame = cv2.resize(frame, (16, 8), interpolation=cv2.INTER_LINEAR)
    logits = reference_logits(network_frame)
    network_mask = logits.argmax(-1).astype(np.uint8)
    expected = cv2.resize(network_mask, (30, 21), interpolation=cv2.INTER_NEAREST)
    # compare only where the small mask was unambiguous
    top2 = np.sort(logits, axis=-1)[..., -2:]
    clear = cv2.resize(((top2[..., 1] - top2[..., 0]) > 1e-4).astype(np.uint8), (30, 21),
                       interpolation=cv2.INTER_NEAREST).astype(bool)
    np.testing.assert_array_equal(mask[clear], expected[clear])


def test_dynamic_input_keeps_frame_size(dynamic_dir):
    from ddrnet.runtime import Predictor

    predictor = Predictor(dynamic_dir)
    frame = _frame(13, 17, seed=3)  # odd sizes on purpose
    assert predictor.preprocess(frame).shape == (1, 3, 13, 17)
    mask = predictor(frame)
    assert mask.shape == (13, 17)
    assert_mask_matches(mask, reference_logits(frame))


@pytest.mark.parametrize("output,kw", [
    ("argmax", {"argmax_dtype": "int64"}),
    ("argmax", {"argmax_dtype": "int32", "keepdims": True}),
    ("argmax", {"argmax_dtype": "int64", "keepdims": True}),
    ("softmax", {}),
    ("none", {}),
])
def test_every_output_kind_gives_the_same_mask(tmp_path, output, kw):
    from ddrnet.runtime import Predictor

    model_dir = make_model_dir(str(tmp_path / "m"), shape=(-1, 3, -1, -1), output=output, **kw)
    frame = _frame(9, 11, seed=4)
    assert_mask_matches(Predictor(model_dir)(frame), reference_logits(frame))


class _CountingRun:
    def __init__(self, run):
        self.run, self.calls = run, 0

    def __call__(self, tensor):
        self.calls += 1
        return self.run(tensor)


def test_predict_batch_one_call_with_dynamic_batch(dynamic_dir):
    from ddrnet.runtime import Predictor

    predictor = Predictor(dynamic_dir)
    counter = _CountingRun(predictor.backend.run)
    predictor.backend.run = counter
    frames = [_frame(10, 12, seed=s) for s in range(3)]
    masks = predictor.predict_batch(frames)
    assert counter.calls == 1
    for frame, mask in zip(frames, masks):
        assert_mask_matches(mask, reference_logits(frame))
    assert set(predictor.last_timing) == {"pre_ms", "infer_ms", "post_ms", "total_ms"}
    # frames of different sizes cannot share a dynamic-size tensor: one call each
    masks = predictor.predict_batch([_frame(10, 12), _frame(7, 9)])
    assert counter.calls == 3 and [m.shape for m in masks] == [(10, 12), (7, 9)]
    assert predictor.predict_batch([]) == []


def test_predict_batch_loops_with_fixed_batch(fixed_dir):
    from ddrnet.runtime import Predictor

    predictor = Predictor(fixed_dir)
    counter = _CountingRun(predictor.backend.run)
    predictor.backend.run = counter
    frames = [_frame(8, 16, seed=s) for s in range(3)]
    masks = predictor.predict_batch(frames)
    assert counter.calls == 3
    for frame, mask in zip(frames, masks):
        np.testing.assert_array_equal(mask, predictor(frame))


@pytest.mark.parametrize("bad,problem", [
    (np.zeros((8, 16), np.uint8), "grayscale"),
    (np.zeros((8, 16, 1), np.uint8), "grayscale"),
    (np.zeros((8, 16, 3), np.uint16), "8-bit"),
    (np.zeros((0, 16, 3), np.uint8), "shape"),
    (np.zeros((8, 16, 2), np.uint8), "2 channels"),
    ("not an image", "shape"),
])
def test_bad_frames_are_one_line_errors(fixed_dir, bad, problem):
    from ddrnet.runtime import Predictor

    predictor = Predictor(fixed_dir)
    with pytest.raises(DDRNetError, match=problem):
        predictor(bad)
    with pytest.raises(DDRNetError, match=problem):
        predictor.predict_batch([_frame(8, 16), bad])


def test_bgra_frame_is_accepted(fixed_dir):
    from ddrnet.runtime import Predictor

    frame = _frame(8, 16)
    bgra = cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)
    predictor = Predictor(fixed_dir)
    np.testing.assert_array_equal(predictor(bgra), predictor(frame))


def test_graph_shape_must_agree_with_manifest(tmp_path):
    from ddrnet.runtime import Predictor

    model_dir = make_model_dir(str(tmp_path / "m"), shape=(1, 3, 8, 16))
    write_manifest(model_dir, manifest_for([1, 3, 16, 32]))
    with pytest.raises(DDRNetError, match="does not match deploy.yaml"):
        Predictor(model_dir)


class _NumpyBackend:
    """The tiny model in numpy behind the backend interface: logits out, any N/H/W in."""

    name = "numpy"
    input_name, input_shape, output_names = "x", [-1, 3, -1, -1], ["logits"]

    def run(self, tensor):
        from runtime_fixtures import tiny_weights

        weight, bias = tiny_weights()
        return np.einsum("kc,nchw->nkhw", weight[:, :, 0, 0], tensor) + bias[None, :, None, None]


def test_from_backend_wraps_a_model_that_was_never_exported():
    from ddrnet.runtime import Predictor

    manifest = manifest_for([-1, 3, -1, -1], output="none")
    manifest["files"] = []
    predictor = Predictor.from_backend(_NumpyBackend(), manifest, source="ckpt.pdparams")
    frame = _frame(9, 13)
    assert_mask_matches(predictor(frame), reference_logits(frame))
    assert (predictor.backend_name, predictor.model_dir, predictor.input_shape) == (
        "numpy", "ckpt.pdparams", [-1, 3, -1, -1])
    manifest.pop("palette")
    with pytest.raises(DDRNetError, match="ckpt.pdparams: missing key.*palette"):
        Predictor.from_backend(_NumpyBackend(), manifest, source="ckpt.pdparams")


# -- deploy.yaml -------------------------------------------------------------------------------

def test_write_manifest_fills_hashes_and_round_trips(fixed_dir):
    manifest = load_manifest(fixed_dir)
    entry = manifest["files"][0]
    assert entry["sha256"] == sha256_file(os.path.join(fixed_dir, "model.onnx"))
    assert manifest["palette"][0] == [128, 64, 128] and len(manifest["class_names"]) == 19


def _copy(model_dir, tmp_path):
    target = str(tmp_path / "copy")
    shutil.copytree(model_dir, target)
    return target


def test_changed_byte_is_refused(fixed_dir, tmp_path):
    from ddrnet.runtime import Predictor

    model_dir = _copy(fixed_dir, tmp_path)
    path = os.path.join(model_dir, "model.onnx")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(DDRNetError, match=r"model.onnx: SHA-256 mismatch with deploy.yaml"):
        Predictor(model_dir)


def test_missing_manifest_and_missing_file(fixed_dir, tmp_path):
    model_dir = _copy(fixed_dir, tmp_path)
    os.remove(os.path.join(model_dir, "model.onnx"))
    with pytest.raises(DDRNetError, match="model.onnx: listed in .* but missing"):
        load_manifest(model_dir)
    os.remove(os.path.join(model_dir, "deploy.yaml"))
    with pytest.raises(DDRNetError, match="deploy.yaml: missing"):
        load_manifest(model_dir)
    with pytest.raises(DDRNetError, match="no such model dir"):
        load_manifest(str(tmp_path / "nowhere"))


def _edit_manifest(model_dir, edit):
    path = os.path.join(model_dir, "deploy.yaml")
    data = yaml.safe_load(open(path))
    edit(data)
    open(path, "w").write(yaml.safe_dump(data))


@pytest.mark.parametrize("rel_path,problem", [
    ("../outside.onnx", r"must not contain '\.\.'"),
    ("sub/../../outside.onnx", r"must not contain '\.\.'"),
    ("/etc/passwd", "must be relative"),
])
def test_paths_outside_the_model_dir_are_refused(fixed_dir, tmp_path, rel_path, problem):
    model_dir = _copy(fixed_dir, tmp_path)
    _edit_manifest(model_dir, lambda m: m["files"][0].update(path=rel_path))
    with pytest.raises(DDRNetError, match=problem):
        load_manifest(model_dir)


def test_symlink_escaping_the_model_dir_is_refused(fixed_dir, tmp_path):
    model_dir = _copy(fixed_dir, tmp_path)
    outside = str(tmp_path / "outside.onnx")
    shutil.move(os.path.join(model_dir, "model.onnx"), outside)
    os.symlink(outside, os.path.join(model_dir, "model.onnx"))
    with pytest.raises(DDRNetError, match="points outside the model dir"):
        load_manifest(model_dir)


@pytest.mark.parametrize("edit,problem", [
    (lambda m: m.pop("palette"), "missing key.*palette"),
    (lambda m: m.update(schema_version=2), "schema_version 2 is not supported"),
    (lambda m: m["input"].update(shape=[1, 1, 8, 16]), "3 channels"),
    (lambda m: m["input"].update(std=[0.5, 0, 0.5]), "non-zero"),
    (lambda m: m["output"].update(op="sigmoid"), "output.op"),
    (lambda m: m.update(files=[]), "non-empty"),
    (lambda m: m["palette"].pop(), "palette"),
    (lambda m: m["files"][0].pop("sha256"), "no sha256"),
])
def test_schema_violations_name_the_problem(fixed_dir, tmp_path, edit, problem):
    model_dir = _copy(fixed_dir, tmp_path)
    _edit_manifest(model_dir, edit)
    with pytest.raises(DDRNetError, match=problem):
        load_manifest(model_dir)


def test_invalid_yaml_is_one_line_error(fixed_dir, tmp_path):
    model_dir = _copy(fixed_dir, tmp_path)
    open(os.path.join(model_dir, "deploy.yaml"), "w").write("files: [unclosed\n")
    with pytest.raises(DDRNetError, match="not valid YAML") as err:
        load_manifest(model_dir)
    assert "\n" not in str(err.value)


# -- backends ----------------------------------------------------------------------------------

def test_unloadable_onnx_is_a_one_line_error(tmp_path):
    from ddrnet.runtime import Predictor

    model_dir = make_model_dir(str(tmp_path / "m"))
    open(os.path.join(model_dir, "model.onnx"), "wb").write(b"not a protobuf")
    write_manifest(model_dir, manifest_for([1, 3, 8, 16]))  # hashes match: the file itself is bad
    with pytest.raises(DDRNetError, match="model.onnx: onnxruntime cannot load it") as err:
        Predictor(model_dir)
    assert "\n" not in str(err.value)


def test_unknown_backend_and_missing_format(fixed_dir):
    from ddrnet.runtime import Predictor

    with pytest.raises(DDRNetError, match="unknown backend 'mxnet'"):
        Predictor(fixed_dir, backend="mxnet")
    with pytest.raises(DDRNetError, match="no paddle model listed"):
        Predictor(fixed_dir, backend="paddle")
    with pytest.raises(DDRNetError, match="--precision fp16: the onnxruntime backend runs the model as exported"):
        Predictor(fixed_dir, precision="fp16")


def test_tensorrt_refuses_cpu(fixed_dir):
    from ddrnet.runtime import Predictor

    with pytest.raises(DDRNetError, match="GPU only"):
        Predictor(fixed_dir, backend="tensorrt", device="cpu")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_tensorrt_absent_is_a_clear_error(fixed_dir):
    from ddrnet.runtime import Predictor

    with pytest.raises(DDRNetError, match="needs the tensorrt and pycuda packages"):
        Predictor(fixed_dir, backend="tensorrt", device="gpu")


def test_onnxruntime_gpu_without_cuda_provider_is_a_clear_error(fixed_dir):
    import onnxruntime as ort

    from ddrnet.runtime import Predictor

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(DDRNetError, match="no CUDA provider"):
        Predictor(fixed_dir, device="gpu")


def test_threads_and_spinning_options_reach_onnxruntime(fixed_dir):
    from ddrnet.runtime import Predictor

    predictor = Predictor(fixed_dir, threads=1)
    options = predictor.backend._session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert predictor.backend.providers == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError):  # not set: onnxruntime's default, spinning on
        options.get_session_config_entry("session.intra_op.allow_spinning")
    quiet = Predictor(fixed_dir, threads=2, spinning=False).backend._session.get_session_options()
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.skipif(importlib.util.find_spec("paddle") is None, reason="paddlepaddle not installed")
def test_paddle_backend_matches_onnxruntime(tmp_path):
    """A Paddle Inference model with the tiny model's weights gives the same masks."""
    from ddrnet.runtime import Predictor

    model_dir = add_paddle_model(make_model_dir(str(tmp_path / "m"), shape=(-1, 3, -1, -1)))
    paddle_predictor = Predictor(model_dir, backend="paddle", threads=1)
    onnx_predictor = Predictor(model_dir)
    frames = [_frame(12, 20, seed=s) for s in range(2)]
    for frame in frames:
        np.testing.assert_array_equal(paddle_predictor(frame), onnx_predictor(frame))
    assert [m.shape for m in paddle_predictor.predict_batch(frames)] == [(12, 20)] * 2


@pytest.mark.skipif(importlib.util.find_spec("paddle") is None, reason="paddlepaddle not installed")
def test_paddle_gpu_on_a_cpu_only_wheel_is_a_clear_error(tmp_path):
    """A CPU-only paddlepaddle ignores enable_use_gpu with a log line: without the check the 'GPU' run
    would quietly be a CPU run."""
    import paddle

    from ddrnet.runtime import Predictor

    if paddle.device.is_compiled_with_cuda():
        pytest.skip("this paddlepaddle has CUDA")
    model_dir = add_paddle_model(make_model_dir(str(tmp_path / "m"), shape=(-1, 3, -1, -1)))
    with pytest.raises(DDRNetError, match="this paddlepaddle has no CUDA support"):
        Predictor(model_dir, backend="paddle", device="gpu")


# -- visualisation -----------------------------------------------------------------------------

def test_colorize_and_overlay(fixed_dir):
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.labels import PALETTE

    predictor = Predictor(fixed_dir)
    mask = np.array([[0, 1, 18], [13, 255, 2]], dtype=np.uint8)
    color = predictor.colorize(mask)
    assert color.shape == (2, 3, 3) and color.dtype == np.uint8
    np.testing.assert_array_equal(color[0, 0], PALETTE[0][::-1])  # BGR
    np.testing.assert_array_equal(color[1, 0], PALETTE[13][::-1])
    np.testing.assert_array_equal(color[1, 1], [0, 0, 0])  # ignore draws black
    frame = _frame(2, 3)
    blended = predictor.overlay(frame, mask, alpha=0.25)
    expected = 0.75 * frame.astype(np.float64) + 0.25 * color
    assert np.abs(blended - expected).max() <= 1
    with pytest.raises(DDRNetError, match="overlay"):
        predictor.overlay(_frame(4, 4), mask)


# -- runs without Paddle, stays Python 3.8 -------------------------------------------------------

def test_runtime_works_with_paddle_absent(fixed_dir):
    script = textwrap.dedent("""
        import sys
        import importlib.abc

        class NoPaddle(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "paddle" or name.startswith("paddle."):
                    raise ImportError("paddle is blocked for this test")
                return None

        sys.meta_path.insert(0, NoPaddle())
        import numpy as np
        from ddrnet.runtime import Predictor
        from ddrnet.runtime.errors import DDRNetError
        predictor = Predictor({model!r})
        mask = predictor(np.zeros((8, 16, 3), np.uint8))
        assert mask.shape == (8, 16)
        try:
            Predictor({model!r}, backend="paddle")
        except DDRNetError as err:
            print("paddle backend:", err)
        from ddrnet.cli import main
        assert main(["bench", "--model", {model!r}, "--iters", "2", "--warmup", "0"]) == 0
        assert not any(m == "paddle" or m.startswith("paddle.") for m in sys.modules)
        print("ok")
    """).format(model=fixed_dir)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_runtime_is_python38_compatible():
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    if not os.path.exists(vermin):
        pytest.skip("vermin is not installed (pip install vermin; it is in the [dev] extra)")
    proc = subprocess.run([vermin, "-t=3.8-", "--no-tips", "--violations",
                           os.path.join(REPO, "runtime"), os.path.join(REPO, "ddrnet")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
