"""Segment live cameras, RTSP / HTTP MJPEG streams, video files and image globs.

SRC is a video file, a camera index or /dev/videoN, an rtsp:// or http(s):// (MJPEG) URL, or an
image glob (quote it: 'frames/*.png'). Give --source several times for several cameras.

Live sources keep only their newest frame, so latency stays bounded however slow the model is
(stale frames are dropped and counted); they reconnect with exponential backoff and jitter after
end of stream, errors or a stall (no frame for --stall-timeout seconds). Files and globs are read
in order without drops unless --realtime. Several sources are batched into one inference call when
the model's batch dimension is dynamic, else served round-robin.

Outputs: --out an overlay mp4 (FILE for one source, DIR/source<i>.mp4 for any number; each video
keeps the size of its first frame), --masks trainId PNGs (DIR/<frame>.png, DIR/source<i>/ with
several sources), --jsonl one line per frame (source, frame, capture_time, age_ms, pre/infer/post_ms,
dropped) plus reconnect events and the final summary. A status line goes to stderr.
Ctrl-C / SIGTERM stop cleanly: videos are closed (playable), the summary is printed, exit 0.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="exported model folder (with deploy.yaml)")
    parser.add_argument("--source", required=True, action="append", metavar="SRC",
                        help="video file, camera index, /dev/videoN, rtsp:// or http(s):// URL, or image glob; "
                             "repeat for several sources")
    parser.add_argument("--out", metavar="FILE|DIR", help="overlay video: FILE.mp4 (one source) or DIR")
    parser.add_argument("--masks", metavar="DIR", help="write every mask as a trainId PNG")
    parser.add_argument("--jsonl", metavar="FILE", help="per-frame statistics and events, one JSON object a line")
    parser.add_argument("--show", action="store_true", help="show overlays in a window (needs a display; q quits)")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "paddle", "tensorrt"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the backend")
    parser.add_argument("--realtime", action="store_true",
                        help="play files and globs at their frame rate and drop frames like a camera")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames (all sources)")
    parser.add_argument("--stall-timeout", type=float, default=5.0, metavar="S",
                        help="reconnect a live source that sends no frame for S seconds (default 5)")
    parser.add_argument("--max-reconnects", type=int, default=None, metavar="N",
                        help="give a live source up after N consecutive failed reconnects (default: never)")
    parser.add_argument("--schedule", default="auto", choices=["auto", "round-robin", "batch"],
                        help="several sources: one batched call when the model allows (auto), or one at a time")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate of glob sources and output videos (default: the video's, else 15)")


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime import stream
    from ddrnet.runtime.errors import DDRNetError

    limits = [("--max-frames", args.max_frames, 1), ("--threads", args.threads, 1),
              ("--max-reconnects", args.max_reconnects, 0)]
    for flag, value, lowest in limits:
        if value is not None and value < lowest:
            raise DDRNetError("{} must be at least {}, got {}".format(flag, lowest, value))
    if args.stall_timeout <= 0 or (args.fps is not None and args.fps <= 0):
        raise DDRNetError("--stall-timeout and --fps must be positive")
    # Sources and outputs are checked before the model loads, so a typo fails in milliseconds.
    specs = [stream.parse_source(s, args.realtime) for s in args.source]
    stream.output_paths(args.out, len(specs))
    options = stream.StreamOptions(
        max_frames=args.max_frames, stall_timeout=args.stall_timeout,
        max_reconnects=args.max_reconnects, schedule=args.schedule, out=args.out, masks=args.masks,
        jsonl=args.jsonl, show=args.show, fps=args.fps)

    from ddrnet.runtime import Predictor

    predictor = Predictor(args.model, backend=args.backend, device=args.device, threads=args.threads)
    runner = stream.StreamRunner(predictor, specs, options)
    with stream.stop_on_signals(runner):
        summary = runner.run()
    print(stream.format_summary(summary), flush=True)
    stream.raise_for_failed_sources(summary)
    return 0
