"""The whole pipeline on a laptop in about ten minutes, no download needed:
synthetic Cityscapes-format data -> train DDRNet-23-slim on CPU -> evaluate -> predict a few images
-> quantization-aware training (INT8) -> export FP32 and INT8 to Paddle Inference and ONNX
-> benchmark every format (mIoU on the val split, latency, FPS) -> one summary table.

  ddrnet demo --workdir demo_out
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="demo_out", help="where data, checkpoints and exports go")
    p.add_argument("--train-images", type=int, default=300)
    p.add_argument("--val-images", type=int, default=30)
    p.add_argument("--size", default="256x512", help="synthetic image size HxW")
    p.add_argument("--iters", type=int, help="training iterations (default: the demo config's)")
    p.add_argument("--qat-iters", type=int, help="QAT fine-tuning iterations (default: the QAT config's)")
    p.add_argument("--bench-iters", type=int, default=20, help="timed iterations per format")
    p.add_argument("--threads", type=int, help="benchmark threads, 1..cores (default: all cores)")


class Steps:
    """Prints each step's title and keeps its wall time for the summary (the budget: 10 minutes)."""

    def __init__(self):
        self.starts = []  # type: list

    def __call__(self, title: str) -> None:
        print("\n== {} ==".format(title), flush=True)
        self.starts.append((title.split(" ", 1)[1], time.perf_counter()))

    def times(self) -> str:
        ends = [t for _, t in self.starts[1:]] + [time.perf_counter()]
        return ", ".join("{} {:.0f} s".format(title.split(" (")[0], end - t)
                         for (title, t), end in zip(self.starts, ends))


DEMO_CONFIG = "ddrnet23_slim_synthetic_cpu.yml"
TRAIN_PROCESSES = 2


def train_processes(cores: int, batch_size: int) -> int:
    """Data-parallel CPU processes for the demo's training: two wherever there are two cores. Paddle's CPU
    kernels use a second thread poorly (a step of batch 8: 1.42 s on one thread, 1.27 s on two) and a
    second process well (0.9 s for two processes of batch 4 with one thread each, the same global batch);
    more processes would leave BatchNorm too few images each."""
    return TRAIN_PROCESSES if cores >= TRAIN_PROCESSES and batch_size % TRAIN_PROCESSES == 0 else 1


def train_in_processes(processes: int, save_dir: str, data: str, batch_size: int, iters: Optional[int]) -> dict:
    """`ddrnet train` of the demo config under paddle.distributed.launch, `batch_size` split among the
    processes (BatchNorm statistics stay per process on CPU); returns its train_summary.json. Rank 0's
    output (its progress bar) is relayed here; the launcher's own goes to launch_log/launch.log."""
    from ddrnet.runtime.errors import DDRNetError

    log_dir = os.path.join(save_dir, "launch_log")
    os.makedirs(log_dir, exist_ok=True)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")  # a .py: run by this Python
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(processes),
           "--log_dir", log_dir, script, "train", "--config", DEMO_CONFIG, "--data-root", data,
           "--save-dir", save_dir, "--device", "cpu", "--batch_size", str(batch_size // processes)]
    cmd += ["--iters", str(iters)] if iters else []
    rank0 = os.path.join(log_dir, "workerlog.0")
    with open(os.path.join(log_dir, "launch.log"), "wb") as launch_log:
        proc = subprocess.Popen(cmd, stdout=launch_log, stderr=subprocess.STDOUT)
        relay = _Relay(rank0)
        while proc.poll() is None:
            relay.copy()
            time.sleep(0.5)
        relay.copy()
    if proc.returncode != 0:
        raise DDRNetError("training failed (exit {}); its log: {}".format(proc.returncode, rank0))
    with open(os.path.join(save_dir, "train_summary.json")) as f:
        return json.load(f)


class _Relay:
    """Copies what a growing log file gained since the last call to stderr (a progress bar's carriage
    returns included, so it redraws in place)."""

    def __init__(self, path: str) -> None:
        self.path, self.offset = path, 0

    def copy(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:  # the launcher has not started rank 0 yet
            return
        self.offset += len(data)
        sys.stderr.write(data.decode("utf-8", "replace"))  # a split multi-byte character: one placeholder
        sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime.fileio import check_output_dir
    from ddrnet.runtime.options import check_threads, cpu_count, parse_hw
    from ddrnet.train.synth import check_out, generate

    h, w = parse_hw(args.size, "--size")  # every argument checked before anything is written
    threads = check_threads(args.threads) or cpu_count()
    check_output_dir(args.workdir, "--workdir")
    data = os.path.join(args.workdir, "data")
    check_out(data)
    start = time.perf_counter()
    step = Steps()
    step("1/7 synthetic Cityscapes-format data")
    generate(data, args.train_images, args.val_images, size=(h, w), seed=0, workers=cpu_count())

    from ddrnet.train.config import load_config
    from ddrnet.train.trainer import train

    cfg = load_config(DEMO_CONFIG)
    if args.iters:
        cfg["iters"] = args.iters
    batch_size = int(cfg["batch_size"])
    processes = train_processes(cpu_count(), batch_size)
    step("2/7 train ddrnet23_slim on CPU ({} process{} of batch {})".format(
        processes, "es" if processes > 1 else "", batch_size // processes))
    save_dir = os.path.join(args.workdir, "train")
    if processes > 1:
        summary = train_in_processes(processes, save_dir, data, batch_size, args.iters)
    else:
        summary = train(cfg, save_dir, data_root=data, device="cpu")
    best = os.path.join(save_dir, "best_model")

    step("3/7 the best checkpoint on the val split (the trainer's evaluation, stored with it)")
    from ddrnet.runtime.metrics import format_table
    from ddrnet.train.checkpoint import read_state

    result = read_state(best)["metrics"]
    print(format_table(result))

    step("4/7 predict a few val images")
    from ddrnet.cmd_predict import list_images
    from ddrnet.runtime.imageio import read_image, write_image
    from ddrnet.train.predict import checkpoint_predictor

    predictor = checkpoint_predictor(best)
    pred_dir = os.path.join(args.workdir, "pred")
    for path in list_images(os.path.join(data, "leftImg8bit", "val"))[:4]:
        bgr = read_image(path)
        write_image(os.path.join(pred_dir, os.path.basename(path)), predictor.overlay(bgr, predictor(bgr)))
    print("overlays -> {}".format(pred_dir))

    step("5/7 quantization-aware training (PaddleSlim, BN folded, INT8)")
    from ddrnet.compress.pipeline import load_compress_config, run_qat

    qat_dir = os.path.join(args.workdir, "qat")
    qat = run_qat(load_compress_config("qat_ddrnet23_slim_synthetic_cpu.yml"), best, qat_dir, data_root=data,
                  iters=args.qat_iters)

    step("6/7 export FP32 and INT8 to Paddle Inference and ONNX")
    from ddrnet.export.exporter import export_model

    exports = os.path.join(args.workdir, "export")
    shape = (1, 3, h, w)
    export_model(best, os.path.join(exports, "fp32"), input_shape=shape)
    export_model(os.path.join(qat_dir, "best_model"), os.path.join(exports, "int8"), input_shape=shape,
                 int8=True, calib_dir=data)  # calibrates on the train split

    step("7/7 benchmark every exported format on the val split")
    from ddrnet.runtime.bench import bench_all, format_all_table, plot_all

    rows = bench_all(exports, threads=threads, data_root=data, iters=args.bench_iters)
    plot_all(rows, os.path.join(args.workdir, "bench.png"))

    print("\n== summary ==")
    print("train: {:.1f} images/s, loader wait {:.0%}".format(summary["images_per_s"],
                                                              summary["loader_wait_fraction"]))
    print("val mIoU: FP32 (Paddle checkpoint) {:.4f} | QAT INT8 (fake-quant, Paddle) {:.4f} | {:+.2f} points".format(
        result["miou"], qat["miou"], 100 * (qat["miou"] - result["miou"])))
    print(format_all_table(rows))
    print("steps: " + step.times())
    print("demo finished in {:.1f} min; everything is under {}".format((time.perf_counter() - start) / 60,
                                                                       args.workdir))
    return 0
