"""Compress a trained DDRNet: quantization-aware training (Paddle), channel pruning and PTQ (PaddleSlim).

  ddrnet compress --qat --config qat_ddrnet23_slim_synthetic_cpu.yml --weights runs/train/best_model --save-dir runs/qat
  ddrnet compress --prune 0.3 --criterion l1 --config prune_ddrnet23_slim_synthetic_cpu.yml --weights W --save-dir runs/prune
  ddrnet compress --prune 0.3 --qat --config prune_ddrnet23_slim_synthetic_cpu.yml --weights W --save-dir runs/pq
  ddrnet compress --ptq --calib-dir data/cityscapes --calib-method hist,kl --config C --weights W --save-dir runs/ptq
  ddrnet compress --calib-list --data-root data/cityscapes --num 500 --seed 0 --out calib_data/cityscapes_train_500.txt
  ddrnet compress --calib-synth --out demo_out/calib     # the demo's synthetic calibration set

QAT and pruning fine-tune with the training loop (atomic checkpoints, --resume) and write FP32 vs
compressed figures into best_model/state.json and SAVE_DIR/compress_report.json; --prune R --qat
prunes into SAVE_DIR/prune and quantizes that into SAVE_DIR/qat. PTQ writes one Paddle INT8 model
per calibration method under SAVE_DIR/<method>/ and SAVE_DIR/ptq_report.json. Configs: the bundled
compress/configs/*.yml (by name) or any YAML whose `_base_` is a training config.

One mode flag per run; --data-root always names the Cityscapes-layout data (what QAT / pruning
fine-tune and evaluate on, what --calib-list samples). The former sub-action spellings
`compress calib-list ...` and `compress calib-synth ...` still work.
"""
from __future__ import annotations

import argparse
import os

CALIB_METHODS = "kl|hist|mse|avg|abs_max"
LEGACY_ACTIONS = ("calib-list", "calib-synth")


def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_argument_group("what to do (one mode; --prune and --qat combine: prune, fine-tune, then QAT)")
    mode.add_argument("--qat", action="store_true", help="quantization-aware training (INT8, the quantization the export ships)")
    mode.add_argument("--prune", type=float, metavar="RATIO", help="prune this fraction of channels, in (0, 1)")
    mode.add_argument("--ptq", action="store_true", help="post-training quantization (PaddleSlim static PTQ)")
    mode.add_argument("--calib-list", action="store_true",
                      help="write a fixed-seed list of --num train images of --data-root to --out")
    mode.add_argument("--calib-synth", action="store_true",
                      help="render the synthetic calibration set (the demo's) as a Cityscapes train split in --out")
    p.add_argument("action", nargs="?", choices=LEGACY_ACTIONS, help=argparse.SUPPRESS)
    p.add_argument("--config", help="compression config (bundled name or path)")
    p.add_argument("--weights", help="checkpoint folder or .pdparams to compress")
    p.add_argument("--save-dir", "--save_dir", dest="save_dir", help="output folder")
    p.add_argument("--criterion", choices=("l1", "fpgm"), help="pruning criterion (default: the config's, l1)")
    p.add_argument("--iters", type=int, help="fine-tuning iterations (each stage; default: the config's)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--data-root", dest="data_root",
                   help="Cityscapes-layout folder: the data to fine-tune and evaluate on (overrides the config's "
                        "dataset_root); with --calib-list, the one to sample")
    p.add_argument("--calib-dir", dest="calib_dir",
                   help="PTQ calibration: Cityscapes root (train split), image folder or list file")
    p.add_argument("--calib-method", dest="calib_method", default="hist",
                   help="PTQ calibration method(s), comma-separated: " + CALIB_METHODS)
    p.add_argument("--calib-num", dest="calib_num", type=int, help="calibration images (fixed-seed sample)")
    p.add_argument("--qat-weights", dest="qat_weights", help="PTQ: a QAT checkpoint to compare with")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--device", help="cpu or gpu (default: Paddle's)")
    calib = p.add_argument_group("--calib-list / --calib-synth")
    calib.add_argument("--out", help="the list file (--calib-list) or data folder (--calib-synth) to write")
    calib.add_argument("--num", type=int, default=500, help="--calib-list: images to list (default 500)")
    calib.add_argument("--seed", type=int, default=0, help="--calib-list: sampling seed (default 0)")
    calib.add_argument("--recipe", help="--calib-synth: a recipe YAML (default: the built-in one, which "
                                        "calib_data/synthetic.yaml shows)")


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime.errors import DDRNetError

    if args.action:  # the former sub-action spelling
        setattr(args, args.action.replace("-", "_"), True)
    modes = [flag for flag, on in (("--qat", args.qat), ("--prune", args.prune is not None), ("--ptq", args.ptq),
                                   ("--calib-list", args.calib_list), ("--calib-synth", args.calib_synth)) if on]
    if not modes:
        raise DDRNetError("choose --qat, --prune RATIO, --prune RATIO --qat, --ptq, --calib-list or --calib-synth")
    if len(modes) > 1 and modes != ["--qat", "--prune"]:
        raise DDRNetError("{}: one mode per run (only --prune and --qat combine)".format(" and ".join(modes)))
    if args.calib_list or args.calib_synth:
        return _calibration_data(args)
    if args.out:
        raise DDRNetError("--out is for --calib-list / --calib-synth; compressed checkpoints go to --save-dir")
    missing = [flag for flag, value in (("--config", args.config), ("--weights", args.weights),
                                        ("--save-dir", args.save_dir)) if not value]
    if missing:
        raise DDRNetError("missing {}".format(", ".join(missing)))
    if args.calib_num is not None and args.calib_num < 1:
        raise DDRNetError("--calib-num {}: must be at least 1".format(args.calib_num))
    if args.prune is not None:
        from ddrnet.compress.prune import check_ratio

        check_ratio(args.prune)
    from ddrnet.runtime.fileio import check_output_dir, refuse_replacing

    check_output_dir(args.save_dir, "--save-dir")
    refuse_replacing(args.save_dir, [args.weights, args.qat_weights], "--save-dir")
    return _compress(args)


def _calibration_data(args: argparse.Namespace) -> int:
    from ddrnet.runtime.errors import DDRNetError

    if not args.out:
        raise DDRNetError("{} needs --out".format("--calib-list" if args.calib_list else "--calib-synth"))
    if args.calib_list:
        from ddrnet.compress.calib import write_calib_list

        if not args.data_root:
            raise DDRNetError("--calib-list needs --data-root (the Cityscapes root to sample)")
        paths = write_calib_list(args.data_root, args.num, args.seed, args.out)
        print("{} train images -> {}".format(len(paths), args.out))
        return 0
    from ddrnet.compress.calib import materialise_synthetic

    root, paths = materialise_synthetic(args.recipe, args.out)
    print("{} synthetic train images -> {} (use --calib-dir {})".format(len(paths), root, root))
    return 0


def _compress(args: argparse.Namespace) -> int:
    import paddle

    from ddrnet.compress import pipeline

    if args.device:
        paddle.set_device(args.device)
    cfg = pipeline.load_compress_config(args.config, args.opt)
    if args.ptq:
        from ddrnet.compress.ptq import parse_methods, run_ptq

        run_ptq(cfg, args.weights, args.save_dir, args.calib_dir, parse_methods(args.calib_method),
                data_root=args.data_root, calib_num=args.calib_num, qat_weights=args.qat_weights, resume=args.resume)
        return 0
    common = dict(data_root=args.data_root, resume=args.resume, iters=args.iters)
    if args.prune is not None and args.qat:
        pipeline.run_prune_qat(cfg, args.weights, args.save_dir, args.prune, args.criterion, **common)
        final = os.path.join(args.save_dir, "qat", pipeline.BEST)
    elif args.prune is not None:
        pipeline.run_prune(cfg, args.weights, args.save_dir, args.prune, args.criterion, **common)
        final = os.path.join(args.save_dir, pipeline.BEST)
    else:
        pipeline.run_qat(cfg, args.weights, args.save_dir, **common)
        final = os.path.join(args.save_dir, pipeline.BEST)
    print("compressed checkpoint: {} (report: {})".format(final, os.path.join(args.save_dir, pipeline.REPORT)))
    return 0
