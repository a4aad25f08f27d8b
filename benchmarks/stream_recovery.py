"""How soon does `ddrnet stream` see new frames after an RTSP camera comes back?

    python benchmarks/stream_recovery.py                  # 5 cuts of 5 s, the tiny model
    python benchmarks/stream_recovery.py --cycles 10 --down 20 --model DIR

The camera is a real RTSP server on 127.0.0.1 (GStreamer's gst-rtsp-server in Debian's system Python:
`apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good
gstreamer1.0-plugins-ugly`), H.264 640x360 at 30 FPS (x264, a keyframe every 0.5 s). It is killed (a
power cut: the port refuses), kept down for `--down` seconds and started again, `--cycles` times, while
the real `ddrnet stream` command reads it through OpenCV's FFmpeg. Recovery = the capture time of the
first frame after the camera answered again, minus that moment (from the command's --jsonl log). Target:
every recovery <= 2 s, with the dead camera probed about once a second (attempts are counted).

Writes benchmarks/results/stream_recovery.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

from runtime_fixtures import make_model_dir  # noqa: E402

from ddrnet.runtime.bench import host_info, versions  # noqa: E402
from ddrnet.runtime.fileio import write_json  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"
CAMERA = """
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=360,framerate=30/1 "
                   "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
print("up", flush=True)
GLib.MainLoop().run()
"""


def start_camera(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", CAMERA, str(port)], stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "up":
        proc.kill()
        sys.exit("the RTSP camera did not start: apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
                 "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="exported model dir (default: a tiny 1x1-conv ONNX model)")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--down", type=float, default=5.0, help="seconds the camera stays dead each time")
    parser.add_argument("--up", type=float, default=6.0, help="seconds it streams between cuts")
    parser.add_argument("--stall-timeout", type=float, default=2.0)
    parser.add_argument("--json", default=os.path.join(HERE, "results", "stream_recovery.json"))
    args = parser.parse_args()

    port = free_port()
    url = "rtsp://127.0.0.1:{}/cam".format(port)
    with tempfile.TemporaryDirectory(prefix="stream_recovery_") as work:
        model = args.model or make_model_dir(os.path.join(work, "tiny_model"), shape=(-1, 3, -1, -1))
        log = os.path.join(work, "stream.jsonl")
        camera = start_camera(port)
        stream = subprocess.Popen([sys.executable, "-m", "ddrnet", "stream", "--model", model, "--source", url,
                                   "--jsonl", log, "--stall-timeout", str(args.stall_timeout)],
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        back: List[float] = []
        try:
            time.sleep(args.up)
            for _ in range(args.cycles):
                camera.kill()
                camera.wait()
                time.sleep(args.down)
                camera = start_camera(port)
                back.append(time.time())
                time.sleep(args.up)
        finally:
            stream.send_signal(signal.SIGINT)
            summary_text = stream.communicate(timeout=120)[0]
            camera.kill()
        with open(log, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
    captured = sorted(r["capture_time"] for r in records if r["type"] == "frame")
    recovery = [round(next((t for t in captured if t >= b), float("nan")) - b, 3) for b in back]
    source = records[-1]["sources"][0]
    result = {
        "benchmark": "stream_recovery", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "camera": "gst-rtsp-server, H.264 640x360@30, keyframe every 15 frames", "model": args.model or "tiny",
        "cycles": args.cycles, "down_s": args.down, "stall_timeout_s": args.stall_timeout,
        "recovery_s": recovery, "recovery_p50_s": statistics.median(recovery), "recovery_max_s": max(recovery),
        "reconnects": source["reconnects"], "reconnect_attempts": source["reconnect_attempts"],
        "outage_s": source["outage_s"], "counts": {k: source[k] for k in ("captured", "processed", "dropped")},
        "targets": {"every_recovery_within_2s": all(r <= 2.0 for r in recovery),
                    "every_cut_reconnected": source["reconnects"] == args.cycles},
        "summary": summary_text.strip().splitlines()[-1:],
        "host": host_info(), "versions": versions(),
    }
    write_json(result, args.json)
    print(json.dumps({k: result[k] for k in ("recovery_s", "recovery_p50_s", "recovery_max_s", "reconnects",
                                             "reconnect_attempts", "outage_s", "targets")}, indent=2))
    print("wrote", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
