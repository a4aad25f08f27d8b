"""Does watching the live view slow the stream? Stream FPS with N viewers on `--serve` vs none.

    python benchmarks/stream_viewers.py --make-model ddrnet23_slim   # random-weights 23-slim, exported once
    python benchmarks/stream_viewers.py --model DIR
    python benchmarks/stream_viewers.py --rounds 1 --seconds 3       # smoke run on a tiny 1x1-conv model

One `StreamRunner` with a live view runs for the whole benchmark on a local MJPEG camera
(tests/stream_fixtures.MjpegServer, faster than the model, so the stream is model-bound). Phases
without viewers and with `--viewers` viewers alternate (ABBA order, so a drift of the host hits both
alike); each viewer is a separate process reading /video/0.mjpg as a browser does (on a real car it
is on another machine; here it shares the CPU, which makes the comparison harsher, not kinder). The
stream FPS of a phase is processed frames / seconds, from the runner's counters; the process's CPU time
per processed frame is recorded too (the live view's extra work, readable even on a busy host).
Target: median FPS with viewers >= 0.95x the median without.

Writes benchmarks/results/stream_viewers.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
DEFAULT_WORK = os.path.join(tempfile.gettempdir(), "ddrnet_soak")
sys.path.insert(0, TESTS)  # the local camera and the viewer client live with the tests

from runtime_fixtures import make_model_dir  # noqa: E402
from stream_fixtures import MjpegServer  # noqa: E402

from ddrnet.runtime import Predictor  # noqa: E402
from ddrnet.runtime.bench import host_info, versions  # noqa: E402
from ddrnet.runtime.fileio import write_json  # noqa: E402
from ddrnet.runtime.liveview import LiveView  # noqa: E402
from ddrnet.runtime.options import parse_hw  # noqa: E402
from ddrnet.runtime.sources import parse_source  # noqa: E402
from ddrnet.runtime.stream import Console, StreamOptions, StreamRunner  # noqa: E402

EXPORT_SCRIPT = """
import sys
sys.path.insert(0, {benchmarks!r})
import variants
weights = variants.random_checkpoint({name!r}, {folder!r})
variants.export_fp32(weights, {out!r}, ({h}, {w}), formats=("onnx",))
"""


def make_model(name: str, work: str, hw: Tuple[int, int]) -> str:
    """A randomly initialised `name` exported to FP32 ONNX at `hw` (benchmarks/variants.py), in a
    subprocess so Paddle never enters this process (it would weigh on RSS); reused when present."""
    out = os.path.join(work, "{}_fp32_{}x{}".format(name, *hw))
    if not os.path.exists(os.path.join(out, "deploy.yaml")):
        script = EXPORT_SCRIPT.format(benchmarks=HERE, name=name, folder=os.path.join(work, "weights"), out=out,
                                      h=hw[0], w=hw[1])
        subprocess.run([sys.executable, "-c", script], check=True)
    return out


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The model options the stream benchmarks share (this one and soak_stream.py)."""
    parser.add_argument("--model", help="exported model dir (default: a tiny 1x1-conv ONNX model)")
    parser.add_argument("--make-model", metavar="NAME", help="export a random-weights NAME (e.g. ddrnet23_slim) "
                                                             "at the camera's size into --work and use it")
    parser.add_argument("--work", default=DEFAULT_WORK, help="folder for --make-model's export (reused)")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)


def open_model(args: argparse.Namespace, hw: Tuple[int, int]) -> Tuple[str, Predictor]:
    """(model dir as reported, Predictor) for add_model_options' options and a camera of size hw."""
    if args.make_model or args.model:
        model_dir = make_model(args.make_model, args.work, hw) if args.make_model else args.model
        return model_dir, Predictor(model_dir, backend=args.backend, device=args.device, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="stream_bench_") as work:
        tiny = make_model_dir(os.path.join(work, "tiny_model"), shape=(-1, 3, -1, -1))
        return "tiny 1x1-conv ONNX", Predictor(tiny, backend=args.backend, device=args.device, threads=args.threads)


def start_viewers(port: int, count: int, seconds: float) -> List[subprocess.Popen]:
    """`count` viewer processes (tests/mjpeg_viewer.watch), each reading for `seconds`."""
    return [subprocess.Popen([sys.executable, os.path.join(TESTS, "mjpeg_viewer.py"), str(port),
                              "/video/0.mjpg", str(seconds)], stdout=subprocess.PIPE, text=True)
            for _ in range(count)]


def measure(runner: StreamRunner, view: LiveView, seconds: float) -> Tuple[float, float, float]:
    """Over the next `seconds`: stream FPS (frames the runner processed / wall time), this process's CPU
    ms per processed frame (inference, capture and live view; the viewers run elsewhere) and the live
    view's own encoding CPU in % of one core (thread CPU time: readable even on a busy host)."""
    tally = runner.tallies[0]
    n0, t0, c0, e0 = tally.processed, time.monotonic(), time.process_time(), encode_cpu_s(view)
    time.sleep(seconds)
    frames, wall = tally.processed - n0, time.monotonic() - t0
    return (frames / wall, (time.process_time() - c0) * 1000.0 / max(1, frames),
            (encode_cpu_s(view) - e0) / wall * 100.0)


def encode_cpu_s(view: LiveView) -> float:
    return sum(f["encode_cpu_s"] for f in view.status()["live_view"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument("--size", default="512x1024", help="camera HxW (default 512x1024)")
    parser.add_argument("--source-fps", type=float, default=30.0)
    parser.add_argument("--viewers", type=int, default=2)
    parser.add_argument("--serve-fps", type=float, default=10.0, help="the live view's frame rate per source")
    parser.add_argument("--rounds", type=int, default=6, help="ABBA pairs of phases")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of one phase")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--json", default=os.path.join(HERE, "results", "stream_viewers.json"))
    args = parser.parse_args()
    height, width = parse_hw(args.size, "--size")

    model_dir, predictor = open_model(args, (height, width))
    view = LiveView("127.0.0.1", 0, fps=args.serve_fps)
    phases: Dict[str, List[float]] = {"none": [], "viewers": []}
    cpu: Dict[str, List[float]] = {"none": [], "viewers": []}
    encode_pct: List[float] = []
    received: List[int] = []
    with MjpegServer(width, height, fps=args.source_fps) as camera:
        runner = StreamRunner(predictor, [parse_source(camera.url)], StreamOptions(status_interval=3600.0),
                              Console(open(os.devnull, "w")), live_view=view)
        thread = threading.Thread(target=runner.run, name="stream", daemon=True)
        thread.start()
        try:
            time.sleep(args.warmup)
            order = ["none", "viewers", "viewers", "none"] * ((args.rounds + 1) // 2)
            for phase in order[:2 * args.rounds]:
                procs = []
                if phase == "viewers":
                    procs = start_viewers(view.port, args.viewers, args.seconds + 2.0)
                    time.sleep(1.0)  # connected and receiving before the measurement starts
                fps, cpu_ms, encoding = measure(runner, view, args.seconds)
                phases[phase].append(fps)
                cpu[phase].append(cpu_ms)
                if phase == "viewers":
                    encode_pct.append(encoding)
                received += [int(p.communicate()[0] or 0) for p in procs]
                print("{:8s} {:6.2f} FPS  {:6.1f} CPU ms/frame  live view {:4.1f} % of a core".format(
                    phase, fps, cpu_ms, encoding), flush=True)
        finally:
            runner.stop("benchmark end")
            thread.join(60.0)
            camera_frames = camera.frames_sent
    without, with_viewers = statistics.median(phases["none"]), statistics.median(phases["viewers"])
    ratio = with_viewers / without if without else None
    result = {
        "benchmark": "stream_viewers", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": {"dir": model_dir, "name": predictor.model_name,
                  "precision": predictor.precision},
        "backend": args.backend, "device": args.device, "threads": args.threads,
        "source": {"height": height, "width": width, "fps": args.source_fps, "frames_sent": camera_frames},
        "viewers": args.viewers, "serve_fps": args.serve_fps, "seconds_per_phase": args.seconds,
        "fps_without_viewers": [round(v, 3) for v in phases["none"]],
        "fps_with_viewers": [round(v, 3) for v in phases["viewers"]],
        "median_without": round(without, 3), "median_with": round(with_viewers, 3),
        "ratio": round(ratio, 4) if ratio else None,
        "cpu_ms_per_frame_without": [round(v, 2) for v in cpu["none"]],
        "cpu_ms_per_frame_with": [round(v, 2) for v in cpu["viewers"]],
        "cpu_per_frame_ratio": round(statistics.median(cpu["viewers"]) / statistics.median(cpu["none"]), 4),
        "live_view_encoding_pct_of_a_core": [round(v, 2) for v in encode_pct],
        # each viewer's JPEGs over its phase: proof that the viewers were really watching
        "jpegs_per_viewer": received, "viewer_fps": [round(n / (args.seconds + 2.0), 2) for n in received],
        "model_bound": without < 0.9 * args.source_fps,
        "targets": {"fps_with_viewers_at_least_0.95x": (ratio >= 0.95) if ratio else None},
        "host": host_info(), "versions": versions(),
    }
    write_json(result, args.json)
    print("median FPS without viewers {:.2f}, with {} viewers {:.2f}: ratio {:.3f}; CPU per frame x{:.3f}".format(
        without, args.viewers, with_viewers, ratio or 0.0, result["cpu_per_frame_ratio"]))
    print("wrote", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
