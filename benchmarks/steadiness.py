"""Does every CPU of the host run at a steady speed? The same single-threaded kernel pinned on each CPU at
once, timed in windows.

Why the suite records it: on a shared cloud VM one vCPU's speed can halve for seconds at a time,
independently of the others. A multi-threaded inference that splits each layer's work evenly between its
threads (OpenVINO's oneDNN kernels do) then runs at the pace of its slowest core, so its 2-thread figures
switch between two modes while 1-thread ones mostly hold; onnxruntime hands out work in smaller pieces and
loses less. The shares below say how much of a run saw that. On a host with steady cores every window is
fast.

    python benchmarks/steadiness.py --seconds 30
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import check_output_file, write_json

SLOW_FACTOR = 1.5  # a window slower than this times the fastest one counts as slow
KERNEL_N = 256  # float32 matmul side: ~1 ms per call here, AVX-512 FMA bound like a convolution
SINGLE_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _window_medians(start: float, seconds: float, window_s: float) -> List[float]:
    """Median milliseconds of the kernel in each window from `start` (a time.time()) for `seconds`."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((KERNEL_N, KERNEL_N), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)  # BLAS warm-up before the clock starts
    while time.time() < start:
        time.sleep(0.001)
    medians = []
    for index in range(max(1, int(round(seconds / window_s)))):
        stop = start + (index + 1) * window_s
        times = []
        while time.time() < stop or not times:
            t0 = time.perf_counter()
            np.matmul(a, a, out=out)
            times.append((time.perf_counter() - t0) * 1e3)
        medians.append(float(np.median(times)))
    return medians


def measure(seconds: float, window_s: float = 1.0) -> Dict[str, List[float]]:
    """{cpu: window medians (ms)}: one process per CPU of this process's affinity, each pinned to its CPU and
    single-threaded, all starting together."""
    cpus = sorted(os.sched_getaffinity(0))
    start = time.time() + 2.0  # time for every worker to import numpy before the first window
    env = dict(os.environ, **SINGLE_THREAD_ENV)
    workers = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", str(cpu), "--start",
                                 repr(start), "--seconds", str(seconds), "--window", str(window_s)],
                                stdout=subprocess.PIPE, env=env, text=True) for cpu in cpus]
    series = {}
    for cpu, worker in zip(cpus, workers):
        out, _ = worker.communicate()
        if worker.returncode != 0:
            raise RuntimeError("steadiness worker on CPU {} exited with {}".format(cpu, worker.returncode))
        series[str(cpu)] = json.loads(out)
    return series


def summarise(series: Dict[str, List[float]], window_s: float = 1.0) -> dict:
    """Per CPU its median window and the share of windows slower than SLOW_FACTOR x the fastest window seen on
    any CPU; `all_fast_share`: the share of windows in which no CPU was slow (what an evenly split
    multi-threaded run needs); `slowest_over_fastest_p50`: the median over windows of the slowest CPU's time
    over the fastest's."""
    windows = min(len(v) for v in series.values())
    best = min(min(v) for v in series.values())
    slow = {cpu: [x > SLOW_FACTOR * best for x in v[:windows]] for cpu, v in series.items()}
    spread = [max(v[i] for v in series.values()) / min(v[i] for v in series.values()) for i in range(windows)]
    return {
        "window_s": window_s,
        "windows": windows,
        "kernel": "float32 matmul {0}x{0}x{0}, 1 thread per CPU".format(KERNEL_N),
        "best_ms": round(best, 3),
        "per_cpu": {cpu: {"median_ms": round(float(np.median(v)), 3), "slow_share": round(sum(slow[cpu]) / windows, 3)}
                    for cpu, v in series.items()},
        "all_fast_share": round(sum(not any(s[i] for s in slow.values()) for i in range(windows)) / windows, 3),
        "slowest_over_fastest_p50": round(float(np.median(spread)), 3),
    }


def check(seconds: float, window_s: float = 1.0) -> dict:
    """measure() and summarise() in one: what the suite records."""
    return summarise(measure(seconds, window_s), window_s)


def describe(result: dict) -> str:
    """One sentence for the report."""
    per_cpu = ", ".join("CPU {} {:.0%}".format(cpu, v["slow_share"]) for cpu, v in result["per_cpu"].items())
    return ("CPU steadiness ({} windows of {:g} s, {}): windows slower than {:g}x the fastest: {}; every CPU fast "
            "at once in {:.0%} of windows (the slowest CPU over the fastest: {:.2f}x, median).").format(
                result["windows"], result["window_s"], result["kernel"], SLOW_FACTOR, per_cpu,
                result["all_fast_share"], result["slowest_over_fastest_p50"])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to watch (default 30)")
    parser.add_argument("--window", type=float, default=1.0, help="window length in seconds (default 1)")
    parser.add_argument("--json", help="also write the summary and the per-window series here")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # one pinned CPU's loop (measure())
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        os.sched_setaffinity(0, {args.worker})
        print(json.dumps(_window_medians(args.start, args.seconds, args.window)))
        return 0
    try:  # the value checks answer in one line, as the ddrnet commands do
        if args.seconds <= 0 or args.window <= 0 or args.window > args.seconds:
            raise DDRNetError("--seconds and --window must be positive, and the window no longer than the run")
        check_output_file(args.json, "--json")
    except DDRNetError as err:
        print("{}: error: {}".format(parser.prog, err), file=sys.stderr)
        return 2
    series = measure(args.seconds, args.window)
    result = summarise(series, args.window)
    print(describe(result))
    if args.json:
        write_json(dict(result, series=series), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
