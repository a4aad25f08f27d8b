"""Export a checkpoint to Paddle Inference and ONNX, FP32 or INT8, with deploy.yaml (hashes, parity).

  Format            --format  files                                   INT8                           backends
  ----------------  --------  --------------------------------------  -----------------------------  ---------------------
  Paddle Inference  paddle    inference.pdmodel, inference.pdiparams  fake-quant, `ddrnet compress`  paddle (CPU, GPU)
  ONNX              onnx      model.onnx                              --int8 (Q/DQ, calibrated)      onnxruntime, tensorrt

Every export dir gets deploy.yaml: classes, palette, preprocessing, input shape, output op, the
SHA-256 of each file and of the source checkpoint, tool versions, and the parity measured against
the Paddle model (the export fails below 99.9 % argmax agreement for FP32, 99 % for INT8).

examples:
  ddrnet export --weights runs/train/best --format paddle,onnx --input-shape 1,3,1024,2048 --out runs/export/fp32
  ddrnet export --weights runs/qat/best --format onnx --int8 --calib-dir data/cityscapes --out runs/export/int8
  ddrnet export --weights model.pdparams --model-name ddrnet23 --input-shape dynamic --output-op softmax --out m
"""
from __future__ import annotations

import argparse
import os
from typing import Tuple


def _hw(text: str) -> Tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace("x", ",").split(","))
        if h > 0 and w > 0:
            return h, w
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("expected H,W (e.g. 512,1024), got {!r}".format(text))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True,
                        help="checkpoint folder or .pdparams (with its state.json / .json sidecar)")
    parser.add_argument("--model-name", help="architecture when the weights carry no description "
                                             "(ddrnet23_slim, ddrnet23, ddrnet39; PaddleSeg's DDRNet_23 is ddrnet23)")
    parser.add_argument("--format", help="comma-separated: paddle, onnx (default: both; onnx with --int8)")
    parser.add_argument("--input-shape", default="1,3,1024,2048",
                        help="N,3,H,W (fixed; -1 for a dynamic dim) or 'dynamic' (default 1,3,1024,2048)")
    parser.add_argument("--output-op", default="argmax", choices=("argmax", "softmax", "none", "lowres_logits"),
                        help="argmax: int32 labels in the graph (default; what TensorRT / C++ users want); "
                             "softmax: probabilities; none: logits; lowres_logits: the graph stops before the "
                             "final 8x upsample and the ddrnet runtime upsamples + argmaxes exactly, only at "
                             "class boundaries (faster on CPU, same labels)")
    parser.add_argument("--out", required=True, help="model dir to write (replaced if it is an exported model dir)")
    parser.add_argument("--opset", type=int, default=13, help="ONNX opset (default 13; TensorRT 8.x parses it)")
    parser.add_argument("--no-optimize", action="store_true",
                        help="keep paddle2onnx's graph as is (default: fold BN and constant shapes)")
    parser.add_argument("--int8", action="store_true", help="quantize the ONNX model (Q/DQ), calibrated on --calib-dir")
    parser.add_argument("--calib-dir", help="Cityscapes root (its train split is used) or a folder of images")
    parser.add_argument("--calib-num", type=int, default=32, help="calibration images (default 32)")
    parser.add_argument("--int8-target", default="cpu", choices=("cpu", "tensorrt"),
                        help="cpu: uint8 activations for x86 VNNI kernels (default); tensorrt: symmetric int8")
    parser.add_argument("--parity-num", type=int, default=8, help="images for the parity check (default 8)")
    parser.add_argument("--sample-size", type=_hw, metavar="H,W",
                        help="calibration / parity image size for dynamic-shape exports (default 512,1024)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO lines, before paddle is imported
    from ddrnet.export.exporter import export_model
    from ddrnet.runtime.errors import DDRNetError

    if args.calib_num < 1 or args.parity_num < 1:
        raise DDRNetError("--calib-num and --parity-num must be at least 1")
    formats = args.format or ("onnx" if args.int8 else "paddle,onnx")
    manifest = export_model(
        args.weights, args.out, formats=formats.split(","), input_shape=args.input_shape,
        output_op=args.output_op, opset=args.opset, model_name=args.model_name, optimize=not args.no_optimize,
        int8=args.int8, calib_dir=args.calib_dir, calib_num=args.calib_num, int8_target=args.int8_target,
        parity_num=args.parity_num, sample_hw=args.sample_size)
    agreement = ", ".join("{} {:.3%}".format(fmt, p["argmax_agreement"]) for fmt, p in manifest["parity"].items())
    print("exported {} {} to {} ({}); argmax agreement with Paddle: {}".format(
        manifest["model_name"], manifest["precision"], args.out,
        ", ".join(e["path"] for e in manifest["files"]), agreement))
    return 0
