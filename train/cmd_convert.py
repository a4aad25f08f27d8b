"""Convert official PyTorch DDRNet weights (ImageNet-pretrained or Cityscapes, ydhongHIT/DDRNet) to .pdparams.

Writes OUT.pdparams and OUT.json, the sidecar that tells `ddrnet train / eval / export` the
architecture and that the model must follow PyTorch's padding rules (DAPPM average pools count the
padding, the stage-3 down-sampling conv pads 1 on each side) to reproduce the original outputs.

  ddrnet convert-weights DDRNet23s_imagenet.pth runs/ddrnet23s_imagenet.pdparams
  ddrnet convert-weights best_val_smaller.pth runs/ddrnet23s_city.pdparams --model ddrnet23_slim
"""
from __future__ import annotations

import argparse
from collections import Counter
from typing import List

ARCH_CHOICES = ("auto", "ddrnet23_slim", "ddrnet23", "ddrnet39")  # kept in step with model.ARCHS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="IN.pth", help="PyTorch checkpoint (state dict, possibly wrapped)")
    parser.add_argument("dst", metavar="OUT.pdparams", help="Paddle weights to write (+ OUT.json sidecar)")
    parser.add_argument("--model", default="auto", choices=ARCH_CHOICES,
                        help="architecture; auto tells it from the weight shapes (default)")
    parser.add_argument("--num-classes", type=int, default=19, help="classes of the segmentation head (19)")


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.train.convert import convert_torch_checkpoint

    if args.num_classes < 1:
        raise DDRNetError("--num-classes {}: must be at least 1".format(args.num_classes))

    report = convert_torch_checkpoint(args.src, args.dst, None if args.model == "auto" else args.model,
                                      args.num_classes)
    meta = report["model"]
    print("converted {} tensors -> {} ({}, {} classes{})".format(
        report["converted"], report["dst"], meta["name"], meta["num_classes"],
        ", aux head" if meta["aux_head"] else ""))
    missing = report["missing_keys"]
    print("missing:  {}".format("{} keys: {}".format(len(missing), _by_module(missing)) if missing else "none"))
    if missing:
        print("          (these layers keep their initialisation: expected for ImageNet weights)")
    for reason, keys in report["skipped"].items():
        print("skipped:  {} keys, {}: {}".format(len(keys), reason, _by_module(keys)))
    print("sidecar:  {} (PyTorch padding rules: avg_pool_exclusive=false, down3_same_padding=false)".format(
        report["sidecar"]))
    return 0


def _by_module(keys: List[str]) -> str:
    """"spp (55), head (11)": one line however many keys there are."""
    counts = Counter(k.split(".", 1)[0] for k in keys)
    return ", ".join("{} ({})".format(module, n) for module, n in counts.items())
