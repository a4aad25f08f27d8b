"""Training: PaddleSeg's configs and flags, the same first loss as PaddleSeg's trainer, OHEM, atomic
checkpoints, exact resume after SIGKILL, multi-process CPU, SyncBatchNorm (GPU)."""
import json
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
from ddrnet.train.model import build_model
from ddrnet.train.synth import generate

PADDLESEG_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paddleseg_configs")
FORMS = ("release-2.8", "develop")  # tests/paddleseg_configs/README.md


def paddleseg_config(form):
    return os.path.join(PADDLESEG_CONFIGS, form, "ddrnet", "ddrnet23_cityscapes_1024x1024_120k.yml")

TINY = ["--opt", "batch_size=2", "--opt", "num_workers=0", "--opt", "eval_interval=1000",
        "--opt", "train_dataset.transforms=[{type: ResizeStepScaling, min_scale_factor: 0.75, "
        "max_scale_factor: 1.25, scale_step_size: 0.25}, {type: RandomPaddingCrop, crop_size: [64, 64]}, "
        "{type: RandomHorizontalFlip}, {type: Normalize}]"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(str(tmp_path_factory.mktemp("data")), 8, 2, size=(64, 128), seed=3)


def train_cmd(data, save_dir, iters, *extra):
    return [sys.executable, "-m", "ddrnet", "train", "--config", "ddrnet23_slim_synthetic_cpu.yml",
            "--data-root", data, "--save-dir", save_dir, "--device", "cpu", "--no-eval", "--threads", "1",
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
    with pytest.raises(DDRNetError, match="expected key=value"):
        apply_opt(cfg, "model.=3", python_literal=True)
    apply_opt(cfg, "test.scales=0.75,1.0,1.25", python_literal=True)  # PaddleSeg's --opts: Python literals
    apply_opt(cfg, "model.type=DDRNet_23", python_literal=True)
    apply_opt(cfg, "train.seed=5")
    assert (cfg["test_config"]["scales"], cfg["model"]["name"], cfg["seed"]) == ((0.75, 1.0, 1.25), "ddrnet23", 5)


RECIPE = ("batch_size", "iters", "model", "optimizer", "lr_scheduler", "loss", "train_dataset", "val_dataset")


def test_paddleseg_configs_load_as_is_and_equal_the_bundled_reference():
    """Both forms of PaddleSeg's own DDRNet config (tests/paddleseg_configs) and the bundled reference read
    as the same recipe; the develop form's runtime.yml sections become the same keys as the CLI flags."""
    bundled = load_config("ddrnet23_cityscapes_1024x1024_120k.yml")
    release, develop = (load_config(paddleseg_config(form)) for form in FORMS)
    for key in RECIPE:
        assert release[key] == bundled[key] == develop[key], key
    assert (bundled["iters"], bundled["batch_size"]) == (120000, 3)
    assert bundled["model"] == {"name": "ddrnet23", "aux_head": False, "pretrained": release["model"]["pretrained"]}
    assert bundled["optimizer"] == {"type": "SGD", "momentum": 0.9, "weight_decay": 0.0005}  # SGD + momentum base
    assert bundled["train_dataset"]["transforms"][1] == {"type": "RandomPaddingCrop", "crop_size": [1024, 1024]}
    assert "precision" not in bundled and "amp" not in bundled  # FP32, AMP only with --precision fp16
    assert (develop["precision"], develop["keep_checkpoint_max"], develop["num_workers"]) == ("fp32", 5, 0)
    assert develop["test_config"]["scales"] == 1.0 and develop["do_eval"] is False
    slim = load_config("ddrnet23_slim_cityscapes_1024x1024_120k.yml")
    assert slim["model"] == {"name": "ddrnet23_slim", "aux_head": False, "pretrained": None}


def test_config_inheritance_follows_paddleseg(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yml").write_text("iters: 1\nbatch_size: 1\noptimizer: {type: SGD, momentum: 0.9}\n")
    (tmp_path / "b.yml").write_text("iters: 2\nlog_iters: 2\n")
    (tmp_path / "sub" / "c.yml").write_text(
        "_base_: ['../a.yml', '../b.yml']\nbatch_size: 3\noptimizer: {_inherited_: false, type: AdamW}\n"
        "lr_scheduler: {_inherited_: false, type: PolynomialDecay}\n")
    cfg = load_config(str(tmp_path / "sub" / "c.yml"))
    # the file wins over its bases, an earlier base over a later one; _inherited_ drops the base's mapping
    assert (cfg["batch_size"], cfg["iters"], cfg["log_iters"]) == (3, 1, 2)
    assert cfg["optimizer"] == {"type": "AdamW"}
    assert cfg["lr_scheduler"] == {"type": "PolynomialDecay"}  # no base had one: the mark is dropped too
    (tmp_path / "loop.yml").write_text("_base_: loop.yml\n")
    with pytest.raises(DDRNetError, match="_base_ cycle"):
        load_config(str(tmp_path / "loop.yml"))
    (tmp_path / "bad.yml").write_text("_base_: {a: 1}\n")
    with pytest.raises(DDRNetError, match="_base_ must be a file name or a list"):
        load_config(str(tmp_path / "bad.yml"))


def test_ohem_keeps_hard_pixels_and_at_least_min_kept():
    logits = paddle.zeros([1, 3, 2, 4])
    logits[0, 0, 0, :2] = 10.0  # two confident-correct pixels
    label = paddle.to_tensor(np.array([[[0, 0, 1, 1], [2, 255, 2, 1]]]))
    hard = OhemCrossEntropyLoss(thresh=0.7, min_kept=1)(logits, label)
    # only the 5 uncertain valid pixels (p = 1/3 each) count: their CE is log(3) (the mean divides by
    # the kept fraction + 1e-5, as PaddleSeg's)
    assert float(hard) == pytest.approx(np.log(3), rel=1e-4)
    easy_too = OhemCrossEntropyLoss(thresh=0.1, min_kept=6)(logits, label)
    assert 0 < float(easy_too) < np.log(3)  # min_kept pulls an easy pixel back in


@pytest.mark.parametrize("path", ["numpy", "paddle_ops"])  # CPU / GPU and AMP
@pytest.mark.parametrize("thresh,min_kept", [(0.7, 10000), (0.7, 500), (0.05, 2000), (0.9, 0), (0.7, 10 ** 6)])
def test_ohem_equals_paddleseg(thresh, min_kept, path):
    """The same loss and gradient as PaddleSeg's OhemCrossEntropyLoss, quirks included (min_kept 0 is
    plain cross-entropy; no selection when min_kept >= valid pixels)."""
    losses = pytest.importorskip("paddleseg.models.losses")
    rng = np.random.RandomState(min_kept % 97)
    labels = rng.randint(0, 19, (2, 48, 64))
    labels[:, :5] = 255
    label = paddle.to_tensor(labels.astype("int64"))
    scores = rng.randn(2, 19, 48, 64).astype("float32") * 3
    ours = OhemCrossEntropyLoss(thresh, min_kept)
    values = []
    for loss_fn in (losses.OhemCrossEntropyLoss(thresh, min_kept), ours if path == "numpy" else ours.paddle_ops):
        logits = paddle.to_tensor(scores, stop_gradient=False)
        loss = loss_fn(logits, label)
        loss.backward()
        values.append((float(loss), logits.grad.numpy()))
    (ref, ref_grad), (got, got_grad) = values
    assert got == pytest.approx(ref, rel=2e-6)
    np.testing.assert_allclose(got_grad, ref_grad, rtol=1e-4, atol=1e-9)


def test_kill_and_resume_gives_the_uninterrupted_result(data, tmp_path):
    iters = 12
    ref_dir = str(tmp_path / "ref")
    subprocess.run(train_cmd(data, ref_dir, iters), check=True, env=env(), capture_output=True, timeout=300)
    run_dir = str(tmp_path / "killed")
    rng = np.random.RandomState(0)
    reached = []
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
        # each run was killed (not finished or crashed) after it had written a newer checkpoint
        assert proc.wait() == -signal.SIGKILL, "run {} ended by itself before the kill".format(kill)
        reached.append(latest_checkpoint(run_dir)[1]["iteration"])
        assert reached[-1] > start, "run {} was killed before it wrote a checkpoint".format(kill)
    assert reached[-1] < iters  # so the last run below really resumes
    resumed = subprocess.run(train_cmd(data, run_dir, iters, "--resume"), env=env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from {} (iteration {})".format(
        os.path.join(run_dir, "iter_{:06d}".format(reached[-1])), reached[-1]) in resumed.stderr
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
    assert lines[-1].startswith("ddrnet train: error:") and "cannot write --save-dir (" in lines[-1]


def test_two_process_data_parallel_on_cpu(data, tmp_path):
    run_dir = str(tmp_path / "dist")
    # the README's form: the launcher runs the `ddrnet` console script (an executable) in each process
    ddrnet = os.path.join(os.path.dirname(sys.executable), "ddrnet")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(tmp_path / "log"), ddrnet] + train_cmd(data, run_dir, 2)[3:]
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    logs = [(tmp_path / "log" / "workerlog.{}".format(r)).read_text() for r in (0, 1)]
    assert all("done: iteration 2" in log for log in logs)
    # Paddle has no CPU sync_batch_norm kernel: said once per process, and training goes on
    assert all("BatchNorm statistics are per process" in log for log in logs)
    assert read_state(os.path.join(run_dir, "iter_000002"))["iteration"] == 2


def test_demo_trains_in_two_processes_with_the_config_batch_split(data, tmp_path):
    """`ddrnet demo` on two cores: paddle.distributed.launch, the config's batch of 8 as 4 per process."""
    from ddrnet.demo import train_in_processes, train_processes

    assert [train_processes(2, 8), train_processes(1, 8), train_processes(2, 7), train_processes(8, 8)] == [2, 1, 1, 2]
    save_dir = str(tmp_path / "run")
    summary = train_in_processes(2, save_dir, data, 8, iters=2)
    assert summary["iteration"] == 2 and summary["best"]["iteration"] == 2
    state = read_state(os.path.join(save_dir, "best_model"))
    assert state["config"]["batch_size"] == 4 and state["iteration"] == 2
    # the mIoU stored with the checkpoint is that checkpoint's own (BN statistics averaged over the
    # processes before the sharded evaluation and the save), not a mix of two processes' models
    from ddrnet.train.checkpoint import load_checkpoint
    from ddrnet.train.evaluate import evaluate
    from ddrnet.train.trainer import build_dataset

    alone = evaluate(load_checkpoint(os.path.join(save_dir, "best_model")).model,
                     build_dataset(state["config"], "val_dataset", data), progress=False)
    assert abs(alone["miou"] - state["metrics"]["miou"]) < 1e-6
    logs = [open(os.path.join(save_dir, "launch_log", "workerlog.{}".format(r))).read() for r in (0, 1)]
    assert all("done: iteration 2" in log for log in logs)
    with pytest.raises(DDRNetError, match=r"^training failed \(exit [1-9]\d*\); its log: .*launch_log/workerlog\.0$"):
        train_in_processes(2, str(tmp_path / "bad"), str(tmp_path / "no-data"), 8, iters=2)


def _bn_statistics(folder):
    return {k: v for k, v in params(folder).items() if k.endswith(("_mean", "_variance"))}


@pytest.mark.gpu
def test_sync_batchnorm_two_gpus_equal_one_gpu_with_the_doubled_batch(tmp_path):
    """Two processes of batch 2 with SyncBatchNorm update BN statistics exactly as one process of batch 4
    (lr 0: only the statistics move). Needs two CUDA GPUs: Paddle's sync_batch_norm is GPU-only."""
    if not paddle.is_compiled_with_cuda() or paddle.device.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    data = generate(str(tmp_path / "data"), 4, 1, size=(64, 128), seed=9)
    same = ["--opt", "train_dataset.transforms=[{type: Normalize}]", "--opt", "lr_scheduler.learning_rate=0.0",
            "--opt", "num_workers=0", "--no-eval", "--iters", "1"]

    def run(gpus, batch, name):
        save_dir = str(tmp_path / name)
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--gpus", gpus,
               "--log_dir", str(tmp_path / (name + "_log")), os.path.join(os.path.dirname(sys.executable), "ddrnet"),
               "train",
               "--config", "ddrnet23_slim_synthetic_cpu.yml", "--data-root", data,
               "--save-dir", save_dir, "--device", "gpu", "--batch_size", str(batch), *same]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return _bn_statistics(os.path.join(save_dir, "iter_000001"))

    two, one = run("0,1", 2, "two"), run("0", 4, "one")
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_paddleseg_pretrained_url_is_one_line_naming_the_file(data, tmp_path):
    """The reference config's `pretrained:` is a URL; nothing is downloaded (machines may be offline)."""
    out = subprocess.run([sys.executable, "-m", "ddrnet", "train", "--config", paddleseg_config("develop"),
                          "--data-root", data, "--save-dir", str(tmp_path / "run"), "--device", "cpu"],
                         env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ddrnet train: error: model.pretrained: https://") and "download model.pdparams" in last
    assert not os.path.exists(str(tmp_path / "run"))


@pytest.mark.parametrize("flags,message", [
    (["--precision", "fp16"], "--precision fp16: mixed precision needs a GPU"),
    (["--use_ema"], "--use_ema: not supported"),
    (["--data_format", "NHWC"], "--data_format NHWC: not supported"),
    (["--repeats", "2"], "--repeats 2: not supported; training is counted in iterations, raise --iters"),
    (["--resume_model", "nowhere"], "nowhere: not a complete training checkpoint"),
])
def test_paddleseg_flags_it_cannot_honour_are_one_line_errors(data, tmp_path, flags, message):
    out = subprocess.run(train_cmd(data, str(tmp_path / "run"), 2, *flags), env=env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("ddrnet train: error: " + message)


def test_paddleseg_train_flags_keep_their_meaning(data, tmp_path):
    """--seed --learning_rate --keep_checkpoint_max --save_interval --log_iters --num_workers --iters
    --batch_size land in the config; --resume_model continues exactly from that checkpoint."""
    first = str(tmp_path / "first")
    cmd = [sys.executable, "-m", "ddrnet", "train", "--config", "ddrnet23_slim_synthetic_cpu.yml",
           "--data-root", data, "--device", "cpu", "--no-eval", *TINY[2:],
           "--iters", "3", "--batch_size", "2", "--save_interval", "1", "--keep_checkpoint_max", "2", "--seed", "7",
           "--learning_rate", "0.001", "--log_iters", "1", "--num_workers", "0"]
    subprocess.run(cmd + ["--save_dir", first], check=True, env=env(), capture_output=True, timeout=300)
    assert sorted(f for f in os.listdir(first) if f.startswith("iter_")) == ["iter_000002", "iter_000003"]
    cfg = read_state(os.path.join(first, "iter_000003"))["config"]
    assert (cfg["seed"], cfg["lr_scheduler"]["learning_rate"], cfg["keep_checkpoint_max"]) == (7, 0.001, 2)
    second = str(tmp_path / "second")
    resumed = subprocess.run(cmd + ["--save_dir", second, "--resume_model", os.path.join(first, "iter_000002")],
                             env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from {} (iteration 2)".format(os.path.join(first, "iter_000002")) in resumed.stderr
    ref, got = params(os.path.join(first, "iter_000003")), params(os.path.join(second, "iter_000003"))
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _paddleseg_first_loss(config, data, weights, save_dir):
    """PaddleSeg's own trainer (`paddleseg.core.train`, components built from the YAML by its SegBuilder)
    for one iteration; the loss is read by wrapping its loss object."""
    from paddleseg.core import train as paddleseg_train
    from paddleseg.cvlibs import Config, SegBuilder

    from ddrnet.train.compat import set_cpu_threads

    paddle.set_device("cpu")
    set_cpu_threads(1)  # as `ddrnet train --threads 1` below: the same summation order
    cfg = Config(config, opts=SAME_RUN + ["train_dataset.dataset_root=" + data, "model.pretrained=" + weights])
    builder = SegBuilder(cfg)
    losses, seen = builder.loss, []
    inner = losses["types"][0]

    class Recorded(paddle.nn.Layer):
        def forward(self, logits, label):
            loss = inner(logits, label)
            seen.append(float(loss))
            return loss

    losses["types"] = [Recorded()]
    paddleseg_train(builder.model, builder.train_dataset, optimizer=builder.optimizer, save_dir=save_dir,
                    iters=cfg.iters, batch_size=cfg.batch_size, save_interval=1, log_iters=cfg.iters + 1,
                    num_workers=0, losses=losses, keep_checkpoint_max=1)
    return seen[0]


# one batch of the whole (2-image) train split, no random augmentation: both trainers see the same pixels
SAME_RUN = ["train_dataset.transforms=[{'type': 'Normalize'}]", "batch_size=2", "iters=1"]


def test_paddleseg_config_trains_with_paddleseg_first_loss(tmp_path):
    """PaddleSeg's DDRNet config (both forms) with `ddrnet train`: the same first-iteration loss as
    PaddleSeg's trainer on the same weights, data and seed."""
    pytest.importorskip("paddleseg")
    data = generate(str(tmp_path / "data"), 2, 1, size=(64, 128), seed=5)
    weights = str(tmp_path / "init.pdparams")
    paddle.seed(0)
    paddle.save(build_model("ddrnet23").state_dict(), weights)
    expected = _paddleseg_first_loss(paddleseg_config("release-2.8"), data, weights, str(tmp_path / "paddleseg"))
    for form in FORMS:
        save_dir = str(tmp_path / form)
        out = subprocess.run([sys.executable, "-m", "ddrnet", "train", "--config", paddleseg_config(form),
                              "--data-root", data, "--save_dir", save_dir, "--device", "cpu", "--no-eval",
                              "--threads", "1", "--opts", "model.pretrained=" + weights, *SAME_RUN],
                             env=env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        with open(os.path.join(save_dir, "train_summary.json")) as f:
            first = json.load(f)["loss"]["first"]
        assert first == pytest.approx(expected, rel=1e-6), form  # measured: 8e-8


def test_cpu_threads_take_the_free_cores(monkeypatch):
    """Paddle's one thread by default becomes the cores nobody else is using when training starts."""
    from ddrnet.train import trainer

    assert 0.0 <= trainer.busy_cores(0.05) <= (os.cpu_count() or 1)
    monkeypatch.setattr(trainer, "cpu_count", lambda: 4)
    monkeypatch.setattr(trainer.compat, "set_cpu_threads", lambda n: None)
    monkeypatch.setattr(trainer, "busy_cores", lambda: 0.2)
    assert trainer.use_cpu_threads(None, world=1) == 4
    monkeypatch.setattr(trainer, "busy_cores", lambda: 2.6)
    assert trainer.use_cpu_threads(None, world=1) == 1
    assert trainer.use_cpu_threads(None, world=2) == 2  # a distributed run's processes share the cores
    with pytest.raises(DDRNetError, match="--threads 0: must be at least 1"):
        trainer.use_cpu_threads(0, world=1)
