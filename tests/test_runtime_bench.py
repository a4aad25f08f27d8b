"""`ddrnet bench` through the real command line: JSON schema, mIoU, --all table and plot, errors."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from runtime_fixtures import add_paddle_model, make_model_dir, write_tiny_cityscapes

STAT_KEYS = {"mean", "p50", "p90", "p99", "min", "max"}


def _ddrnet(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "ddrnet"] + list(args), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_model_dir(str(root / "fixed"), shape=(1, 3, 8, 16))
    make_model_dir(str(root / "dynamic"), shape=(-1, 3, -1, -1), output="none")
    data = str(root / "data")
    write_tiny_cityscapes(data, "val", count=2, hw=(12, 20))
    return root, data


def test_bench_json_schema(models, tmp_path):
    root, _ = models
    out = str(tmp_path / "bench.json")
    proc = _ddrnet("bench", "--model", str(root / "fixed"), "--iters", "5", "--warmup", "1",
                   "--threads", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "overhead" in proc.stdout and "raw run" in proc.stdout
    result = json.load(open(out))
    assert (result["backend"], result["device"], result["precision"]) == ("onnxruntime", "cpu", "fp32")
    assert result["input_shape"] == [1, 3, 8, 16] and result["frame_hw"] == [8, 16]
    assert (result["iterations"], result["warmup"], result["threads"]) == (5, 1, 1)
    assert set(result["latency_ms"]) == {"preprocess", "inference", "postprocess", "total"}
    for stats in list(result["latency_ms"].values()) + [result["raw_run_ms"]]:
        assert set(stats) == STAT_KEYS
        assert 0 <= stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    total = result["latency_ms"]["total"]
    assert result["fps_mean"] == pytest.approx(1000.0 / total["mean"])
    assert result["fps_p50"] == pytest.approx(1000.0 / total["p50"])
    assert result["overhead_ratio"] == pytest.approx(total["p50"] / result["raw_run_ms"]["p50"])
    assert result["overhead_ratio_paired"] > 0
    assert result["model_size_bytes"] == os.path.getsize(str(root / "fixed" / "model.onnx"))
    assert result["miou"] is None and result["eval"] is None
    assert result["host"]["cores"] >= 1 and result["host"]["cpu"]
    assert {"ddrnet", "numpy", "cv2", "onnxruntime"} <= set(result["versions"])
    assert "paddle" not in result["versions"]


def test_bench_profile_times_each_operator(models, tmp_path):
    root, _ = models
    out = str(tmp_path / "profile.json")
    proc = _ddrnet("bench", "--model", str(root / "fixed"), "--profile", "--iters", "4", "--warmup", "1",
                   "--threads", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime profile: 4 runs" in proc.stdout and "slowest nodes:" in proc.stdout
    result = json.load(open(out))
    assert result["runs"] == 4 and result["input_shape"] == [1, 3, 8, 16]
    assert sum(op["share"] for op in result["ops"]) == pytest.approx(1.0)
    assert sum(op["nodes"] for op in result["ops"]) >= len(result["top_nodes"]) > 0
    bad = _ddrnet("bench", "--model", str(root / "fixed"), "--profile", "--backend", "paddle")
    assert bad.returncode == 2 and "--profile works with --backend onnxruntime" in bad.stderr


def test_bench_with_dataset_reports_miou(models, tmp_path):
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.metrics import evaluate_model_dir

    root, data = models
    out = str(tmp_path / "bench.json")
    proc = _ddrnet("bench", "--model", str(root / "dynamic"), "--data-root", data, "--iters", "3",
                   "--warmup", "0", "--json", out)
    assert proc.returncode == 0, proc.stderr
    result = json.load(open(out))
    expected = evaluate_model_dir(Predictor(str(root / "dynamic")), data, "val", progress=False)
    assert result["eval"] == expected and result["miou"] == expected["miou"]
    assert result["frame_hw"] == [12, 20]  # latency measured on the data set's frames
    assert "mIoU" in proc.stdout


def test_bench_all_table_json_and_plot(models, tmp_path):
    root, data = models
    out, plot = str(tmp_path / "all.json"), str(tmp_path / "all.png")
    proc = _ddrnet("bench", "--all", str(root), "--iters", "3", "--warmup", "0", "--data-root", data,
                   "--json", out, "--plot", plot)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("Model"))
    for column in ("Format", "Precision", "Size MB", "mIoU", "ms p50", "FPS"):
        assert column in header
    from ddrnet.runtime.bench import backends_for

    expected = [b for name in ("dynamic", "fixed") for b in backends_for(str(root / name), "cpu")[0]]
    assert ("onnxruntime", None) in expected
    rows = [line for line in lines if line.startswith(("fixed", "dynamic"))]
    assert len(rows) == len(expected) and sum("ONNX (onnxruntime)" in r for r in rows) == 2
    results = json.load(open(out))["results"]
    assert [(os.path.basename(r["model_dir"]), r["backend"]) for r in results] == [
        (name, b) for name in ("dynamic", "fixed") for b, _ in backends_for(str(root / name), "cpu")[0]]
    assert all(r["miou"] is not None for r in results)
    assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_bench_all_reports_a_tampered_model_and_exits_nonzero(models, tmp_path):
    root, _ = models
    work = tmp_path / "models"
    shutil.copytree(str(root / "fixed"), str(work / "good"))
    shutil.copytree(str(root / "fixed"), str(work / "bad"))
    with open(str(work / "bad" / "model.onnx"), "ab") as f:
        f.write(b"\0")
    os.makedirs(str(work / "broken"))
    open(str(work / "broken" / "deploy.yaml"), "w").write("schema_version: 1\n")
    proc = _ddrnet("bench", "--all", str(work), "--iters", "2", "--warmup", "0")
    assert proc.returncode == 1
    bad = next(line for line in proc.stdout.splitlines() if line.startswith("bad"))
    assert "SHA-256 mismatch" in bad
    broken = next(line for line in proc.stdout.splitlines() if line.startswith("broken"))
    assert "missing key(s)" in broken
    assert any(line.startswith("good") and "error" not in line for line in proc.stdout.splitlines())


@pytest.mark.parametrize("case,problem", [
    ("tampered", "SHA-256 mismatch with deploy.yaml"),
    ("no_manifest", "deploy.yaml: missing"),
    ("empty_all", "no exported model"),
])
def test_bench_bad_input_is_one_line_error(models, tmp_path, case, problem):
    root, _ = models
    model_dir = str(tmp_path / "m")
    shutil.copytree(str(root / "fixed"), model_dir)
    args = ["bench", "--model", model_dir, "--iters", "2"]
    if case == "tampered":
        with open(os.path.join(model_dir, "model.onnx"), "r+b") as f:
            f.seek(20)
            f.write(b"\xff")
    elif case == "no_manifest":
        os.remove(os.path.join(model_dir, "deploy.yaml"))
    else:
        args = ["bench", "--all", str(tmp_path / "empty")]
        os.makedirs(args[2])
    proc = _ddrnet(*args)
    assert proc.returncode == 2
    assert problem in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("paddle") is None, reason="paddlepaddle not installed")
def test_bench_all_runs_every_format(tmp_path):
    model_dir = add_paddle_model(make_model_dir(str(tmp_path / "both"), shape=(-1, 3, -1, -1)))
    out = str(tmp_path / "all.json")
    proc = _ddrnet("bench", "--all", model_dir, "--iters", "2", "--warmup", "0", "--frame", "16x24",
                   "--threads", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    from ddrnet.runtime.bench import backends_for

    expected = [b for b, _ in backends_for(model_dir, "cpu")[0]]
    assert expected[0] == "onnxruntime" and expected[-1] == "paddle"
    rows = [line for line in proc.stdout.splitlines() if line.startswith("both")]
    assert len(rows) == len(expected) and "ONNX (onnxruntime)" in rows[0] and "Paddle Inference" in rows[-1]
    results = json.load(open(out))["results"]
    assert [r["backend"] for r in results] == expected
    assert results[-1]["model_files"] == ["inference.pdmodel", "inference.pdiparams"]
    assert "paddle" in results[-1]["versions"]
