"""Latency (pre-process / inference / post-process / total: mean, p50, p90, p99, min, max), FPS
(fps_mean = 1000 / mean, fps_p50 = 1000 / p50), model size and, given a Cityscapes-layout folder,
full-resolution mIoU of an exported model. The raw backend run on a prepared tensor is timed in the
same loop, so the runtime's overhead (total / raw run) is in the report.

examples:
  ddrnet bench --model runs/export/fp32 --backend auto --threads 2 --frame 1024x2048 --json bench.json
  ddrnet bench --model runs/export/fp32 --backend openvino --precision fp32
  ddrnet bench --model runs/export/int8 --data-root data/cityscapes --split val
  ddrnet bench --model runs/export/fp32 --backend tensorrt --device gpu --precision fp16
  ddrnet bench --all runs/export --plot bench.png     # every model dir and backend, one table
  ddrnet bench --model runs/export/int8 --threads 1 --profile   # time per operator (onnxruntime)
  ddrnet bench --model runs/export/int8 --backend openvino --profile   # per layer and kernel (OpenVINO)
"""
from __future__ import annotations

import argparse
from typing import Optional


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ddrnet.runtime.cliargs import add_runtime_options

    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", metavar="DIR", help="exported model dir (with deploy.yaml)")
    target.add_argument("--all", metavar="DIR",
                        help="bench every model dir (DIR itself or one level down) with every backend that runs "
                             "it (--backend is ignored; --precision goes to tensorrt)")
    add_runtime_options(parser)
    parser.add_argument("--data-root", metavar="DIR", help="Cityscapes-layout folder: adds mIoU, "
                        "and latency is measured on its images")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-images", type=int, metavar="N", help="evaluate only the first N images")
    parser.add_argument("--iters", type=int, default=50, help="timed iterations (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default 5)")
    parser.add_argument("--frame", metavar="HxW",
                        help="synthetic frame size (default: the model's input size, 1024x2048 if dynamic)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="with --all: bar chart of latency per format")
    parser.add_argument("--profile", action="store_true",
                        help="with --model on onnxruntime or openvino (CPU): time per operator type and slowest "
                             "nodes, from the backend's profiler, over the timed iterations")


def _check(args: argparse.Namespace) -> None:
    """Every argument, before any model is opened (raises DDRNetError)."""
    from ddrnet.runtime.bench import find_model_dirs
    from ddrnet.runtime.cliargs import check_runtime_options, model_inputs
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.fileio import check_output_file
    from ddrnet.runtime.metrics import evaluation_inputs
    from ddrnet.runtime.options import parse_hw

    check_runtime_options(args)
    if args.iters < 1 or args.warmup < 0:
        raise DDRNetError("--iters must be >= 1 and --warmup >= 0")
    if args.max_images is not None and args.max_images < 1:
        raise DDRNetError("--max-images {}: must be at least 1".format(args.max_images))
    if args.plot and not args.all:
        raise DDRNetError("--plot needs --all")
    if args.profile and not args.model:
        raise DDRNetError("--profile needs --model")
    if args.profile and (args.backend not in ("onnxruntime", "openvino") or args.device != "cpu"):
        raise DDRNetError("--profile works with --backend onnxruntime or openvino, --device cpu")
    args.frame = parse_hw(args.frame, "--frame") if args.frame else None
    # what the run reads (not the last run's bench.json beside it, which may be replaced)
    model_dirs = [args.model] if args.model else find_model_dirs(args.all)
    inputs = [f for d in model_dirs for f in model_inputs(d)] + evaluation_inputs(args.data_root)
    check_output_file(args.json, "--json", inputs=inputs)
    check_output_file(args.plot, "--plot", inputs=inputs + [args.json])


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime import bench

    _check(args)
    options = dict(threads=args.threads, precision=args.precision, data_root=args.data_root,
                   split=args.split, iters=args.iters, warmup=args.warmup, frame_hw=args.frame,
                   max_images=args.max_images, trust=args.trust)
    if args.profile:
        return _profile(args, bench)
    if args.model:
        result = bench.run_bench(args.model, backend=args.backend, device=args.device, **options)
        print(bench.format_bench(result))
        _maybe_write(args.json, result)
        return 0
    rows = bench.bench_all(args.all, device=args.device, **options)
    print(bench.format_all_table(rows))
    _maybe_write(args.json, {"results": rows})
    if args.plot:
        if bench.plot_all(rows, args.plot):
            print("plot: " + args.plot)
        else:
            print("note: matplotlib is not installed, no plot written (pip install matplotlib)")
    return 1 if any("error" in r for r in rows) else 0


def _profile(args: argparse.Namespace, bench) -> int:
    from ddrnet.runtime.opprofile import format_op_profile, op_profile, openvino_op_profile

    # opened on the profiled backend: the file it opens (an INT8 export's own OpenVINO graph) and its input
    target = bench.open_target(args.model, args.backend, threads=args.threads, precision=args.precision,
                               data_root=args.data_root, split=args.split, frame_hw=args.frame, trust=args.trust)
    path = target.predictor.backend.model_files[0]
    if args.backend == "openvino":
        predictor = target.predictor
        result = openvino_op_profile(path, target.tensor, args.threads, args.iters, args.warmup,
                                     args.precision or "auto",
                                     predictor.manifest["input"] if predictor.backend.takes_frames else None)
    else:
        result = op_profile(path, target.tensor, args.threads, args.iters, args.warmup)
    print(format_op_profile(result))
    _maybe_write(args.json, result)
    return 0


def _maybe_write(path: Optional[str], data: dict) -> None:
    from ddrnet.runtime.fileio import write_json

    if path:
        write_json(data, path)
        print("json: " + path)
