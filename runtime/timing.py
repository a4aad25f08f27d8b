"""The one timing harness of the suite (`ddrnet bench` and benchmarks/): interleaved rounds after a
warm-up, medians, and both FPS figures named.

Every subject of a group runs once per round and the order rotates from round to round (A B C,
B C A, C A B, ...), so the noise of a shared host (other jobs, clock changes) hits all of them alike,
their ratios hold, and none always runs right after the same neighbour (warm caches, a thread pool
still spinning). Thread pools should not spin between runs when several models share the cores:
the callers open their backends that way (`spinning=False`).

FPS is reported twice, by name: `fps_mean` = 1000 / mean latency (throughput of back-to-back
frames) and `fps_p50` = 1000 / median latency (the typical frame, robust to a few slow ones).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ddrnet.runtime.errors import DDRNetError


def latency_stats(samples_ms: Sequence[float]) -> Dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "min": float(a.min()), "max": float(a.max())}


def fps_fields(stats: Mapping[str, float]) -> Dict[str, float]:
    """The suite's two FPS figures of one latency_stats result."""
    return {"fps_mean": 1000.0 / stats["mean"], "fps_p50": 1000.0 / stats["p50"]}


class Subject:
    """One thing to time: a zero-argument call, the labels of its result row, and its samples.
    `stages`, when given, returns per-stage milliseconds of the call just made (e.g. a Predictor's
    `last_timing`), recorded alongside the wall time."""

    def __init__(self, labels: Mapping[str, object], call: Callable[[], object],
                 stages: Optional[Callable[[], Mapping[str, float]]] = None):
        self.labels = dict(labels)
        self.call = call
        self.stages = stages
        self.samples_ms = []  # type: List[float]
        self.stage_ms = {}  # type: Dict[str, List[float]]

    def once(self, record: bool = True) -> float:
        t0 = time.perf_counter()
        self.call()
        ms = (time.perf_counter() - t0) * 1e3
        if record:
            self.samples_ms.append(ms)
            for key, value in (self.stages() if self.stages else {}).items():
                self.stage_ms.setdefault(key, []).append(value)
        return ms

    def row(self) -> dict:
        stats = latency_stats(self.samples_ms)
        return dict(self.labels, latency_ms=stats, iterations=len(self.samples_ms), **fps_fields(stats))


def _rounds(subjects: Sequence[Subject], count: int, record: bool, progress: Optional[str]) -> None:
    steps = range(count)  # type: object
    if progress is not None:
        from tqdm import tqdm

        steps = tqdm(steps, desc=progress, unit="round", leave=False)
    n = len(subjects)
    for i in steps:
        for k in range(n):
            subjects[(i + k) % n].once(record)


def measure(subjects: Sequence[Subject], rounds: int, warmup: int, progress: Optional[str] = None) -> None:
    """`warmup` untimed rounds (the first runs build kernels and allocate arenas), then `rounds`
    recorded ones. `progress`: a progress-bar label, None for no bar."""
    if rounds < 1 or warmup < 0:
        raise DDRNetError("--iters must be >= 1 and --warmup >= 0")
    _rounds(subjects, warmup, False, None)
    _rounds(subjects, rounds, True, progress)


def rounds_for(round_s: float, budget_s: float, min_rounds: int, max_rounds: int) -> int:
    return int(max(min_rounds, min(max_rounds, budget_s // max(round_s, 1e-6))))


def measure_for(subjects: Sequence[Subject], budget_s: float, min_rounds: int, max_rounds: int, warmup: int = 2,
                progress: Optional[str] = "timing") -> List[dict]:
    """Warm up, time one round to size the run to `budget_s` (bounded by min/max rounds), measure;
    returns each subject's row with the rounds run and the host's load average after."""
    _rounds(subjects, warmup, False, None)
    probe_s = sum(subject.once(record=False) for subject in subjects) / 1e3
    measure(subjects, rounds_for(probe_s, budget_s, min_rounds, max_rounds), 0, progress)
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None  # not on Windows
    return [dict(s.row(), load_average_after=load) for s in subjects]
