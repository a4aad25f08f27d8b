"""Where an ONNX model's time goes: the backend's own profiler, summed per operator type and per node.

onnxruntime: its profiler on a session with the runtime backend's options, so the operators are the
ones onnxruntime really runs after fusion (QLinearConv, not Conv + Q/DQ); warm-up runs are left out
by time stamp: only node events inside the timed `model_run`s count.
OpenVINO: its per-layer performance counters (PERF_COUNT) of the compiled model, keyed by layer type
and the kernel that ran it (e.g. "Convolution brgconv_avx512_amx_I8": INT8 on AMX), so a layer left in
float or a reorder between layouts shows by name.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from typing import Dict, List, Mapping, Optional

import numpy as np

from ddrnet.runtime.errors import DDRNetError


def _summarise(events: List[dict], warmup: int) -> dict:
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[warmup:]
    if not runs:
        raise DDRNetError("onnxruntime's profile has no timed run")
    windows = [(r["ts"], r["ts"] + r["dur"]) for r in runs]
    per_op = defaultdict(float)  # type: Dict[str, float]
    per_node = defaultdict(float)  # type: Dict[str, float]
    node_op = {}  # type: Dict[str, str]
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        if not any(start <= event["ts"] <= end for start, end in windows):
            continue
        node = name[:-len("_kernel_time")]
        op = event.get("args", {}).get("op_name", "?")
        per_op[op] += event["dur"]
        per_node[node] += event["dur"]
        node_op[node] = op
    return _tabulate(per_op, per_node, node_op, len(runs), [r["dur"] / 1e3 for r in runs])


def op_profile(onnx_path: str, tensor: np.ndarray, threads: Optional[int] = None, runs: int = 10,
               warmup: int = 2) -> dict:
    """Run `onnx_path` on `tensor` warmup + runs times with profiling on; per-op and per-node times."""
    from ddrnet.runtime.backends import OnnxRuntimeBackend

    if runs < 1 or warmup < 0:
        raise DDRNetError("profiling needs runs >= 1 and warmup >= 0")
    with tempfile.TemporaryDirectory(prefix="ddrnet-profile-") as tmp:
        backend = OnnxRuntimeBackend(onnx_path, "cpu", threads, profile_prefix=os.path.join(tmp, "ort"))
        for _ in range(warmup + runs):
            backend.run(tensor)
        with open(backend.end_profiling()) as f:
            events = json.load(f)
    result = _summarise(events, warmup)
    result.update(backend="onnxruntime", model=os.path.abspath(onnx_path), threads=threads,
                  input_shape=list(tensor.shape))
    return result


def _tabulate(per_op: Dict[str, float], per_node: Dict[str, float], node_op: Dict[str, str], runs: int,
              run_ms: List[float]) -> dict:
    """The profile dict both backends return, from summed microseconds per op type and per node."""
    kernels_us = sum(per_op.values())
    nodes_of = defaultdict(int)  # type: Dict[str, int]
    for op in node_op.values():
        nodes_of[op] += 1

    def share(us: float) -> float:
        return us / kernels_us if kernels_us else 0.0

    return {
        "runs": runs,
        "run_ms_median": float(np.median(run_ms)),
        "kernel_ms_per_run": kernels_us / runs / 1e3,
        "ops": [{"op": op, "ms": us / runs / 1e3, "share": share(us), "nodes": nodes_of[op]}
                for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])],
        "top_nodes": [{"node": node, "op": node_op[node], "ms": us / runs / 1e3, "share": share(us)}
                      for node, us in sorted(per_node.items(), key=lambda kv: -kv[1])[:10]],
    }


def openvino_op_profile(onnx_path: str, tensor: np.ndarray, threads: Optional[int] = None, runs: int = 10,
                        warmup: int = 2, precision: str = "auto", frames: Optional[Mapping] = None) -> dict:
    """Run `onnx_path` in OpenVINO (the runtime backend's settings; `frames`: its input spec when `tensor`
    is a uint8 frame batch, see OpenVINOBackend) warmup + runs times with its performance counters on;
    time per (layer type, kernel) and per layer over the timed runs."""
    import time

    from ddrnet.runtime.openvino_backend import OpenVINOBackend

    if runs < 1 or warmup < 0:
        raise DDRNetError("profiling needs runs >= 1 and warmup >= 0")
    backend = OpenVINOBackend(onnx_path, "cpu", threads, precision, cache=False, profile=True, frames=frames)
    for _ in range(warmup):
        backend.run(tensor)
    per_op = defaultdict(float)  # type: Dict[str, float]
    per_node = defaultdict(float)  # type: Dict[str, float]
    node_op = {}  # type: Dict[str, str]
    run_ms = []  # type: List[float]
    for _ in range(runs):
        t0 = time.perf_counter()
        backend.run(tensor)
        run_ms.append((time.perf_counter() - t0) * 1e3)
        for info in backend.profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            op = "{} {}".format(info.node_type, info.exec_type)
            us = info.real_time.total_seconds() * 1e6
            per_op[op] += us
            per_node[info.node_name] += us
            node_op[info.node_name] = op
    result = _tabulate(per_op, per_node, node_op, runs, run_ms)
    result.update(backend="openvino", inference_precision=backend.inference_precision,
                  model=os.path.abspath(onnx_path), threads=threads, input_shape=list(tensor.shape))
    return result


def format_op_profile(profile: dict, top: int = 12) -> str:
    """Terminal table: the operator types by time, then the slowest nodes."""
    lines = ["{} profile: {} runs, run p50 {:.1f} ms, kernels {:.1f} ms/run".format(
        profile.get("backend", "onnxruntime"), profile["runs"], profile["run_ms_median"],
        profile["kernel_ms_per_run"]),
        "{:<42}{:>7}{:>11}{:>8}".format("operator", "nodes", "ms/run", "share")]
    for row in profile["ops"][:top]:
        lines.append("{:<42}{:>7}{:>11.2f}{:>7.1f}%".format(row["op"][:41], row["nodes"], row["ms"],
                                                            100 * row["share"]))
    lines.append("slowest nodes:")
    for row in profile["top_nodes"][:5]:
        lines.append("  {:<40} {:<18}{:>9.2f} ms{:>7.1f}%".format(row["node"][:40], row["op"], row["ms"],
                                                                 100 * row["share"]))
    return "\n".join(lines)
