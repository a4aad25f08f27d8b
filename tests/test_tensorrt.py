"""TensorRT and Jetson without a GPU: per-target bundles, `ddrnet engine` ahead of time, profiles,
thread safety, and the TensorRT API the backend uses.

No GPU here, so two things stand in for one:
- the real TensorRT Python bindings (the dev extra installs `tensorrt-cu12-bindings`, 1 MB, no libraries),
  imported against stub libraries compiled on the spot: every attribute the backend uses must exist
  (runtime/tensorrt_backend.py API) and the methods it calls with several arguments must take them;
- tests/fake_gpu: TensorRT + pycuda on the CPU (engines run the ONNX model with onnxruntime), offering
  nothing beyond that same checked API, so the whole engine life cycle runs: build, record in deploy.yaml,
  load without rebuilding, hashes, profiles, threads.
What only a GPU can check (real engines, FP16 / INT8 accuracy, speed) is benchmarks/gpu_check.sh.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
import yaml

from ddrnet.runtime import tensorrt_backend as trt_backend
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.manifest import load_manifest, sha256_file, write_manifest
from ddrnet.runtime.tensorrt_backend import API, Profile
from runtime_fixtures import make_model_dir

# how the backend calls the TensorRT methods that take more than one argument (checked on the bindings)
ARITY = {("IBuilderConfig", "set_timing_cache"): 2, ("IBuilderConfig", "set_memory_pool_limit"): 2,
         ("IOptimizationProfile", "set_shape"): 4, ("ICudaEngine", "get_tensor_profile_shape"): 2,
         ("IExecutionContext", "set_tensor_address"): 2, ("IExecutionContext", "execute_async_v3"): 1,
         ("IBuilderConfig", "create_timing_cache"): 1, ("OnnxParser", "parse_from_file"): 1}


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _bundle(path: str, target: str = "jetson", shape=(-1, 3, -1, -1), **manifest_changes) -> str:
    """A tiny model dir made a bundle of `target` (export/targets.py section in deploy.yaml)."""
    from ddrnet.export import targets

    model_dir = make_model_dir(path, shape=shape)
    manifest = load_manifest(model_dir)
    manifest["target"] = targets.section(target, manifest_changes.get("precision") == "int8")
    manifest.update(manifest_changes)
    write_manifest(model_dir, manifest)
    return model_dir


def _cli(capsys, *argv):
    from ddrnet.cli import main

    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# -- the API: the fake offers exactly what is checked against the real bindings -----------------

def test_the_fake_offers_only_the_checked_api(fake_gpu):
    trt, _ = fake_gpu
    assert trt_backend.missing_api(trt) == []
    for owner, names in API.items():
        if not owner:
            continue
        cls = getattr(trt, owner)
        public = {n for n, _ in inspect.getmembers(cls) if not n.startswith("_")}
        if issubclass(cls, int):  # enums: their members
            public = set(cls.__members__)
        assert public <= set(names) | {"NONE", "OTHER"}, (owner, public - set(names))


def _stub_libraries(extension: str, folder: str) -> None:
    """Empty libnvinfer & co. with the sonames and C entry points `extension` links against."""
    dynamic = subprocess.run(["readelf", "-d", extension], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"NEEDED.*\[(libnv[^\]]+)\]", dynamic)
    undefined = subprocess.run(["nm", "-D", "--undefined-only", extension], capture_output=True, text=True,
                               check=True).stdout.splitlines()
    symbols = [line.split()[-1] for line in undefined if line.split()[0] == "U" and "@" not in line
               and not line.split()[-1].startswith(("Py", "_Py"))]
    source = os.path.join(folder, "stub.c")
    with open(source, "w") as f:
        f.writelines("void *{}(void) {{ return 0; }}\n".format(s) for s in symbols)
    for lib in needed:
        subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname," + lib, "-o", os.path.join(folder, lib), source],
                       check=True)


_CHECK_BINDINGS = """
import json, sys
import tensorrt_bindings as trt
from ddrnet.runtime.tensorrt_backend import missing_api
arity = {}
for owner, method in json.loads(sys.argv[1]):
    doc = (getattr(getattr(trt, owner), method).__doc__ or "").strip().splitlines()[0]
    params = doc[doc.index("(") + 1:doc.index(") ->")]
    arity[owner + "." + method] = None if "*args" in params else params.count(", ")
print(json.dumps({"version": trt.__version__, "missing": missing_api(trt), "arity": arity}))
"""


def _bindings_roots() -> list:
    """Folders holding a `tensorrt_bindings` package: the installed one (dev extra) and any listed in
    DDRNET_TRT_BINDINGS (os.pathsep-separated; e.g. unzipped `tensorrt-bindings==8.6.1` or 11.x wheels)."""
    roots = [r for r in os.environ.get("DDRNET_TRT_BINDINGS", "").split(os.pathsep) if r]
    spec = importlib.util.find_spec("tensorrt_bindings")
    return ([os.path.dirname(os.path.dirname(spec.origin))] if spec else []) + roots


@pytest.mark.skipif(not _bindings_roots(),
                    reason="needs the TensorRT Python bindings (dev extra: tensorrt-cu12-bindings)")
@pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "nm", "readelf")),
                    reason="needs gcc, nm and readelf to stub the TensorRT libraries")
@pytest.mark.parametrize("root", _bindings_roots())
def test_real_tensorrt_bindings_have_every_attribute_the_backend_uses(root, tmp_path):
    """8.5 to 10.x: nothing missing, every multi-argument call takes what the backend passes. 11.x: refused,
    for the builder flags it dropped."""
    import json

    _stub_libraries(os.path.join(root, "tensorrt_bindings", "tensorrt.so"), str(tmp_path))
    calls = [list(key) for key in ARITY]
    proc = subprocess.run([sys.executable, "-c", _CHECK_BINDINGS, json.dumps(calls)], capture_output=True, text=True,
                          env=dict(os.environ, LD_LIBRARY_PATH=str(tmp_path), PYTHONPATH=root), timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    major = int(found["version"].split(".")[0])
    if major >= 11:
        assert found["missing"] == ["BuilderFlag.FP16", "BuilderFlag.INT8"], found
        return
    assert found["missing"] == [] and major >= 8, found
    for (owner, method), count in ARITY.items():
        assert found["arity"][owner + "." + method] in (None, count), (owner, method, found["arity"])


def test_tensorrt_11_is_refused_by_name(fake_gpu):
    """TensorRT 11 builds strongly typed networks only: the FP16 / INT8 builder flags are gone (checked on
    the real 11.4 bindings the same way as above)."""
    trt, _ = fake_gpu
    eleven = types.SimpleNamespace(**{n: getattr(trt, n) for n in dir(trt) if not n.startswith("__")})
    eleven.__version__ = "11.4.0"
    eleven.BuilderFlag = types.SimpleNamespace()
    trt_backend.check_supported(trt)
    with pytest.raises(DDRNetError, match=r"tensorrt 11.4.0 is not supported \(this runtime needs 8.5 to 10.x; "
                                          r"it lacks BuilderFlag.FP16, BuilderFlag.INT8\)"):
        trt_backend.check_supported(eleven)


# -- profiles and precisions (no TensorRT needed) ------------------------------------------------

@pytest.mark.parametrize("dims, problem", [
    (((1, 64, 64), (1, 32, 64), (1, 128, 128)), "height: needs min <= opt <= max, got min 64, opt 32, max 128"),
    (((2, 64, 64), (1, 64, 64), (4, 64, 64)), "batch: needs min <= opt <= max"),
    (((0, 64, 64), (1, 64, 64), (1, 64, 64)), r"profile min \[0, 64, 64\]: expected three positive dims"),
])
def test_bad_profiles_name_the_bound(dims, problem):
    with pytest.raises(DDRNetError, match=problem):
        Profile(*dims)


def test_profile_bounds_and_description():
    profile = Profile((1, 256, 256), (1, 1024, 2048), (2, 1024, 2048))
    assert profile.contains((2, 3, 1024, 2048)) and profile.contains((1, 3, 256, 300))
    assert not profile.contains((3, 3, 512, 512)) and not profile.contains((1, 3, 1080, 1920))
    assert profile.describe() == "batch 1..2, height 256..1024, width 256..2048 (tuned for 1x3x1024x2048)"
    assert Profile.from_dict(profile.to_dict()) == profile
    with pytest.raises(DDRNetError, match="expected min, opt and max"):
        Profile.from_dict({"min": [1, 2, 3]})


def _manifest(precision: str = "fp32", **extra) -> dict:
    from runtime_fixtures import manifest_for

    return dict(manifest_for([1, 3, 8, 16], precision=precision), **extra)


@pytest.mark.parametrize("manifest, precision, problem", [
    (_manifest(), "int8", "precision int8 needs an INT8 Q/DQ model exported for TensorRT .* this model is fp32"),
    (_manifest("int8", target={"int8_target": "tensorrt"}), "fp16", "INT8 .Q/DQ.: TensorRT builds it as int8 only"),
    (_manifest("int8", quantization={"target": "cpu"}), "int8", "quantized for onnxruntime on x86 .uint8"),
    (_manifest(), "bf16", "tensorrt precision must be one of fp32, fp16, int8"),
])
def test_precisions_a_model_cannot_be_built_at_are_refused(manifest, precision, problem):
    with pytest.raises(DDRNetError, match=problem):
        trt_backend.check_precision(manifest, "m", precision)


def test_default_precision_follows_the_model_and_its_target():
    assert trt_backend.default_precision(_manifest()) == "fp16"
    assert trt_backend.default_precision(_manifest(target={"engine": {"precision": "fp32"}})) == "fp32"
    assert trt_backend.default_precision(_manifest("int8", target={"int8_target": "tensorrt"})) == "int8"
    trt_backend.check_precision(_manifest("int8", target={"int8_target": "tensorrt"}), "m", "int8")


# -- bundles --------------------------------------------------------------------------------------

def test_targets_table():
    from ddrnet.export import targets

    assert targets.resolve("cpu") == (["onnx"], "cpu")
    assert targets.resolve("jetson", ["onnx"], "tensorrt") == (["onnx"], "tensorrt")
    assert targets.resolve("paddle") == (["paddle"], "cpu")
    with pytest.raises(DDRNetError, match="--format paddle,onnx contradicts --target cpu .its bundle holds onnx"):
        targets.resolve("cpu", ["paddle", "onnx"])
    with pytest.raises(DDRNetError, match="--int8-target cpu contradicts --target jetson"):
        targets.resolve("jetson", None, "cpu")
    section = targets.section("jetson", int8=True)
    assert section["int8_target"] == "tensorrt" and section["engine"]["precision"] == "int8"
    assert Profile.from_dict(section["engine"]["profile"]).max == (1, 1024, 2048)
    assert "engine" not in targets.section("cpu", int8=False) and "int8_target" not in targets.section("cpu", False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    import json

    import paddle

    from ddrnet.train.model import build_model

    paddle.seed(0)
    path = str(tmp_path_factory.mktemp("w") / "slim.pdparams")
    paddle.save(build_model("ddrnet23_slim").state_dict(), path)
    with open(path[:-len(".pdparams")] + ".json", "w") as f:
        json.dump({"model": {"name": "ddrnet23_slim", "num_classes": 19, "aux_head": False,
                             "avg_pool_exclusive": True}}, f)
    return path


@pytest.mark.slow
def test_cpu_bundle_from_fp32_holds_model_onnx_and_deploy_yaml_only(checkpoint, tmp_path, capsys):
    from ddrnet.runtime import Predictor

    out = str(tmp_path / "cpu")
    rc, stdout, err = _cli(capsys, "export", "--weights", checkpoint, "--target", "cpu", "--input-shape", "1,3,64,128",
                           "--parity-num", "1", "--out", out)
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["deploy.yaml", "model.onnx"]
    manifest = load_manifest(out)
    assert [e["path"] for e in manifest["files"]] == ["model.onnx"]
    assert manifest["target"] == {"name": "cpu", "backend": "onnxruntime", "device": "cpu"}
    assert "copy it to the device: rsync -a {}/ DEVICE:models/cpu/".format(out) in stdout
    assert Predictor(out)(_frame(64, 128)).shape == (64, 128)


@pytest.mark.slow
def test_jetson_bundle_engine_ahead_of_time_end_to_end(checkpoint, tmp_path, capsys, fake_gpu):
    """export --target jetson -> ddrnet engine (jetson defaults) -> the runtime loads that engine."""
    from ddrnet.runtime import Predictor

    trt, _ = fake_gpu
    out = str(tmp_path / "jetson")
    rc, stdout, err = _cli(capsys, "export", "--weights", checkpoint, "--target", "jetson", "--input-shape",
                           "1,3,64,128", "--parity-num", "1", "--out", out)
    assert rc == 0, err
    assert "then on the device: ddrnet engine --model models/jetson" in stdout
    assert load_manifest(out)["target"]["engine"]["workspace_mb"] == 1024
    rc, stdout, err = _cli(capsys, "engine", "--model", out)
    assert rc == 0, err
    entry = load_manifest(out)["engines"][0]
    assert entry["precision"] == "fp16" and entry["workspace_mb"] == 1024 and entry["profile"] is None  # fixed shape
    predictor = Predictor(out, backend="tensorrt", device="gpu")
    frame = _frame(64, 128)
    np.testing.assert_array_equal(predictor(frame), Predictor(out)(frame))
    assert len(trt.BUILDS) == 1 and predictor.backend.engine_path.endswith(entry["path"])


@pytest.mark.parametrize("argv, problem", [
    (["--target", "cpu", "--format", "paddle"], "--format paddle contradicts --target cpu"),
    (["--target", "jetson", "--int8-target", "cpu"], "--int8-target cpu contradicts --target jetson"),
])
def test_export_refuses_options_the_target_contradicts(tmp_path, capsys, argv, problem):
    rc, _, err = _cli(capsys, "export", "--weights", str(tmp_path / "none.pdparams"), "--out", str(tmp_path / "b"),
                      *argv)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("ddrnet export: error: " + problem)
    assert not os.path.exists(tmp_path / "b")


def test_runtime_names_the_missing_file_its_backend_needs(tmp_path):
    """A dir listing Paddle and ONNX files runs on onnxruntime without the Paddle files; the paddle
    backend names the one it needs. A present file is still checked."""
    from runtime_fixtures import manifest_for

    from ddrnet.runtime import Predictor

    model_dir = make_model_dir(str(tmp_path / "m"), shape=(-1, 3, -1, -1))
    for name in ("inference.pdmodel", "inference.pdiparams"):
        open(os.path.join(model_dir, name), "wb").write(b"paddle")
    write_manifest(model_dir, manifest_for([-1, 3, -1, -1], files=[
        {"format": "onnx", "role": "model", "path": "model.onnx"},
        {"format": "paddle", "role": "model", "path": "inference.pdmodel"},
        {"format": "paddle", "role": "params", "path": "inference.pdiparams"}]))
    os.remove(os.path.join(model_dir, "inference.pdmodel"))
    assert Predictor(model_dir)(_frame(8, 16)).shape == (8, 16)
    with pytest.raises(DDRNetError, match=r"inference\.pdmodel: listed in deploy\.yaml but missing; the paddle "
                                          r"backend needs it"):
        Predictor(model_dir, backend="paddle")
    with pytest.raises(DDRNetError, match=r"inference\.pdmodel: listed in .* but missing"):
        load_manifest(model_dir)  # the strict default (export checks, `ddrnet sign`) still wants every file
    open(os.path.join(model_dir, "inference.pdiparams"), "ab").write(b"!")
    with pytest.raises(DDRNetError, match=r"inference\.pdiparams: SHA-256 mismatch"):
        Predictor(model_dir)


# -- ddrnet engine: refusals before any work -----------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_engine_without_tensorrt_is_one_line_and_writes_nothing(tmp_path, capsys):
    model_dir = _bundle(str(tmp_path / "b"))
    before = open(os.path.join(model_dir, "deploy.yaml"), "rb").read()
    rc, out, err = _cli(capsys, "engine", "--model", model_dir)
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        "ddrnet engine: error: the tensorrt backend needs the tensorrt and pycuda packages (No module named "
        "'tensorrt'): pip install -c constraints.txt -e '.[runtime-gpu]', on a Jetson JetPack's wheels "
        "(docs/jetson.md)"]
    assert sorted(os.listdir(model_dir)) == ["deploy.yaml", "model.onnx"]
    assert open(os.path.join(model_dir, "deploy.yaml"), "rb").read() == before


@pytest.mark.parametrize("argv, problem", [
    (["--precision", "int8"], "precision int8 needs an INT8 Q/DQ model exported for TensorRT"),
    (["--max-batch", "0"], "--max-batch 0: must be at least 1"),
    (["--min-size", "2048x2048"], "profile height: needs min <= opt <= max, got min 2048, opt 1024, max 1024"),
    (["--opt-size", "1024by2048"], "--opt-size '1024by2048': expected HEIGHTxWIDTH"),
    (["--workspace", "8"], "--workspace 8: give at least 16 MB"),
])
def test_engine_refuses_bad_options_before_any_work(tmp_path, capsys, fake_gpu, argv, problem):
    trt, _ = fake_gpu
    model_dir = _bundle(str(tmp_path / "b"))
    rc, _, err = _cli(capsys, "engine", "--model", model_dir, *argv)
    assert rc == 2 and problem in err.strip().splitlines()[-1]
    assert trt.BUILDS == [] and not os.path.exists(os.path.join(model_dir, "engines"))


def test_timing_cache_may_live_in_the_bundle_but_never_replace_its_files(tmp_path, capsys, fake_gpu):
    model_dir = _bundle(str(tmp_path / "b"))
    rc, _, err = _cli(capsys, "engine", "--model", model_dir, "--timing-cache", os.path.join(model_dir, "model.onnx"))
    assert rc == 2 and "--timing-cache would overwrite the input" in err
    cache = os.path.join(model_dir, "engines", "timing.cache")
    assert _cli(capsys, "engine", "--model", model_dir, "--timing-cache", cache)[0] == 0
    assert _cli(capsys, "engine", "--model", model_dir, "--timing-cache", cache)[0] == 0  # read, then written back
    assert os.path.getsize(cache) > 0


def test_int8_engine_of_a_graph_without_qdq_is_refused_at_build(tmp_path, capsys, fake_gpu):
    """deploy.yaml claims INT8 for TensorRT, the graph has no Q/DQ node: TensorRT's own view decides."""
    model_dir = _bundle(str(tmp_path / "b"), precision="int8")
    rc, _, err = _cli(capsys, "engine", "--model", model_dir)
    assert rc == 2 and "precision int8 needs Q/DQ nodes and this graph has none" in err.strip().splitlines()[-1]
    engines = os.path.join(model_dir, "engines")
    assert not os.path.isdir(engines) or os.listdir(engines) == []


def test_no_gpu_is_one_line(tmp_path, capsys, fake_gpu, monkeypatch):
    _, driver = fake_gpu
    monkeypatch.setattr(driver, "DEVICE_COUNT", 0)
    rc, _, err = _cli(capsys, "engine", "--model", _bundle(str(tmp_path / "b")))
    assert rc == 2 and err.strip().splitlines()[-1] == "ddrnet engine: error: the tensorrt backend found no CUDA GPU"


# -- ddrnet engine and the runtime (fake GPU) ------------------------------------------------------

def test_engine_is_recorded_and_loaded_without_rebuilding(tmp_path, capsys, fake_gpu):
    from ddrnet.runtime import Predictor

    trt, _ = fake_gpu
    model_dir = _bundle(str(tmp_path / "b"))
    cache = str(tmp_path / "trt.cache")
    rc, out, err = _cli(capsys, "engine", "--model", model_dir, "--max-size", "512x512", "--opt-size", "256x256",
                        "--timing-cache", cache)
    assert rc == 0, err
    manifest = load_manifest(model_dir)
    (entry,) = manifest["engines"]
    assert entry["sha256"] == sha256_file(os.path.join(model_dir, entry["path"]))
    assert entry["onnx_sha256"] == manifest["files"][0]["sha256"]
    assert (entry["gpu"], entry["compute_capability"], entry["tensorrt"]) == ("Fake Orin 8GB", "8.7", "10.99.0")
    assert entry["profile"] == {"min": [1, 256, 256], "opt": [1, 256, 256], "max": [1, 512, 512]}
    assert entry["precision"] == "fp16" and "profile: batch 1..1, height 256..512, width 256..512" in out
    assert os.path.getsize(cache) > 0 and len(trt.BUILDS) == 1
    frames = [_frame(300, 400, seed=s) for s in range(2)]
    predictor = Predictor(model_dir, backend="tensorrt", device="gpu")
    assert len(trt.BUILDS) == 1, "the runtime rebuilt the engine instead of loading the recorded one"
    assert predictor.backend.max_batch == 1 and predictor.precision == "fp16"
    reference = Predictor(model_dir)
    for frame in frames:
        np.testing.assert_array_equal(predictor(frame), reference(frame))
    with pytest.raises(DDRNetError, match=r"input shape \[1, 3, 600, 400\] is outside the TensorRT engine's profile: "
                                          r"batch 1..1, height 256..512, width 256..512"):
        predictor(_frame(600, 400))


def test_rebuild_replaces_the_entry_and_other_precisions_add_one(tmp_path, capsys, fake_gpu):
    model_dir = _bundle(str(tmp_path / "b"))
    assert _cli(capsys, "engine", "--model", model_dir)[0] == 0
    first = load_manifest(model_dir)["engines"][0]["path"]
    assert _cli(capsys, "engine", "--model", model_dir, "--max-batch", "2")[0] == 0
    assert _cli(capsys, "engine", "--model", model_dir, "--precision", "fp32")[0] == 0
    engines = load_manifest(model_dir)["engines"]
    assert [e["precision"] for e in engines] == ["fp16", "fp32"] and engines[0]["profile"]["max"][0] == 2
    on_disk = [f for f in os.listdir(os.path.join(model_dir, "engines")) if f.endswith(".engine")]
    assert sorted(on_disk) == sorted(os.path.basename(e["path"]) for e in engines)
    assert first not in [e["path"] for e in engines]
    os.remove(os.path.join(model_dir, engines[1]["path"]))  # someone cleaned up: the entry goes with the next build
    assert _cli(capsys, "engine", "--model", model_dir)[0] == 0
    assert [e["precision"] for e in load_manifest(model_dir)["engines"]] == ["fp16"]


def test_two_builds_at_once_keep_both_engines(tmp_path, fake_gpu, monkeypatch):
    """Both read deploy.yaml before either records its engine: the record is made under a lock on a fresh
    read, so neither entry is lost."""
    trt, _ = fake_gpu
    monkeypatch.setattr(trt, "BUILD_DELAY_S", 0.3)
    model_dir = _bundle(str(tmp_path / "b"))
    errors = []

    def build(precision: str) -> None:
        try:
            trt_backend.build_engine(model_dir, load_manifest(model_dir), precision)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=build, args=(p,)) for p in ("fp16", "fp32")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(trt.BUILDS) == 2
    assert sorted(e["precision"] for e in load_manifest(model_dir)["engines"]) == ["fp16", "fp32"]


def test_engine_refuses_a_bundle_missing_a_listed_file(tmp_path, capsys, fake_gpu):
    """deploy.yaml is rewritten with the engine: it must still vouch for every file it lists."""
    trt, _ = fake_gpu
    model_dir = _bundle(str(tmp_path / "b"))
    open(os.path.join(model_dir, "extra.bin"), "wb").write(b"x")
    manifest = load_manifest(model_dir)
    manifest["files"].append({"format": "paddle", "role": "params", "path": "extra.bin"})
    write_manifest(model_dir, manifest)
    os.remove(os.path.join(model_dir, "extra.bin"))
    rc, _, err = _cli(capsys, "engine", "--model", model_dir)
    assert rc == 2 and "extra.bin: listed in deploy.yaml but missing" in err and trt.BUILDS == []


def test_tampered_or_missing_engine_is_refused(tmp_path, capsys, fake_gpu):
    from ddrnet.runtime import Predictor

    model_dir = _bundle(str(tmp_path / "b"))
    assert _cli(capsys, "engine", "--model", model_dir)[0] == 0
    path = os.path.join(model_dir, load_manifest(model_dir)["engines"][0]["path"])
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 1
    open(path, "wb").write(bytes(data))
    with pytest.raises(DDRNetError, match=r"\.engine: SHA-256 mismatch with deploy\.yaml"):
        Predictor(model_dir, backend="tensorrt", device="gpu")
    os.remove(path)
    with pytest.raises(DDRNetError, match=r"\.engine: listed in deploy\.yaml but missing; rebuild it with "
                                          r"`ddrnet engine --model "):
        Predictor(model_dir, backend="tensorrt", device="gpu")


def test_without_a_recorded_engine_the_runtime_builds_in_memory_only(tmp_path, caplog, fake_gpu):
    from ddrnet.runtime import Predictor

    trt, _ = fake_gpu
    model_dir = _bundle(str(tmp_path / "b"), target="tensorrt")
    before = sorted(os.listdir(model_dir))
    predictor = Predictor(model_dir, backend="tensorrt", device="gpu", precision="fp32")
    assert len(trt.BUILDS) == 1 and predictor.backend.engine_path is None
    assert sorted(os.listdir(model_dir)) == before  # nothing unlisted is ever written, or loaded
    assert "building one now, for this run only" in caplog.text and "ddrnet engine --model" in caplog.text
    assert predictor.backend.max_batch == 4  # the tensorrt target's profile


def test_batches_up_to_the_profile_and_names_the_bounds_beyond(tmp_path, capsys, fake_gpu):
    from ddrnet.runtime import Predictor

    model_dir = _bundle(str(tmp_path / "b"))
    assert _cli(capsys, "engine", "--model", model_dir, "--max-batch", "2", "--min-size", "32x32", "--opt-size",
                "64x64", "--max-size", "64x64")[0] == 0
    backend = Predictor(model_dir, backend="tensorrt", device="gpu").backend
    assert backend.max_batch == 2
    tensor = np.zeros((2, 3, 48, 64), np.float32)
    assert backend.run(tensor).shape == (2, 48, 64)
    with pytest.raises(DDRNetError, match=r"input shape \[3, 3, 48, 64\] is outside the TensorRT engine's profile: "
                                          r"batch 1..2, height 32..64, width 32..64 \(tuned for 1x3x64x64\)"):
        backend.run(np.zeros((3, 3, 48, 64), np.float32))


def test_run_is_thread_safe(tmp_path, capsys, fake_gpu, monkeypatch):
    """The fake raises when two threads are inside one execution context at once (TensorRT would corrupt
    its buffers): run() must serialise them, and each caller must get its own result."""
    from ddrnet.runtime import Predictor

    trt, _ = fake_gpu
    monkeypatch.setattr(trt, "EXECUTE_DELAY_S", 0.002)
    model_dir = _bundle(str(tmp_path / "b"), shape=(1, 3, 32, 32))
    assert _cli(capsys, "engine", "--model", model_dir)[0] == 0
    backend = Predictor(model_dir, backend="tensorrt", device="gpu").backend
    tensors = [np.random.default_rng(i).normal(size=(1, 3, 32, 32)).astype(np.float32) for i in range(4)]
    expected = [backend.run(t) for t in tensors]
    errors, mismatches = [], []

    def work(i: int) -> None:
        try:
            for _ in range(8):
                if not np.array_equal(backend.run(tensors[i]), expected[i]):
                    mismatches.append(i)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and mismatches == []
    # the same calls without run()'s lock do collide: the check above can fail
    backend._lock = contextlib.nullcontext()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors or mismatches


def test_onnxruntime_tensorrt_cache_is_keyed_by_the_model_bytes(tmp_path, fake_gpu):
    from ddrnet.runtime.backends import OnnxRuntimeBackend

    ort = types.SimpleNamespace(get_available_providers=lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    path = os.path.join(make_model_dir(str(tmp_path / "m")), "model.onnx")
    providers = OnnxRuntimeBackend._providers(ort, "gpu", path)
    cache = providers[0][1]["trt_engine_cache_path"]
    assert providers[0][0] == "TensorrtExecutionProvider" and providers[1:] == ["CUDAExecutionProvider",
                                                                                   "CPUExecutionProvider"]
    assert cache == os.path.join(str(tmp_path / "m"), "ort_trt_cache", sha256_file(path)[:16])
    make_model_dir(str(tmp_path / "m"), seed=1)  # re-exported into the same dir: other weights
    assert OnnxRuntimeBackend._providers(ort, "gpu", path)[0][1]["trt_engine_cache_path"] != cache
    assert OnnxRuntimeBackend._providers(ort, "gpu", path, ("cuda",)) == ["CUDAExecutionProvider",
                                                                          "CPUExecutionProvider"]


def test_manifest_engine_entries_are_validated(tmp_path):
    model_dir = make_model_dir(str(tmp_path / "m"))
    path = os.path.join(model_dir, "deploy.yaml")
    data = yaml.safe_load(open(path))
    data["engines"] = [{"path": "engines/x.engine"}]
    open(path, "w").write(yaml.safe_dump(data))
    with pytest.raises(DDRNetError, match="engines must be a list of entries with a path and a precision"):
        load_manifest(model_dir)


# -- on a real GPU (skipped here) -----------------------------------------------------------------

def _real_gpu() -> bool:
    if not (importlib.util.find_spec("tensorrt") and importlib.util.find_spec("pycuda")):
        return False
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:  # noqa: BLE001  any failure means: no usable GPU
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpu(), reason="needs tensorrt, pycuda and a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engine_ahead_of_time_matches_onnxruntime(tmp_path, precision):
    from ddrnet.runtime import Predictor

    model_dir = _bundle(str(tmp_path / "b"), target="tensorrt")
    entry = trt_backend.build_engine(model_dir, load_manifest(model_dir), precision,
                                     Profile((1, 32, 32), (2, 64, 96), (2, 128, 128)))
    predictor = Predictor(model_dir, backend="tensorrt", device="gpu", precision=precision)
    assert predictor.backend.engine_path.endswith(entry["path"]) and predictor.backend.max_batch == 2
    reference = Predictor(model_dir)
    frames = [_frame(64, 96, seed=s) for s in range(2)]
    for frame in frames:
        assert (predictor(frame) == reference(frame)).mean() > (0.999 if precision == "fp32" else 0.99)
    assert [m.shape for m in predictor.predict_batch(frames)] == [(64, 96)] * 2
