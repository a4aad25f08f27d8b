"""The options every runtime command (bench, eval --model, predict --model, stream) shares, defined
once so they mean the same everywhere, and the Predictor they open."""
from __future__ import annotations

import argparse
from typing import Optional

from ddrnet.runtime.backends import BACKENDS, DEVICES
from ddrnet.runtime.options import check_threads


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """--backend, --device, --threads (for commands that open an exported model dir)."""
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                        help="inference backend for an exported model (default onnxruntime)")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads, 1..cores (default: the backend's, all cores)")


def check_runtime_options(args: argparse.Namespace) -> None:
    """Validate before any work (raises DDRNetError)."""
    check_threads(args.threads)


def open_predictor(args: argparse.Namespace, model_dir: str, precision: Optional[str] = None, **kwargs):
    """The Predictor for `model_dir` with the runtime options of `args`."""
    from ddrnet.runtime import Predictor

    return Predictor(model_dir, backend=args.backend, device=args.device, threads=args.threads,
                     precision=precision, **kwargs)
