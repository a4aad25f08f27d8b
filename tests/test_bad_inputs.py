"""The bad-input sweep (issue 6, item 6): every command, given a broken file, folder, option or model,
exits 2 with one line `ddrnet <cmd>: error: <what>: <problem>` last on stderr, prints no traceback and
writes nothing (no file appears or changes, no temporary leftovers; a command that proves its output
folder writable before the failure may leave that folder, empty). CASES is the README's table."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from typing import Dict, Optional

import cv2
import numpy as np
import pytest
import yaml

from runtime_fixtures import make_model_dir, write_tiny_cityscapes

TIMEOUT_S = 120


def case(case_id: str, argv: str, output: Optional[str], error: str):
    """argv: the command line after `ddrnet` ({port} and {camera} are filled in); output: the path the
    command would write; error: a regex the error line must match after `ddrnet <cmd>: error: `."""
    return pytest.param(argv, output, error, id=case_id)


EXPORT = "export --format onnx --input-shape 1,3,64,128 --out exported"
PRUNE = "compress --config prune_ddrnet23_slim_synthetic_cpu.yml --data-root good --save-dir compressed"
PTQ = "compress --ptq --config prune_ddrnet23_slim_synthetic_cpu.yml --weights other.pdparams --save-dir ptq"
TRAIN = "train --config ddrnet23_slim_synthetic_cpu.yml --no-eval --iters 1 --batch_size 2"  # both samples at once

CASES = [
    # predict: images
    case("predict-corrupt-png", "predict --model model --input corrupt.png --out pred", "pred",
         r"corrupt\.png: not a readable image \(corrupt or truncated\?\)"),
    case("predict-truncated-png", "predict --model model --input truncated.png --out pred", "pred",
         r"truncated\.png: not a readable image \(corrupt or truncated\?\)"),
    case("predict-truncated-jpeg", "predict --model model --input truncated.jpg --out pred", "pred",
         r"truncated\.jpg: truncated JPEG \(no end-of-image marker\)"),
    case("predict-zero-byte-image", "predict --model model --input empty.png --out pred", "pred",
         r"empty\.png: empty file"),
    case("predict-grayscale-png", "predict --model model --input gray.png --out pred", "pred",
         r"gray\.png: grayscale image; the model needs 3-channel colour"),
    case("predict-16bit-png", "predict --model model --input deep.png --out pred", "pred",
         r"deep\.png: expected 8-bit pixels, got uint16"),
    case("predict-empty-input-folder", "predict --model model --input emptydir --out pred", "pred",
         r"emptydir: no images \(\.png"),
    case("predict-output-under-a-file", "predict --model model --input image.png --out afile/pred", "afile/pred",
         r"afile/pred: cannot create output folder"),
    # predict: model dirs
    case("predict-tampered-deploy-yaml", "predict --model tampered --input image.png --out pred", "pred",
         r"tampered/model\.onnx: SHA-256 mismatch with deploy\.yaml"),
    case("predict-missing-deploy-yaml", "predict --model nomanifest --input image.png --out pred", "pred",
         r"nomanifest/deploy\.yaml: missing \(not an exported model dir\?\)"),
    case("predict-deploy-yaml-path-escape", "predict --model escape --input image.png --out pred", "pred",
         r"escape/deploy\.yaml: file path '\.\./model/model\.onnx' must not contain '\.\.'"),
    # stream
    case("stream-corrupt-video", "stream --model model --source corrupt.mp4 --out overlay.mp4", "overlay.mp4",
         r"corrupt\.mp4: not a readable video \(corrupt, truncated or unsupported\)"),
    case("stream-truncated-video", "stream --model model --source truncated.mp4 --out overlay.mp4", "overlay.mp4",
         r"truncated\.mp4: not a readable video"),
    case("stream-unreachable-url",
         "stream --model model --source http://127.0.0.1:{port}/stream.mjpg --max-reconnects 0 --out overlay.mp4",
         "overlay.mp4", r"http://127\.0\.0\.1:\d+/stream\.mjpg: gave up after 1 attempt: cannot open"),
    case("stream-missing-camera", "stream --model model --source {camera} --max-reconnects 0 --out overlay.mp4",
         "overlay.mp4", r"/dev/video\d+: gave up after 1 attempt: cannot open"),
    case("stream-glob-no-match", "stream --model model --source frames/*.png --out overlay.mp4", "overlay.mp4",
         r"frames/\*\.png: no files match this pattern"),
    case("stream-output-under-a-file", "stream --model model --source video.mp4 --out afile/overlay.mp4",
         "afile/overlay.mp4", r"afile: cannot create folder"),
    # eval: data
    case("eval-label-ids-out-of-range", "eval --model model --data-root badids --json eval.json", "eval.json",
         r"badids/gtFine/val/.*_gtFine_labelIds\.png: label ids outside 0\.\.33: \[200\]"),
    case("eval-image-label-size-mismatch", "eval --model model --data-root sizemm --json eval.json", "eval.json",
         r"sizemm/gtFine/val/.*_labelIds\.png: label size 8x32 differs from its image .* 16x32"),
    case("eval-image-without-label", "eval --model model --data-root nolabel --json eval.json", "eval.json",
         r"nolabel/leftImg8bit/val/.*_leftImg8bit\.png: image without its label"),
    case("eval-empty-data-folder", "eval --model model --data-root emptydir --json eval.json", "eval.json",
         r"emptydir/leftImg8bit/val: no such folder \(expected the Cityscapes layout"),
    case("eval-missing-data-folder", "eval --model model --data-root nodata --json eval.json", "eval.json",
         r"nodata: no such data folder"),
    case("eval-weights-of-another-architecture", "eval --weights other.pdparams --data-root good --json eval.json",
         "eval.json", r"other\.pdparams: weights do not fit this model .* unexpected"),
    # train
    case("train-label-ids-out-of-range", TRAIN + " --data-root badids --save-dir run", "run",
         r"badids/gtFine/train/.*_labelIds\.png: label ids outside 0\.\.33: \[200\]"),
    case("train-size-mismatch-no-workers", TRAIN + " --num_workers 0 --data-root sizemm --save-dir run", "run",
         r"sizemm/gtFine/train/.*_labelIds\.png: label size 8x32 differs from its image"),
    case("train-unknown-config", "train --config nosuch.yml --data-root good --save-dir run", "run",
         r"nosuch\.yml: no such config \(bundled configs: "),
    case("train-opt-without-value", "train --config ddrnet23_slim_synthetic_cpu.yml --opt iters --save-dir run",
         "run", r"--opt 'iters': expected key=value"),
    case("train-opt-not-a-literal", "train --config ddrnet23_slim_synthetic_cpu.yml --opt iters=[1, --save-dir run",
         "run", r"--opt 'iters=\[1,': value is not a literal"),
    case("train-save-dir-under-a-file", TRAIN + " --data-root good --save-dir afile/run", "afile/run",
         r"afile/run: save dir not writable"),
    # export
    case("export-weights-of-another-architecture", EXPORT + " --weights other.pdparams", "exported",
         r"other\.pdparams: weights do not fit this model"),
    case("export-bad-input-shape", "export --weights other.pdparams --input-shape 1,3,abc --out exported",
         "exported", r"--input-shape '1,3,abc': expected N,3,H,W"),
    case("export-bad-output-op", "export --weights other.pdparams --output-op max --out exported", "exported",
         r"argument --output-op: invalid choice: 'max'"),
    case("export-int8-empty-calibration-folder", EXPORT + " --weights other.pdparams --int8 --calib-dir emptydir",
         "exported", r"emptydir: no calibration images"),
    case("export-int8-calibration-on-val", EXPORT + " --weights other.pdparams --int8 --calib-dir good/leftImg8bit/val",
         "exported", r"good/leftImg8bit/val: the val split is for evaluation; calibrate on train images"),
    # compress
    case("compress-prune-ratio-above-1", PRUNE + " --prune 1.5 --weights other.pdparams", "compressed",
         r"--prune 1\.5: the pruning ratio must be in \(0, 1\)"),
    case("compress-prune-ratio-0", PRUNE + " --prune 0 --weights other.pdparams", "compressed",
         r"--prune 0\.0: the pruning ratio must be in \(0, 1\)"),
    case("compress-weights-of-another-architecture", PRUNE + " --prune 0.3 --iters 1 --weights other.pdparams",
         "compressed", r"other\.pdparams: weights do not fit this model"),
    case("compress-ptq-empty-calibration-folder", PTQ + " --calib-dir emptydir", "ptq",
         r"emptydir: no calibration images"),
    case("compress-ptq-calibration-on-val", PTQ + " --calib-dir good/leftImg8bit/val", "ptq",
         r"good/leftImg8bit/val: the val split is for evaluation"),
    # convert-weights, data, bench, demo
    case("convert-weights-not-a-torch-file", "convert-weights other.pdparams converted.pdparams", "converted.pdparams",
         r"other\.pdparams: not a PyTorch checkpoint"),
    case("convert-weights-text-file", "convert-weights notes.txt converted.pdparams", "converted.pdparams",
         r"notes\.txt: not a PyTorch checkpoint \(neither torch\.save's zip nor its legacy pickle format\)"),
    case("data-synth-bad-size", "data synth --out synth --train 1 --val 1 --size 64by128", "synth",
         r"--size '64by128': expected HEIGHTxWIDTH"),
    case("data-synth-output-under-a-file", "data synth --out afile/synth --train 1 --val 1 --size 64x128",
         "afile/synth", r"afile/synth: cannot create the data folder"),
    case("bench-tampered-deploy-yaml", "bench --model tampered --iters 2 --warmup 0 --json bench.json", "bench.json",
         r"tampered/model\.onnx: SHA-256 mismatch with deploy\.yaml"),
    case("demo-workdir-under-a-file", "demo --workdir afile/demo --size 64x128", "afile/demo",
         r"afile/demo/data: cannot create the data folder"),
]

# A small convolution net's weights with a sidecar that claims DDRNet-23-slim: the wrong model file.
_OTHER_WEIGHTS = """
import json, sys, paddle
net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 3), paddle.nn.BatchNorm2D(8))
paddle.save(net.state_dict(), sys.argv[1] + ".pdparams")
meta = {"name": "ddrnet23_slim", "num_classes": 19, "aux_head": False, "avg_pool_exclusive": True,
        "down3_same_padding": True}
json.dump({"model": meta}, open(sys.argv[1] + ".json", "w"))
"""


def _encoded(ext: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def _write_images(root: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(64, 128, 3), dtype=np.uint8)
    png, jpg = _encoded(".png", image), _encoded(".jpg", image)
    files = {"image.png": png, "corrupt.png": png[:16] + bytes(range(256)) * 2, "truncated.png": png[:len(png) // 2],
             "truncated.jpg": jpg[:len(jpg) // 2], "empty.png": b"", "gray.png": _encoded(".png", image[..., 0]),
             "deep.png": _encoded(".png", image.astype(np.uint16) * 257), "notes.txt": b"not weights\n",
             "afile": b"a regular file where a folder is expected\n"}
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)


def _write_videos(root: str) -> None:
    path = os.path.join(root, "video.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 64))
    assert writer.isOpened()
    for i in range(10):
        writer.write(np.full((64, 128, 3), 20 * i, np.uint8))
    writer.release()
    data = open(path, "rb").read()
    open(os.path.join(root, "truncated.mp4"), "wb").write(data[:len(data) // 2])
    open(os.path.join(root, "corrupt.mp4"), "wb").write(bytes(np.random.default_rng(1).integers(0, 256, 4096, np.uint8)))


def _write_data_roots(root: str) -> None:
    broken_label = os.path.join("gtFine", "{split}", "testcity", "testcity_000000_000001_gtFine_labelIds.png")
    for name in ("good", "badids", "sizemm", "nolabel"):
        for split in ("train", "val"):
            write_tiny_cityscapes(os.path.join(root, name), split, count=2, hw=(16, 32))
            label = os.path.join(root, name, broken_label.format(split=split))
            if name == "badids":
                cv2.imwrite(label, np.full((16, 32), 200, np.uint8))
            elif name == "sizemm":
                cv2.imwrite(label, np.zeros((8, 32), np.uint8))
            elif name == "nolabel":
                os.remove(label)
    os.makedirs(os.path.join(root, "emptydir"))


def _write_model_dirs(root: str) -> None:
    model = make_model_dir(os.path.join(root, "model"), shape=(1, 3, 8, 16))

    def variant(name: str, edit) -> None:
        target = os.path.join(root, name)
        shutil.copytree(model, target)
        path = os.path.join(target, "deploy.yaml")
        manifest = yaml.safe_load(open(path))
        edit(manifest)
        open(path, "w").write(yaml.safe_dump(manifest, sort_keys=False))

    variant("tampered", lambda m: m["files"][0].update(sha256="0" * 64))
    variant("escape", lambda m: m["files"][0].update(path="../model/model.onnx"))  # its hash still matches
    shutil.copytree(model, os.path.join(root, "nomanifest"))
    os.remove(os.path.join(root, "nomanifest", "deploy.yaml"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing_camera() -> str:
    return next(p for p in ("/dev/video{}".format(i) for i in range(63, 0, -1)) if not os.path.exists(p))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Dict[str, str]:
    root = str(tmp_path_factory.mktemp("bad_inputs"))
    _write_images(root)
    _write_videos(root)
    _write_data_roots(root)
    _write_model_dirs(root)
    subprocess.run([sys.executable, "-c", _OTHER_WEIGHTS, os.path.join(root, "other")], check=True,
                   capture_output=True, timeout=TIMEOUT_S)
    return {"root": root, "port": str(_closed_port()), "camera": _missing_camera()}


def _snapshot(root: str) -> Dict[str, Optional[tuple]]:
    """Every path under root: (size, mtime) for files, None for folders."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            stat = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (stat.st_size, stat.st_mtime_ns)
    return found


def _is_leftover(path: str) -> bool:
    name = os.path.basename(path)
    return ".tmp" in name or name.startswith((".old-", ".tmp-"))


@pytest.mark.parametrize("argv,output,error", CASES)
def test_bad_input_is_one_line_error_and_writes_nothing(work, argv, output, error):
    args = shlex.split(argv.format(port=work["port"], camera=work["camera"]))
    command = args[0]
    before = _snapshot(work["root"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "ddrnet"] + args, cwd=work["root"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    after = _snapshot(work["root"])

    report = "ddrnet {}\nexit {}\nstderr:\n{}".format(" ".join(args), proc.returncode, proc.stderr[-3000:])
    assert proc.returncode == 2, report
    assert "Traceback" not in proc.stderr, report
    lines = [line for line in proc.stderr.splitlines() if line.strip()]  # \r (progress bars) splits too
    prefix = "ddrnet {}: error: ".format(command)
    assert lines and lines[-1].startswith(prefix), report
    assert re.search(error, lines[-1][len(prefix):]), report

    changed = sorted(p for p in before if after.get(p, "gone") != before[p])
    added = sorted(set(after) - set(before))
    assert not changed, "changed or removed: {}".format(changed)
    assert not [p for p in added if _is_leftover(p)], "temporary leftovers: {}".format(added)
    # only the output folder itself may appear, empty (made to prove it writable before the failure)
    assert added in ([], [os.path.normpath(output)]), "written: {}".format(added)
    assert all(after[p] is None for p in added), "written: {}".format(added)
    for path in added:
        os.rmdir(os.path.join(work["root"], path))  # the next case starts from the same tree


def test_the_sweep_covers_every_command():
    commands = {shlex.split(p.values[0])[0] for p in CASES}
    from ddrnet.cli import COMMANDS

    assert commands == set(COMMANDS)
    assert len(CASES) >= 25
