"""Compress a trained DDRNet with PaddleSlim: quantization-aware training, channel pruning, PTQ.

  ddrnet compress --qat --config qat_ddrnet23_slim_synthetic_cpu.yml --weights runs/train/best_model --save-dir runs/qat
  ddrnet compress --prune 0.3 --criterion l1 --config prune_ddrnet23_slim_synthetic_cpu.yml --weights W --save-dir runs/prune
  ddrnet compress --prune 0.3 --qat --config prune_ddrnet23_slim_synthetic_cpu.yml --weights W --save-dir runs/pq
  ddrnet compress --ptq --calib-dir data/cityscapes --calib-method hist,kl --config C --weights W --save-dir runs/ptq
  ddrnet compress calib-list --data-root data/cityscapes --num 500 --seed 0 --out calib_data/cityscapes_train_500.txt
  ddrnet compress calib-synth --recipe calib_data/synthetic.yaml --out demo_out/calib

QAT and pruning fine-tune with the training loop (atomic checkpoints, --resume) and write FP32 vs
compressed figures into best_model/state.json and SAVE_DIR/compress_report.json; --prune R --qat
prunes into SAVE_DIR/prune and quantizes that into SAVE_DIR/qat. PTQ writes one Paddle INT8 model
per calibration method under SAVE_DIR/<method>/ and SAVE_DIR/ptq_report.json. Configs: the bundled
compress/configs/*.yml (by name) or any YAML whose `_base_` is a training config.
"""
from __future__ import annotations

import argparse
import os

CALIB_METHODS = "kl|hist|mse|avg|abs_max"


def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_argument_group("what to do (--prune and --qat combine: prune, fine-tune, then QAT)")
    mode.add_argument("--qat", action="store_true", help="quantization-aware training (INT8, PaddleSlim)")
    mode.add_argument("--prune", type=float, metavar="RATIO", help="prune this fraction of channels, in (0, 1)")
    mode.add_argument("--ptq", action="store_true", help="post-training quantization (PaddleSlim static PTQ)")
    p.add_argument("--config", help="compression config (bundled name or path)")
    p.add_argument("--weights", help="checkpoint folder or .pdparams to compress")
    p.add_argument("--save-dir", "--save_dir", dest="save_dir", help="output folder")
    p.add_argument("--criterion", choices=("l1", "fpgm"), help="pruning criterion (default: the config's, l1)")
    p.add_argument("--iters", type=int, help="fine-tuning iterations (each stage; default: the config's)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--data-root", dest="data_root", help="Cityscapes-layout folder (overrides dataset_root)")
    p.add_argument("--calib-dir", dest="calib_dir",
                   help="PTQ calibration: Cityscapes root (train split), image folder or list file")
    p.add_argument("--calib-method", dest="calib_method", default="hist",
                   help="PTQ calibration method(s), comma-separated: " + CALIB_METHODS)
    p.add_argument("--calib-num", dest="calib_num", type=int, help="calibration images (fixed-seed sample)")
    p.add_argument("--qat-weights", dest="qat_weights", help="PTQ: a QAT checkpoint to compare with")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--device", help="cpu or gpu (default: Paddle's)")
    sub = p.add_subparsers(dest="action", metavar="{calib-list,calib-synth}", title="calibration data actions")
    cl = sub.add_parser("calib-list", help="write a fixed-seed list of Cityscapes train images")
    cl.add_argument("--data-root", dest="list_root", metavar="DIR", required=True, help="Cityscapes root")
    cl.add_argument("--num", type=int, default=500, help="images to list (default 500)")
    cl.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    cl.add_argument("--out", required=True, help="list file to write, e.g. calib_data/cityscapes_train_500.txt")
    cs = sub.add_parser("calib-synth", help="materialise the synthetic calibration recipe for the demo")
    cs.add_argument("--recipe", default=os.path.join("calib_data", "synthetic.yaml"))
    cs.add_argument("--out", required=True, help="folder for the Cityscapes-layout train split")


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime.errors import DDRNetError

    if args.action == "calib-list":
        from ddrnet.compress.calib import write_calib_list

        paths = write_calib_list(args.list_root, args.num, args.seed, args.out)
        print("{} train images -> {}".format(len(paths), args.out))
        return 0
    if args.action == "calib-synth":
        from ddrnet.compress.calib import materialise_synthetic

        root, paths = materialise_synthetic(args.recipe, args.out)
        print("{} synthetic train images -> {} (use --calib-dir {})".format(len(paths), root, root))
        return 0
    if not (args.qat or args.prune is not None or args.ptq):
        raise DDRNetError("choose --qat, --prune RATIO, --prune RATIO --qat or --ptq")
    if args.ptq and (args.qat or args.prune is not None):
        raise DDRNetError("--ptq runs alone; combine --prune with --qat instead")
    missing = [flag for flag, value in (("--config", args.config), ("--weights", args.weights),
                                        ("--save-dir", args.save_dir)) if not value]
    if missing:
        raise DDRNetError("missing {}".format(", ".join(missing)))
    if args.prune is not None:
        from ddrnet.compress.prune import check_ratio

        check_ratio(args.prune)
    return _compress(args)


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
