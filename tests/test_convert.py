"""The PyTorch -> Paddle weights converter, against checkpoints written in the official key layout."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import paddle  # noqa: E402

import torch_ddrnet  # noqa: E402
from ddrnet.runtime.errors import DDRNetError  # noqa: E402
from ddrnet.train.checkpoint import load_checkpoint  # noqa: E402
from ddrnet.train.convert import convert_torch_checkpoint  # noqa: E402
from ddrnet.train.model import ARCHS, build_model  # noqa: E402

CLASSIFIER_HEAD = {  # the ImageNet model's extra modules (official classification/DDRNet_23_slim.py)
    "down5.0.weight": (256, 128, 3, 3), "down5.1.weight": (256,), "down5.1.running_mean": (256,),
    "down5.1.running_var": (256,), "down5.1.num_batches_tracked": (),
    "last_layer.0.weight": (1024, 512, 1, 1), "last_layer.1.weight": (1024,),
    "linear.weight": (1000, 1024), "linear.bias": (1000,),
}
SIZES = [(128, 256), (97, 161)]
TORCH_ARCHS = {  # the official constructors' arguments
    "ddrnet23_slim": dict(planes=32, head_planes=64),
    "ddrnet23": dict(planes=64, head_planes=128),
    "ddrnet39": dict(layers=(3, 4, 6, 3), planes=64, head_planes=256),
}


@pytest.fixture(scope="module")
def torch_slim():
    return torch_ddrnet.randomize(torch_ddrnet.DualResNet(**TORCH_ARCHS["ddrnet23_slim"]))


@pytest.fixture(scope="module")
def city_pth(torch_slim, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("pth") / "city.pth")
    torch.save(torch_slim.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def converted(city_pth, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("out") / "city.pdparams")
    return convert_torch_checkpoint(city_pth, dst, model_name=None)  # architecture detected


def torch_logits(model, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(image)).numpy()


def paddle_logits(model, image: np.ndarray) -> np.ndarray:
    with paddle.no_grad():
        return model(paddle.to_tensor(image)).numpy()


def random_image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * w).uniform(-1, 1, (1, 3, h, w)).astype(np.float32)


def save_pth(obj, path) -> str:
    torch.save(obj, str(path))
    return str(path)


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0.1
    assert np.abs(got - expected).max() < 1e-4 * scale + 1e-5


def test_converted_weights_reproduce_pytorch_logits(torch_slim, converted):
    assert converted["model"] == dict(name="ddrnet23_slim", num_classes=19, aux_head=False,
                                      avg_pool_exclusive=False, down3_same_padding=False)
    assert converted["missing_keys"] == [] and converted["skipped_keys"] == []
    # the checkpoint loader builds the model from the sidecar, with PyTorch's padding rules
    model, meta = load_checkpoint(converted["dst"])[:2]
    assert meta["avg_pool_exclusive"] is False and meta["down3_same_padding"] is False
    for h, w in SIZES:
        image = random_image(h, w)
        expected = torch_logits(torch_slim, image)
        assert expected.shape == (1, 19, h, w)
        assert_close(paddle_logits(model, image), expected)


@pytest.mark.parametrize("paddle_rule", ["avg_pool_exclusive", "down3_same_padding"])
def test_paddleseg_padding_rules_do_not_reproduce_pytorch(paddle_rule, torch_slim, converted):
    rules = {"avg_pool_exclusive": False, "down3_same_padding": False, paddle_rule: True}
    model = build_model("ddrnet23_slim", **rules)
    model.set_state_dict(paddle.load(converted["dst"]))
    model.eval()
    image = random_image(*SIZES[0])
    expected = torch_logits(torch_slim, image)
    assert np.abs(paddle_logits(model, image) - expected).max() > 2e-3 * np.abs(expected).max()


def test_sidecar_describes_model_and_source(city_pth, converted):
    with open(converted["sidecar"]) as f:
        sidecar = json.load(f)
    assert converted["sidecar"] == converted["dst"][: -len(".pdparams")] + ".json"
    assert sidecar["model"] == converted["model"]
    assert sidecar["converted_from"] == "pytorch"
    assert sidecar["source"]["path"] == os.path.abspath(city_pth)
    with open(city_pth, "rb") as f:
        assert sidecar["source"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert not [n for n in os.listdir(os.path.dirname(converted["dst"])) if ".tmp" in n]


@pytest.mark.parametrize("layout", ["dataparallel", "hrnet_fullmodel", "model_wrapper"])
def test_training_wrappers_are_unwrapped(layout, torch_slim, converted, tmp_path):
    state = torch_slim.state_dict()
    loss_buffers = {"loss.criterion.weight": torch.rand(19)}  # HRNet's OHEM criterion class weights
    obj = {
        "dataparallel": {"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}},
        "hrnet_fullmodel": {**{"module.model." + k: v for k, v in state.items()},
                            **{"module." + k: v for k, v in loss_buffers.items()}},
        "model_wrapper": {"model": dict(state), "optimizer": {"lr": 0.01}},
    }[layout]
    report = convert_torch_checkpoint(save_pth(obj, tmp_path / "in.pth"), str(tmp_path / "out.pdparams"),
                                      "ddrnet23_slim")
    assert report["missing_keys"] == []
    assert report["skipped"] == ({"training loss": list(loss_buffers)} if layout == "hrnet_fullmodel" else {})
    reference = paddle.load(converted["dst"])
    got = paddle.load(report["dst"])
    assert sorted(got) == sorted(reference)
    assert all(np.array_equal(got[k].numpy(), reference[k].numpy()) for k in reference)


@pytest.mark.filterwarnings("ignore:Skip loading")  # Paddle warns about each missing spp / head key
def test_imagenet_checkpoint_converts_backbone_and_skips_classifier(torch_slim, tmp_path):
    backbone = {k: v for k, v in torch_slim.state_dict().items() if not k.startswith(("spp.", "final_layer."))}
    head = {k: torch.rand(shape) for k, shape in CLASSIFIER_HEAD.items()}
    path = save_pth({"state_dict": {"module." + k: v for k, v in {**backbone, **head}.items()}},
                    tmp_path / "imagenet.pth")
    report = convert_torch_checkpoint(path, str(tmp_path / "imagenet.pdparams"), None)

    model = build_model("ddrnet23_slim")
    assert report["missing_keys"] == [k for k in model.state_dict() if k.startswith(("spp.", "head."))]
    assert report["skipped"] == {"classification head": [k for k in CLASSIFIER_HEAD
                                                         if not k.endswith("num_batches_tracked")]}
    model.set_state_dict(paddle.load(report["dst"]))
    params = model.state_dict()
    assert np.array_equal(params["layer5.0.conv_bn._batch_norm._variance"].numpy(),
                          backbone["layer5.0.bn3.running_var"].numpy())
    assert np.array_equal(params["conv1.0._conv.bias"].numpy(), backbone["conv1.0.bias"].numpy())


@pytest.mark.parametrize("name, augment", [("ddrnet23", True), ("ddrnet39", False)])
def test_architecture_is_detected_and_reproduced(name, augment, tmp_path):
    source = torch_ddrnet.randomize(torch_ddrnet.DualResNet(augment=augment, **TORCH_ARCHS[name]), seed=1)
    path = save_pth(source.state_dict(), tmp_path / "in.pth")
    report = convert_torch_checkpoint(path, str(tmp_path / "out.pdparams"), None)
    assert report["model"]["name"] == name and report["model"]["aux_head"] is augment
    assert report["missing_keys"] == []
    model = load_checkpoint(report["dst"], aux_head=augment).model
    image = random_image(64, 128)
    assert_close(paddle_logits(model, image), torch_logits(source, image))
    if augment:  # the auxiliary head (training only) converts too
        channels = source.seghead_extra.bn1.num_features
        features = np.random.default_rng(0).normal(size=(1, channels, 8, 16)).astype(np.float32)
        with torch.no_grad():
            expected = source.seghead_extra(torch.from_numpy(features)).numpy()
        assert_close(model.aux_head(paddle.to_tensor(features)).numpy(), expected)


def test_checkpoint_of_another_architecture_is_refused(city_pth, tmp_path):
    dst = tmp_path / "out.pdparams"
    with pytest.raises(DDRNetError, match=r"conv1\.0\.weight has shape \[32, 3, 3, 3\] in the checkpoint "
                                          r"but \[64, 3, 3, 3\] in ddrnet23"):
        convert_torch_checkpoint(city_pth, str(dst), "ddrnet23")
    assert not os.listdir(tmp_path)


def test_wrong_class_count_names_the_right_one(city_pth, tmp_path):
    with pytest.raises(DDRNetError, match=r"final_layer\.conv2\.weight .* pass --num-classes 19"):
        convert_torch_checkpoint(city_pth, str(tmp_path / "out.pdparams"), "ddrnet23_slim", num_classes=21)


@pytest.mark.parametrize("content, problem", [
    (b"not a checkpoint\n", "not a PyTorch checkpoint"),
    (b"", "not a PyTorch checkpoint"),
    (b"PK\x05\x06" + bytes(18), "not a PyTorch checkpoint"),  # an empty zip archive
    ({"epoch": 3, "args": argparse.Namespace(lr=0.01)}, "pickled argparse.Namespace"),
    ({"epoch": 3, "best_miou": 0.7}, "no tensors"),
    ({"linear.weight": torch.zeros(1000, 1024)}, "no DDRNet weights"),
    (None, "no such file"),
])
def test_files_that_are_not_ddrnet_checkpoints_are_refused(content, problem, tmp_path):
    src = tmp_path / "in.pth"
    if isinstance(content, bytes):
        src.write_bytes(content)
    elif content is not None:
        save_pth(content, src)
    with pytest.raises(DDRNetError, match=problem):
        convert_torch_checkpoint(str(src), str(tmp_path / "out.pdparams"), None)
    assert not (tmp_path / "out.pdparams").exists()


def test_cli_converts_and_reports_errors_on_one_line(city_pth, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "ddrnet", "convert-weights", *args],
                              capture_output=True, text=True, timeout=120)

    ok = cli(city_pth, str(tmp_path / "w.pdparams"), "--model", "auto")
    assert ok.returncode == 0, ok.stderr
    assert "ddrnet23_slim, 19 classes" in ok.stdout and "missing:  none" in ok.stdout
    assert (tmp_path / "w.pdparams").is_file() and (tmp_path / "w.json").is_file()

    bad = cli(city_pth, str(tmp_path / "x.pdparams"), "--model", "ddrnet23")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddrnet convert-weights: error: ") and "conv1.0.weight" in lines[0]


def test_cli_architecture_choices_follow_the_model_zoo():
    from ddrnet.train.cmd_convert import ARCH_CHOICES

    assert set(ARCH_CHOICES) == {"auto", *ARCHS}
