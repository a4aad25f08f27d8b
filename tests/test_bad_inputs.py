"""The bad-input sweep: every command, given a broken file, folder, option or model, or an output
that would replace one of its inputs, exits 2 with one line `ddrnet <cmd>: error: <what>: <problem>`
last on stderr, prints no traceback and writes nothing: no file or folder appears or changes, no
temporary leftovers (output folders are created only with the first file written). CASES is the
README's table. Then: a folder with one bad image among good ones (--on-error stop / skip), and a
runtime-only install simulated by making Paddle unimportable."""
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

from ddrnet.runtime.cityscapes import list_samples
from runtime_fixtures import make_model_dir, write_tiny_cityscapes

TIMEOUT_S = 120


def case(case_id: str, argv: str, error: str):
    """argv: the command line after `ddrnet` ({port} and {camera} are filled in); error: a regex the
    error line must match after `ddrnet <cmd>: error: `."""
    return pytest.param(argv, error, id=case_id)


EXPORT = "export --format onnx --input-shape 1,3,64,128 --out exported"
PRUNE = "compress --config prune_ddrnet23_slim_synthetic_cpu.yml --data-root good --save-dir compressed"
PTQ = "compress --ptq --config prune_ddrnet23_slim_synthetic_cpu.yml --weights other.pdparams --save-dir ptq"
TRAIN = "train --config ddrnet23_slim_synthetic_cpu.yml --no-eval --iters 1 --batch_size 2"  # both samples at once
TRAIN_IMAGE = "good/leftImg8bit/train/testcity/testcity_000000_000000_leftImg8bit.png"

CASES = [
    # predict: images
    case("predict-corrupt-png", "predict --model model --input corrupt.png --out pred",
         r"corrupt\.png: not a readable image \(corrupt or truncated\?\)"),
    case("predict-truncated-png", "predict --model model --input truncated.png --out pred",
         r"truncated\.png: not a readable image \(corrupt or truncated\?\)"),
    case("predict-truncated-jpeg", "predict --model model --input truncated.jpg --out pred",
         r"truncated\.jpg: truncated JPEG \(no end-of-image marker\)"),
    case("predict-zero-byte-image", "predict --model model --input empty.png --out pred",
         r"empty\.png: empty file"),
    case("predict-grayscale-png", "predict --model model --input gray.png --out pred",
         r"gray\.png: grayscale image; the model needs 3-channel colour"),
    case("predict-16bit-png", "predict --model model --input deep.png --out pred",
         r"deep\.png: expected 8-bit pixels, got uint16"),
    case("predict-empty-input-folder", "predict --model model --input emptydir --out pred",
         r"emptydir: no images \(\.png"),
    case("predict-output-under-a-file", "predict --model model --input image.png --out afile/pred",
         r"afile/pred: cannot write --out \(afile is a file, not a folder\)"),
    case("predict-output-unwritable", "predict --model model --input image.png --out /proc/ddrnet/pred",
         r"/proc/ddrnet/pred: cannot write --out \(no file can be created in /proc: "),
    case("predict-out-beside-the-input-image", "predict --model model --input image.png --out .",
         r"\./image\.png: --out would overwrite the input image\.png; choose another output"),
    case("predict-out-is-the-input-folder", "predict --model model --input imgdir --out imgdir",
         r"imgdir/image\.png: --out would overwrite the input imgdir/image\.png"),
    case("predict-two-inputs-one-output", "predict --model model --input twins --out pred",
         r"pred/image\.png: --out would get this file from two inputs, twins/a/image\.png and twins/b/image\.jpg"),
    case("predict-threads-0", "predict --model model --input image.png --out pred --threads 0",
         r"--threads 0: must be at least 1"),
    case("predict-threads-negative", "predict --model model --input image.png --out pred --threads -1",
         r"--threads -1: must be at least 1"),
    case("predict-threads-over-the-cores", "predict --model model --input image.png --out pred --threads 1000",
         r"--threads 1000: this machine gives the process \d+ cores"),
    case("predict-unknown-backend", "predict --model model --input image.png --out pred --backend onnx",
         r"argument --backend: invalid choice: 'onnx'"),
    # predict: model dirs
    case("predict-tampered-deploy-yaml", "predict --model tampered --input image.png --out pred",
         r"tampered/model\.onnx: SHA-256 mismatch with deploy\.yaml"),
    case("predict-missing-deploy-yaml", "predict --model nomanifest --input image.png --out pred",
         r"nomanifest/deploy\.yaml: missing \(not an exported model dir\?\)"),
    case("predict-deploy-yaml-path-escape", "predict --model escape --input image.png --out pred",
         r"escape/deploy\.yaml: file path '\.\./model/model\.onnx' must not contain '\.\.'"),
    # stream
    case("stream-corrupt-video", "stream --model model --source corrupt.mp4 --out overlay.mp4",
         r"corrupt\.mp4: not a readable video \(corrupt, truncated or unsupported\)"),
    case("stream-truncated-video", "stream --model model --source truncated.mp4 --out overlay.mp4",
         r"truncated\.mp4: not a readable video"),
    case("stream-unreachable-url",
         "stream --model model --source http://127.0.0.1:{port}/stream.mjpg --max-reconnects 0 --out overlay.mp4",
         r"http://127\.0\.0\.1:\d+/stream\.mjpg: gave up after 1 attempt: cannot open"),
    case("stream-missing-camera", "stream --model model --source {camera} --max-reconnects 0 --out overlay.mp4",
         r"/dev/video\d+: gave up after 1 attempt: cannot open"),
    case("stream-glob-no-match", "stream --model model --source frames/*.png --out overlay.mp4",
         r"frames/\*\.png: no files match this pattern"),
    case("stream-out-onto-the-source", "stream --model model --source video.mp4 --out video.mp4",
         r"video\.mp4: --out would overwrite the input video\.mp4; choose another output"),
    case("stream-threads-0", "stream --model model --source video.mp4 --threads 0", r"--threads 0: must be at least 1"),
    case("stream-output-under-a-file", "stream --model model --source video.mp4 --out afile/overlay.mp4",
         r"afile/overlay\.mp4: cannot write --out \(afile is a file, not a folder\)"),
    # eval: data
    case("eval-label-ids-out-of-range", "eval --model model --data-root badids --json eval.json",
         r"badids/gtFine/val/.*_gtFine_labelIds\.png: label ids outside 0\.\.33: \[200\]"),
    case("eval-image-label-size-mismatch", "eval --model model --data-root sizemm --json eval.json",
         r"sizemm/gtFine/val/.*_labelIds\.png: label size 8x32 differs from its image .* 16x32"),
    case("eval-image-without-label", "eval --model model --data-root nolabel --json eval.json",
         r"nolabel/leftImg8bit/val/.*_leftImg8bit\.png: image without its label"),
    case("eval-empty-data-folder", "eval --model model --data-root emptydir --json eval.json",
         r"emptydir/leftImg8bit/val: no such folder \(expected the Cityscapes layout"),
    case("eval-missing-data-folder", "eval --model model --data-root nodata --json eval.json",
         r"nodata: no such data folder"),
    case("eval-json-unwritable", "eval --model model --data-root good --json /proc/ddrnet/eval.json",
         r"/proc/ddrnet/eval\.json: cannot write --json"),
    case("eval-json-onto-the-model", "eval --model model --data-root good --json model/model.onnx",
         r"model/model\.onnx: --json would overwrite the input model/model\.onnx"),
    case("eval-json-onto-the-data", "eval --model model --data-root good --json " + TRAIN_IMAGE,
         r"good/leftImg8bit/.*\.png: --json would overwrite the input good/leftImg8bit; choose another output"),
    case("eval-threads-0", "eval --model model --data-root good --threads 0", r"--threads 0: must be at least 1"),
    case("eval-unknown-backend", "eval --model model --data-root good --backend onnx",
         r"argument --backend: invalid choice: 'onnx'"),
    case("eval-weights-of-another-architecture", "eval --weights other.pdparams --data-root good --json eval.json",
         r"other\.pdparams: weights do not fit this model .* unexpected"),
    # train
    case("train-label-ids-out-of-range", TRAIN + " --data-root badids --save-dir run",
         r"badids/gtFine/train/.*_labelIds\.png: label ids outside 0\.\.33: \[200\]"),
    case("train-size-mismatch-no-workers", TRAIN + " --num_workers 0 --data-root sizemm --save-dir run",
         r"sizemm/gtFine/train/.*_labelIds\.png: label size 8x32 differs from its image"),
    case("train-unknown-config", "train --config nosuch.yml --data-root good --save-dir run",
         r"nosuch\.yml: no such config \(bundled configs: "),
    case("train-opt-without-value", "train --config ddrnet23_slim_synthetic_cpu.yml --opt iters --save-dir run",
         r"--opt 'iters': expected key=value"),
    case("train-opt-not-a-literal", "train --config ddrnet23_slim_synthetic_cpu.yml --opt iters=[1, --save-dir run",
         r"--opt 'iters=\[1,': value is not a literal"),
    case("train-save-dir-under-a-file", TRAIN + " --data-root good --save-dir afile/run",
         r"afile/run: cannot write --save-dir \(afile is a file, not a folder\)"),
    # export
    case("export-weights-of-another-architecture", EXPORT + " --weights other.pdparams",
         r"other\.pdparams: weights do not fit this model"),
    case("export-bad-input-shape", "export --weights other.pdparams --input-shape 1,3,abc --out exported",
         r"--input-shape '1,3,abc': expected N,3,H,W"),
    case("export-bad-output-op", "export --weights other.pdparams --output-op max --out exported",
         r"argument --output-op\S*: invalid choice: 'max'"),
    case("export-bad-sample-size",
         "export --weights other.pdparams --input-shape dynamic --sample-size 64by128 --out exported",
         r"--sample-size '64by128': expected HEIGHTxWIDTH"),
    case("export-out-holds-the-weights", EXPORT.replace("exported", "exdir") + " --weights exdir/other.pdparams",
         r"exdir: --out holds the input exdir/other\.pdparams, which writing there would replace"),
    case("export-int8-empty-calibration-folder", EXPORT + " --weights other.pdparams --int8 --calib-dir emptydir",
         r"emptydir: no calibration images"),
    case("export-int8-calibration-on-val", EXPORT + " --weights other.pdparams --int8 --calib-dir good/leftImg8bit/val",
         r"good/leftImg8bit/val: the val split is for evaluation; calibrate on train images"),
    # compress
    case("compress-prune-ratio-above-1", PRUNE + " --prune 1.5 --weights other.pdparams",
         r"--prune 1\.5: the pruning ratio must be in \(0, 1\)"),
    case("compress-prune-ratio-0", PRUNE + " --prune 0 --weights other.pdparams",
         r"--prune 0\.0: the pruning ratio must be in \(0, 1\)"),
    case("compress-weights-of-another-architecture", PRUNE + " --prune 0.3 --iters 1 --weights other.pdparams",
         r"other\.pdparams: weights do not fit this model"),
    case("compress-save-dir-holds-the-weights", "compress --qat --config qat_ddrnet23_slim_synthetic_cpu.yml "
         "--weights exdir/other.pdparams --save-dir exdir",
         r"exdir: --save-dir holds the input exdir/other\.pdparams"),
    case("compress-two-modes", PTQ + " --calib-list", r"--ptq and --calib-list: one mode per run"),
    case("compress-calib-list-onto-the-data", "compress --calib-list --data-root good --num 1 --out " + TRAIN_IMAGE,
         r"--out would overwrite the input good/leftImg8bit; choose another output"),
    case("compress-calib-list-unwritable", "compress --calib-list --data-root good --num 1 --out /proc/ddrnet/l.txt",
         r"/proc/ddrnet/l\.txt: cannot write --out"),
    case("compress-calib-synth-onto-a-data-set", "compress --calib-synth --out good",
         r"good: holds a data set this generator did not write"),
    case("compress-ptq-empty-calibration-folder", PTQ + " --calib-dir emptydir",
         r"emptydir: no calibration images"),
    case("compress-ptq-calibration-on-val", PTQ + " --calib-dir good/leftImg8bit/val",
         r"good/leftImg8bit/val: the val split is for evaluation"),
    # convert-weights, data, bench, demo
    case("convert-weights-not-a-torch-file", "convert-weights other.pdparams converted.pdparams",
         r"other\.pdparams: not a PyTorch checkpoint"),
    case("convert-weights-text-file", "convert-weights notes.txt converted.pdparams",
         r"notes\.txt: not a PyTorch checkpoint \(neither torch\.save's zip nor its legacy pickle format\)"),
    case("convert-weights-onto-its-input", "convert-weights other.pdparams other.pdparams",
         r"other\.pdparams: OUT\.pdparams would overwrite the input other\.pdparams"),
    case("data-synth-bad-size", "data synth --out synth --train 1 --val 1 --size 64by128",
         r"--size '64by128': expected HEIGHTxWIDTH"),
    case("data-synth-output-under-a-file", "data synth --out afile/synth --train 1 --val 1 --size 64x128",
         r"afile/synth: cannot write --out \(afile is a file, not a folder\)"),
    case("data-synth-onto-a-data-set", "data synth --out good --train 1 --val 1 --size 64x128",
         r"good: holds a data set this generator did not write \(leftImg8bit/ but no synth\.json\)"),
    case("bench-tampered-deploy-yaml", "bench --model tampered --iters 2 --warmup 0 --json bench.json",
         r"tampered/model\.onnx: SHA-256 mismatch with deploy\.yaml"),
    case("bench-json-unwritable", "bench --model model --iters 2 --warmup 0 --json /proc/ddrnet/b.json",
         r"/proc/ddrnet/b\.json: cannot write --json"),
    case("bench-json-onto-the-model", "bench --model model --iters 2 --warmup 0 --json model/model.onnx",
         r"model/model\.onnx: --json would overwrite the input"),
    case("bench-threads-0", "bench --model model --iters 2 --threads 0", r"--threads 0: must be at least 1"),
    case("bench-threads-negative", "bench --model model --iters 2 --threads -1",
         r"--threads -1: must be at least 1"),
    case("bench-threads-over-the-cores", "bench --model model --iters 2 --threads 1000",
         r"--threads 1000: this machine gives the process \d+ cores"),
    case("keygen-output-under-a-file", "keygen afile/fleet",
         r"afile/fleet\.key: cannot write OUT \(afile is a file, not a folder\)"),
    case("sign-missing-key", "sign --model model --key nosuch.key",
         r"--key nosuch\.key: cannot read \(No such file or directory\)"),
    case("predict-trust-key-missing", "predict --model model --input image.png --out pred --trust nosuch.pub",
         r"--trust nosuch\.pub: cannot read \(No such file or directory\)"),
    case("engine-bad-size", "engine --model model --max-size 64by128",
         r"--max-size '64by128': expected HEIGHTxWIDTH"),
    case("keygen-under-a-file", "keygen afile/key", r"afile/key\.key: cannot write OUT \(afile is a file, not a folder\)"),
    case("sign-not-a-key", "sign --model model --key notes.txt", r"--key notes\.txt: not a PEM private key"),
    case("demo-workdir-under-a-file", "demo --workdir afile/demo --size 64x128",
         r"afile/demo: cannot write --workdir \(afile is a file, not a folder\)"),
    case("demo-bad-threads", "demo --workdir demo --threads 0", r"--threads 0: must be at least 1"),
    case("demo-bad-size", "demo --workdir demo --size 64by128", r"--size '64by128': expected HEIGHTxWIDTH"),
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
    corrupt = png[:16] + bytes(range(256)) * 2
    files = {"image.png": png, "corrupt.png": corrupt, "truncated.png": png[:len(png) // 2],
             "truncated.jpg": jpg[:len(jpg) // 2], "empty.png": b"", "gray.png": _encoded(".png", image[..., 0]),
             "deep.png": _encoded(".png", image.astype(np.uint16) * 257), "notes.txt": b"not weights\n",
             "afile": b"a regular file where a folder is expected\n", "imgdir/image.png": png,
             "twins/a/image.png": png, "twins/b/image.jpg": jpg,
             "mixed/1_good.png": png, "mixed/2_corrupt.png": corrupt, "mixed/3_good.jpg": jpg}
    for name, data in files.items():
        os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
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
    shutil.copytree(os.path.join(root, "model"), os.path.join(root, "exdir"))  # an exported dir holding weights
    for name in ("other.pdparams", "other.json"):
        shutil.copy(os.path.join(root, name), os.path.join(root, "exdir", name))
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


def _ddrnet(args, cwd: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "ddrnet"] + list(args), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def _error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """The one error line after `ddrnet <command>: error: `, checking exit 2 and no traceback."""
    report = "ddrnet {}\nexit {}\nstderr:\n{}".format(command, proc.returncode, proc.stderr[-3000:])
    assert proc.returncode == 2, report
    assert "Traceback" not in proc.stderr, report
    lines = [line for line in proc.stderr.splitlines() if line.strip()]  # \r (progress bars) splits too
    prefix = "ddrnet {}: error: ".format(command)
    assert lines and lines[-1].startswith(prefix), report
    return lines[-1][len(prefix):]


@pytest.mark.parametrize("argv,error", CASES)
def test_bad_input_is_one_line_error_and_writes_nothing(work, argv, error):
    args = shlex.split(argv.format(port=work["port"], camera=work["camera"]))
    before = _snapshot(work["root"])
    proc = _ddrnet(args, work["root"])
    after = _snapshot(work["root"])

    message = _error_line(proc, args[0])
    assert re.search(error, message), message
    changed = sorted(p for p in before if after.get(p, "gone") != before[p])
    added = sorted(set(after) - set(before))
    assert not changed, "changed or removed: {}".format(changed)
    assert not added, "written: {}".format(added)  # no output folder either, nor a temporary


def test_the_sweep_covers_every_command():
    commands = {shlex.split(p.values[0])[0] for p in CASES}
    from ddrnet.cli import COMMANDS

    assert commands == set(COMMANDS)
    assert len(CASES) >= 25


# -- a folder with one unreadable image among good ones ------------------------------------------

def _outputs(folder: str) -> list:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_bad_image_in_a_folder_stops_and_says_what_was_written(work, tmp_path):
    out = str(tmp_path / "pred")
    message = _error_line(_ddrnet(["predict", "--model", "model", "--input", "mixed", "--out", out], work["root"]),
                          "predict")
    assert re.fullmatch(r"mixed/2_corrupt\.png: not a readable image \(corrupt or truncated\?\); stopped: 1 of 3 "
                        r"images written to .*pred \(--on-error skip goes on past unreadable images\)", message)
    assert _outputs(out) == ["1_good.png"]  # written before the bad one, complete, no temporary beside it
    assert cv2.imread(os.path.join(out, "1_good.png"), cv2.IMREAD_UNCHANGED).shape == (64, 128, 3)


def test_bad_image_in_a_folder_is_skipped_and_counted(work, tmp_path):
    out = str(tmp_path / "pred")
    proc = _ddrnet(["predict", "--model", "model", "--input", "mixed", "--out", out, "--on-error", "skip"],
                   work["root"])
    assert proc.returncode == 0, proc.stderr
    assert "skipped mixed/2_corrupt.png: not a readable image" in proc.stderr
    assert proc.stdout.strip() == "2 image(s) -> {}, 1 unreadable skipped (first: mixed/2_corrupt.png)".format(out)
    assert _outputs(out) == ["1_good.png", "3_good.png"]


def test_only_bad_images_with_skip_is_an_error_and_writes_nothing(work, tmp_path):
    out = str(tmp_path / "pred")
    proc = _ddrnet(["predict", "--model", "model", "--input", "corrupt.png", "--out", out, "--on-error", "skip"],
                   work["root"])
    assert re.fullmatch(r"corrupt\.png: none of the 1 image\(s\) could be read; nothing written",
                        _error_line(proc, "predict"))
    assert not os.path.exists(out)


# -- a runtime-only install (`pip install .[runtime]`): Paddle cannot be imported ----------------------

# sitecustomize runs at interpreter start: Paddle and its tools then import like missing packages
_NO_PADDLE = """
import sys

class _NoPaddle:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("paddle", "paddleslim", "paddle2onnx"):
            raise ModuleNotFoundError("No module named {!r}".format(name), name=name)
        return None

sys.meta_path.insert(0, _NoPaddle())
"""

RUNTIME_ONLY_REFUSED = [
    "demo --workdir demo",
    "train --config ddrnet23_slim_synthetic_cpu.yml --data-root good --save-dir run",
    "convert-weights notes.txt converted.pdparams",
    "compress --qat --config qat_ddrnet23_slim_synthetic_cpu.yml --weights other.pdparams --save-dir compressed",
    "export --weights other.pdparams --out exported",
    "predict --weights other.pdparams --input image.png --out pred",
    "eval --weights other.pdparams --data-root good",
]


@pytest.fixture(scope="module")
def runtime_only(work, tmp_path_factory) -> Dict[str, str]:
    shim = tmp_path_factory.mktemp("no_paddle")
    (shim / "sitecustomize.py").write_text(_NO_PADDLE)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}


def test_the_shim_makes_paddle_unimportable(work, runtime_only):
    probe = "try:\n    import paddle\nexcept ModuleNotFoundError:\n    print('missing')"
    proc = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, **runtime_only), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert proc.stdout.strip() == "missing", proc.stderr


@pytest.mark.parametrize("argv", RUNTIME_ONLY_REFUSED)
def test_runtime_only_install_refuses_paddle_work_in_one_line(work, runtime_only, argv):
    args = shlex.split(argv)
    before = _snapshot(work["root"])
    message = _error_line(_ddrnet(args, work["root"], runtime_only), args[0])
    assert re.fullmatch(r"paddle is not installed \(a runtime-only install\); Paddle commands and --weights need "
                        r"the train extra: pip install -c constraints\.txt -e '\.\[train\]'", message), message
    assert _snapshot(work["root"]) == before  # demo included: nothing written before the refusal


def _help_entries(text: str) -> Dict[str, str]:
    """Subcommand -> its help line(s) in `ddrnet --help` (argparse wraps long ones onto indented lines)."""
    from ddrnet.cli import COMMANDS

    entries, name = {}, None  # type: Dict[str, str], Optional[str]
    for line in text.splitlines():
        start = re.match(r" {4}([a-z][\w-]*)(?:\s+(.*))?$", line)
        if start and start.group(1) in COMMANDS:
            name = start.group(1)
            entries[name] = start.group(2) or ""
        elif name and line.startswith(" " * 5):
            entries[name] += " " + line.strip()
        else:
            name = None
    return entries


def test_runtime_only_help_marks_the_paddle_commands_and_the_runtime_still_runs(work, runtime_only, tmp_path):
    from ddrnet.cli import COMMANDS, NEEDS_TRAIN_EXTRA

    full = _help_entries(_ddrnet(["--help"], work["root"]).stdout)
    proc = _ddrnet(["--help"], work["root"], runtime_only)
    assert proc.returncode == 0, proc.stderr
    entries = _help_entries(proc.stdout)
    assert set(entries) == set(full) == set(COMMANDS), proc.stdout
    assert {name for name, text in entries.items() if "[needs the train extra" in text} == set(NEEDS_TRAIN_EXTRA)
    assert not [text for text in full.values() if "needs the train extra" in text]  # the full install: none
    out = str(tmp_path / "pred")
    proc = _ddrnet(["predict", "--model", "model", "--input", "image.png", "--out", out], work["root"], runtime_only)
    assert proc.returncode == 0, proc.stderr
    assert _outputs(out) == ["image.png"]
    data = str(tmp_path / "synth")  # the synthetic data set needs no Paddle either
    proc = _ddrnet(["data", "synth", "--out", data, "--train", "1", "--val", "1", "--size", "32x64"], work["root"],
                   runtime_only)
    assert proc.returncode == 0, proc.stderr
    assert len(list_samples(data, "val")) == 1
