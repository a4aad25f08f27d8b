"""Segment live cameras, RTSP / HTTP MJPEG streams, GStreamer pipelines, video files and image globs.

SRC is a video file, a camera index or /dev/videoN, an rtsp:// or http(s):// (MJPEG) URL, a GStreamer
pipeline 'gst:...' (needs an OpenCV built with GStreamer, e.g. JetPack's or Debian's python3-opencv), or
an image glob (quote it: 'frames/*.png'). Give --source several times for several cameras.

Live sources keep only their newest frame, so latency stays bounded however slow the model is
(stale frames are dropped and counted). A stall watchdog covers every live source, local cameras
included: no frame for --stall-timeout seconds and the source is reopened, with a backoff of at most
about a second, so a camera that comes back streams again within ~2 s. Files and globs are read in
order without drops unless --realtime. Several sources are batched into one inference call when the
model's batch dimension is dynamic, else served round-robin.

Outputs: --out an overlay video, H.264 MP4 when PyAV (pip install av) or an H.264-capable OpenCV is
there (FILE for one source, DIR/source<i>.mp4 for any number), --masks trainId PNGs, --jsonl one line
per frame plus events and the final summary, --serve HOST:PORT a live page for a browser (overlay
video, FPS, frame age, drops; JSON at /status). The summary counts, per source, captured = processed +
dropped + skipped, reconnects and attempts, and the time without a connection (outage).
Ctrl-C / SIGTERM stop cleanly: videos are closed (playable), the summary is printed, exit 0.
"""
from __future__ import annotations

import argparse
import os

from ddrnet.runtime.cliargs import add_runtime_options, check_runtime_options, open_predictor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="exported model folder (with deploy.yaml)")
    parser.add_argument("--source", required=True, action="append", metavar="SRC",
                        help="video file, camera index, /dev/videoN, rtsp:// or http(s):// URL, gst:PIPELINE, "
                             "or image glob; repeat for several sources")
    parser.add_argument("--out", metavar="FILE|DIR", help="overlay video: FILE.mp4 (one source) or DIR")
    parser.add_argument("--masks", metavar="DIR", help="write every mask as a trainId PNG")
    parser.add_argument("--jsonl", metavar="FILE", help="per-frame statistics and events, one JSON object a line")
    parser.add_argument("--show", action="store_true", help="show overlays in a window (needs a display; q quits)")
    parser.add_argument("--serve", metavar="HOST:PORT",
                        help="live view for a browser at http://HOST:PORT/ (PORT alone: 127.0.0.1:PORT)")
    parser.add_argument("--token", default=None,
                        help="access token the live view requires (default: $DDRNET_STREAM_TOKEN, else none)")
    parser.add_argument("--serve-fps", type=float, default=10.0, metavar="N",
                        help="frame rate of the live view's video, per source (default 10)")
    add_runtime_options(parser)
    parser.add_argument("--realtime", action="store_true",
                        help="play files and globs at their frame rate and drop frames like a camera")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames (all sources)")
    parser.add_argument("--stall-timeout", type=float, default=5.0, metavar="S",
                        help="reopen a live source that sends no frame for S seconds (default 5)")
    parser.add_argument("--max-reconnects", type=int, default=None, metavar="N",
                        help="give a live source up after N consecutive failed reconnects (default: never)")
    parser.add_argument("--schedule", default="auto", choices=["auto", "round-robin", "batch"],
                        help="several sources: one batched call when the model allows (auto), or one at a time")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate of glob sources and output videos (default: the video's, else 15)")


def _check_numbers(args: argparse.Namespace) -> None:
    from ddrnet.runtime.errors import DDRNetError

    limits = [("--max-frames", args.max_frames, 1), ("--max-reconnects", args.max_reconnects, 0)]
    for flag, value, lowest in limits:
        if value is not None and value < lowest:
            raise DDRNetError("{} must be at least {}, got {}".format(flag, lowest, value))
    for flag, value in [("--stall-timeout", args.stall_timeout), ("--fps", args.fps), ("--serve-fps", args.serve_fps)]:
        if value is not None and not value > 0:
            raise DDRNetError("{} must be positive, got {}".format(flag, value))
    if args.token is not None and not args.serve:
        raise DDRNetError("--token needs --serve")


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime import liveview, stream
    from ddrnet.runtime.outputs import check_outputs
    from ddrnet.runtime.sources import parse_source

    # Everything is checked before the model loads, so a typo fails in milliseconds.
    check_runtime_options(args)
    _check_numbers(args)
    specs = [parse_source(s, args.realtime) for s in args.source]
    check_outputs(specs, args.out, args.masks, args.jsonl)
    view = None
    if args.serve:
        host, port = liveview.parse_serve(args.serve)
        token = args.token if args.token is not None else os.environ.get(liveview.TOKEN_ENV)
        view = liveview.LiveView(host, port, token=token, fps=args.serve_fps)  # binds now
    try:
        predictor = open_predictor(args, args.model)
        options = stream.StreamOptions(
            max_frames=args.max_frames, stall_timeout=args.stall_timeout,
            max_reconnects=args.max_reconnects, schedule=args.schedule, out=args.out, masks=args.masks,
            jsonl=args.jsonl, show=args.show, fps=args.fps)
        runner = stream.StreamRunner(predictor, specs, options, live_view=view)
        with stream.stop_on_signals(runner):
            summary = runner.run()
    finally:
        if view is not None:
            view.close()
    print(stream.format_summary(summary), flush=True)
    stream.raise_for_failed_sources(summary)
    return 0
