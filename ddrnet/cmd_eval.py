"""Evaluate with the official Cityscapes rules (confusion-matrix mIoU, per-class IoU, pixel accuracy).

Three forms:
  ddrnet eval --weights runs/x/best_model --data-root D [--config C]      a checkpoint (Paddle)
  ddrnet eval --model export/fp32 --data-root D [--backend onnxruntime]  an exported model (runtime only)
  ddrnet eval --pred-dir P --data-root D --pred-format labelids          a folder of predictions (no model)
Classes with no ground truth and no prediction are null and left out of the mean.

PaddleSeg's val.py modes, for checkpoints and exported models (those exported with --output-op none,
softmax or lowres_logits) alike, with the same numbers as PaddleSeg (runtime/augment.py):
  --aug_eval --scales 0.75 1.0 1.25 --flip_horizontal [--flip_vertical]   multi-scale + flip
  --is_slide --crop_size 1024 512 --stride 768 384                        sliding window (W H)
Without these flags, the config's test_config (PaddleSeg's `test:` section) chooses the mode.
"""
from __future__ import annotations

import argparse

from ddrnet.runtime.augment import add_mode_arguments
from ddrnet.runtime.cliargs import add_runtime_options


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
    p.add_argument("--json", help="write the result JSON here (checked before the run; never onto an input)")
    add_runtime_options(p)  # for --model
    add_mode_arguments(p, "--aug_eval")
    seed = p.add_argument_group("other PaddleSeg val.py flags")
    seed.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE", help="override --config values")
    seed.add_argument("--num_workers", type=int, help="accepted; images are read in this process")
    seed.add_argument("--data_format", choices=("NCHW", "NHWC"), help="NCHW only here")
    seed.add_argument("--auc_roc", nargs="?", const=True, help=argparse.SUPPRESS)


def eval_mode(args: argparse.Namespace, cfg: dict):
    """The mode PaddleSeg's val.py would run: the config's test_config with the flags over it."""
    from ddrnet.runtime.augment import mode_from_args
    from ddrnet.runtime.errors import DDRNetError

    if args.auc_roc is not None:
        raise DDRNetError("--auc_roc: not supported (a binary-segmentation metric; Cityscapes has 19 classes)")
    if args.data_format == "NHWC":
        raise DDRNetError("--data_format NHWC: not supported; the model runs NCHW (leave the flag out)")
    return mode_from_args(args, cfg.get("test_config"))


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime.cliargs import check_runtime_options, model_inputs
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.fileio import check_output_file, write_json
    from ddrnet.runtime.metrics import evaluation_inputs, format_table

    check_runtime_options(args)
    check_output_file(args.json, "--json", inputs=[args.weights, args.config] + evaluation_inputs(
        args.data_root, args.pred_dir) + (model_inputs(args.model) if args.model else []))
    cfg = _config(args)
    mode = eval_mode(args, cfg)
    if args.pred_dir:
        from ddrnet.runtime.metrics import evaluate_prediction_dir

        if not args.data_root:
            raise DDRNetError("--pred-dir needs --data-root")
        result = evaluate_prediction_dir(args.pred_dir, args.data_root, args.split, args.pred_format)
    elif args.model:
        from ddrnet.runtime.cliargs import open_predictor
        from ddrnet.runtime.metrics import evaluate_model_dir

        if not args.data_root:
            raise DDRNetError("--model needs --data-root")
        predictor = open_predictor(args, args.model)
        if not mode.plain:
            from ddrnet.runtime.augment import augmented_predictor

            predictor = augmented_predictor(predictor, mode)
        result = evaluate_model_dir(predictor, args.data_root, args.split)
    else:
        result = _evaluate_weights(args, cfg, mode)
    if not mode.plain:
        result["eval_mode"] = mode.describe()
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    return 0


def _config(args: argparse.Namespace) -> dict:
    if not args.config:
        if args.opts:
            from ddrnet.runtime.errors import DDRNetError

            raise DDRNetError("--opts: overrides --config values; pass --config")
        return {}
    from ddrnet.train.config import load_config

    return load_config(args.config, paddleseg_opts=args.opts)


def _evaluate_weights(args: argparse.Namespace, cfg: dict, mode) -> dict:
    from ddrnet.train.checkpoint import load_checkpoint
    from ddrnet.train.evaluate import evaluate
    from ddrnet.train.trainer import build_dataset

    model_name = args.model_name or (cfg.get("model") or {}).get("name")
    checkpoint = load_checkpoint(args.weights, model_name=model_name)  # FP32, pruned, QAT, prune + QAT
    # without --config: the val set as the checkpoint was trained to see it (Normalize, label set)
    val_cfg = dict((cfg or checkpoint.config).get("val_dataset") or {}, mode=args.split)
    model = checkpoint.model
    return evaluate(model, build_dataset({"val_dataset": val_cfg}, "val_dataset", args.data_root), mode=mode)
