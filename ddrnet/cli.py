"""The `ddrnet` command. Subcommands live in their stage's folder and are imported only when
chosen, so `ddrnet --help` is instant and the runtime commands work in an install without Paddle.

Each subcommand module exposes `add_arguments(parser)` (argparse only, no heavy imports at module
level) and `run(args) -> int`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
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
    "engine": ("ddrnet.runtime.cmd_engine", "build a bundle's TensorRT engine ahead of time, on the device"),
    "keygen": ("ddrnet.runtime.cmd_keygen", "make the fleet's Ed25519 signing key pair (OUT.key, OUT.pub)"),
    "sign": ("ddrnet.runtime.cmd_sign", "sign a model bundle (deploy.yaml, version, expiry) for --trust"),
}


# commands that train or convert with Paddle: a runtime-only install (`pip install .[runtime]`) lacks it
# (`data synth` needs only numpy and OpenCV: it runs there too, e.g. to give `bench --data-root` a data set)
NEEDS_TRAIN_EXTRA = ("demo", "train", "convert-weights", "compress", "export")
TRAIN_EXTRA_HINT = "pip install -c constraints.txt -e '.[train]'"
# libraries whose own internal warnings are hidden from users (PYTHONWARNINGS turns them back on)
QUIET_MODULES = r"(paddle|paddleslim|paddle2onnx|pkg_resources|setuptools|_distutils_hack|visualdl)(\.|$)"
# what the train extra installs beyond the runtime: an ImportError naming one of them is a runtime-only install
TRAIN_EXTRA_MODULES = ("paddle", "paddleslim", "paddle2onnx", "onnx", "scipy", "sklearn")


def has_train_extra() -> bool:
    try:
        return importlib.util.find_spec("paddle") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as none
        return False


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
    train_extra = has_train_extra()
    for name, (module, help_line) in COMMANDS.items():
        if name in NEEDS_TRAIN_EXTRA and not train_extra:
            help_line += " [needs the train extra: {}]".format(TRAIN_EXTRA_HINT)
        p = sub.add_parser(name, help=help_line, description=help_line,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen and name in NEEDS_TRAIN_EXTRA and not train_extra:
            p.set_defaults(_run=_missing_train_extra)  # its options are unknown here: main() lets them pass
        elif name == chosen:
            mod = importlib.import_module(module)
            if mod.__doc__:
                p.description = mod.__doc__
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def _train_extra_message(missing: str) -> str:
    return "{} is not installed (a runtime-only install); Paddle commands and --weights need the train " \
           "extra: {}".format(missing, TRAIN_EXTRA_HINT)


def _missing_train_extra(args: argparse.Namespace) -> int:
    from ddrnet.runtime.errors import DDRNetError

    raise DDRNetError(_train_extra_message("paddle"))


def configure_logging(verbose: bool = False) -> None:
    """Library modules log to `ddrnet.*` loggers; the CLI shows their messages as plain lines on
    stderr. Ranks other than 0 of a distributed run only show warnings."""
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0") or 0)
    level = logging.DEBUG if verbose else logging.INFO if rank == 0 else logging.WARNING
    logger = logging.getLogger("ddrnet")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def main(argv: Optional[List[str]] = None) -> int:
    from ddrnet.runtime.errors import DDRNetError

    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO lines, set before paddle loads
    # Paddle, PaddleSlim and setuptools warn about their own internals on every run; a user sees
    # one-line errors and progress bars, not those. Warnings from anything else, ours included,
    # still show (PYTHONWARNINGS overrides all of this).
    if not sys.warnoptions:
        warnings.filterwarnings("ignore", module=QUIET_MODULES)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    configure_logging()
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown and getattr(args, "_run", None) is not _missing_train_extra:
        parser.error("unrecognized arguments: " + " ".join(unknown))  # what parse_args does
    try:
        return int(args._run(args) or 0)
    except ModuleNotFoundError as err:  # e.g. `predict --weights` (a checkpoint: Paddle) in a runtime install
        if (err.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        print("ddrnet {}: error: {}".format(args.command, _train_extra_message(err.name.split(".")[0])),
              file=sys.stderr)
        return 2
    except DDRNetError as err:
        # free the failed run's objects first: a progress bar redraws itself when released, and the
        # error must stay the last line the user sees
        traceback.clear_frames(err.__traceback__)
        print("ddrnet {}: error: {}".format(args.command, err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddrnet {}: interrupted".format(args.command), file=sys.stderr)
        return 130
