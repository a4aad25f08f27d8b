"""Where an ONNX model's time goes: onnxruntime's own profiler, summed per operator type and per node.

The session is the runtime backend's (same graph optimizations and thread settings), so the
operators are the ones onnxruntime really runs after fusion (QLinearConv, not Conv + Q/DQ).
Warm-up runs are left out by time stamp: only node events inside the timed `model_run`s count.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from typing import Dict, List, Optional

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
    count = len(runs)
    kernels_us = sum(per_op.values())
    nodes_of = defaultdict(int)  # type: Dict[str, int]
    for op in node_op.values():
        nodes_of[op] += 1

    def share(us: float) -> float:
        return us / kernels_us if kernels_us else 0.0

    return {
        "runs": count,
        "run_ms_median": float(np.median([r["dur"] for r in runs])) / 1e3,
        "kernel_ms_per_run": kernels_us / count / 1e3,
        "ops": [{"op": op, "ms": us / count / 1e3, "share": share(us), "nodes": nodes_of[op]}
                for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])],
        "top_nodes": [{"node": node, "op": node_op[node], "ms": us / count / 1e3, "share": share(us)}
                      for node, us in sorted(per_node.items(), key=lambda kv: -kv[1])[:10]],
    }


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
    result.update(model=os.path.abspath(onnx_path), threads=threads, input_shape=list(tensor.shape))
    return result


def format_op_profile(profile: dict, top: int = 12) -> str:
    """Terminal table: the operator types by time, then the slowest nodes."""
    lines = ["onnxruntime profile: {} runs, run p50 {:.1f} ms, kernels {:.1f} ms/run".format(
        profile["runs"], profile["run_ms_median"], profile["kernel_ms_per_run"]),
        "{:<26}{:>7}{:>11}{:>8}".format("operator", "nodes", "ms/run", "share")]
    for row in profile["ops"][:top]:
        lines.append("{:<26}{:>7}{:>11.2f}{:>7.1f}%".format(row["op"], row["nodes"], row["ms"], 100 * row["share"]))
    lines.append("slowest nodes:")
    for row in profile["top_nodes"][:5]:
        lines.append("  {:<40} {:<18}{:>9.2f} ms{:>7.1f}%".format(row["node"][:40], row["op"], row["ms"],
                                                                 100 * row["share"]))
    return "\n".join(lines)
