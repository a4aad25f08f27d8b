"""Benchmarks of exported models: per-stage latency, FPS, model size, mIoU, host and versions.

The Predictor's end-to-end time and the backend's raw `run` on a prepared tensor are two subjects of
one interleaved loop (ddrnet.runtime.timing), so host noise hits both alike and their ratio is the
runtime's overhead. `bench --all` interleaves every model and backend the same way, so the
comparison holds on a busy or throttling host.
"""
from __future__ import annotations

import datetime
import itertools
import os
import platform
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import atomic_path
from ddrnet.runtime.options import cpu_count
from ddrnet.runtime.timing import Subject, fps_fields, latency_stats, measure

STAGES = (("preprocess", "pre_ms"), ("inference", "infer_ms"), ("postprocess", "post_ms"),
          ("total", "total_ms"))
DEFAULT_FRAME_HW = (1024, 2048)  # Cityscapes, for models with dynamic H/W
FORMAT_LABELS = {"onnxruntime": "ONNX (onnxruntime)", "openvino": "ONNX (OpenVINO)", "paddle": "Paddle Inference",
                 "tensorrt": "TensorRT"}
# instruction-set extensions that decide INT8 / BF16 speed on CPUs
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
             "amx_bf16", "asimd", "asimddp", "sve")
# what a backend may report about itself, copied into the bench JSON's "backend_info"
BACKEND_INFO = ("chosen_because", "requested_precision", "inference_precision", "start_s", "cache_hit", "cache_dir",
                "providers", "device_name", "engine_path")


def _cpuinfo() -> Dict[str, str]:
    """First processor's fields from /proc/cpuinfo (empty elsewhere)."""
    fields = {}  # type: Dict[str, str]
    try:
        with open("/proc/cpuinfo", "r") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() not in fields:
                    fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def host_info() -> dict:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "cpu": info.get("model name") or info.get("Model") or info.get("Hardware") or platform.processor()
        or platform.machine(),
        "cores": cpu_count(),  # what this process may use, not the whole box
        "isa": [f for f in ISA_FLAGS if f in flags],
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> Dict[str, str]:
    """Versions of ddrnet, numpy, OpenCV and whichever backends this process has loaded."""
    import cv2

    from ddrnet import __version__

    found = {"ddrnet": __version__, "numpy": np.__version__, "cv2": cv2.__version__}
    for name in ("onnxruntime", "openvino", "paddle", "tensorrt", "pycuda"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = str(getattr(module, "__version__", getattr(module, "VERSION", "?")))
    return found


def _synthetic_frame(hw: Tuple[int, int]) -> np.ndarray:
    # content does not change the cost of dense convolutions; seeded so runs are comparable
    return np.random.default_rng(0).integers(0, 256, size=(hw[0], hw[1], 3), dtype=np.uint8)


def _dataset_frames(data_root: str, split: str, count: int) -> List[np.ndarray]:
    from ddrnet.runtime.cityscapes import list_samples
    from ddrnet.runtime.imageio import read_image

    return [read_image(image) for image, _ in list_samples(data_root, split)[:count]]


class Target:
    """One Predictor under test: end to end on its frames (BGR in, mask out) and the raw backend run
    on a tensor prepared from the first frame, two subjects of the same interleaved loop."""

    def __init__(self, predictor, frames: Sequence[np.ndarray], start_s: float):
        self.predictor = predictor
        self.frames = list(frames)
        self.start_s = start_s  # opening the Predictor: manifest, hashes, backend start
        self.tensor = predictor.preprocess(self.frames[0])
        cycle = itertools.cycle(self.frames)
        self.end_to_end = Subject({}, lambda: predictor(next(cycle)), stages=lambda: predictor.last_timing)
        self.raw = Subject({}, lambda: predictor.backend.run(self.tensor))

    @property
    def subjects(self) -> List[Subject]:
        return [self.end_to_end, self.raw]

    def latency(self) -> dict:
        stages = self.end_to_end.stage_ms
        latency = {name: latency_stats(stages[key]) for name, key in STAGES}
        raw = latency_stats(self.raw.samples_ms)
        paired = np.asarray(stages["total_ms"]) / np.asarray(self.raw.samples_ms)  # same round, same index
        result = {
            "latency_ms": latency,
            "raw_run_ms": raw,
            # median over median: robust to the odd slow iteration on a shared host
            "overhead_ratio": latency["total"]["p50"] / raw["p50"],
            # median of each round's total / its raw run: robust to drifts too
            "overhead_ratio_paired": float(np.median(paired)),
        }
        result.update(fps_fields(latency["total"]))
        return result


def open_target(model_dir: str, backend: str = "onnxruntime", device: str = "cpu",
                threads: Optional[int] = None, precision: Optional[str] = None,
                data_root: Optional[str] = None, split: str = "val",
                frame_hw: Optional[Tuple[int, int]] = None, spinning: bool = True,
                trust: Optional[str] = None) -> Target:
    """A Predictor and its frames: a few of the data set's images, else one synthetic frame of
    frame_hw (default: the model's fixed input size, or a Cityscapes frame for dynamic models).
    `trust`: the Predictor's (a signing key's .pub; None: $DDRNET_TRUST)."""
    from ddrnet.runtime.predictor import Predictor

    t0 = time.perf_counter()
    predictor = Predictor(model_dir, backend=backend, device=device, threads=threads, precision=precision,
                          spinning=spinning, trust=trust)
    start_s = time.perf_counter() - t0
    if data_root and frame_hw is None:
        return Target(predictor, _dataset_frames(data_root, split, count=4), start_s)
    fixed = predictor.input_shape[2:]
    hw = frame_hw or (tuple(fixed) if min(fixed) > 0 else DEFAULT_FRAME_HW)
    return Target(predictor, [_synthetic_frame(hw)], start_s)


def measure_targets(targets: Sequence[Target], iters: int, warmup: int, progress: bool = True) -> None:
    measure([s for t in targets for s in t.subjects], iters, warmup, "bench" if progress else None)


def report(target: Target, iters: int, warmup: int, threads: Optional[int] = None,
           data_root: Optional[str] = None, split: str = "val", max_images: Optional[int] = None,
           progress: bool = True) -> dict:
    """The bench JSON (README "bench JSON") of a measured target; evaluates mIoU when data_root is given."""
    from ddrnet.runtime.metrics import evaluate_model_dir

    predictor = target.predictor
    frame_hw = target.frames[0].shape[:2]
    result = {
        "model_dir": os.path.abspath(predictor.model_dir),
        "model_name": predictor.model_name,
        "backend": predictor.backend_name,
        "device": predictor.device,
        "precision": predictor.precision,
        "input_shape": predictor.input_shape,
        "frame_hw": list(frame_hw),
        "network_hw": list(predictor.network_hw(frame_hw)),
        "threads": threads,
        "warmup": warmup,
        "iterations": iters,
        "start_s": target.start_s,
    }
    result.update(target.latency())
    files = predictor.backend.model_files
    result["model_files"] = [os.path.basename(f) for f in files]
    result["model_size_bytes"] = sum(os.path.getsize(f) for f in files)
    result["model_size_mb"] = result["model_size_bytes"] / 2.0 ** 20
    result["data_root"] = os.path.abspath(data_root) if data_root else None
    result["split"] = split if data_root else None
    evaluation = evaluate_model_dir(predictor, data_root, split, progress, limit=max_images) \
        if data_root else None
    result["miou"] = evaluation["miou"] if evaluation else None
    result["eval"] = evaluation
    result["host"] = host_info()
    if getattr(predictor.backend, "device_name", None):
        result["host"]["gpu"] = predictor.backend.device_name
    result["backend_info"] = {k: getattr(predictor.backend, k) for k in BACKEND_INFO
                              if getattr(predictor.backend, k, None) is not None}
    result["versions"] = versions()
    result["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return result


def run_bench(model_dir: str, backend: str = "onnxruntime", device: str = "cpu",
              threads: Optional[int] = None, precision: Optional[str] = None,
              data_root: Optional[str] = None, split: str = "val", iters: int = 50, warmup: int = 5,
              frame_hw: Optional[Tuple[int, int]] = None, max_images: Optional[int] = None,
              progress: bool = True, trust: Optional[str] = None) -> dict:
    """Benchmark one model dir on one backend ("auto": the fastest installed); returns the bench JSON."""
    target = open_target(model_dir, backend, device, threads, precision, data_root, split, frame_hw, trust=trust)
    measure_targets([target], iters, warmup, progress)
    return report(target, iters, warmup, threads, data_root, split, max_images, progress)


def format_bench(result: dict) -> str:
    """Terminal table of one bench result."""
    lines = [
        "{} [{}]  {} on {}  precision {}  input {}  frame {}".format(
            result["model_name"], result["model_dir"], result["backend"], result["device"],
            result["precision"], "x".join(str(d) for d in result["input_shape"]),
            "x".join(str(d) for d in result["frame_hw"])),
        "{:<12}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}   ms".format("stage", "mean", "p50", "p90", "p99", "min", "max"),
    ]
    rows = [(name, result["latency_ms"][name]) for name, _ in STAGES]
    rows.append(("raw run", result["raw_run_ms"]))
    for name, s in rows:
        lines.append("{:<12}{:>9.2f}{:>9.2f}{:>9.2f}{:>9.2f}{:>9.2f}{:>9.2f}".format(
            name, s["mean"], s["p50"], s["p90"], s["p99"], s["min"], s["max"]))
    summary = "FPS {:.1f} (1000/mean), {:.1f} (1000/p50)   overhead {:.3f}x (total p50 / raw run p50; paired " \
              "{:.3f}x)   size {:.2f} MB".format(result["fps_mean"], result["fps_p50"], result["overhead_ratio"],
                                              result["overhead_ratio_paired"], result["model_size_mb"])
    if result["miou"] is not None:
        summary += "   mIoU {:.4f} ({} images)".format(result["miou"], result["eval"]["num_images"])
    lines.append(summary)
    info = result.get("backend_info", {})
    if info.get("chosen_because"):
        lines.append("backend auto -> {}: {}".format(result["backend"], info["chosen_because"]))
    if "cache_hit" in info:
        lines.append("start {:.2f} s ({}; compiled-model cache {})".format(
            result["start_s"], "loaded from the cache" if info["cache_hit"] else "compiled",
            info.get("cache_dir") or "off"))
    host = result["host"]
    lines.append("host: {} ({} cores{}){}".format(
        host["cpu"], host["cores"], ", " + " ".join(host["isa"]) if host["isa"] else "",
        "  gpu: " + host["gpu"] if host.get("gpu") else ""))
    return "\n".join(lines)


# -- bench --all -----------------------------------------------------------------------------

def find_model_dirs(root: str) -> List[str]:
    """`root` itself and its direct sub-folders that hold a deploy.yaml."""
    from ddrnet.runtime.manifest import MANIFEST_NAME

    if not os.path.isdir(root):
        raise DDRNetError("{}: no such folder".format(root))
    candidates = [root] + [os.path.join(root, d) for d in sorted(os.listdir(root))]
    found = [d for d in candidates if os.path.isfile(os.path.join(d, MANIFEST_NAME))]
    if not found:
        raise DDRNetError("{}: no exported model (deploy.yaml) in it or one level down".format(root))
    return found


def backends_for(model_dir: str, device: str) -> Tuple[List[Tuple[str, Optional[str]]], List[str]]:
    """((backend, precision) pairs to run, notes on the ones skipped) for every format the model dir lists.
    OpenVINO runs an FP32 model twice on a BF16 CPU, in FP32 and in BF16 (its default there)."""
    from ddrnet.runtime.backends import installed
    from ddrnet.runtime.manifest import file_entry, formats, load_manifest

    manifest = load_manifest(model_dir, verify=False)
    listed = formats(manifest)
    chosen = []  # type: List[Tuple[str, Optional[str]]]
    notes = []  # type: List[str]
    if "onnx" in listed:
        if file_entry(manifest, "onnx", backend="onnxruntime"):  # not in an OpenVINO-only INT8 bundle
            chosen.append(("onnxruntime", None))
        if device == "cpu" and installed("openvino"):
            chosen += [("openvino", p) for p in _openvino_precisions(manifest["precision"])]
        elif device == "cpu":
            notes.append("{}: openvino skipped (not installed)".format(model_dir))
        if device == "gpu" and file_entry(manifest, "onnx", backend="tensorrt"):
            if installed("tensorrt") and installed("pycuda"):
                chosen.append(("tensorrt", None))
            else:
                notes.append("{}: tensorrt skipped (tensorrt/pycuda not installed)".format(model_dir))
    if "paddle" in listed:
        if installed("paddle"):
            chosen.append(("paddle", None))
        else:
            notes.append("{}: paddle format skipped (paddlepaddle not installed)".format(model_dir))
    return chosen, notes


def _openvino_precisions(model_precision: str) -> List[str]:
    import openvino

    from ddrnet.runtime.openvino_backend import has_bf16

    if model_precision == "fp32" and has_bf16(openvino.Core()):
        return ["fp32", "bf16"]
    return ["auto"]


def bench_all(root: str, device: str = "cpu", threads: Optional[int] = None, precision: Optional[str] = None,
              data_root: Optional[str] = None, split: str = "val", iters: int = 50, warmup: int = 5,
              frame_hw: Optional[Tuple[int, int]] = None, max_images: Optional[int] = None,
              progress: bool = True, log=print, trust: Optional[str] = None) -> List[dict]:
    """Bench every format of every model dir under root, all timed in one interleaved loop;
    one that cannot be opened becomes an error row. `precision` goes to TensorRT only (the others
    run the file as exported; OpenVINO in each precision the CPU has, see backends_for).
    Thread pools must not spin between runs here, or the one that ran last takes the cores from
    the next (measured: 2 sessions at 2 threads, 17.5 -> 38.3 ms): onnxruntime sessions open with
    spinning off, and Paddle's OpenMP threads are asked to wait passively (effective when Paddle is
    not loaded yet, as in `ddrnet bench --all`)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    slots = []  # type: List[object]  # a Target, or the error row standing in its place
    for model_dir in find_model_dirs(root):
        try:
            chosen, notes = backends_for(model_dir, device)
        except DDRNetError as err:  # an unreadable deploy.yaml
            slots.append({"model_dir": os.path.abspath(model_dir), "backend": "-", "device": device,
                          "error": str(err)})
            continue
        for note in notes:
            log("note: " + note)
        for backend, backend_precision in chosen:
            try:
                slots.append(open_target(model_dir, backend, device, threads,
                                         precision if backend == "tensorrt" else backend_precision,
                                         data_root, split, frame_hw, spinning=False, trust=trust))
            except DDRNetError as err:
                slots.append({"model_dir": os.path.abspath(model_dir), "backend": backend, "device": device,
                              "error": str(err)})
    targets = [s for s in slots if isinstance(s, Target)]
    measure_targets(targets, iters, warmup, progress)
    return [report(s, iters, warmup, threads, data_root, split, max_images, progress)
            if isinstance(s, Target) else s for s in slots]


def _row_label(row: dict) -> str:
    return os.path.basename(row["model_dir"].rstrip(os.sep))


def format_all_table(rows: List[dict]) -> str:
    """Format | Precision | Size MB | mIoU | ms p50 | FPS (1000/p50), one line per model dir and format."""
    width = max([len("Model")] + [len(_row_label(r)) for r in rows]) + 2
    head = "{:<{w}}{:<22}{:<11}{:>9}{:>9}{:>10}{:>9}".format(
        "Model", "Format", "Precision", "Size MB", "mIoU", "ms p50", "FPS p50", w=width)
    lines = [head, "-" * len(head)]
    for r in rows:
        start = "{:<{w}}{:<22}".format(_row_label(r), FORMAT_LABELS.get(r["backend"], r["backend"]), w=width)
        if "error" in r:
            lines.append(start + "error: " + r["error"])
            continue
        lines.append(start + "{:<11}{:>9.2f}{:>9}{:>10.2f}{:>9.1f}".format(
            r["precision"], r["model_size_mb"], "-" if r["miou"] is None else "{:.4f}".format(r["miou"]),
            r["latency_ms"]["total"]["p50"], r["fps_p50"]))
    return "\n".join(lines)


def plot_all(rows: List[dict], path: str) -> bool:
    """Bar chart of p50 latency per model and format (PNG). False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in rows if "error" not in r]
    if not ok:
        raise DDRNetError("{}: nothing to plot, every benchmark failed".format(path))
    labels = ["{}\n{} {}".format(_row_label(r), FORMAT_LABELS.get(r["backend"], r["backend"]), r["precision"])
              for r in ok]
    ms = [r["latency_ms"]["total"]["p50"] for r in ok]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(ok)), 4.5))
    bars = ax.bar(range(len(ok)), ms, color="#4477aa")
    for bar, r in zip(bars, ok):
        note = "{:.1f} FPS".format(r["fps_p50"])
        if r["miou"] is not None:
            note += "\nmIoU {:.3f}".format(r["miou"])
        ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(ok)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("end-to-end latency p50 (ms)")
    host = ok[0]["host"]
    ax.set_title("{} ({} cores)".format(host.get("gpu") or host["cpu"], host["cores"]), fontsize=9)
    ax.margins(y=0.2)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return True
