"""The compression runs behind `ddrnet compress`: pruning, QAT, and prune -> fine-tune -> QAT.

Each run validates everything it was given (weights, config, ratio, data) before it writes a
byte, fine-tunes with the training loop (`ddrnet.train.trainer.fit`: same data pipeline, loss,
atomic checkpoints and exact `--resume`), and stores its compression description and its
before/after figures in every checkpoint's state.json, so `load_checkpoint` rebuilds the model.

Config (YAML, `_base_` a training config): the training keys are the fine-tuning defaults;
`prune:` / `qat:` sections hold the method settings and a `finetune:` mapping of per-stage
overrides (iters, lr_scheduler, ...), e.g. compress/configs/qat_ddrnet23_slim_synthetic_cpu.yml.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Dict, Optional, Sequence

import paddle

from ddrnet.compress.prune import CHANNEL_ALIGN, CRITERIA, check_ratio, model_cost, prune_model
from ddrnet.compress.qat import make_quantization_aware, quant_config
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import write_json
from ddrnet.runtime.manifest import sha256_file
from ddrnet.train.checkpoint import STATE, latest_checkpoint, load_checkpoint, read_state, resolve_weights
from ddrnet.train.config import load_config, merge_configs as merge_config
from ddrnet.train.evaluate import evaluate
from ddrnet.train.trainer import build_dataset, fit

BEST = "best_model"
REPORT = "compress_report.json"
SECTIONS = ("prune", "qat", "ptq")
log = logging.getLogger(__name__)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def fresh_parameter_names(run: Callable) -> Callable:
    """Run a stage with Paddle's parameter names counted from zero. The optimizer state in a
    checkpoint is keyed by those names, so a resumed stage must name its parameters as the
    interrupted one did, whatever else this process built before (e.g. the stage before it)."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        with paddle.utils.unique_name.guard():
            return run(*args, **kwargs)
    return wrapper


def load_compress_config(path: str, opts: Optional[Sequence[str]] = None) -> dict:
    """A bundled compression config by name (compress/configs/), else a path or a training config."""
    bundled = os.path.join(CONFIG_DIR, os.path.basename(path))
    return load_config(path if os.path.isfile(path) or not os.path.isfile(bundled) else bundled, opts)


def finetune_config(cfg: dict, stage: str, iters: Optional[int] = None) -> dict:
    """The training config of one stage: the config's training keys with `<stage>.finetune` over them."""
    base = {k: v for k, v in cfg.items() if k not in SECTIONS}
    ft = merge_config(base, (cfg.get(stage) or {}).get("finetune") or {})
    if iters is not None:
        if iters <= 0:
            raise DDRNetError("--iters {}: must be positive".format(iters))
        ft["iters"] = iters
    if "iters" not in ft or "batch_size" not in ft:
        raise DDRNetError("config: {} fine-tuning needs iters and batch_size".format(stage))
    return ft


def load_source(weights: str, cfg: dict):
    """(model, meta, compression) of the weights to compress; they must be the config's architecture."""
    return load_checkpoint(weights, model_name=(cfg.get("model") or {}).get("name"))[:3]


def source_info(weights: str) -> dict:
    path = resolve_weights(weights)
    return {"weights": os.path.abspath(path), "sha256": sha256_file(path)}


def _resumed_compression(save_dir: str, resume: bool) -> dict:
    """The compression section of the newest complete checkpoint when resuming (cached figures)."""
    found = latest_checkpoint(save_dir) if resume else None
    return (found[1].get("compression") or {}) if found else {}


def _miou(model, dataset) -> float:
    return float(evaluate(model, dataset, progress=True)["miou"])


def _best(save_dir: str) -> dict:
    """mIoU and iteration of the fine-tuned best_model."""
    state = read_state(os.path.join(save_dir, BEST))
    if state is None or not state.get("metrics"):
        raise DDRNetError("{}: no complete best_model checkpoint after fine-tuning".format(save_dir))
    return {"miou": float(state["metrics"]["miou"]), "best_iteration": int(state["iteration"])}


def _record(save_dir: str, stage: str, report: dict) -> None:
    """The report goes into best_model/state.json (compression.<stage>.report) and SAVE_DIR/REPORT."""
    best = os.path.join(save_dir, BEST)
    state = read_state(best)
    state["compression"][stage]["report"] = report
    write_json(state, os.path.join(best, STATE))
    write_json({stage: report, "checkpoint": os.path.abspath(best)}, os.path.join(save_dir, REPORT))


@fresh_parameter_names
def run_qat(cfg: dict, weights: str, save_dir: str, data_root: Optional[str] = None, resume: bool = False,
            iters: Optional[int] = None) -> dict:
    """Fold BN, fake-quantize what the INT8 export quantizes (train/quant.py), fine-tune; report FP32 vs QAT
    mIoU on val."""
    ft = finetune_config(cfg, "qat", iters)
    qcfg = quant_config((cfg.get("qat") or {}).get("quant"))
    model, meta, compression = load_source(weights, cfg)
    if compression.get("qat"):
        raise DDRNetError("{}: already quantization-aware trained".format(weights))
    val = build_dataset(ft, "val_dataset", data_root)
    build_dataset(ft, "train_dataset", data_root)
    cached = _resumed_compression(save_dir, resume).get("qat") or {}
    fp32_miou = cached.get("fp32_miou")
    if fp32_miou is None:
        log.info("evaluating the FP32 model on %d val images", len(val))
        fp32_miou = _miou(model, val)
    plan = make_quantization_aware(model, qcfg)
    section = dict(plan, config=qcfg, fp32_miou=fp32_miou, source=source_info(weights))
    fit(model, meta, ft, save_dir, resume=resume, data_root=data_root, do_eval=True,
        extra_state={"compression": dict(compression, fold_bn=True, qat=section)})
    report = dict(_best(save_dir), fp32_miou=fp32_miou, iters=int(ft["iters"]))
    report["delta_points"] = 100.0 * (report["miou"] - fp32_miou)
    _record(save_dir, "qat", report)
    log.info("FP32 mIoU %.4f | QAT INT8 (fake-quant, Paddle) mIoU %.4f | %+.2f points",
             fp32_miou, report["miou"], report["delta_points"])
    return report


@fresh_parameter_names
def run_prune(cfg: dict, weights: str, save_dir: str, ratio: Optional[float] = None,
              criterion: Optional[str] = None, data_root: Optional[str] = None, resume: bool = False,
              iters: Optional[int] = None) -> dict:
    """Prune channels with PaddleSlim, fine-tune; report params, MACs and mIoU before and after."""
    pcfg = cfg.get("prune") or {}
    ratio = check_ratio(float(ratio if ratio is not None else pcfg.get("ratio", 0.3)))
    criterion = criterion or pcfg.get("criterion", "l1")
    channel_align = int(pcfg.get("channel_align", CHANNEL_ALIGN))
    if criterion not in CRITERIA:
        raise DDRNetError("--criterion {}: choose {}".format(criterion, " or ".join(CRITERIA)))
    ft = finetune_config(cfg, "prune", iters)
    model, meta, compression = load_source(weights, cfg)
    if compression.get("qat"):
        raise DDRNetError("{}: quantization-aware trained weights cannot be pruned; prune the FP32 model "
                          "and quantize after (--prune R --qat)".format(weights))
    val = build_dataset(ft, "val_dataset", data_root)
    build_dataset(ft, "train_dataset", data_root)
    macs_hw = tuple(pcfg.get("macs_input_hw", (1024, 2048)))
    trace_shape = [1, 3] + list(pcfg.get("trace_input_hw", (128, 256)))
    cached = _resumed_compression(save_dir, resume).get("prune") or {}

    before = cached.get("before") or dict(model_cost(model, macs_hw), miou=_miou(model, val))
    shapes = prune_model(model, ratio, criterion, trace_shape, channel_align)
    shapes = dict((compression.get("prune") or {}).get("shapes") or {}, **shapes)
    if cached and cached.get("shapes") != shapes:
        raise DDRNetError("{}: holds a pruning run with other settings or weights; use another --save-dir".format(
            save_dir))
    after = cached.get("after") or dict(model_cost(model, macs_hw), miou_before_finetune=_miou(model, val))
    section = {"ratio": ratio, "criterion": criterion, "channel_align": channel_align, "shapes": shapes,
               "before": before, "after": after,
               "source": source_info(weights)}
    fit(model, meta, ft, save_dir, resume=resume, data_root=data_root, do_eval=True,
        extra_state={"compression": dict(compression, prune=section)})
    report = dict(_best(save_dir), ratio=ratio, criterion=criterion, channel_align=channel_align,
                  before=before, after=after,
                  iters=int(ft["iters"]), macs_reduction=1.0 - after["macs"] / before["macs"],
                  params_reduction=1.0 - after["params"] / before["params"])
    report["delta_points"] = 100.0 * (report["miou"] - before["miou"])
    _record(save_dir, "prune", report)
    log.info("pruned {:.0%} ({}): params {:.2f}M -> {:.2f}M, GMACs@{}x{} {:.2f} -> {:.2f} ({:.0%} fewer), "
             "mIoU {:.4f} -> {:.4f} before fine-tuning -> {:.4f} after ({:+.2f} points)".format(
                 ratio, criterion, before["params"] / 1e6, after["params"] / 1e6, macs_hw[0], macs_hw[1],
                 before["macs"] / 1e9, after["macs"] / 1e9, report["macs_reduction"], before["miou"],
                 after["miou_before_finetune"], report["miou"], report["delta_points"]))
    return report


def run_prune_qat(cfg: dict, weights: str, save_dir: str, ratio: Optional[float] = None,
                  criterion: Optional[str] = None, data_root: Optional[str] = None, resume: bool = False,
                  iters: Optional[int] = None) -> Dict[str, dict]:
    """Prune + fine-tune into SAVE_DIR/prune, then QAT of its best model into SAVE_DIR/qat."""
    # both stages' settings are checked before the first one writes anything
    finetune_config(cfg, "qat", iters)
    quant_config((cfg.get("qat") or {}).get("quant"))
    prune_dir, qat_dir = os.path.join(save_dir, "prune"), os.path.join(save_dir, "qat")
    pruned = run_prune(cfg, weights, prune_dir, ratio, criterion, data_root, resume, iters)
    quantized = run_qat(cfg, os.path.join(prune_dir, BEST), qat_dir, data_root, resume, iters)
    write_json({"prune": pruned, "qat": quantized, "checkpoint": os.path.abspath(os.path.join(qat_dir, BEST))},
               os.path.join(save_dir, REPORT))
    return {"prune": pruned, "qat": quantized}
