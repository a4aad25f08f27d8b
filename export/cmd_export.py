"""Export a checkpoint to Paddle Inference and ONNX, FP32 or INT8, with deploy.yaml (hashes, parity).

  Format            --format  files                                   INT8                           backends
  ----------------  --------  --------------------------------------  -----------------------------  ---------------------
  Paddle Inference  paddle    inference.pdmodel, inference.pdiparams  QAT checkpoint's Q/DQ program  paddle (CPU, GPU)
  ONNX              onnx      model.onnx                              --int8 (Q/DQ)                  onnxruntime, tensorrt,
                                                                                                     openvino (FP32)
                              model.openvino.onnx (--int8)            Q/DQ shaped for OpenVINO       openvino

The defaults are the fastest CPU path: the graph ends before the final upsample (--output-op
lowres_logits; the ddrnet runtime upsamples and argmaxes), and --int8 writes both CPU graphs of the same
quantization, model.onnx for onnxruntime (and TensorRT) and model.openvino.onnx for OpenVINO, which
`--backend openvino` / `auto` opens. --target picks one target's files and defaults (argmax for
tensorrt, jetson and paddle). INT8 from a QAT checkpoint (`ddrnet compress --qat`) carries the ranges
QAT learned into every format (no calibration); from FP32 weights the ONNX model is calibrated on
--calib-dir (PTQ).

Every export dir gets deploy.yaml: classes, palette, preprocessing (from the checkpoint's training
config), input shape, output op, the SHA-256 of each file and of the source checkpoint, tool
versions, and the parity measured against the Paddle model. The export fails below its gate: FP32
99.9 % argmax agreement; QAT INT8 99.5 % with the fake-quant model; PTQ INT8 99 % on the pixels
where FP32 is confident (raw agreement and, with a labelled --calib-dir, the mIoU delta recorded);
--accept-parity writes it anyway and records that.

examples:
  ddrnet export --weights runs/train/best --format paddle,onnx --input-shape 1,3,1024,2048 --out runs/export/fp32
  ddrnet export --weights runs/qat/best --format paddle,onnx --int8 --calib-dir data/cityscapes --out runs/export/int8
  ddrnet export --weights runs/train/best --input-shape dynamic --out runs/export/cpu   # bench --backend auto
  ddrnet export --weights model.pdparams --model-name ddrnet23 --input-shape dynamic --output-op softmax --out m
  ddrnet export --weights runs/train/best --target cpu --out bundles/cpu           # model.onnx + deploy.yaml only
  ddrnet export --weights runs/qat/best --int8 --calib-dir data/cityscapes --target jetson --out bundles/jetson
"""
from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ddrnet.export.targets import INT8_TARGETS, TARGETS

    parser.add_argument("--weights", "--model_path", dest="weights", required=True,
                        help="checkpoint folder or .pdparams (with its state.json / .json sidecar)")
    parser.add_argument("--config", help="training config (PaddleSeg's too): the architecture for bare .pdparams")
    parser.add_argument("--model-name", help="architecture when the weights carry no description "
                                             "(ddrnet23_slim, ddrnet23, ddrnet39; PaddleSeg's DDRNet_23 is ddrnet23)")
    parser.add_argument("--format", help="comma-separated: paddle, onnx (default: both; onnx with --int8)")
    parser.add_argument("--input-shape", default="1,3,1024,2048",
                        help="N,3,H,W (fixed; -1 for a dynamic dim) or 'dynamic' (default 1,3,1024,2048)")
    parser.add_argument("--input_shape", dest="input_shape_list", type=int, nargs=4, metavar=("N", "C", "H", "W"),
                        help="PaddleSeg's form of --input-shape")
    parser.add_argument("--output-op", "--output_op", dest="output_op",
                        choices=("argmax", "softmax", "none", "lowres_logits"),
                        help="lowres_logits: the graph stops before the final 8x upsample and the ddrnet runtime "
                             "upsamples + argmaxes exactly, only at class boundaries (the default, and for "
                             "--target cpu / openvino: faster on CPU, same labels); argmax: int32 labels in the "
                             "graph (the default for --target tensorrt / jetson / paddle: what TensorRT / C++ "
                             "users want); softmax: probabilities; none: logits")
    parser.add_argument("--out", "--save_dir", dest="out", required=True,
                        help="model dir to write (replaced if it is an exported model dir)")
    parser.add_argument("--opset", type=int, default=13, help="ONNX opset (default 13; TensorRT 8.x parses it)")
    parser.add_argument("--no-optimize", action="store_true",
                        help="keep paddle2onnx's graph as is (default: fold BN and constant shapes)")
    parser.add_argument("--int8", action="store_true",
                        help="INT8 (Q/DQ): a QAT checkpoint's own learned ranges (no calibration); FP32 weights are "
                             "calibrated on --calib-dir (PTQ)")
    parser.add_argument("--calib-dir", help="Cityscapes root (its train split is used) or a folder of images: PTQ "
                                            "calibration, and parity images (their labels give an mIoU delta)")
    parser.add_argument("--calib-num", type=int, default=32, help="calibration images (default 32)")
    parser.add_argument("--int8-target", choices=INT8_TARGETS,
                        help="only this INT8 graph (default: cpu and openvino, two files): cpu: model.onnx with "
                             "uint8 activations for onnxruntime's x86 VNNI kernels; openvino: model.openvino.onnx, "
                             "symmetric Q/DQ where OpenVINO fuses it; tensorrt: model.onnx, int8 with zero points "
                             "0, FP32 weights with Q -> DQ, FP32 biases (TensorRT 8.5+)")
    parser.add_argument("--target", choices=tuple(TARGETS),
                        help="a bundle of only what this target loads, e.g. cpu: model.onnx + deploy.yaml; "
                             "tensorrt / jetson: model.onnx (symmetric INT8 with --int8) and the engine defaults "
                             "for `ddrnet engine` (sets --format and --int8-target; see export/targets.py)")
    parser.add_argument("--parity-num", type=int, default=8, help="images for the parity check (default 8)")
    parser.add_argument("--accept-parity", action="store_true",
                        help="write the export even if it fails its parity gate; deploy.yaml records that it did")
    parser.add_argument("--sample-size", metavar="HxW",
                        help="calibration / parity image size for dynamic-shape exports (default 512x1024; "
                             "H,W works too)")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO lines, before paddle is imported
    from ddrnet.export.exporter import export_model
    from ddrnet.export.targets import copy_hint
    from ddrnet.export.targets import resolve as resolve_target
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.options import parse_hw

    if args.calib_num < 1 or args.parity_num < 1:
        raise DDRNetError("--calib-num and --parity-num must be at least 1")
    sample_hw = parse_hw(args.sample_size, "--sample-size") if args.sample_size else None
    if args.input_shape_list:  # PaddleSeg's --input_shape 1 3 1024 2048
        args.input_shape = ",".join(str(d) for d in args.input_shape_list)
    if args.config and not args.model_name:
        from ddrnet.train.config import load_config

        args.model_name = (load_config(args.config).get("model") or {}).get("name")
    formats = args.format or ("onnx" if args.int8 else "paddle,onnx")
    if args.target:  # refuses an explicit --format / --int8-target the target contradicts
        formats = ",".join(resolve_target(args.target, args.format and args.format.split(","), args.int8_target)[0])
    manifest = export_model(
        args.weights, args.out, formats=formats.split(","), input_shape=args.input_shape,
        output_op=args.output_op, opset=args.opset, model_name=args.model_name, optimize=not args.no_optimize,
        int8=args.int8, calib_dir=args.calib_dir, calib_num=args.calib_num, int8_target=args.int8_target,
        parity_num=args.parity_num, sample_hw=sample_hw, target=args.target, accept_parity=args.accept_parity)
    agreement = ", ".join("{} {:.3%}".format(key, p["argmax_agreement"]) for key, p in manifest["parity"].items())
    print("exported {} {} to {} ({}); argmax agreement with Paddle: {}".format(
        manifest["model_name"], manifest["precision"], args.out,
        ", ".join(e["path"] for e in manifest["files"]), agreement))
    if args.target:
        print(copy_hint(args.target, args.out))
    return 0
