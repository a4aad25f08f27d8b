"""Evaluate with the official Cityscapes rules (confusion-matrix mIoU, per-class IoU, pixel accuracy).

Three forms:
  ddrnet eval --weights runs/x/best_model --data-root D [--config C]      a checkpoint (Paddle)
  ddrnet eval --model export/fp32 --data-root D [--backend onnxruntime]  an exported model (runtime only)
  ddrnet eval --pred-dir P --data-root D --pred-format labelids          a folder of predictions (no model)
Classes with no ground truth and no prediction are null and left out of the mean.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", "--model_path", dest="weights", help="checkpoint folder or .pdparams")
    src.add_argument("--model", help="exported model folder (with deploy.yaml)")
    src.add_argument("--pred-dir", help="folder of prediction PNGs named like the Cityscapes images")
    p.add_argument("--data-root", help="Cityscapes-layout folder (default: the config's val dataset_root)")
    p.add_argument("--split", default="val")
    p.add_argument("--config", help="training config (model name, val data) for --weights")
    p.add_argument("--model-name", help="architecture for bare .pdparams (e.g. PaddleSeg's: ddrnet23)")
    p.add_argument("--pred-format", choices=("labelids", "trainids"), default="labelids")
    p.add_argument("--backend", default="onnxruntime", help="for --model: onnxruntime, paddle or tensorrt")
    p.add_argument("--device", default="cpu", help="cpu or gpu")
    p.add_argument("--json", help="write the result JSON here")


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.metrics import format_table, write_json

    if args.pred_dir:
        from ddrnet.runtime.metrics import evaluate_prediction_dir

        if not args.data_root:
            raise DDRNetError("--pred-dir needs --data-root")
        result = evaluate_prediction_dir(args.pred_dir, args.data_root, args.split, args.pred_format)
    elif args.model:
        from ddrnet.runtime import Predictor
        from ddrnet.runtime.metrics import evaluate_model_dir

        if not args.data_root:
            raise DDRNetError("--model needs --data-root")
        predictor = Predictor(args.model, backend=args.backend, device=args.device)
        result = evaluate_model_dir(predictor, args.data_root, args.split)
    else:
        result = _evaluate_weights(args)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    return 0


def _evaluate_weights(args: argparse.Namespace) -> dict:
    from ddrnet.train.checkpoint import load_model
    from ddrnet.train.config import load_config
    from ddrnet.train.evaluate import evaluate
    from ddrnet.train.trainer import build_dataset

    cfg = load_config(args.config) if args.config else {}
    model_name = args.model_name or (cfg.get("model") or {}).get("name")
    model, _ = load_model(args.weights, model_name=model_name)
    val_cfg = dict(cfg.get("val_dataset") or {}, mode=args.split)
    return evaluate(model, build_dataset({"val_dataset": val_cfg}, "val_dataset", args.data_root))
