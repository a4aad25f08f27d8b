"""Training: config overrides, OHEM, atomic checkpoints, exact resume after SIGKILL, multi-process CPU."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from ddrnet.runtime.errors import DDRNetError
from ddrnet.train.checkpoint import PARAMS, latest_checkpoint, read_state
from ddrnet.train.config import apply_opt, load_config
from ddrnet.train.losses import OhemCrossEntropyLoss
from ddrnet.train.synth import generate

TINY = ["--opt", "batch_size=2", "--opt", "num_workers=0", "--opt", "eval_interval=1000",
        "--opt", "train_dataset.transforms=[{type: ResizeStepScaling, min_scale_factor: 0.75, "
        "max_scale_factor: 1.25, scale_step_size: 0.25}, {type: RandomPaddingCrop, crop_size: [64, 64]}, "
        "{type: RandomHorizontalFlip}, {type: Normalize}]"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(str(tmp_path_factory.mktemp("data")), 8, 2, size=(64, 128), seed=3)


def train_cmd(data, save_dir, iters, *extra):
    return [sys.executable, "-m", "ddrnet", "train", "--config", "ddrnet23_slim_synthetic_cpu.yml",
            "--data-root", data, "--save-dir", save_dir, "--device", "cpu", "--no-eval",
            "--opt", "iters={}".format(iters), "--opt", "save_interval=1", *TINY, *extra]


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", FLAGS_use_mkldnn="0")


def params(folder):
    return {k: v.numpy() for k, v in paddle.load(os.path.join(folder, PARAMS)).items()}


def test_opt_values_are_literals_never_evaluated():
    cfg = load_config("ddrnet23_slim_synthetic_cpu.yml", ["iters=7", "model.aux_head=true",
                                                         "lr_scheduler.learning_rate=1e-3"])
    assert cfg["iters"] == 7 and cfg["model"]["aux_head"] is True
    assert cfg["lr_scheduler"]["learning_rate"] == pytest.approx(1e-3)
    apply_opt(cfg, "name=__import__('os').system('false')")
    assert cfg["name"] == "__import__('os').system('false')"  # a plain string
    with pytest.raises(DDRNetError, match="expected key=value"):
        apply_opt(cfg, "iters")
    # the reference recipe, inherited through _base_
    ref = load_config("ddrnet23_cityscapes_1024x1024_120k.yml")
    assert (ref["iters"], ref["batch_size"], ref["model"]["name"]) == (120000, 3, "ddrnet23")
    assert ref["train_dataset"]["transforms"][1]["crop_size"] == [1024, 1024]
    assert ref["loss"]["types"][0] == {"type": "OhemCrossEntropyLoss", "thresh": 0.7, "min_kept": 10000}


def test_ohem_keeps_hard_pixels_and_at_least_min_kept():
    logits = paddle.zeros([1, 3, 2, 4])
    logits[0, 0, 0, :2] = 10.0  # two confident-correct pixels
    label = paddle.to_tensor(np.array([[[0, 0, 1, 1], [2, 255, 2, 1]]]))
    loss_all = OhemCrossEntropyLoss(thresh=0.7, min_kept=0)(logits, label)
    # only the 5 uncertain valid pixels (p = 1/3 each) count: their CE is log(3)
    assert float(loss_all) == pytest.approx(np.log(3), rel=1e-4)
    loss_min = OhemCrossEntropyLoss(thresh=0.0, min_kept=100)(logits, label)
    assert 0 < float(loss_min) < np.log(3)  # min_kept pulls the easy pixels back in


def test_kill_and_resume_gives_the_uninterrupted_result(data, tmp_path):
    iters = 8
    ref_dir = str(tmp_path / "ref")
    subprocess.run(train_cmd(data, ref_dir, iters), check=True, env=env(), capture_output=True, timeout=300)
    run_dir = str(tmp_path / "killed")
    rng = np.random.RandomState(0)
    for kill in range(3):
        proc = subprocess.Popen(train_cmd(data, run_dir, iters, "--resume"), env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = (latest_checkpoint(run_dir) or (None, {"iteration": 0}))[1]["iteration"]
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            found = latest_checkpoint(run_dir)
            if found and found[1]["iteration"] > start:
                time.sleep(rng.uniform(0, 0.6))  # somewhere in the next iteration or checkpoint write
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = subprocess.run(train_cmd(data, run_dir, iters, "--resume"), env=env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    final = os.path.join(run_dir, "iter_{:06d}".format(iters))
    ref, got = params(os.path.join(ref_dir, "iter_{:06d}".format(iters))), params(final)
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert read_state(final)["iteration"] == iters


def test_corrupt_checkpoint_is_never_picked_up(data, tmp_path):
    run_dir = str(tmp_path / "run")
    subprocess.run(train_cmd(data, run_dir, 3), check=True, env=env(), capture_output=True, timeout=300)
    newest = os.path.join(run_dir, "iter_000003")
    with open(os.path.join(newest, PARAMS), "r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage\x00")
    folder, state = latest_checkpoint(run_dir)
    assert state["iteration"] == 2 and folder.endswith("iter_000002")


def test_unwritable_save_dir_fails_before_training(data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = subprocess.run(train_cmd(data, str(blocker / "run"), 2), env=env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("ddrnet train: error:") and "save dir not writable" in lines[-1]


def test_two_process_data_parallel_on_cpu(data, tmp_path):
    run_dir = str(tmp_path / "dist")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(tmp_path / "log"), "-m"] + train_cmd(data, run_dir, 2)[2:]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    logs = [(tmp_path / "log" / "workerlog.{}".format(r)).read_text() for r in (0, 1)]
    assert all("done: iteration 2" in log for log in logs)
    assert read_state(os.path.join(run_dir, "iter_000002"))["iteration"] == 2
