"""Train DDRNet from a YAML config (PaddleSeg's files and key names).

  ddrnet train --config ddrnet23_cityscapes_1024x1024_120k.yml --data-root data/cityscapes --save-dir runs/ddrnet23
  python -m paddle.distributed.launch --gpus 0,1,2,3 "$(which ddrnet)" train --config ... --save-dir ...

Checkpoints (iter_NNNNNN/, best_model/) are written atomically; --resume continues from the newest
complete one with the same data order, lr and optimizer state. Every flag of PaddleSeg's tools/train.py
is accepted with its meaning (or refused in one line naming what to use instead); the README lists them.
"""
from __future__ import annotations

import argparse

# PaddleSeg train.py flags that set a config key: flag -> key
CONFIG_FLAGS = {"iters": "iters", "batch_size": "batch_size", "learning_rate": "lr_scheduler.learning_rate",
                "num_workers": "num_workers", "save_interval": "save_interval", "log_iters": "log_iters",
                "keep_checkpoint_max": "keep_checkpoint_max", "seed": "seed", "precision": "precision",
                "amp_level": "amp_level"}
# PaddleSeg train.py flags with no counterpart here: flag -> what to do instead
REFUSED = {"use_ema": "weight EMA is not part of the DDRNet recipe; train without it",
           "profiler_options": "profile with `python benchmarks/training.py` or paddle.profiler"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML file (PaddleSeg's form) or the name of a bundled config")
    p.add_argument("--save-dir", "--save_dir", dest="save_dir",
                   help="checkpoint folder (default: the config's train.save_dir, else ./output as PaddleSeg)")
    p.add_argument("--data-root", dest="data_root", help="Cityscapes-layout folder (overrides dataset_root)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (YAML literal), e.g. --opt iters=1000 --opt model.aux_head=true")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY=VALUE",
                   help="PaddleSeg's form (Python literals), e.g. --opts batch_size=2 model.enable_auxiliary_loss=True")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --save-dir")
    p.add_argument("--resume_model", "--resume-model", dest="resume_model", metavar="DIR",
                   help="continue from this checkpoint folder (e.g. output/iter_004000)")
    p.add_argument("--device", help="cpu or gpu (default: the config's global.device, else gpu when available)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU training: threads for Paddle's math, 1..cores (default: all cores, shared among "
                        "the processes of a distributed run)")
    p.add_argument("--no-eval", action="store_true", help="skip periodic evaluation")
    seed = p.add_argument_group("PaddleSeg train.py flags (same meaning)")
    seed.add_argument("--do_eval", action="store_true", help="evaluate every save_interval (the default here)")
    seed.add_argument("--use_vdl", action="store_true", help="write VisualDL scalars to SAVE_DIR/vdl")
    seed.add_argument("--log_iters", type=int, help="= --opt log_iters=N")
    seed.add_argument("--save_interval", type=int, help="= --opt save_interval=N (evaluation follows it)")
    seed.add_argument("--iters", type=int, help="= --opt iters=N")
    seed.add_argument("--batch_size", type=int, help="= --opt batch_size=N (per GPU / process)")
    seed.add_argument("--learning_rate", type=float, help="= --opt lr_scheduler.learning_rate=X")
    seed.add_argument("--num_workers", type=int, help="= --opt num_workers=N (data loader processes)")
    seed.add_argument("--keep_checkpoint_max", type=int, help="= --opt keep_checkpoint_max=N (iter_* folders kept)")
    seed.add_argument("--seed", type=int, help="= --opt seed=N (paddle, numpy, random, data order)")
    seed.add_argument("--precision", choices=("fp32", "fp16"), help="fp16: automatic mixed precision (GPU)")
    seed.add_argument("--amp_level", choices=("O1", "O2"), help="AMP level with --precision fp16 (default O1)")
    seed.add_argument("--data_format", choices=("NCHW", "NHWC"), help="NCHW only here")
    seed.add_argument("--repeats", type=int, help="1 only here (training is counted in iterations)")
    for flag in REFUSED:
        seed.add_argument("--" + flag, nargs="?", const=True, help=argparse.SUPPRESS)


def _check_seed_flags(args: argparse.Namespace) -> None:
    """PaddleSeg flags this trainer cannot honour: one line naming what to do instead, before any work."""
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.options import check_threads

    for flag, instead in REFUSED.items():
        if getattr(args, flag) is not None:
            raise DDRNetError("--{}: not supported ({})".format(flag, instead))
    if args.data_format == "NHWC":
        raise DDRNetError("--data_format NHWC: not supported; the model runs NCHW (leave the flag out)")
    if args.repeats not in (None, 1):
        raise DDRNetError("--repeats {}: not supported; training is counted in iterations, raise --iters "
                          "instead".format(args.repeats))
    if args.device not in (None, "cpu", "gpu") and not str(args.device).startswith("gpu:"):
        raise DDRNetError("--device {}: choose cpu or gpu".format(args.device))
    check_threads(args.threads)


def build_config(args: argparse.Namespace) -> dict:
    """The config file, then the PaddleSeg flags, then --opt and --opts (PaddleSeg applies --opts last)."""
    from ddrnet.train.config import apply_opt, load_config

    cfg = load_config(args.config)
    for flag, key in CONFIG_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            apply_opt(cfg, "{}={}".format(key, value))
    if args.save_interval is not None:
        apply_opt(cfg, "eval_interval={}".format(args.save_interval))
    for opt in args.opt:
        apply_opt(cfg, opt)
    for opt in args.opts:
        apply_opt(cfg, opt, python_literal=True)
    return cfg


def run(args: argparse.Namespace) -> int:
    _check_seed_flags(args)
    from ddrnet.train.trainer import train

    cfg = build_config(args)
    summary = train(cfg, args.save_dir or cfg.get("save_dir") or "output", resume=args.resume,
                    data_root=args.data_root, do_eval=not args.no_eval and (args.do_eval or cfg.get("do_eval", True)),
                    use_vdl=args.use_vdl or bool(cfg.get("use_vdl")), device=args.device or cfg.get("device"),
                    resume_from=args.resume_model or cfg.get("resume_model"), threads=args.threads)
    print("done: iteration {iteration}, best mIoU {m:.4f} at iteration {b}, {ips:.2f} images/s".format(
        iteration=summary["iteration"], m=summary["best"]["miou"], b=summary["best"]["iteration"],
        ips=summary["images_per_s"]))
    return 0
