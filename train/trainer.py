"""The training loop, PaddleSeg's (`paddleseg.core.train`) on the same config: its optimizers and lr
schedulers, OHEM CE, SyncBatchNorm across processes, --precision fp16 (AMP, GPU); plus atomic checkpoints,
exact resume (data order and augmentation depend only on seed and iteration: see
data.ResumableBatchSampler), periodic eval, and all CPU cores for Paddle's math on CPU.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import time
from typing import Optional

import numpy as np
import paddle
import paddle.distributed as dist
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ddrnet.runtime.augment import mode_from_config
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.labels import DEFAULT_LABEL_SET
from ddrnet.runtime.fileio import check_output_dir, nearest_existing, write_json
from ddrnet.runtime.options import check_threads, cpu_count
from ddrnet.train import compat
from ddrnet.train.checkpoint import (OPT, PARAMS, latest_checkpoint, load_weights, load_weights_lenient,
                                     model_meta, read_state, resolve_weights, save_checkpoint, weights_meta)
from ddrnet.train.data import CityscapesDataset, batches, build_loader, build_transforms
from ddrnet.train.evaluate import evaluate
from ddrnet.train.losses import build_loss
from ddrnet.train.model import build_model

log = logging.getLogger(__name__)


# PaddleSeg 2.8's optimizer components: the Paddle optimizer and its options with PaddleSeg's defaults
OPTIMIZERS = {
    "SGD": (paddle.optimizer.SGD, {"weight_decay": None}),
    "Momentum": (paddle.optimizer.Momentum, {"momentum": 0.9, "use_nesterov": False, "weight_decay": None}),
    "Adam": (paddle.optimizer.Adam, {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "lazy_mode": False,
                                     "weight_decay": None}),
    "AdamW": (paddle.optimizer.AdamW, {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "lazy_mode": False,
                                       "weight_decay": 0.01}),
}


def build_lr_scheduler(lr_cfg: dict, iters: int) -> paddle.optimizer.lr.LRScheduler:
    """PaddleSeg's lr_scheduler section: any `paddle.optimizer.lr` class by `type` with its own options;
    PolynomialDecay decays over the iterations after the warm-up (`warmup_iters`, from `warmup_start_lr`)."""
    lr_cfg = dict(lr_cfg)
    kind = lr_cfg.pop("type", "PolynomialDecay")
    warmup = int(lr_cfg.pop("warmup_iters", 0))
    warmup_start = float(lr_cfg.pop("warmup_start_lr", 0.0))
    if kind == "PolynomialDecay":
        lr_cfg.setdefault("decay_steps", max(iters - warmup, 1))
    cls = getattr(paddle.optimizer.lr, str(kind), None)
    if not (isinstance(cls, type) and issubclass(cls, paddle.optimizer.lr.LRScheduler)):
        raise DDRNetError("lr_scheduler.type {!r}: not a paddle.optimizer.lr scheduler".format(kind))
    try:
        scheduler = cls(**lr_cfg)
    except (TypeError, ValueError, AssertionError) as err:
        raise DDRNetError("lr_scheduler: {}: {}".format(kind, err)) from None
    if warmup > 0:
        scheduler = paddle.optimizer.lr.LinearWarmup(scheduler, warmup, warmup_start, float(lr_cfg["learning_rate"]))
    return scheduler


def build_optimizer(cfg: dict, model: paddle.nn.Layer, iters: int):
    """PaddleSeg's optimizer section (`sgd`/`SGD` with a `momentum` key is Momentum, as in PaddleSeg;
    a float `weight_decay` is L2 decay, decoupled for AdamW) and its lr scheduler."""
    if not cfg.get("optimizer") or not cfg.get("lr_scheduler"):
        raise DDRNetError("config: needs an optimizer and an lr_scheduler section (PaddleSeg's form, e.g. "
                          "optimizer: {type: SGD, momentum: 0.9, weight_decay: 5.0e-4})")
    scheduler = build_lr_scheduler(cfg["lr_scheduler"], iters)
    options = dict(cfg["optimizer"])
    kind = options.pop("type", None)
    kind = {"sgd": "SGD", "adam": "Adam"}.get(kind, kind)  # PaddleSeg's lower-case spellings
    if kind == "SGD" and "momentum" in options:
        kind = "Momentum"
    if kind not in OPTIMIZERS:
        raise DDRNetError("optimizer.type {!r}: choose one of {}".format(kind, ", ".join(OPTIMIZERS)))
    cls, defaults = OPTIMIZERS[kind]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise DDRNetError("optimizer: {} is not an option of {} here (options: {})".format(
            unknown[0], kind, ", ".join(sorted(defaults))))
    kwargs = dict(defaults, **options)
    if kwargs["weight_decay"] is not None:
        kwargs["weight_decay"] = float(kwargs["weight_decay"])
    return cls(learning_rate=scheduler, parameters=model.parameters(), **kwargs), scheduler


def _check_writable(save_dir: str, need_mb: float) -> None:
    """Fail before training, not after hours of it, when checkpoints cannot be written (the folder
    itself is created with the first checkpoint)."""
    check_output_dir(save_dir, "--save-dir")
    free_mb = shutil.disk_usage(nearest_existing(save_dir)).free / 2 ** 20
    if free_mb < need_mb:
        raise DDRNetError("{}: only {:.0f} MB free, a checkpoint needs about {:.0f} MB".format(
            save_dir, free_mb, need_mb))


def build_dataset(cfg: dict, key: str, data_root: Optional[str]) -> CityscapesDataset:
    """The config's train_dataset / val_dataset, rooted at `data_root` when given."""
    dcfg = cfg.get(key) or {}
    root = data_root or dcfg.get("dataset_root")
    if not root:
        raise DDRNetError("no data: pass --data-root or set {}.dataset_root".format(key))
    train = key == "train_dataset"
    return CityscapesDataset(root, dcfg.get("mode", "train" if train else "val"),
                             build_transforms(dcfg.get("transforms", [{"type": "Normalize"}]), train=train),
                             dcfg.get("label_set", DEFAULT_LABEL_SET))


def train(cfg: dict, save_dir: str, resume: bool = False, data_root: Optional[str] = None,
          do_eval: bool = True, use_vdl: bool = False, device: Optional[str] = None,
          resume_from: Optional[str] = None, threads: Optional[int] = None) -> dict:
    """Train the model `cfg` describes; returns the final summary (iteration, best mIoU, throughput)."""
    if device:
        try:
            paddle.set_device(device)
        except (ValueError, RuntimeError) as err:
            raise DDRNetError("device {} (--device, or the config's global.device): {}".format(
                device, str(err).strip().splitlines()[0])) from None
    mcfg = cfg.get("model", {})
    pretrained = _pretrained_path(mcfg.get("pretrained"))
    # converted PyTorch weights carry their padding rules; the config may still override them
    pretrained_meta = (weights_meta(pretrained) if pretrained else None) or {}
    padding = {k: bool(mcfg.get(k, pretrained_meta.get(k, True))) for k in ("avg_pool_exclusive", "down3_same_padding")}
    meta = model_meta(mcfg.get("name", "ddrnet23"), int(mcfg.get("num_classes", 19)),
                      bool(mcfg.get("aux_head", False)), **padding)
    seed_everything(cfg)
    model = build_model(**meta)
    if pretrained:
        load_weights_lenient(model, pretrained)
    return fit(model, meta, cfg, save_dir, resume=resume, data_root=data_root, do_eval=do_eval, use_vdl=use_vdl,
               resume_from=resume_from, threads=threads)


def _pretrained_path(value: Optional[str]) -> Optional[str]:
    """model.pretrained: a local weights file or folder. PaddleSeg configs name a URL; machines here may
    be offline, so nothing is downloaded: the user is told which file to fetch."""
    if not value:
        return None
    if "://" in str(value):
        raise DDRNetError("model.pretrained: {} is a URL and nothing is downloaded here; download {} and pass "
                          "--opt model.pretrained=PATH (or model.pretrained=null to start from scratch)".format(
                              value, str(value).rstrip("/").rsplit("/", 1)[-1]))
    return resolve_weights(value)


def seed_everything(cfg: dict) -> int:
    """PaddleSeg's --seed (paddle, numpy and random); the data order and augmentation use it as well
    (data.ResumableBatchSampler). PaddleSeg leaves an absent seed random; here it is 0, so a run can be
    resumed exactly."""
    seed = int(cfg.get("seed") or 0)
    paddle.seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return seed


def busy_cores(seconds: float = 0.5) -> float:
    """Cores other processes keep busy right now (/proc/stat over a short sleep; 0 where unknown)."""
    def sample():
        with open("/proc/stat") as f:
            times = [float(v) for v in f.readline().split()[1:]]
        return sum(times), times[3] + times[4]  # all, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (1.0 - (idle1 - idle0) / max(total1 - total0, 1.0)) * (os.cpu_count() or 1)


def use_cpu_threads(threads: Optional[int], world: int) -> int:
    """Paddle pins OMP_NUM_THREADS=1 at import when it is unset, so CPU training ran on one core. By
    default a process takes the cores that are free when training starts (a distributed run's
    processes share them): all on an idle machine, fewer while other processes keep cores busy, because
    a thread that waits for a core holds up the others (measured on a 2-core host with one other busy
    process: two threads gave 0.7-1.05x the images/s of one; README "Training speed on CPU")."""
    if threads is None:
        threads = max(1, cpu_count() // world)
        if world == 1 and threads > 1:
            threads = max(1, min(threads, int(round(threads - busy_cores()))))
        log.info("CPU training: %d thread(s) for Paddle's math (--threads N to choose)", threads)
    else:
        check_threads(threads)
    compat.set_cpu_threads(threads)
    return threads


def prepare_parallel(model: paddle.nn.Layer, world: int, on_gpu: bool) -> paddle.nn.Layer:
    """The network the loop calls: the model itself on one device; with several processes, its
    BatchNorms as SyncBatchNorm (statistics over the global batch, as PaddleSeg's DDRNet trains) inside
    DataParallel. Paddle has no CPU kernel for sync_batch_norm: CPU processes keep per-process BN."""
    if world == 1:
        return model
    if on_gpu:
        paddle.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the sublayers in place
    else:
        log.warning("%d CPU processes: BatchNorm statistics are per process (Paddle's SyncBatchNorm is "
                    "GPU-only); their running averages are averaged before each evaluation and checkpoint", world)
    return paddle.DataParallel(model)


@paddle.no_grad()
def average_bn_statistics(model: paddle.nn.Layer) -> None:
    """Per-process BatchNorm (CPU processes): replace every BN's running mean and variance by their
    average over the processes, on every process. Without it each rank evaluates its shard of the val
    set with its own statistics and rank 0 saves only its own, so the mIoU recorded with a checkpoint
    is not that checkpoint's (measured on the demo: 0.6254 recorded, 0.6239 when the saved checkpoint
    was evaluated alone). Training is unaffected: it normalises with each batch's own statistics."""
    world = dist.get_world_size()
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            for buffer in compat.bn_statistics(layer)[:2]:  # running mean, running variance
                dist.all_reduce(buffer)
                buffer.set_value(buffer / world)


class Precision:
    """PaddleSeg's --precision fp16 / --amp_level: autocast with its operator lists and a loss scaler."""

    def __init__(self, cfg: dict, on_gpu: bool):
        self.level = str(cfg.get("amp_level", "O1"))
        self.fp16 = str(cfg.get("precision", "fp32")) == "fp16"
        if str(cfg.get("precision", "fp32")) not in ("fp32", "fp16") or self.level not in ("O1", "O2"):
            raise DDRNetError("precision {!r} / amp_level {!r}: choose fp32 or fp16, O1 or O2".format(
                cfg.get("precision"), self.level))
        if self.fp16 and not on_gpu:
            raise DDRNetError("--precision fp16: mixed precision needs a GPU (Paddle 2.6 has no CPU AMP)")
        self.scaler = paddle.amp.GradScaler(init_loss_scaling=1024) if self.fp16 else None

    def decorate(self, model: paddle.nn.Layer, optimizer):
        if self.fp16 and self.level == "O2":
            return paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", save_dtype="float32")
        return model, optimizer

    def autocast(self):
        return paddle.amp.auto_cast(enable=self.fp16, level=self.level,
                                    custom_white_list={"elementwise_add", "batch_norm", "sync_batch_norm"},
                                    custom_black_list={"bilinear_interp_v2"})

    def step(self, loss: paddle.Tensor, optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaled = self.scaler.scale(loss)
            scaled.backward()
            self.scaler.minimize(optimizer, scaled)
        optimizer.clear_grad()


def _resume(model: paddle.nn.Layer, optimizer, save_dir: str, resume: bool, resume_from: Optional[str]):
    """(start iteration, best so far) from `resume_from` (a checkpoint folder, PaddleSeg's --resume_model)
    or, with `resume`, the newest complete checkpoint in save_dir."""
    best = {"miou": -1.0, "iteration": 0}
    if resume_from:
        state = read_state(resume_from)
        if state is None or not os.path.isfile(os.path.join(resume_from, OPT)):
            raise DDRNetError("{}: not a complete training checkpoint (model.pdparams, model.pdopt and "
                              "state.json with matching hashes)".format(resume_from))
        found = (resume_from, state)
    elif resume:
        found = latest_checkpoint(save_dir)
        if found is None:
            log.info("no complete checkpoint in %s: starting from scratch", save_dir)
            return 0, best
    else:
        return 0, best
    folder, state = found
    load_weights(model, os.path.join(folder, PARAMS))  # strict: the same structure as saved
    optimizer.set_state_dict(paddle.load(os.path.join(folder, OPT)))
    log.info("resumed from %s (iteration %d)", folder, state["iteration"])
    return state["iteration"], state.get("best", best)


def fit(model: paddle.nn.Layer, meta: dict, cfg: dict, save_dir: str, resume: bool = False,
        data_root: Optional[str] = None, do_eval: bool = True, use_vdl: bool = False,
        extra_state: Optional[dict] = None, resume_from: Optional[str] = None,
        threads: Optional[int] = None) -> dict:
    """The loop itself, for a model built by the caller: training, or fine-tuning a pruned or
    quantization-aware model (`extra_state` is stored in every checkpoint's state.json)."""
    on_gpu = paddle.get_device().startswith("gpu")
    world = dist.get_world_size()
    if world > 1:
        dist.init_parallel_env()
    if not on_gpu:
        use_cpu_threads(threads, world)
    rank = dist.get_rank()
    seed = int(cfg.get("seed") or 0)
    iters, batch_size = int(cfg["iters"]), int(cfg["batch_size"])
    precision = Precision(cfg, on_gpu)
    optimizer, scheduler = build_optimizer(cfg, model, iters)
    _check_writable(save_dir, need_mb=3 * sum(int(p.size) for p in model.parameters()) * 4 / 2 ** 20)
    extra_state = extra_state or {}

    start, best = _resume(model, optimizer, save_dir, resume, resume_from)
    if start >= iters:  # resumed a finished run: nothing to do
        return {"iteration": start, "best": best, "images_per_s": 0.0, "loader_wait_fraction": 0.0}

    train_set = build_dataset(cfg, "train_dataset", data_root)
    val_set = build_dataset(cfg, "val_dataset", data_root) if do_eval else None
    loader = build_loader(train_set, batch_size, seed, start, iters, num_workers=int(cfg.get("num_workers") or 0))
    losses = [build_loss(t) for t in cfg.get("loss", {}).get("types", [{"type": "OhemCrossEntropyLoss"}])]
    coefs = [float(c) for c in cfg.get("loss", {}).get("coef", [1.0])]
    model, optimizer = precision.decorate(model, optimizer)
    net = prepare_parallel(model, world, on_gpu)
    per_process_bn = world > 1 and not on_gpu
    writer = _vdl_writer(save_dir) if use_vdl and rank == 0 else None
    eval_mode = mode_from_config(cfg.get("test_config"))  # PaddleSeg evaluates in training with it too
    save_interval = int(cfg.get("save_interval", 1000))
    eval_interval = int(cfg.get("eval_interval", save_interval))
    log_iters = int(cfg.get("log_iters", 10))
    keep = int(cfg.get("keep_checkpoint_max", 5))

    model.train()
    wait_s = compute_s = 0.0
    images = 0
    first_loss = loss_v = None
    bar = tqdm(total=iters, initial=start, desc="train", disable=rank != 0, dynamic_ncols=True)
    with logging_redirect_tqdm(loggers=[logging.getLogger("ddrnet")]):  # log lines above the bar
        t_wait = time.perf_counter()
        for it, (image, label) in enumerate(batches(loader), start=start + 1):
            t_start = time.perf_counter()
            wait_s += t_start - t_wait
            with precision.autocast():
                outputs = net(image)
                loss = sum(coefs[min(i, len(coefs) - 1)] * losses[min(i, len(losses) - 1)](out, label)
                           for i, out in enumerate(outputs))
            precision.step(loss, optimizer)
            lr = optimizer.get_lr()
            scheduler.step()
            compute_s += time.perf_counter() - t_start
            images += int(image.shape[0]) * world
            if it % log_iters == 0 or it == iters or it == start + 1:
                loss_v = float(loss)
                first_loss = loss_v if first_loss is None else first_loss
                bar.set_postfix(loss="{:.4f}".format(loss_v), lr="{:.2e}".format(lr))
                log.debug("iter %d: loss %.6f lr %.6e", it, loss_v, lr)
                if writer is not None:
                    writer.add_scalar("Train/loss", loss_v, it)
                    writer.add_scalar("Train/lr", lr, it)
            bar.update(1)
            last = it == iters
            evaluating = val_set is not None and (it % eval_interval == 0 or last)
            saving = it % save_interval == 0 or last
            if per_process_bn and (evaluating or saving):
                average_bn_statistics(model)  # every rank, before the evaluation and the checkpoint
            if evaluating:
                result = evaluate(model, val_set, progress=False, mode=eval_mode)
                model.train()
                if rank == 0:
                    log.info("iter %d: val mIoU %.4f pixel acc %.4f", it, result["miou"], result["pixel_acc"])
                    if writer is not None:
                        writer.add_scalar("Evaluate/mIoU", result["miou"], it)
                    if result["miou"] > best["miou"]:
                        best = {"miou": result["miou"], "iteration": it}
                        save_checkpoint(os.path.join(save_dir, "best_model"), model,
                                        _state(meta, cfg, it, best, extra_state, result))
            if rank == 0 and saving:
                save_checkpoint(os.path.join(save_dir, "iter_{:06d}".format(it)), model,
                                _state(meta, cfg, it, best, extra_state), optimizer)
                _prune_checkpoints(save_dir, keep)
            t_wait = time.perf_counter()
    bar.close()
    if writer is not None:
        writer.close()
    total = wait_s + compute_s
    summary = {"iteration": iters, "best": best, "images_per_s": images / total if total else 0.0,
               "loader_wait_fraction": wait_s / total if total else 0.0,
               "loss": {"first": first_loss, "last": loss_v}}  # this run's first and last iteration
    if rank == 0:
        write_json(summary, os.path.join(save_dir, "train_summary.json"), indent=1)
    return summary


def _state(meta: dict, cfg: dict, it: int, best: dict, extra: dict, metrics: Optional[dict] = None) -> dict:
    return dict(extra, iteration=it, model=meta, config=cfg, best=best, metrics=metrics, paddle=paddle.__version__)


def _prune_checkpoints(save_dir: str, keep: int) -> None:
    folders = sorted(f for f in os.listdir(save_dir) if f.startswith("iter_") and not f.endswith(".old"))
    for old in folders[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(save_dir, old), ignore_errors=True)


def _vdl_writer(save_dir: str):
    try:
        from visualdl import LogWriter
    except ImportError:
        raise DDRNetError("--use_vdl needs VisualDL: pip install visualdl") from None
    return LogWriter(os.path.join(save_dir, "vdl"))
