"""Compression end to end on a tiny synthetic set: BN folding, QAT (+ resume, rebuild, INT8 save),
pruning (L1 and FPGM), PTQ with two calibration methods, prune -> QAT, calibration lists, bad input.

One FP32 checkpoint is trained for a few iterations (module fixture); every compression run
fine-tunes it for 2-4 iterations, so the mIoU figures are small but real: the tests check that they
are measured, stored and reproduced, not that they are high (the demo-size figures are in the note).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from ddrnet.cli import main
from ddrnet.compress.calib import calibration_images, write_calib_list
from ddrnet.compress.prune import model_cost, prune_model
from ddrnet.compress.qat import save_quant_inference_model
from ddrnet.runtime.errors import DDRNetError
from ddrnet.train.checkpoint import PARAMS, load_checkpoint, read_state
from ddrnet.train.config import load_config
from ddrnet.train.data import CityscapesDataset, build_transforms
from ddrnet.train.evaluate import evaluate
from ddrnet.train.model import build_model
from ddrnet.train.quant import point_ranges
from ddrnet.train.structure import fold_bn, resize_to_shapes
from ddrnet.train.synth import generate
from ddrnet.train.trainer import train

QAT_CFG = "qat_ddrnet23_slim_synthetic_cpu.yml"
PRUNE_CFG = "prune_ddrnet23_slim_synthetic_cpu.yml"
HW = (64, 128)
SMALL = ["num_workers=0", "train_dataset.transforms=[{type: RandomHorizontalFlip}, {type: Normalize}]"]
# every stage fine-tunes with batch 2 and saves every 2 iterations; MACs at a small size (speed)
STAGES = ["qat.finetune.batch_size=2", "qat.finetune.save_interval=2", "prune.finetune.batch_size=2",
          "prune.finetune.save_interval=2", "prune.macs_input_hw=[256, 512]"]
N_CONVS, N_PRE_ACTIVATION_BNS = 55, 12  # DDRNet-23-slim: all convs; DAPPM's 11 BNs + the head's
N_POINTS, N_UNSIGNED = 96, 42  # its quantized tensors, the non-negative ones among them (train/quant.py)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return generate(str(tmp_path_factory.mktemp("data")), 12, 4, size=HW, seed=0)


@pytest.fixture(scope="module")
def fp32(data, tmp_path_factory) -> str:
    """best_model of a 6-iteration FP32 training run on the tiny set (momentum SGD at lr 0.01: the
    demo's AdamW leaves a 6-iteration model too undecided for the INT8 agreement checks, and at lr 0.05
    its BN running statistics lag so far behind that the BN-folded network's activations reach 1e8 and
    quantization-aware fine-tuning diverges)."""
    cfg = load_config("ddrnet23_slim_synthetic_cpu.yml",
                      SMALL + ["iters=6", "batch_size=2", "eval_interval=6", "save_interval=6",
                               "optimizer={type: SGD, momentum: 0.9, weight_decay: 0.0005}",
                               "lr_scheduler.learning_rate=0.01"])
    save_dir = str(tmp_path_factory.mktemp("fp32"))
    train(cfg, save_dir, data_root=data, device="cpu")
    return os.path.join(save_dir, "best_model")


def compress(*args: str) -> int:
    opts = [a for opt in SMALL + STAGES for a in ("--opt", opt)]
    return main(["compress", *args, *opts])


def val_set(data: str) -> CityscapesDataset:
    return CityscapesDataset(data, "val", build_transforms([{"type": "Normalize"}], train=False))


def count(model: nn.Layer, cls) -> int:
    return sum(isinstance(layer, cls) for layer in model.sublayers())


def randomise_bn(model: nn.Layer) -> None:
    """Give every BN non-trivial statistics, so folding has something to get wrong."""
    rng = np.random.default_rng(0)
    for layer in model.sublayers():
        if isinstance(layer, nn.BatchNorm2D):
            n = layer.weight.shape[0]
            for tensor, values in ((layer._mean, rng.normal(0, 0.2, n)), (layer._variance, rng.uniform(0.5, 2, n)),
                                   (layer.weight, rng.uniform(0.5, 1.5, n)), (layer.bias, rng.normal(0, 0.2, n))):
                tensor.set_value(values.astype("float32"))


def test_fold_bn_is_exact_and_leaves_pre_activation_bns():
    paddle.seed(0)
    model = build_model("ddrnet23_slim")
    randomise_bn(model)
    model.eval()
    x = paddle.randn([1, 3, 67, 131])
    reference = model(x).numpy()
    folded = fold_bn(model)
    assert len(folded) == N_CONVS - 11 - 1  # all but DAPPM's 11 convs and the logits conv: no BN follows them
    remaining = [name for name, layer in model.named_sublayers() if isinstance(layer, nn.BatchNorm2D)]
    assert len(remaining) == N_PRE_ACTIVATION_BNS
    assert all(name.startswith("spp.") or name == "head.bn1" for name in remaining)
    out = model(x).numpy()
    assert np.abs(out - reference).max() <= 1e-5 * np.abs(reference).max()
    assert fold_bn(model) == []  # idempotent


def test_qat_reports_fp32_and_int8_miou_and_rebuilds(fp32, data, tmp_path):
    out = str(tmp_path / "qat")
    assert compress("--qat", "--config", QAT_CFG, "--weights", fp32, "--save-dir", out, "--data-root", data,
                    "--iters", "4") == 0
    best = os.path.join(out, "best_model")
    state = read_state(best)
    report = state["compression"]["qat"]["report"]
    assert report["fp32_miou"] == pytest.approx(read_state(fp32)["metrics"]["miou"], abs=1e-9)
    assert report["miou"] == state["metrics"]["miou"]
    assert report["delta_points"] == pytest.approx(100 * (report["miou"] - report["fp32_miou"]))
    assert json.load(open(os.path.join(out, "compress_report.json")))["qat"] == report

    model, meta, compression = load_checkpoint(best)[:3]
    assert meta["name"] == "ddrnet23_slim" and compression["fold_bn"] is True
    # one quantizer per tensor the deployed graph quantizes, with the ranges QAT learned
    ranges = point_ranges(model)
    assert list(ranges) == compression["qat"]["points"] and len(ranges) == N_POINTS
    # ReLU outputs (and pools of them) are unsigned: 256 steps over [0, range], as uint8 / oneDNN u8 store them
    assert [key for key, (_, unsigned) in ranges.items() if unsigned] == compression["qat"]["unsigned_points"]
    assert len(compression["qat"]["unsigned_points"]) == N_UNSIGNED and "conv1.0:out" in compression["qat"]["unsigned_points"]
    values = [value for value, _ in ranges.values()]
    assert all(value >= 0 for value in values) and sum(value > 0 for value in values) > N_POINTS // 2
    assert count(model, nn.BatchNorm2D) == N_PRE_ACTIVATION_BNS
    # the rebuilt model predicts what the fine-tuned one did when fit() measured it
    assert evaluate(model, val_set(data), progress=False)["miou"] == pytest.approx(report["miou"], abs=1e-9)

    # Paddle Inference INT8 (the Q/DQ program with every point's range, INT8 weights, run by oneDNN)
    # computes what the fake-quant model computes
    from ddrnet.export.parity import compare
    from ddrnet.runtime.backends import PaddleInferenceBackend

    image = val_set(data)[0][0][None]
    expected = model(paddle.to_tensor(image)).numpy()
    files = save_quant_inference_model(model, str(tmp_path / "int8" / "inference"),
                                       [paddle.static.InputSpec([1, 3, *HW], "float32", "x")])
    with open(files[0], "rb") as f:
        assert f.read().count(b"dequantize_linear") >= N_POINTS + N_CONVS  # every point and every weight
    got = PaddleInferenceBackend(*files, precision="int8").run(image)
    parity = compare([expected], [got], "none")
    assert parity["confident_agreement"] is None or parity["confident_agreement"] >= 0.99, parity
    assert model(paddle.randn([1, 3, 37, 75])).shape == [1, 19, 37, 75]  # still eager, any size
    eval_and_predict_weights(best, data, str(tmp_path))


def eval_and_predict_weights(weights: str, data: str, out: str) -> dict:
    """`ddrnet eval --weights` and `ddrnet predict --weights` on any checkpoint: eval reproduces the mIoU
    the training loop measured for it, predict writes one mask per val image. Returns eval's JSON."""
    result_path = os.path.join(out, "eval.json")
    assert main(["eval", "--weights", weights, "--data-root", data, "--json", result_path]) == 0
    with open(result_path) as f:
        result = json.load(f)
    assert result["miou"] == pytest.approx(read_state(weights)["metrics"]["miou"], abs=1e-9)
    masks = os.path.join(out, "masks")
    assert main(["predict", "--weights", weights, "--input", os.path.join(data, "leftImg8bit", "val"),
                 "--out", masks, "--format", "trainids"]) == 0
    assert len(os.listdir(masks)) == len(val_set(data))
    return result


def test_eval_and_predict_weights_of_an_fp32_checkpoint(fp32, data, tmp_path):
    eval_and_predict_weights(fp32, data, str(tmp_path))


def test_qat_resume_gives_the_uninterrupted_result(fp32, data, tmp_path):
    out = str(tmp_path / "qat")
    args = ["--qat", "--config", QAT_CFG, "--weights", fp32, "--save-dir", out, "--data-root", data, "--iters", "4"]
    assert compress(*args) == 0
    reference = paddle.load(os.path.join(out, "iter_000004", PARAMS))
    # as if killed after the iteration-2 checkpoint
    for name in ("iter_000004", "best_model", "compress_report.json"):
        path = os.path.join(out, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    assert compress(*args, "--resume") == 0
    resumed = paddle.load(os.path.join(out, "iter_000004", PARAMS))
    assert set(resumed) == set(reference)
    for key in reference:
        np.testing.assert_allclose(resumed[key].numpy(), reference[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    assert read_state(os.path.join(out, "best_model"))["compression"]["qat"]["report"]["iters"] == 4


def test_prune_cuts_params_and_macs_and_runs_at_odd_sizes(fp32, data, tmp_path):
    out = str(tmp_path / "prune")
    assert compress("--prune", "0.3", "--criterion", "l1", "--config", PRUNE_CFG, "--weights", fp32,
                    "--save-dir", out, "--data-root", data, "--iters", "2") == 0
    report = json.load(open(os.path.join(out, "compress_report.json")))["prune"]
    assert report["macs_reduction"] >= 0.25 and report["params_reduction"] >= 0.25
    assert report["before"]["miou"] == pytest.approx(read_state(fp32)["metrics"]["miou"], abs=1e-9)
    assert 0.0 <= report["after"]["miou_before_finetune"] <= 1.0 and 0.0 <= report["miou"] <= 1.0
    model, _, compression = load_checkpoint(os.path.join(out, "best_model"))[:3]
    assert model_cost(model, (256, 512)) == {k: report["after"][k] for k in ("params", "macs", "macs_input_hw")}
    assert model.head.conv.weight.shape[0] == 19  # the classes are never pruned
    # whole 16-channel blocks kept (the fast CPU kernels need them)
    assert report["channel_align"] == 16
    widths = {p.shape[0] for name, p in model.named_parameters() if len(p.shape) == 4}
    assert widths - {19} and all(w % 16 == 0 for w in widths - {19})
    assert model(paddle.randn([1, 3, 67, 131])).shape == [1, 19, 67, 131]


def test_fpgm_prunes_the_same_shapes_and_a_rebuilt_model_matches():
    paddle.seed(1)
    l1_model, fpgm_model = build_model("ddrnet23_slim"), build_model("ddrnet23_slim")
    fpgm_model.set_state_dict(l1_model.state_dict())
    l1_shapes = prune_model(l1_model, 0.3, "l1")
    fpgm_shapes = prune_model(fpgm_model, 0.3, "fpgm")
    assert fpgm_shapes == l1_shapes  # the ratio sets the shapes, the criterion which filters go
    exact = prune_model(build_model("ddrnet23_slim"), 0.3, "l1", channel_align=1)
    assert exact["conv1.0._conv.weight"][0] == 22 and l1_shapes["conv1.0._conv.weight"][0] == 16  # 32 * 0.7
    assert any(not np.array_equal(l1_model.state_dict()[k].numpy(), fpgm_model.state_dict()[k].numpy())
               for k in l1_shapes)
    rebuilt = build_model("ddrnet23_slim")
    resize_to_shapes(rebuilt, fpgm_shapes)
    rebuilt.set_state_dict(fpgm_model.state_dict())
    fpgm_model.eval()
    rebuilt.eval()
    x = paddle.randn([1, 3, 33, 65])
    np.testing.assert_allclose(rebuilt(x).numpy(), fpgm_model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_ptq_with_two_calibration_methods(fp32, data, tmp_path):
    out = str(tmp_path / "ptq")
    assert compress("--ptq", "--calib-dir", data, "--calib-num", "4", "--calib-method", "hist,abs_max",
                    "--config", QAT_CFG, "--weights", fp32, "--save-dir", out, "--data-root", data) == 0
    report = json.load(open(os.path.join(out, "ptq_report.json")))
    assert report["fp32_miou"] == pytest.approx(read_state(fp32)["metrics"]["miou"], abs=1e-9)
    assert report["calibration"]["count"] == 4
    assert set(report["methods"]) == {"hist", "abs_max"}
    for method, result in report["methods"].items():
        assert 0.0 <= result["miou"] <= 1.0
        with open(os.path.join(out, method, "model.pdmodel"), "rb") as f:
            assert b"quantize_linear" in f.read()  # a Q/DQ program, not the FP32 one
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]


def test_prune_then_qat_in_one_run(fp32, data, tmp_path):
    out = str(tmp_path / "pq")
    assert compress("--prune", "0.3", "--qat", "--config", PRUNE_CFG, "--weights", fp32, "--save-dir", out,
                    "--data-root", data, "--iters", "2") == 0
    report = json.load(open(os.path.join(out, "compress_report.json")))
    assert report["qat"]["fp32_miou"] == pytest.approx(report["prune"]["miou"], abs=1e-9)
    model, _, compression = load_checkpoint(os.path.join(out, "qat", "best_model"))[:3]
    assert {"prune", "fold_bn", "qat"} <= set(compression)
    assert model.conv1[0]._conv.weight.shape[0] < 32 and len(point_ranges(model)) == N_POINTS  # pruned, quantized
    assert model(paddle.randn([1, 3, 67, 131])).shape == [1, 19, 67, 131]
    for stage in ("prune", "qat"):  # a pruned and a pruned + QAT checkpoint
        os.makedirs(str(tmp_path / stage))
        eval_and_predict_weights(os.path.join(out, stage, "best_model"), data, str(tmp_path / stage))


def test_calibration_list_is_a_fixed_seed_train_sample(data, tmp_path):
    first = write_calib_list(data, 5, 0, str(tmp_path / "a.txt"))
    assert first == write_calib_list(data, 5, 0, str(tmp_path / "b.txt"))
    assert all("/leftImg8bit/train/" in p for p in first)
    assert calibration_images(str(tmp_path / "a.txt"), data_root=data) == first
    assert calibration_images(data, 5) == first  # the root itself picks the same sample
    val_list = tmp_path / "val.txt"
    val_list.write_text("leftImg8bit/val/" + os.listdir(os.path.join(data, "leftImg8bit", "val"))[0] + "/x.png\n")
    with pytest.raises(DDRNetError):
        calibration_images(str(val_list), data_root=data)


def test_synthetic_calibration_recipe_materialises_a_train_split(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("split: train\nseed: 0\ncount: 2\nsize: [32, 64]\n")
    out = str(tmp_path / "calib")
    assert main(["compress", "calib-synth", "--recipe", str(recipe), "--out", out]) == 0
    assert len(calibration_images(out)) == 2
    assert not os.path.exists(os.path.join(out, "leftImg8bit", "val"))


def _bad(capsys, tmp_path, *args: str) -> str:
    out = str(tmp_path / "never")
    assert compress(*args, "--save-dir", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddrnet compress: error:") and "\n" not in err
    assert not os.path.exists(out)
    return err


def test_bad_input_is_one_line_and_writes_nothing(fp32, data, tmp_path, capsys):
    base = ["--weights", fp32, "--data-root", data]
    assert "ddrnet23_slim" in _bad(capsys, tmp_path, "--qat", "--config", QAT_CFG, "--opt", "model.name=ddrnet23", *base)
    bare = str(tmp_path / "bare.pdparams")
    shutil.copy(os.path.join(fp32, PARAMS), bare)  # no state.json: the config's architecture is tried
    assert "do not fit" in _bad(capsys, tmp_path, "--qat", "--config", QAT_CFG, "--opt", "model.name=ddrnet23",
                                "--weights", bare, "--data-root", data)
    for ratio in ("1.5", "0", "-0.2"):
        assert "(0, 1)" in _bad(capsys, tmp_path, "--prune", ratio, "--config", PRUNE_CFG, *base)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no calibration images" in _bad(capsys, tmp_path, "--ptq", "--calib-dir", str(empty),
                                           "--config", QAT_CFG, *base)
