"""Latency (pre-process / inference / post-process / total: mean, p50, p90, p99, min, max), FPS,
model size and, given a Cityscapes-layout folder, full-resolution mIoU of an exported model.
The raw backend run on a prepared tensor is timed in the same loop, so the runtime's overhead
(total / raw run) is in the report.

examples:
  ddrnet bench --model runs/export/fp32 --backend onnxruntime --device cpu --threads 2 --json bench.json
  ddrnet bench --model runs/export/int8 --data-root data/cityscapes --split val
  ddrnet bench --model runs/export/fp32 --backend tensorrt --device gpu --precision fp16
  ddrnet bench --all runs/export --plot bench.png     # every model dir and format, one table
  ddrnet bench --model runs/export/int8 --threads 1 --profile   # time per operator (onnxruntime)
"""
from __future__ import annotations

import argparse
from typing import Optional, Tuple

BACKEND_CHOICES = ("onnxruntime", "paddle", "tensorrt")


def _hw(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("expected HxW, e.g. 1024x2048, got {!r}".format(text)) from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError("HxW must be positive, got {!r}".format(text))
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", metavar="DIR", help="exported model dir (with deploy.yaml)")
    target.add_argument("--all", metavar="DIR",
                        help="bench every model dir (DIR itself or one level down) and every format in it")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="onnxruntime",
                        help="with --model (default: onnxruntime); --all picks backends from the formats")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"),
                        help="tensorrt engine precision (default: the model's)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the backend's)")
    parser.add_argument("--data-root", metavar="DIR", help="Cityscapes-layout folder: adds mIoU, "
                        "and latency is measured on its images")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-images", type=int, metavar="N", help="evaluate only the first N images")
    parser.add_argument("--iters", type=int, default=50, help="timed iterations (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default 5)")
    parser.add_argument("--frame", type=_hw, metavar="HxW",
                        help="synthetic frame size (default: the model's input size, 1024x2048 if dynamic)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="with --all: bar chart of latency per format")
    parser.add_argument("--profile", action="store_true",
                        help="with --model on onnxruntime (CPU): time per operator type and slowest nodes, "
                             "from onnxruntime's profiler, over the timed iterations")


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime import bench
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.metrics import write_json

    options = dict(threads=args.threads, precision=args.precision, data_root=args.data_root,
                   split=args.split, iters=args.iters, warmup=args.warmup, frame_hw=args.frame,
                   max_images=args.max_images)
    if args.model:
        if args.plot:
            raise DDRNetError("--plot needs --all")
        if args.profile:
            return _profile(args, bench, write_json)
        result = bench.run_bench(args.model, backend=args.backend, device=args.device, **options)
        print(bench.format_bench(result))
        _maybe_write(args.json, result, write_json)
        return 0
    if args.profile:
        raise DDRNetError("--profile needs --model")
    rows = bench.bench_all(args.all, device=args.device, **options)
    print(bench.format_all_table(rows))
    _maybe_write(args.json, {"results": rows}, write_json)
    if args.plot:
        if bench.plot_all(rows, args.plot):
            print("plot: " + args.plot)
        else:
            print("note: matplotlib is not installed, no plot written (pip install matplotlib)")
    return 1 if any("error" in r for r in rows) else 0


def _profile(args: argparse.Namespace, bench, write_json) -> int:
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.opprofile import format_op_profile, op_profile

    if args.backend != "onnxruntime" or args.device != "cpu":
        raise DDRNetError("--profile works with --backend onnxruntime --device cpu")
    subject = bench.open_subject(args.model, threads=args.threads, data_root=args.data_root, split=args.split,
                                 frame_hw=args.frame)
    tensor = subject.predictor.preprocess(subject.frames[0])
    result = op_profile(subject.predictor.backend.model_files[0], tensor, args.threads, args.iters, args.warmup)
    print(format_op_profile(result))
    _maybe_write(args.json, result, write_json)
    return 0


def _maybe_write(path: Optional[str], data: dict, write_json) -> None:
    if path:
        write_json(data, path)
        print("json: " + path)
