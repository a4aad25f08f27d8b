"""Training throughput on CPU: our trainer (`ddrnet.train.trainer.fit`) against PaddleSeg 2.8's own
`paddleseg.core.train` on its `DDRNet_23`, same data, batch, crop, augmentations, loss and optimizer.

Each trainer runs twice, `short` and `long` iterations; images/s is (long - short) * batch over the
difference of the wall times, so start-up (dataset indexing, model build, first oneDNN kernels) and
the final checkpoint cancel out and only steady-state iterations count.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Optional, Tuple

LR, MOMENTUM, WEIGHT_DECAY, POWER = 0.01, 0.9, 5e-4, 0.9  # the reference recipe (DESIGN.md)
OHEM = {"thresh": 0.7, "min_kept": 10000}


def synthetic_dataset(out: str, n_train: int, size: Tuple[int, int]) -> str:
    """A small Cityscapes-layout set from the project's generator (both trainers read this layout)."""
    from ddrnet.train.synth import generate

    if not os.path.isdir(os.path.join(out, "leftImg8bit", "train")):
        generate(out, n_train, 2, size=size)
    return out


def _transform_specs(crop: int) -> list:
    return [{"type": "ResizeStepScaling", "min_scale_factor": 0.5, "max_scale_factor": 2.0, "scale_step_size": 0.25},
            {"type": "RandomPaddingCrop", "crop_size": [crop, crop]},
            {"type": "RandomHorizontalFlip"},
            {"type": "RandomDistort", "brightness_range": 0.4, "contrast_range": 0.4, "saturation_range": 0.4},
            {"type": "Normalize"}]


def ours(data_root: str, save_dir: str, iters: int, batch: int, crop: int) -> dict:
    """One run of our trainer on ddrnet23; returns fit's summary (images_per_s, loader_wait_fraction)."""
    import paddle

    from ddrnet.train.checkpoint import model_meta
    from ddrnet.train.model import build_model
    from ddrnet.train.trainer import fit

    cfg = {"batch_size": batch, "iters": iters, "seed": 0, "num_workers": 0,
           "train_dataset": {"dataset_root": data_root, "mode": "train", "transforms": _transform_specs(crop)},
           "optimizer": {"type": "SGD", "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
           "lr_scheduler": {"learning_rate": LR, "end_lr": 0.0, "power": POWER, "warmup_iters": 0},
           "loss": {"types": [dict(OHEM, type="OhemCrossEntropyLoss")], "coef": [1]},
           "save_interval": iters, "log_iters": max(1, iters), "keep_checkpoint_max": 1}
    paddle.seed(0)
    meta = model_meta("ddrnet23")
    return fit(build_model(**meta), meta, cfg, save_dir, do_eval=False)


def paddleseg(data_root: str, save_dir: str, iters: int, batch: int, crop: int) -> dict:
    """One run of PaddleSeg's trainer on its DDRNet_23 with the same recipe."""
    import paddle
    import paddleseg.transforms as T
    from paddleseg.core import train
    from paddleseg.datasets import Cityscapes
    from paddleseg.models import DDRNet_23
    from paddleseg.models.losses import OhemCrossEntropyLoss

    specs = _transform_specs(crop)
    transforms = [getattr(T, spec["type"])(**{k: v for k, v in spec.items() if k != "type"}) for spec in specs]
    paddle.seed(0)
    model = DDRNet_23(num_classes=19, enable_auxiliary_loss=False)
    schedule = paddle.optimizer.lr.PolynomialDecay(LR, decay_steps=iters, end_lr=0.0, power=POWER)
    optimizer = paddle.optimizer.Momentum(schedule, momentum=MOMENTUM, parameters=model.parameters(),
                                          weight_decay=paddle.regularizer.L2Decay(WEIGHT_DECAY))
    # log_iters beyond the run: PaddleSeg 2.8's logging indexes the loss as a 1-D tensor (`l[0]`), which
    # fails on Paddle 2.6's 0-D losses; its timing log is not used here anyway
    train(model, Cityscapes(transforms, data_root, mode="train"), optimizer=optimizer, save_dir=save_dir,
          iters=iters, batch_size=batch, save_interval=iters, log_iters=iters + 1, num_workers=0,
          losses={"types": [OhemCrossEntropyLoss(**OHEM)], "coef": [1]}, keep_checkpoint_max=1)
    return {}


def _wall(run: Callable[..., dict], *args) -> Tuple[float, dict]:
    t0 = time.perf_counter()
    summary = run(*args)
    return time.perf_counter() - t0, summary


def throughput(name: str, run: Callable[..., dict], data_root: str, workdir: str, batch: int, crop: int,
               short: int, long: int) -> dict:
    """Steady-state images/s of one trainer from a short and a long run; an error becomes the row's note."""
    try:
        t_short, _ = _wall(run, data_root, os.path.join(workdir, name + "_short"), short, batch, crop)
        t_long, summary = _wall(run, data_root, os.path.join(workdir, name + "_long"), long, batch, crop)
    except Exception as err:  # noqa: BLE001  a foreign trainer's failure is a result to report, not a crash
        return {"trainer": name, "error": "{}: {}".format(type(err).__name__, str(err).strip().splitlines()[0]
                                                          if str(err).strip() else "")}
    row = {"trainer": name, "images_per_s": (long - short) * batch / (t_long - t_short),
           "wall_s": {str(short): t_short, str(long): t_long}}
    if "loader_wait_fraction" in summary:
        row["loader_wait_fraction"] = summary["loader_wait_fraction"]
        row["fit_images_per_s"] = summary["images_per_s"]
    return row


def compare(workdir: str, batch: int, crop: int, short: int, long: int, n_train: int,
            image_hw: Tuple[int, int], data_root: Optional[str] = None) -> Dict[str, object]:
    """Both trainers, same settings, one after the other in this process."""
    data = data_root or synthetic_dataset(os.path.join(workdir, "train_data"), n_train, image_hw)
    rows = [throughput("ddrnet (ours)", ours, data, workdir, batch, crop, short, long),
            throughput("PaddleSeg 2.8 core.train", paddleseg, data, workdir, batch, crop, short, long)]
    return {"model": "ddrnet23 / PaddleSeg DDRNet_23", "batch": batch, "crop": crop, "iters": [short, long],
            "data_root": os.path.abspath(data), "optimizer": "Momentum SGD lr {} poly {} wd {}".format(
                LR, POWER, WEIGHT_DECAY), "loss": "OHEM CE thresh 0.7 min_kept 10000", "num_workers": 0,
            "rows": rows}
