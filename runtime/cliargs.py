"""The options every runtime command (bench, eval --model, predict --model, stream) shares, defined
once so they mean the same everywhere, and the Predictor they open."""
from __future__ import annotations

import argparse
import os
from typing import List

from ddrnet.runtime.backends import AUTO, BACKENDS, DEVICES
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.manifest import listed_entries, load_manifest, manifest_path
from ddrnet.runtime.options import check_threads
from ddrnet.runtime.signing import SIGNATURE_NAME, TRUST_ENV, check_trust

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """--backend, --device, --threads, --precision, --trust (for commands that open an exported model dir)."""
    parser.add_argument("--backend", choices=BACKENDS + (AUTO,), default="onnxruntime",
                        help="inference backend for an exported model (default onnxruntime); auto: the "
                             "fastest installed for this host (OpenVINO on x86 CPUs, TensorRT on GPUs)")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads, 1..cores (default: the backend's, all cores)")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="openvino: auto (BF16 where the CPU has AMX/AVX512-BF16, the default), fp32, bf16; "
                             "tensorrt: fp32, fp16, int8 (default: int8 for an INT8 model, else fp16); paddle: bf16; others run "
                             "the model as exported")
    parser.add_argument("--trust", metavar="KEY.pub",
                        help="run only bundles signed with this key's private half (ddrnet keygen / ddrnet "
                             "sign), not expired, not older than this device already ran; default: $"
                             + TRUST_ENV + " (unset: unauthenticated, with a warning)")


def check_runtime_options(args: argparse.Namespace) -> None:
    """Validate before any work (raises DDRNetError)."""
    check_threads(args.threads)
    check_trust(args.trust)


def model_inputs(model_dir: str) -> List[str]:
    """The files a runtime command reads from a model dir, for output checks (`fileio.refuse_overwrite`):
    deploy.yaml, every file it lists, the signature. Other files there (an eval.json) are not inputs.
    Only deploy.yaml when it cannot be read: opening the model then says why."""
    files = [manifest_path(model_dir), os.path.join(model_dir, SIGNATURE_NAME)]
    try:
        return files + [os.path.join(model_dir, e["path"]) for e in listed_entries(load_manifest(model_dir, False))]
    except DDRNetError:
        return files


def open_predictor(args: argparse.Namespace, model_dir: str, **kwargs):
    """The Predictor for `model_dir` with the runtime options of `args`."""
    from ddrnet.runtime import Predictor

    return Predictor(model_dir, backend=args.backend, device=args.device, threads=args.threads,
                     precision=args.precision, trust=args.trust, **kwargs)
