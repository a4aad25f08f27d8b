"""The `ddrnet` command. Subcommands live in their stage's folder and are imported only when
chosen, so `ddrnet --help` is instant and the runtime commands work in an install without Paddle.

Each subcommand module exposes `add_arguments(parser)` (argparse only, no heavy imports at module
level) and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from typing import List, Optional

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("ddrnet.demo", "synthetic data -> train -> eval -> QAT -> export -> bench, one table"),
    "data": ("ddrnet.train.cmd_data", "generate a synthetic Cityscapes-format data set"),
    "train": ("ddrnet.train.cmd_train", "train DDRNet from a YAML config (multi-GPU via paddle.distributed.launch)"),
    "eval": ("ddrnet.cmd_eval", "mIoU of a checkpoint, an exported model, or a folder of predictions"),
    "predict": ("ddrnet.cmd_predict", "segment images with a checkpoint or an exported model"),
    "convert-weights": ("ddrnet.train.cmd_convert", "convert official PyTorch DDRNet weights to .pdparams"),
    "compress": ("ddrnet.compress.cmd_compress", "quantization-aware training, pruning, post-training quantization"),
    "export": ("ddrnet.export.cmd_export", "export to Paddle Inference and ONNX (FP32 / INT8) with deploy.yaml"),
    "bench": ("ddrnet.runtime.cmd_bench", "latency, FPS and mIoU of an exported model on a backend"),
    "stream": ("ddrnet.runtime.cmd_stream", "segment live camera / RTSP / MJPEG streams, video files or globs"),
}


def build_parser(argv: List[str]) -> argparse.ArgumentParser:
    from ddrnet import __version__

    parser = argparse.ArgumentParser(
        prog="ddrnet",
        description="DDRNet real-time semantic segmentation: train, compress, export, deploy.",
    )
    parser.add_argument("--version", action="version", version="ddrnet " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Only the chosen subcommand's module is imported; for plain `ddrnet --help` none are.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_line) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            mod = importlib.import_module(module)
            if mod.__doc__:
                p.description = mod.__doc__
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from ddrnet.runtime.errors import DDRNetError

    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO lines, set before paddle loads
    # Paddle, PaddleSlim and setuptools warn about their own internals on every run; a user sees
    # one-line errors and progress bars, not those (PYTHONWARNINGS still turns them back on).
    if not sys.warnoptions:
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except DDRNetError as err:
        # free the failed run's objects first: a progress bar redraws itself when released, and the
        # error must stay the last line the user sees
        traceback.clear_frames(err.__traceback__)
        print("ddrnet {}: error: {}".format(args.command, err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddrnet {}: interrupted".format(args.command), file=sys.stderr)
        return 130
