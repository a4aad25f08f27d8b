"""Train DDRNet from a YAML config (PaddleSeg-style keys).

  ddrnet train --config ddrnet23_cityscapes_1024x1024_120k.yml --data-root data/cityscapes --save-dir runs/ddrnet23
  python -m paddle.distributed.launch --gpus 0,1,2,3 -m ddrnet train --config ... --save-dir ...

Checkpoints (iter_NNNNNN/, best_model/) are written atomically; --resume continues from the newest
complete one with the same data order, lr and optimizer state. PaddleSeg's train.py flags
(--do_eval --use_vdl --log_iters --save_interval --iters --batch_size --learning_rate) are accepted
and mapped onto the config.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML file or the name of a bundled config")
    p.add_argument("--save-dir", "--save_dir", dest="save_dir", required=True, help="checkpoint folder")
    p.add_argument("--data-root", dest="data_root", help="Cityscapes-layout folder (overrides dataset_root)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --opt iters=1000 --opt model.aux_head=true")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--device", help="cpu or gpu (default: gpu when available)")
    p.add_argument("--no-eval", action="store_true", help="skip periodic evaluation")
    legacy = p.add_argument_group("PaddleSeg train.py flags")
    legacy.add_argument("--do_eval", action="store_true", help="evaluate periodically (the default here)")
    legacy.add_argument("--use_vdl", action="store_true", help="write VisualDL scalars to SAVE_DIR/vdl")
    legacy.add_argument("--log_iters", type=int, help="= --opt log_iters=N")
    legacy.add_argument("--save_interval", type=int, help="= --opt save_interval=N (and eval_interval)")
    legacy.add_argument("--iters", type=int, help="= --opt iters=N")
    legacy.add_argument("--batch_size", type=int, help="= --opt batch_size=N (per GPU)")
    legacy.add_argument("--learning_rate", type=float, help="= --opt lr_scheduler.learning_rate=X")
    legacy.add_argument("--num_workers", type=int, help="= --opt num_workers=N")


LEGACY_KEYS = {"log_iters": "log_iters", "iters": "iters", "batch_size": "batch_size",
               "learning_rate": "lr_scheduler.learning_rate", "num_workers": "num_workers",
               "save_interval": "save_interval"}


def run(args: argparse.Namespace) -> int:
    from ddrnet.train.config import apply_opt, load_config
    from ddrnet.train.trainer import train

    cfg = load_config(args.config, args.opt)
    for flag, key in LEGACY_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            apply_opt(cfg, "{}={}".format(key, value))
    if args.save_interval is not None:
        apply_opt(cfg, "eval_interval={}".format(args.save_interval))
    summary = train(cfg, args.save_dir, resume=args.resume, data_root=args.data_root,
                    do_eval=not args.no_eval, use_vdl=args.use_vdl, device=args.device)
    print("done: iteration {iteration}, best mIoU {m:.4f} at iteration {b}".format(
        iteration=summary["iteration"], m=summary["best"]["miou"], b=summary["best"]["iteration"]))
    return 0
