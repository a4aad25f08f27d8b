"""PaddleSeg's evaluation modes (multi-scale + flip, sliding window) for checkpoints and exported models:
the numpy implementation (runtime/augment.py) against PaddleSeg's own aug_inference / slide_inference."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from runtime_fixtures import make_model_dir, tiny_weights, write_tiny_cityscapes

from ddrnet.runtime import Predictor
from ddrnet.runtime.augment import AugmentedBackend, EvalMode, augmented_predictor, resize_bilinear
from ddrnet.runtime.errors import DDRNetError
from ddrnet.train.model import build_model

infer = pytest.importorskip("paddleseg.core.infer")
TOLERANCE = 1e-4  # on logits, absolute
MODES = {
    "scales+flips": dict(aug=True, scales=[0.75, 1.0, 1.25], flip_horizontal=True, flip_vertical=True),
    "slide": dict(slide=True, crop_wh=[48, 40], stride_wh=[32, 24]),
    "scales+flip+slide": dict(aug=True, scales=[0.5, 1.0], flip_horizontal=True, slide=True, crop_wh=[48, 40],
                              stride_wh=[32, 24]),
}


class AsList(paddle.nn.Layer):
    """PaddleSeg's model contract: a list of logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return [self.model(x)]


def paddleseg_logits(model: paddle.nn.Layer, image: np.ndarray, mode: dict) -> np.ndarray:
    """PaddleSeg's val.py path for `mode` (aug_inference, or inference with is_slide)."""
    slide = dict(is_slide=mode.get("slide", False), crop_size=mode.get("crop_wh"), stride=mode.get("stride_wh"))
    x = paddle.to_tensor(image)
    with paddle.no_grad():
        if mode.get("aug"):
            return infer.aug_inference(AsList(model), x, [], scales=mode["scales"],
                                       flip_horizontal=mode.get("flip_horizontal", False),
                                       flip_vertical=mode.get("flip_vertical", False), **slide)[1].numpy()
        return infer.inference(AsList(model), x, **slide).numpy()


def logits_of(model: paddle.nn.Layer):
    def run(tensor: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return model(paddle.to_tensor(tensor)).numpy()
    return run


@pytest.mark.parametrize("hw", [(34, 46), (13, 29), (255, 7), (4, 4), (1, 1), (40, 3), (17, 23)])
def test_resize_equals_paddle_interpolate(hw):
    x = np.random.RandomState(0).randn(1, 5, 17, 23).astype(np.float32)
    expected = F.interpolate(paddle.to_tensor(x), list(hw), mode="bilinear").numpy()
    np.testing.assert_allclose(resize_bilinear(x, hw), expected, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def slim():
    paddle.seed(0)
    model = build_model("ddrnet23_slim")
    model.eval()
    return model


@pytest.mark.parametrize("name", sorted(MODES))
def test_checkpoint_logits_equal_paddleseg(slim, name):
    image = np.random.RandomState(1).randn(1, 3, 64, 96).astype(np.float32)
    expected = paddleseg_logits(slim, image, MODES[name])
    got = EvalMode(**MODES[name]).logits(logits_of(slim), image)
    assert got.shape == expected.shape == (1, 19, 64, 96)
    assert np.abs(got - expected).max() <= TOLERANCE


def test_lowres_logits_upsampled_in_numpy_equal_the_models_logits(slim):
    """An export with --output-op lowres_logits gives the same averaged logits as one with none."""
    image = np.random.RandomState(2).randn(1, 3, 64, 96).astype(np.float32)

    class Lowres:
        name, input_name, input_shape, output_names = "lowres", "x", [-1, 3, -1, -1], ["logits"]

        def run(self, tensor):
            with paddle.no_grad():
                return slim.lowres_logits(paddle.to_tensor(tensor)).numpy()

    mode = EvalMode(**MODES["scales+flips"])
    got = AugmentedBackend(Lowres(), mode, "lowres_logits").run(image)
    assert np.abs(got - paddleseg_logits(slim, image, MODES["scales+flips"])).max() <= TOLERANCE


def tiny_conv() -> paddle.nn.Layer:
    """The exported tiny model of runtime_fixtures (a 1x1 convolution) as a Paddle layer."""
    weight, bias = tiny_weights()
    conv = paddle.nn.Conv2D(3, 19, 1)
    conv.weight.set_value(weight)
    conv.bias.set_value(bias)
    return conv


@pytest.mark.parametrize("name", sorted(MODES))
def test_exported_model_logits_equal_paddleseg(tmp_path, name):
    """An exported dynamic-shape ONNX model in the runtime (no Paddle in that path) against PaddleSeg's
    functions over the same network in Paddle."""
    model_dir = make_model_dir(str(tmp_path / "m"), shape=(-1, 3, -1, -1), output="none")
    predictor = augmented_predictor(Predictor(model_dir, backend="onnxruntime"), EvalMode(**MODES[name]))
    image = np.random.RandomState(3).randn(1, 3, 64, 96).astype(np.float32)
    got = predictor.backend.run(image)
    assert np.abs(got - paddleseg_logits(tiny_conv(), image, MODES[name])).max() <= TOLERANCE


def test_models_that_cannot_run_a_mode_are_refused_in_one_line(tmp_path):
    mode = EvalMode(**MODES["scales+flips"])
    argmax = Predictor(make_model_dir(str(tmp_path / "argmax"), shape=(-1, 3, -1, -1)), backend="onnxruntime")
    with pytest.raises(DDRNetError, match="outputs labels .*export with --output-op none"):
        augmented_predictor(argmax, mode)
    fixed = Predictor(make_model_dir(str(tmp_path / "fixed"), shape=(1, 3, 64, 96), output="none"),
                      backend="onnxruntime")
    with pytest.raises(DDRNetError, match="fixed at 64x96, this evaluation mode runs it at 48x72; export with "
                                          "--input-shape dynamic"):
        augmented_predictor(fixed, mode)(np.zeros((64, 96, 3), np.uint8))
    flips_only = augmented_predictor(fixed, EvalMode(aug=True, flip_horizontal=True))  # 64x96 frames: fine
    assert flips_only(np.zeros((64, 96, 3), np.uint8)).shape == (64, 96)
    with pytest.raises(DDRNetError, match="--is_slide needs --crop_size W H and --stride W H"):
        EvalMode(slide=True)
    with pytest.raises(DDRNetError, match="--stride 64 32: larger than --crop_size 48 40"):
        EvalMode(slide=True, crop_wh=[48, 40], stride_wh=[64, 32])


def _ddrnet(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ddrnet", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_eval_command_flags(tmp_path):
    """`ddrnet eval` with PaddleSeg's val.py flags on an exported model and on a checkpoint."""
    data = str(tmp_path / "data")
    write_tiny_cityscapes(data, count=2, hw=(64, 96))
    model_dir = make_model_dir(str(tmp_path / "m"), shape=(-1, 3, -1, -1), output="none")
    out = str(tmp_path / "aug.json")
    done = _ddrnet("eval", "--model", model_dir, "--data-root", data, "--aug_eval", "--scales", "0.75", "1.0",
                   "--flip_horizontal", "--json", out)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out) as f:
        result = json.load(f)
    assert result["eval_mode"]["scales"] == [0.75, 1.0] and result["num_images"] == 2
    refused = _ddrnet("eval", "--model", model_dir, "--data-root", data, "--is_slide", "--crop_size", "32", "32")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == \
        "ddrnet eval: error: --is_slide needs --crop_size W H and --stride W H"
    weights = str(tmp_path / "slim.pdparams")
    paddle.seed(0)
    paddle.save(build_model("ddrnet23_slim").state_dict(), weights)
    slide = _ddrnet("eval", "--model_path", weights, "--model-name", "ddrnet23_slim", "--data-root", data,
                    "--is_slide", "--crop_size", "64", "64", "--stride", "48", "48", "--json", str(tmp_path / "s.json"))
    assert slide.returncode == 0, slide.stderr[-2000:]
    with open(str(tmp_path / "s.json")) as f:
        assert json.load(f)["eval_mode"]["crop_size"] == [64, 64]
