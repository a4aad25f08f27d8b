"""Build a bundle's TensorRT engine ahead of time, on the device (or an identical one), so that no
runtime command builds it at start-up (minutes on a Jetson).

The engine goes to BUNDLE/engines/ and into BUNDLE/deploy.yaml with its SHA-256, the GPU, its compute
capability, the TensorRT version, the precision and the optimisation profile; `bench`, `predict`,
`eval` and `stream --backend tensorrt --device gpu` then load it without rebuilding. Defaults come from
the bundle's target (`ddrnet export --target jetson|tensorrt`): FP16 for an FP32 model, INT8 for an INT8
Q/DQ model exported for TensorRT (never for an FP32 one), Jetson-sized profile and workspace on jetson.
The profile only matters for dynamic dims (an export with --input-shape dynamic or -1 dims).

examples:
  ddrnet engine --model bundles/jetson
  ddrnet engine --model bundles/tensorrt --precision fp32 --workspace 8192 --timing-cache trt.cache
  ddrnet engine --model bundles/dyn --max-batch 2 --max-size 1088x1920 --opt-size 1024x2048
"""
from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="bundle (exported model dir) with an ONNX model")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                        help="default: int8 for an INT8 Q/DQ model, else the target's (fp16)")
    parser.add_argument("--workspace", type=int, metavar="MB",
                        help="TensorRT builder workspace in MB (default: the target's; jetson 1024, tensorrt 4096)")
    for bound in ("min", "opt", "max"):
        parser.add_argument("--{}-batch".format(bound), type=int, metavar="N",
                            help="{} batch of the profile (dynamic batch only)".format(bound))
        parser.add_argument("--{}-size".format(bound), metavar="HxW",
                            help="{} input size of the profile (dynamic H/W only), e.g. 1024x2048".format(bound))
    parser.add_argument("--timing-cache", metavar="FILE",
                        help="TensorRT timing cache: read when present, written after the build (faster rebuilds)")


def profile_from_args(args: argparse.Namespace, base):
    """The bundle's profile with the bounds given on the command line replaced."""
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.options import parse_hw
    from ddrnet.runtime.tensorrt_backend import Profile

    dims = {}
    for bound in ("min", "opt", "max"):
        n, h, w = getattr(base, bound)
        batch = getattr(args, bound + "_batch")
        if batch is not None:
            if batch < 1:
                raise DDRNetError("--{}-batch {}: must be at least 1".format(bound, batch))
            n = batch
        size = getattr(args, bound + "_size")
        if size is not None:
            h, w = parse_hw(size, "--{}-size".format(bound))
        dims[bound] = (n, h, w)
    return Profile(**dims)


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.fileio import check_output_dir, check_output_file
    from ddrnet.runtime.manifest import MANIFEST_NAME, listed_entries, load_manifest, manifest_path, resolve_file
    from ddrnet.runtime.signing import SIGNATURE_NAME
    from ddrnet.runtime.tensorrt_backend import (ENGINE_DIR, Profile, build_engine, check_precision,
                                                 default_precision, target_settings)

    manifest = load_manifest(args.model, missing_ok=True)
    precision = args.precision or default_precision(manifest)
    check_precision(manifest, args.model, precision)
    base_profile, base_workspace = target_settings(manifest)
    profile = profile_from_args(args, base_profile)
    if args.workspace is not None and args.workspace < 16:
        raise DDRNetError("--workspace {}: give at least 16 MB".format(args.workspace))
    check_output_dir(os.path.join(args.model, ENGINE_DIR), "--model")
    check_output_file(os.path.join(args.model, MANIFEST_NAME), "--model")
    bundle_files = [resolve_file(args.model, e["path"]) for e in listed_entries(manifest)]
    check_output_file(args.timing_cache, "--timing-cache", inputs=bundle_files + [manifest_path(args.model)])
    entry = build_engine(args.model, manifest, precision, profile, args.workspace or base_workspace,
                         args.timing_cache)
    size_mb = os.path.getsize(os.path.join(args.model, entry["path"])) / 2 ** 20
    bounds = "profile: " + Profile.from_dict(entry["profile"]).describe() if entry["profile"] else "fixed input shape"
    print("built {} ({} engine, {:.1f} MB, {:.0f} s) for {} (compute {}), TensorRT {}; {}; recorded in {}".format(
        entry["path"], entry["precision"], size_mb, entry["build_s"], entry["gpu"], entry["compute_capability"],
        entry["tensorrt"], bounds, os.path.join(args.model, MANIFEST_NAME)))
    if os.path.isfile(os.path.join(args.model, SIGNATURE_NAME)):
        log.warning("%s: deploy.yaml changed, so its signature no longer matches: sign the bundle again (ddrnet "
                    "sign) before devices with --trust load it", os.path.join(args.model, SIGNATURE_NAME))
    return 0
