"""Benchmarks of exported models: per-stage latency, FPS, model size, mIoU, host and versions.

The Predictor's end-to-end time and the backend's raw `run` on a prepared tensor are measured
interleaved in one loop, so host noise hits both alike and their ratio is the runtime's overhead.
`bench --all` interleaves every model and format the same way (round-robin), so the comparison
holds on a busy or throttling host.
"""
from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ddrnet.runtime.errors import DDRNetError

STAGES = (("preprocess", "pre_ms"), ("inference", "infer_ms"), ("postprocess", "post_ms"),
          ("total", "total_ms"))
DEFAULT_FRAME_HW = (1024, 2048)  # Cityscapes, for models with dynamic H/W
FORMAT_LABELS = {"onnxruntime": "ONNX (onnxruntime)", "paddle": "Paddle Inference",
                 "tensorrt": "TensorRT"}
# instruction-set extensions that decide INT8 / BF16 speed on CPUs
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
             "amx_bf16", "asimd", "asimddp", "sve")


def latency_stats(samples_ms: Sequence[float]) -> Dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "min": float(a.min()), "max": float(a.max())}


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
    try:
        cores = len(os.sched_getaffinity(0))  # what this process may use, not the whole box
    except AttributeError:
        cores = os.cpu_count() or 1
    return {
        "cpu": info.get("model name") or info.get("Model") or info.get("Hardware") or platform.processor()
        or platform.machine(),
        "cores": cores,
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
    for name in ("onnxruntime", "paddle", "tensorrt", "pycuda"):
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


class Subject:
    """One Predictor under test: its frames, the tensor its raw runs use, what was measured."""

    def __init__(self, predictor, frames: Sequence[np.ndarray]):
        self.predictor = predictor
        self.frames = list(frames)
        self.tensor = predictor.preprocess(self.frames[0])
        self.stages = {key: [] for _, key in STAGES}  # type: Dict[str, List[float]]
        self.raw = []  # type: List[float]

    def step(self, i: int, record: bool) -> None:
        """One end-to-end Predictor call and one raw backend run on the prepared tensor, in
        alternating order so neither always runs right after the other (warm caches, spinning
        thread pools)."""
        frame = self.frames[i % len(self.frames)]
        if i % 2:
            self.predictor(frame)
        t0 = time.perf_counter()
        self.predictor.backend.run(self.tensor)
        raw_ms = (time.perf_counter() - t0) * 1e3
        if not i % 2:
            self.predictor(frame)
        if record:
            for key in self.stages:
                self.stages[key].append(self.predictor.last_timing[key])
            self.raw.append(raw_ms)

    def latency(self) -> dict:
        latency = {name: latency_stats(self.stages[key]) for name, key in STAGES}
        raw = latency_stats(self.raw)
        paired = np.asarray(self.stages["total_ms"]) / np.asarray(self.raw)
        return {
            "latency_ms": latency,
            "raw_run_ms": raw,
            # median over median: robust to the odd slow iteration on a shared host
            "overhead_ratio": latency["total"]["p50"] / raw["p50"],
            # median of each iteration's total / its neighbouring raw run: robust to drifts too
            "overhead_ratio_paired": float(np.median(paired)),
            "fps": 1000.0 / latency["total"]["mean"],
        }


def measure(subjects: Sequence[Subject], iters: int, warmup: int, progress: bool = True) -> None:
    """Round-robin over all subjects, so host noise (other jobs, clock changes) hits each alike."""
    if iters < 1 or warmup < 0:
        raise DDRNetError("--iters must be >= 1 and --warmup >= 0")
    for i in range(warmup):
        for subject in subjects:
            subject.step(i, record=False)
    steps = range(iters)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="bench", unit="it", leave=False)
    for i in steps:
        for subject in subjects:
            subject.step(i, record=True)


def open_subject(model_dir: str, backend: str = "onnxruntime", device: str = "cpu",
                 threads: Optional[int] = None, precision: Optional[str] = None,
                 data_root: Optional[str] = None, split: str = "val",
                 frame_hw: Optional[Tuple[int, int]] = None, spinning: bool = True) -> Subject:
    """A Predictor and its frames: a few of the data set's images, else one synthetic frame of
    frame_hw (default: the model's fixed input size, or a Cityscapes frame for dynamic models)."""
    from ddrnet.runtime.predictor import Predictor

    predictor = Predictor(model_dir, backend=backend, device=device, threads=threads, precision=precision,
                          spinning=spinning)
    if data_root and frame_hw is None:
        return Subject(predictor, _dataset_frames(data_root, split, count=4))
    fixed = predictor.input_shape[2:]
    return Subject(predictor, [_synthetic_frame(frame_hw or (tuple(fixed) if min(fixed) > 0 else DEFAULT_FRAME_HW))])


def report(subject: Subject, iters: int, warmup: int, threads: Optional[int] = None,
           data_root: Optional[str] = None, split: str = "val", max_images: Optional[int] = None,
           progress: bool = True) -> dict:
    """The bench JSON (DESIGN.md) of a measured subject; evaluates mIoU when data_root is given."""
    from ddrnet.runtime.metrics import evaluate_model_dir

    predictor = subject.predictor
    frame_hw = subject.frames[0].shape[:2]
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
    }
    result.update(subject.latency())
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
    if getattr(predictor.backend, "providers", None):
        result["providers"] = predictor.backend.providers
    result["versions"] = versions()
    result["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return result


def run_bench(model_dir: str, backend: str = "onnxruntime", device: str = "cpu",
              threads: Optional[int] = None, precision: Optional[str] = None,
              data_root: Optional[str] = None, split: str = "val", iters: int = 50, warmup: int = 5,
              frame_hw: Optional[Tuple[int, int]] = None, max_images: Optional[int] = None,
              progress: bool = True) -> dict:
    """Benchmark one model dir on one backend; returns the bench JSON (DESIGN.md)."""
    subject = open_subject(model_dir, backend, device, threads, precision, data_root, split, frame_hw)
    measure([subject], iters, warmup, progress)
    return report(subject, iters, warmup, threads, data_root, split, max_images, progress)


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
    summary = "FPS {:.1f}   overhead {:.3f}x (total p50 / raw run p50; paired {:.3f}x)   size {:.2f} MB".format(
        result["fps"], result["overhead_ratio"], result["overhead_ratio_paired"], result["model_size_mb"])
    if result["miou"] is not None:
        summary += "   mIoU {:.4f} ({} images)".format(result["miou"], result["eval"]["num_images"])
    lines.append(summary)
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


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or blocked package counts as absent
        return False


def backends_for(model_dir: str, device: str) -> Tuple[List[str], List[str]]:
    """(backends to run, notes on the ones skipped) for every format the model dir lists."""
    from ddrnet.runtime.manifest import formats, load_manifest

    listed = formats(load_manifest(model_dir, verify=False))
    chosen = []  # type: List[str]
    notes = []  # type: List[str]
    if "onnx" in listed:
        chosen.append("onnxruntime")
        if device == "gpu":
            if _importable("tensorrt") and _importable("pycuda"):
                chosen.append("tensorrt")
            else:
                notes.append("{}: tensorrt skipped (tensorrt/pycuda not installed)".format(model_dir))
    if "paddle" in listed:
        if _importable("paddle"):
            chosen.append("paddle")
        else:
            notes.append("{}: paddle format skipped (paddlepaddle not installed)".format(model_dir))
    return chosen, notes


def bench_all(root: str, device: str = "cpu", threads: Optional[int] = None, precision: Optional[str] = None,
              data_root: Optional[str] = None, split: str = "val", iters: int = 50, warmup: int = 5,
              frame_hw: Optional[Tuple[int, int]] = None, max_images: Optional[int] = None,
              progress: bool = True, log=print) -> List[dict]:
    """Bench every format of every model dir under root, all timed in one interleaved loop;
    one that cannot be opened becomes an error row. Thread pools must not spin between runs here, or
    the one that ran last takes the cores from the next (measured: 2 sessions at 2 threads, 17.5 ->
    38.3 ms): onnxruntime sessions open with spinning off, and Paddle's OpenMP threads are asked to
    wait passively (effective when Paddle is not loaded yet, as in `ddrnet bench --all`)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    slots = []  # type: List[object]  # a Subject, or the error row standing in its place
    for model_dir in find_model_dirs(root):
        try:
            chosen, notes = backends_for(model_dir, device)
        except DDRNetError as err:  # an unreadable deploy.yaml
            slots.append({"model_dir": os.path.abspath(model_dir), "backend": "-", "device": device,
                          "error": str(err)})
            continue
        for note in notes:
            log("note: " + note)
        for backend in chosen:
            # an engine precision only means something to TensorRT; the others run the file as exported
            try:
                slots.append(open_subject(model_dir, backend, device, threads,
                                          precision if backend == "tensorrt" else None,
                                          data_root, split, frame_hw, spinning=False))
            except DDRNetError as err:
                slots.append({"model_dir": os.path.abspath(model_dir), "backend": backend, "device": device,
                              "error": str(err)})
    measure([s for s in slots if isinstance(s, Subject)], iters, warmup, progress)
    return [report(s, iters, warmup, threads, data_root, split, max_images, progress)
            if isinstance(s, Subject) else s for s in slots]


def _row_label(row: dict) -> str:
    return os.path.basename(row["model_dir"].rstrip(os.sep))


def format_all_table(rows: List[dict]) -> str:
    """Format | Precision | Size MB | mIoU | ms p50 | FPS, one line per model dir and format."""
    width = max([len("Model")] + [len(_row_label(r)) for r in rows]) + 2
    head = "{:<{w}}{:<22}{:<11}{:>9}{:>9}{:>10}{:>9}".format(
        "Model", "Format", "Precision", "Size MB", "mIoU", "ms p50", "FPS", w=width)
    lines = [head, "-" * len(head)]
    for r in rows:
        start = "{:<{w}}{:<22}".format(_row_label(r), FORMAT_LABELS.get(r["backend"], r["backend"]), w=width)
        if "error" in r:
            lines.append(start + "error: " + r["error"])
            continue
        lines.append(start + "{:<11}{:>9.2f}{:>9}{:>10.2f}{:>9.1f}".format(
            r["precision"], r["model_size_mb"], "-" if r["miou"] is None else "{:.4f}".format(r["miou"]),
            r["latency_ms"]["total"]["p50"], r["fps"]))
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
        note = "{:.1f} FPS".format(r["fps"])
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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return True
