"""The training loop: SGD (or AdamW) + poly lr, OHEM CE, atomic checkpoints, exact resume (data order and
augmentation depend only on seed and iteration: see data.ResumableBatchSampler), periodic eval, AMP on GPU.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Optional

import paddle
import paddle.distributed as dist
from tqdm import tqdm

from ddrnet.runtime.errors import DDRNetError
from ddrnet.train.checkpoint import (OPT, PARAMS, latest_checkpoint, load_weights_lenient, model_meta,
                                     resolve_weights, save_checkpoint, weights_meta)
from ddrnet.train.data import CityscapesDataset, batches, build_loader, build_transforms
from ddrnet.train.evaluate import evaluate
from ddrnet.train.losses import build_loss
from ddrnet.train.model import build_model


def build_optimizer(cfg: dict, model: paddle.nn.Layer, iters: int):
    sched_cfg = dict(cfg.get("lr_scheduler", {}))
    lr = float(sched_cfg.get("learning_rate", 0.01))
    scheduler = paddle.optimizer.lr.PolynomialDecay(
        learning_rate=lr, decay_steps=iters, end_lr=float(sched_cfg.get("end_lr", 0.0)),
        power=float(sched_cfg.get("power", 0.9)))
    warmup = int(sched_cfg.get("warmup_iters", 0))
    if warmup > 0:
        scheduler = paddle.optimizer.lr.LinearWarmup(scheduler, warmup, float(sched_cfg.get("warmup_start_lr", 0.0)), lr)
    opt_cfg = cfg.get("optimizer", {})
    kind = opt_cfg.get("type", "SGD")
    decay = float(opt_cfg.get("weight_decay", 5e-4))
    if kind == "SGD":  # PaddleSeg's SGD type is momentum SGD with L2 decay
        optimizer = paddle.optimizer.Momentum(
            learning_rate=scheduler, momentum=float(opt_cfg.get("momentum", 0.9)), parameters=model.parameters(),
            weight_decay=paddle.regularizer.L2Decay(decay))
    elif kind == "AdamW":
        optimizer = paddle.optimizer.AdamW(learning_rate=scheduler, parameters=model.parameters(), weight_decay=decay,
                                           beta1=float(opt_cfg.get("beta1", 0.9)), beta2=float(opt_cfg.get("beta2", 0.999)))
    else:
        raise DDRNetError("optimizer.type {!r}: choose SGD (momentum) or AdamW".format(kind))
    return optimizer, scheduler


def _check_writable(save_dir: str, need_mb: float) -> None:
    """Fail before training, not after hours of it, when checkpoints cannot be written."""
    try:
        os.makedirs(save_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=save_dir):
            pass
    except OSError as err:
        raise DDRNetError("{}: save dir not writable ({})".format(save_dir, err.strerror)) from None
    free_mb = shutil.disk_usage(save_dir).free / 2 ** 20
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
                             build_transforms(dcfg.get("transforms", [{"type": "Normalize"}]), train=train))


def train(cfg: dict, save_dir: str, resume: bool = False, data_root: Optional[str] = None,
          do_eval: bool = True, use_vdl: bool = False, device: Optional[str] = None) -> dict:
    """Train the model `cfg` describes; returns the final summary (iteration, best mIoU, throughput)."""
    if device:
        paddle.set_device(device)
    mcfg = cfg.get("model", {})
    # converted PyTorch weights carry their padding rules; the config may still override them
    pretrained_meta = (weights_meta(resolve_weights(mcfg["pretrained"])) if mcfg.get("pretrained") else None) or {}
    padding = {k: bool(mcfg.get(k, pretrained_meta.get(k, True))) for k in ("avg_pool_exclusive", "down3_same_padding")}
    meta = model_meta(mcfg.get("name", "ddrnet23"), int(mcfg.get("num_classes", 19)),
                      bool(mcfg.get("aux_head", False)), **padding)
    paddle.seed(int(cfg.get("seed", 0)))
    model = build_model(**meta)
    if mcfg.get("pretrained"):
        load_weights_lenient(model, mcfg["pretrained"])
    return fit(model, meta, cfg, save_dir, resume=resume, data_root=data_root, do_eval=do_eval, use_vdl=use_vdl)


def fit(model: paddle.nn.Layer, meta: dict, cfg: dict, save_dir: str, resume: bool = False,
        data_root: Optional[str] = None, do_eval: bool = True, use_vdl: bool = False,
        extra_state: Optional[dict] = None) -> dict:
    """The loop itself, for a model built by the caller: training, or fine-tuning a pruned or
    quantization-aware model (`extra_state` is stored in every checkpoint's state.json)."""
    on_gpu = paddle.get_device().startswith("gpu")
    world = dist.get_world_size()
    if world > 1:
        dist.init_parallel_env()
    rank = dist.get_rank()
    seed = int(cfg.get("seed", 0))
    iters, batch_size = int(cfg["iters"]), int(cfg["batch_size"])
    optimizer, scheduler = build_optimizer(cfg, model, iters)
    _check_writable(save_dir, need_mb=3 * sum(int(p.size) for p in model.parameters()) * 4 / 2 ** 20)
    extra_state = extra_state or {}

    start, best = 0, {"miou": -1.0, "iteration": 0}
    if resume:
        found = latest_checkpoint(save_dir)
        if found is None:
            print("no complete checkpoint in {}: starting from scratch".format(save_dir))
        else:
            folder, state = found
            model.set_state_dict(paddle.load(os.path.join(folder, PARAMS)))
            optimizer.set_state_dict(paddle.load(os.path.join(folder, OPT)))
            start, best = state["iteration"], state.get("best", best)
            print("resumed from {} (iteration {})".format(folder, start))
    if start >= iters:  # resumed a finished run: nothing to do
        return {"iteration": start, "best": best, "images_per_s": 0.0, "loader_wait_fraction": 0.0}

    train_set = build_dataset(cfg, "train_dataset", data_root)
    val_set = build_dataset(cfg, "val_dataset", data_root) if do_eval else None
    loader = build_loader(train_set, batch_size, seed, start, iters, num_workers=int(cfg.get("num_workers", 0)))
    losses = [build_loss(t) for t in cfg.get("loss", {}).get("types", [{"type": "OhemCrossEntropyLoss"}])]
    coefs = [float(c) for c in cfg.get("loss", {}).get("coef", [1.0])]
    net = paddle.DataParallel(model) if world > 1 else model
    use_amp = bool(cfg.get("amp", False)) and on_gpu
    scaler = paddle.amp.GradScaler(init_loss_scaling=1024) if use_amp else None
    writer = _vdl_writer(save_dir) if use_vdl and rank == 0 else None
    eval_interval = int(cfg.get("eval_interval", 1000))
    save_interval = int(cfg.get("save_interval", 1000))
    log_iters = int(cfg.get("log_iters", 10))

    model.train()
    wait_s = compute_s = 0.0
    images = 0
    bar = tqdm(total=iters, initial=start, desc="train", disable=rank != 0, dynamic_ncols=True)
    t_wait = time.perf_counter()
    for it, (image, label) in enumerate(batches(loader), start=start + 1):
        t_start = time.perf_counter()
        wait_s += t_start - t_wait
        with paddle.amp.auto_cast(enable=use_amp, level="O1"):
            outputs = net(image)
            loss = sum(coefs[min(i, len(coefs) - 1)] * losses[min(i, len(losses) - 1)](out, label)
                       for i, out in enumerate(outputs))
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.minimize(optimizer, loss)
        else:
            loss.backward()
            optimizer.step()
        optimizer.clear_grad()
        lr = optimizer.get_lr()
        scheduler.step()
        compute_s += time.perf_counter() - t_start
        images += int(image.shape[0]) * world
        if it % log_iters == 0 or it == iters:
            loss_v = float(loss)
            bar.set_postfix(loss="{:.4f}".format(loss_v), lr="{:.2e}".format(lr))
            if writer is not None:
                writer.add_scalar("Train/loss", loss_v, it)
                writer.add_scalar("Train/lr", lr, it)
        bar.update(1)
        last = it == iters
        if val_set is not None and (it % eval_interval == 0 or last):
            result = evaluate(model, val_set, progress=False)
            model.train()
            if rank == 0:
                tqdm.write("iter {}: val mIoU {:.4f} pixel acc {:.4f}".format(it, result["miou"], result["pixel_acc"]))
                if writer is not None:
                    writer.add_scalar("Evaluate/mIoU", result["miou"], it)
                if result["miou"] > best["miou"]:
                    best = {"miou": result["miou"], "iteration": it}
                    save_checkpoint(os.path.join(save_dir, "best_model"), model,
                                    _state(meta, cfg, it, best, extra_state, result))
        if rank == 0 and (it % save_interval == 0 or last):
            save_checkpoint(os.path.join(save_dir, "iter_{:06d}".format(it)), model,
                            _state(meta, cfg, it, best, extra_state), optimizer)
            _prune_checkpoints(save_dir, int(cfg.get("keep_checkpoint_max", 3)))
        t_wait = time.perf_counter()
    bar.close()
    if writer is not None:
        writer.close()
    total = wait_s + compute_s
    summary = {"iteration": iters, "best": best, "images_per_s": images / total if total else 0.0,
               "loader_wait_fraction": wait_s / total if total else 0.0}
    if rank == 0:
        with open(os.path.join(save_dir, "train_summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
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
