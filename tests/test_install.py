"""The install extras (setup.cfg) and the README's install lines: no extra puts a CPU and a GPU wheel of
one framework into one environment, TensorRT is pinned to the major the backend supports, every pip
line in the README uses the constraints file, build outputs are ignored by git."""
from __future__ import annotations

import configparser
import os
import re

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# one framework, two wheels that install the same import package: never both in one environment
EXCLUSIVE = (("paddlepaddle", "paddlepaddle-gpu"), ("onnxruntime", "onnxruntime-gpu"),
             ("opencv-python", "opencv-python-headless"))


def _extras() -> dict:
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    extras = {}
    for name, value in config["options.extras_require"].items():
        lines = [line.split(" #")[0].strip() for line in value.splitlines()]
        extras[name] = [Requirement(line) for line in lines if line and not line.startswith("#")]
    base = [Requirement(line.strip()) for line in config["options"]["install_requires"].splitlines() if line.strip()]
    return {name: reqs + base for name, reqs in extras.items()}


def test_each_extra_is_installable_on_its_own_without_clashing_wheels():
    extras = _extras()
    assert {"runtime", "runtime-gpu", "train", "train-gpu"} <= set(extras)
    for name, reqs in extras.items():
        names = {r.name.lower() for r in reqs}
        for cpu, gpu in EXCLUSIVE:
            assert not {cpu, gpu} <= names, "extra {} holds both {} and {}".format(name, cpu, gpu)
    gpu_names = {r.name for r in extras["train-gpu"]}
    assert {r.name for r in extras["train"]} - {"paddlepaddle", "onnxruntime"} <= gpu_names  # same stack
    assert {"paddlepaddle-gpu", "onnxruntime-gpu", "tensorrt-cu12", "pycuda"} <= gpu_names
    assert "paddlepaddle" not in {r.name for r in extras["runtime-gpu"]}  # the runtime never needs Paddle


def test_tensorrt_is_pinned_to_the_supported_major_and_cuda():
    """TensorRT 10 for CUDA 12, like onnxruntime-gpu and paddlepaddle-gpu: the plain `tensorrt` 10.16 package
    pulls the CUDA 13 build."""
    for name, reqs in _extras().items():
        for req in reqs:
            assert req.name not in ("tensorrt", "tensorrt-cu13"), (name, str(req))
            if req.name.startswith("tensorrt"):
                assert req.specifier and not req.specifier.contains("11.0.0"), (name, str(req))
                assert req.specifier.contains("10.3.0"), (name, str(req))  # JetPack 6.1's TensorRT


@pytest.mark.parametrize("path", ["README.md", "docs/jetson.md"])
def test_every_pip_install_line_uses_the_constraints_file(path):
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    lines = [line for line in text.splitlines() if re.search(r"\bpip3? install\b", line)]
    assert lines
    for line in lines:
        if re.search(r"pip3? install[^`]*-e\b|pip3? install[^`]*\.\[", line):  # this project or its extras
            assert "-c constraints.txt" in line, line


def test_build_outputs_are_ignored():
    ignored = open(os.path.join(ROOT, ".gitignore")).read().split()
    assert "/build/" in ignored and "*.egg-info/" in ignored
