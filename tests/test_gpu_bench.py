"""benchmarks/gpu.py without a GPU: every GPU row is judged against the CPU, and a path that should run
on the present GPU and does not is a failure, not a note (tested with stand-in paths on the CPU)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from ddrnet.runtime.backends import OnnxRuntimeBackend
from ddrnet.runtime.manifest import load_manifest
from runtime_fixtures import make_model_dir

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import gpu  # noqa: E402

TENSOR = np.random.default_rng(0).normal(size=(1, 3, 8, 16)).astype(np.float32)


class Shifted:
    """A backend whose labels are all wrong (a broken engine that still runs)."""

    def __init__(self, backend):
        self.backend = backend

    def run(self, tensor):
        return (self.backend.run(tensor) + 1) % 19


@pytest.fixture
def art(tmp_path):
    art = gpu.GpuArtifacts(str(tmp_path))
    make_model_dir(art.fp32_dir)
    make_model_dir(art.int8_dir, seed=1)  # another model: INT8 is judged against itself on the CPU
    return art


def _paths(art):
    fp32 = os.path.join(art.fp32_dir, "model.onnx")
    int8 = os.path.join(art.int8_dir, "model.onnx")
    ok = lambda: None  # noqa: E731  installed
    return [
        gpu.GpuPath("good_fp32", "runs and agrees", "fp32", ok, lambda: OnnxRuntimeBackend(fp32)),
        gpu.GpuPath("absent", "library not installed", "fp16", lambda: "not installed: tensorrt", None),
        gpu.GpuPath("broken", "installed, cannot start", "fp16", ok,
                    lambda: (_ for _ in ()).throw(RuntimeError("libnvinfer.so.10: cannot open shared object"))),
        gpu.GpuPath("wrong", "runs, wrong labels", "fp16", ok, lambda: Shifted(OnnxRuntimeBackend(fp32))),
        gpu.GpuPath("int8", "INT8 judged against itself", "int8", ok, lambda: OnnxRuntimeBackend(int8),
                    same_model=True),
    ]


def test_paths_that_should_run_and_do_not_are_failures(art):
    from ddrnet.runtime.timing import measure_for

    found, skipped, failures = gpu.subjects(art, TENSOR, {"model": "tiny", "hw": [8, 16]}, _paths(art), no_gpu=None)
    assert skipped == {"absent": "not installed: tensorrt"}
    assert failures == [
        "broken: should run on this GPU and did not start (RuntimeError: libnvinfer.so.10: cannot open shared "
        "object)",
        "wrong: agreement_cpu_fp32 0.000% < 99.0%"]
    rows = {s.labels["format"]: s.labels for s in found}
    assert sorted(rows) == ["good_fp32", "int8", "wrong"]
    assert rows["good_fp32"]["agreement_cpu_fp32"] == 1.0 and "failed" not in rows["good_fp32"]
    assert rows["int8"]["agreement_cpu_same_model"] == 1.0 and rows["int8"]["agreement_cpu_fp32"] < 1.0
    assert "failed" not in rows["int8"]  # INT8 against FP32 depends on the weights: recorded, not judged
    results = {"rows": measure_for(found, 0.05, 2, 3, progress=None), "skipped": skipped}
    table = gpu.table(results)
    assert "| tiny 8x16 | runs and agrees | fp32 |" in table and "skipped absent: not installed: tensorrt" in table


def test_without_a_gpu_every_path_is_skipped_with_the_reason(art):
    found, skipped, failures = gpu.subjects(art, TENSOR, {}, _paths(art), no_gpu="no CUDA driver (libcuda.so.1)")
    assert found == [] and failures == []
    assert set(skipped) == {p.key for p in _paths(art)}
    assert set(skipped.values()) == {"no CUDA driver (libcuda.so.1)"}


def test_the_suite_has_every_runtime_gpu_path(art):
    keys = [p.key for p in gpu.paths(art)]
    assert keys == ["onnxruntime_cuda_fp32", "onnxruntime_tensorrt_fp32", "tensorrt_fp32", "tensorrt_fp16",
                    "tensorrt_int8", "paddle_gpu_fp32"]
    if gpu.gpu_absent():  # this machine: all skipped, none a failure
        assert gpu.subjects(art, TENSOR, {}, no_gpu="ask")[2] == []


@pytest.mark.slow
def test_build_and_the_tensorrt_paths_end_to_end(tmp_path, fake_gpu):
    """The INT8 artefact is a bundle for TensorRT (symmetric Q/DQ, hashed, the precision check passes), and
    the native TensorRT paths of the check run as on a GPU, on the CPU stand-in (tests/fake_gpu): engines
    built ahead of time from the real DDRNet graphs, loaded from deploy.yaml, judged against the CPU."""
    from ddrnet.runtime import Predictor, tensorrt_backend

    weights = gpu.variants.random_checkpoint("ddrnet23_slim", str(tmp_path / "w"))
    hw = (64, 128)
    art = gpu.build(weights, hw, gpu.variants.calibration_frames(2, hw, None), str(tmp_path / "gpu"))
    manifest = load_manifest(art.int8_dir)
    assert manifest["precision"] == "int8" and manifest["target"]["int8_target"] == "tensorrt"
    assert manifest["quantization"]["activation_symmetric"] is True
    tensorrt_backend.check_precision(manifest, art.int8_dir, "int8")
    assert sorted(os.listdir(art.int8_dir)) == ["deploy.yaml", "model.onnx"]
    trt, _ = fake_gpu
    chosen = [p for p in gpu.paths(art) if p.key.startswith("tensorrt_")]
    tensor = Predictor(art.fp32_dir).preprocess(gpu.variants.calibration_frames(1, hw, None)[0])
    found, skipped, failures = gpu.subjects(art, tensor, {"model": "ddrnet23_slim"}, chosen, no_gpu=None)
    assert skipped == {} and failures == [] and len(trt.BUILDS) == 3
    rows = {s.labels["format"]: s.labels for s in found}
    assert rows["tensorrt_int8"]["agreement_cpu_same_model"] == 1.0
    assert rows["tensorrt_fp16"]["agreement_cpu_fp32"] == 1.0
    assert [e["precision"] for e in load_manifest(art.fp32_dir)["engines"]] == ["fp32", "fp16"]
