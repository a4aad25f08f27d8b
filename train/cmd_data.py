"""Data sets for the suite.

  ddrnet data synth --out DIR --train N --val M --size HxW --seed S [--workers K]

writes a synthetic road-scene set in the official Cityscapes layout (leftImg8bit/ and gtFine/
with _labelIds, _labelTrainIds and _color PNGs), usable wherever a Cityscapes root is expected.
The same seed and size always give the same frames; frame i does not depend on N or M.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    synth = actions.add_parser("synth", help="generate a synthetic Cityscapes-format road-scene set",
                               description="Generate a synthetic Cityscapes-format road-scene set.")
    synth.add_argument("--out", required=True, help="data root to write (created if missing)")
    synth.add_argument("--train", type=int, default=200, help="frames in the train split (default 200)")
    synth.add_argument("--val", type=int, default=50, help="frames in the val split (default 50)")
    synth.add_argument("--size", default="256x512", help="HEIGHTxWIDTH of every frame (default 256x512; H,W works too)")
    synth.add_argument("--seed", type=int, default=0, help="seed of the whole set (default 0)")
    synth.add_argument("--workers", type=int, default=1, help="processes to render with (default 1)")


def run(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)


def _synth(args: argparse.Namespace) -> int:
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.options import parse_hw
    from ddrnet.train.synth import generate

    size = parse_hw(args.size, "--size")
    if args.workers < 1:
        raise DDRNetError("--workers {}: need at least 1".format(args.workers))
    out = generate(args.out, args.train, args.val, size=size, seed=args.seed, workers=args.workers)
    print("wrote {} train + {} val frames of {}x{} to {}".format(args.train, args.val, size[0], size[1], out))
    return 0


ACTIONS = {"synth": _synth}
