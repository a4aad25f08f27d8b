"""Training throughput on CPU: our trainer (`ddrnet.train.trainer.fit`) against PaddleSeg 2.8's own
`paddleseg.core.train` on its `DDRNet_23`, same data, batch, crop, augmentations, loss and optimizer.

Each trainer runs twice, `short` and `long` iterations; images/s is (long - short) * batch over the
difference of the wall times, so start-up (dataset indexing, model build, first oneDNN kernels) and
the final checkpoint cancel out and only steady-state iterations count.

Threads: PaddleSeg trains with what Paddle gives it (Paddle sets OMP_NUM_THREADS=1 at import when it is
unset: one core); ours takes the free cores by default. Both run at one thread and at all cores, so the
table separates what threads give from what the loop itself (OHEM in numpy, the final upsample as matmuls
on CPU: train/losses.py, train/model.py) gives.

  python benchmarks/training.py --batch 2 --crop 512 # ours vs PaddleSeg's trainer on ddrnet23
  python benchmarks/training.py --profile            # where a step of the demo's recipe spends its CPU time
  python benchmarks/training.py --ab f7ed2a7         # the demo's recipe: that commit's trainer vs this one
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

LR, MOMENTUM, WEIGHT_DECAY, POWER = 0.01, 0.9, 5e-4, 0.9  # the reference recipe (docs/design-notes.md)
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


def ours(data_root: str, save_dir: str, iters: int, batch: int, crop: int, threads: int) -> dict:
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
    return fit(build_model(**meta), meta, cfg, save_dir, do_eval=False, threads=threads)


def paddleseg(data_root: str, save_dir: str, iters: int, batch: int, crop: int, threads: int) -> dict:
    """One run of PaddleSeg's trainer on its DDRNet_23 with the same recipe, at `threads` threads."""
    import paddle
    import paddleseg.transforms as T
    from paddleseg.core import train
    from paddleseg.datasets import Cityscapes
    from paddleseg.models import DDRNet_23
    from paddleseg.models.losses import OhemCrossEntropyLoss

    from ddrnet.train.compat import set_cpu_threads

    set_cpu_threads(threads)  # what a previous row set would otherwise stay
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
               short: int, long: int, threads: int) -> dict:
    """Steady-state images/s of one trainer from a short and a long run; an error becomes the row's note."""
    name = "{}, {} thread{}".format(name, threads, "s" if threads > 1 else "")
    folder = os.path.join(workdir, "".join(c if c.isalnum() else "_" for c in name))
    try:
        t_short, _ = _wall(run, data_root, folder + "_short", short, batch, crop, threads)
        t_long, summary = _wall(run, data_root, folder + "_long", long, batch, crop, threads)
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
    """Both trainers, same settings, one after the other in this process, at one thread (PaddleSeg's as
    shipped) and at every core (ours by default)."""
    from ddrnet.runtime.options import cpu_count

    data = data_root or synthetic_dataset(os.path.join(workdir, "train_data"), n_train, image_hw)
    rows = [throughput(name, run, data, workdir, batch, crop, short, long, threads)
            for threads in sorted({cpu_count(), 1}, reverse=True)
            for name, run in (("ddrnet (ours)", ours), ("PaddleSeg 2.8 core.train", paddleseg))]
    return {"model": "ddrnet23 / PaddleSeg DDRNet_23", "batch": batch, "crop": crop, "iters": [short, long],
            "data_root": os.path.abspath(data), "optimizer": "Momentum SGD lr {} poly {} wd {}".format(
                LR, POWER, WEIGHT_DECAY), "loss": "OHEM CE thresh 0.7 min_kept 10000", "num_workers": 0,
            "rows": rows}


def profile_step(model_name: str = "ddrnet23_slim", batch: int = 8, crop: int = 256, steps: int = 3,
                 threads: int = 1, top: int = 15) -> List[Tuple[str, float]]:
    """Where one training step's CPU time goes (the demo's recipe by default: 23-slim, batch 8, 256x256
    crops, OHEM, AdamW): Paddle's profiler over `steps` steps after a warm-up one, as
    [("CPU ms per step (process)", ms)] then [(operator or its backward node, share of the operators'
    time, as Paddle's summary counts it)], largest first. Python and numpy outside operators (the OHEM
    loss's forward on CPU) are in the CPU time, not in the shares."""
    import numpy as np
    import paddle
    import paddle.profiler as profiler

    from ddrnet.train.compat import set_cpu_threads
    from ddrnet.train.losses import OhemCrossEntropyLoss
    from ddrnet.train.model import build_model

    paddle.set_device("cpu")
    set_cpu_threads(threads)
    paddle.seed(0)
    model = build_model(model_name)
    model.train()
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=model.parameters())
    loss_fn = OhemCrossEntropyLoss(**OHEM)
    rng = np.random.RandomState(0)
    image = paddle.to_tensor(rng.randn(batch, 3, crop, crop).astype("float32"))
    label = paddle.to_tensor(rng.randint(0, 19, (batch, crop, crop)).astype("int64"))

    def step():
        loss_fn(model(image)[0], label).backward()
        optimizer.step()
        optimizer.clear_grad()

    step()
    prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU], on_trace_ready=lambda p: None)
    cpu = time.process_time()
    prof.start()
    for _ in range(steps):
        step()
        prof.step()
    prof.stop()
    cpu = (time.process_time() - cpu) * 1e9
    # the operator summary `Profiler.summary` prints, as numbers (Paddle has no public accessor for it)
    from paddle.profiler.profiler_statistic import StatisticData

    data = StatisticData(prof.profiler_result.get_data(), prof.profiler_result.get_extra_info())
    ops = {name: item.cpu_time for name, item in data.event_summary.items.items()}
    total = sum(ops.values())
    shares = sorted(((name, t / total) for name, t in ops.items()), key=lambda kv: -kv[1])[:top]
    return [("CPU ms per step (process)", cpu / 1e6 / steps)] + shares


def base_tree(commit: str, workdir: str) -> str:
    """A PYTHONPATH folder whose `ddrnet` package is `commit`'s source, so that `python -m ddrnet` runs
    that version (setup.cfg maps the top-level folders to ddrnet.*; a PYTHONPATH entry comes before the
    editable install)."""
    import io
    import shutil
    import subprocess
    import tarfile

    root = os.path.join(workdir, "base-" + commit)
    if os.path.isdir(root):
        return root
    source = root + "-src"
    archive = subprocess.run(["git", "-C", os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "archive", commit], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(source)
    shutil.copytree(os.path.join(source, "ddrnet"), os.path.join(root, "ddrnet"))
    for folder in ("train", "runtime", "compress", "export"):
        os.symlink(os.path.join(source, folder), os.path.join(root, "ddrnet", folder))
    return root


def ab(commit: str, workdir: str, rounds: int = 3, iters: int = 30) -> dict:
    """`ddrnet train` on the demo's recipe and data (23-slim, batch 8, 256x256 crops, 300 synthetic 256x512
    images), `commit`'s trainer and the working tree's (one thread, two, default) run in turn, `rounds`
    times: images/s from each run's train_summary.json (steady state, data loading included)."""
    import subprocess
    import sys

    data = synthetic_dataset(os.path.join(workdir, "demo_data"), 300, (256, 512))
    variants = {"base " + commit: (base_tree(commit, workdir), []), "threads 1": ("", ["--threads", "1"]),
                "threads 2": ("", ["--threads", "2"]), "default": ("", [])}
    runs = {name: [] for name in variants}  # type: Dict[str, List[float]]
    for r in range(rounds):
        for name, (pythonpath, extra) in variants.items():
            save_dir = os.path.join(workdir, "ab", "{}-{}".format(name.replace(" ", "_"), r))
            subprocess.run([sys.executable, "-m", "ddrnet", "train", "--config", "ddrnet23_slim_synthetic_cpu.yml",
                            "--data-root", data, "--save-dir", save_dir, "--device", "cpu", "--no-eval",
                            "--iters", str(iters), *extra], check=True, cwd=workdir, capture_output=True,
                           env=dict(os.environ, PYTHONPATH=pythonpath))
            with open(os.path.join(save_dir, "train_summary.json")) as f:
                runs[name].append(json.load(f)["images_per_s"])
            print("round {} {:<16} {:.3f} images/s".format(r + 1, name, runs[name][-1]), flush=True)
    base = sum(runs["base " + commit]) / rounds
    return {name: {"images_per_s": values, "mean": sum(values) / rounds, "vs_base": sum(values) / rounds / base}
            for name, values in runs.items()}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="operator shares of one training step")
    parser.add_argument("--model", default="ddrnet23_slim")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="training_bench", help="for the comparison (not --profile)")
    parser.add_argument("--iters", type=int, nargs=2, default=(3, 13), metavar=("SHORT", "LONG"))
    parser.add_argument("--ab", metavar="COMMIT", help="the demo recipe's images/s: COMMIT's trainer against this one")
    parser.add_argument("--rounds", type=int, default=3, help="with --ab")
    parser.add_argument("--ab-iters", type=int, default=30, help="with --ab: iterations per run")
    args = parser.parse_args()
    if args.ab:
        print(json.dumps(ab(args.ab, os.path.abspath(args.workdir), args.rounds, args.ab_iters), indent=1))
    elif args.profile:
        (what, ms), *shares = profile_step(args.model, args.batch, args.crop, threads=args.threads)
        print("{:<45} {:8.1f}".format(what, ms))
        for name, share in shares:
            print("{:<45} {:8.1%}".format(name, share))
    else:
        print(json.dumps(compare(args.workdir, args.batch, args.crop, args.iters[0], args.iters[1], n_train=8,
                                 image_hw=(2 * args.crop, 4 * args.crop)), indent=1))
