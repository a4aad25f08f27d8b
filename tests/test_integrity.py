"""Integrity and safe loading, beyond what test_runtime.py already proves
(a changed model byte, a missing listed file or deploy.yaml, '..' / absolute / symlinked-file paths):
YAML tags that would run code, `--opt` values, pickle in the runtime, and escapes that carry a
matching hash. Then writing (runtime/fileio.py: nothing half-written, no input replaced, outputs
checked for real), the shared option parsers, and the Paddle version gate of train/compat.py."""
from __future__ import annotations

import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import yaml

from ddrnet.runtime import fileio
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.manifest import load_manifest, sha256_file, write_manifest
from ddrnet.runtime.options import check_threads, cpu_count, parse_hw
from runtime_fixtures import make_model_dir, manifest_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIRS = ("ddrnet", "runtime", "train", "compress", "export")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(str(tmp_path_factory.mktemp("integrity") / "m"), shape=(1, 3, 8, 16))


def _copy(model_dir, tmp_path, name="copy"):
    target = str(tmp_path / name)
    shutil.copytree(model_dir, target)
    return target


def _python_tags(marker: str):
    """YAML documents that would create `marker` if a loader constructed Python objects."""
    command = "touch {}".format(marker)
    code = "open({!r}, 'w').close()".format(marker)
    return [
        "!!python/object/apply:os.system [{!r}]".format(command),
        "!!python/object/apply:builtins.exec [{!r}]".format(code),
        "!!python/object/apply:subprocess.call [[touch, {!r}]]".format(marker),
    ]


# -- YAML: manifests and configs are read safely ------------------------------------------------

@pytest.mark.parametrize("tag_index", range(3))
def test_the_tags_do_run_code_under_an_unsafe_loader(tmp_path, tag_index):
    """The control: each document really creates its marker when Python objects are constructed."""
    marker = str(tmp_path / "code_ran")
    yaml.unsafe_load("model_name: " + _python_tags(marker)[tag_index])
    assert os.path.exists(marker)


@pytest.mark.parametrize("tag_index", range(3))
def test_python_tag_in_deploy_yaml_is_refused_and_never_runs(model_dir, tmp_path, tag_index):
    from ddrnet.runtime import Predictor

    marker = str(tmp_path / "code_ran")
    target = _copy(model_dir, tmp_path)
    path = os.path.join(target, "deploy.yaml")
    text = open(path).read().replace("model_name: tiny", "model_name: " + _python_tags(marker)[tag_index])
    assert "python/object" in text
    open(path, "w").write(text)
    with pytest.raises(DDRNetError, match=r"deploy\.yaml: not valid YAML") as err:
        Predictor(target)
    assert "\n" not in str(err.value)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("tag_index", range(3))
def test_python_tag_in_configs_is_refused_and_never_runs(tmp_path, tag_index):
    from ddrnet.compress.calib import load_recipe
    from ddrnet.train.config import load_config

    marker = str(tmp_path / "code_ran")
    tag = _python_tags(marker)[tag_index]
    base = tmp_path / "base.yml"
    base.write_text("iters: {}\n".format(tag))
    child = tmp_path / "child.yml"
    child.write_text("_base_: base.yml\nbatch_size: 2\n")  # the tag hides in the inherited file
    with pytest.raises(DDRNetError, match=r"base\.yml: invalid YAML"):
        load_config(str(child))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("count: {}\n".format(tag))
    with pytest.raises(DDRNetError, match=r"recipe\.yaml: cannot read the recipe"):
        load_recipe(str(recipe))
    assert not os.path.exists(marker)


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield node, owner, name


def _package_files():
    files = [f for d in PACKAGE_DIRS for f in glob.glob(os.path.join(REPO, d, "*.py"))]
    assert len(files) > 20
    return files


def test_every_yaml_read_in_the_package_is_safe():
    """No yaml.load / full_load / unsafe_load and no Loader= anywhere: only safe_load."""
    unsafe = {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all"}
    found = []
    for path in _package_files():
        tree = ast.parse(open(path).read(), path)
        for node, owner, name in _calls(tree):
            if owner == "yaml" and (name in unsafe or any(k.arg == "Loader" for k in node.keywords)):
                found.append("{}:{} yaml.{}".format(os.path.relpath(path, REPO), node.lineno, name))
    assert not found


# -- --opt key=value -----------------------------------------------------------------------------

@pytest.mark.parametrize("tag_index", range(3))
def test_opt_value_with_python_tag_is_refused_and_never_runs(tmp_path, tag_index):
    from ddrnet.train.config import apply_opt

    marker = str(tmp_path / "code_ran")
    cfg = {"model": {"name": "ddrnet23_slim"}}
    with pytest.raises(DDRNetError, match="value is not a literal"):
        apply_opt(cfg, "model.name=" + _python_tags(marker)[tag_index])
    assert cfg == {"model": {"name": "ddrnet23_slim"}} and not os.path.exists(marker)


@pytest.mark.parametrize("raw,expected", [
    ("[1, 2]", [1, 2]),
    ("{a: 1}", {"a": 1}),
    ("null", None),
    ("5e-4", 5e-4),
    ("os.system('touch x')", "os.system('touch x')"),
    ("!!str 12", "12"),  # standard YAML tags stay available
])
def test_opt_values_are_plain_yaml_literals(raw, expected):
    from ddrnet.train.config import apply_opt

    cfg = {}
    apply_opt(cfg, "a.b=" + raw)
    assert cfg == {"a": {"b": expected}}


def test_opt_through_the_cli_never_runs_code(tmp_path):
    marker = str(tmp_path / "code_ran")
    opt = "iters=" + _python_tags(marker)[0]
    proc = subprocess.run([sys.executable, "-m", "ddrnet", "train", "--config", "ddrnet23_slim_synthetic_cpu.yml",
                           "--save-dir", str(tmp_path / "run"), "--opt", opt],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("ddrnet train: error: --opt")
    assert not os.path.exists(marker) and not os.path.exists(str(tmp_path / "run"))


# -- no pickle in the runtime --------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "torch"}


def _pickle_uses(path: str):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            continue
        for name in names:
            if name in PICKLE_MODULES:
                yield "{}: import {}".format(node.lineno, name)
    for node, owner, name in _calls(tree):
        allow_pickle = any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                           for k in node.keywords)
        if (owner, name) in {("paddle", "load"), ("torch", "load")} or (name == "load" and allow_pickle):
            yield "{}: {}.{}".format(node.lineno, owner, name)


def test_runtime_sources_load_no_pickle():
    files = glob.glob(os.path.join(REPO, "runtime", "*.py"))
    assert len(files) > 5
    found = ["{}:{}".format(os.path.basename(p), use) for p in files for use in _pickle_uses(p)]
    assert not found


def test_the_pickle_scan_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""
        import pickle
        from torch import load
        import numpy as np
        np.load("a.npy", allow_pickle=True)
        paddle.load("x.pdparams")
        np.load("ok.npy")  # numpy's default refuses pickled arrays
        np.load("ok.npy", allow_pickle=False)
    """))
    assert [u.split(":")[0] for u in _pickle_uses(str(bad))] == ["2", "3", "5", "6"]


_NO_PICKLE_RUN = """
import pickle, _pickle, sys

def refuse(*args, **kwargs):
    raise AssertionError("the runtime unpickled something")

class Refused(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
        refuse()

for module in (pickle, _pickle):
    module.load = module.loads = refuse
    module.Unpickler = Refused

import numpy as np
from ddrnet.cli import main
from ddrnet.runtime import Predictor

model, out = sys.argv[1], sys.argv[2]
predictor = Predictor(model)
masks = predictor.predict_batch([np.zeros((8, 16, 3), np.uint8), np.full((12, 20, 3), 200, np.uint8)])
assert [m.shape for m in masks] == [(8, 16), (12, 20)]
assert main(["bench", "--model", model, "--iters", "2", "--warmup", "0"]) == 0
import cv2
cv2.imwrite(out + ".png", np.zeros((8, 16, 3), np.uint8))
assert main(["predict", "--model", model, "--input", out + ".png", "--out", out]) == 0
assert not any(m == "paddle" or m.startswith("paddle.") for m in sys.modules)
print("no pickle")
"""


def test_runtime_runs_with_pickle_disabled(model_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-c", _NO_PICKLE_RUN, model_dir, str(tmp_path / "pred")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("no pickle")


# -- every listed file is verified; escapes are refused even with a matching hash ----------------

def test_every_listed_file_is_verified_not_only_the_one_loaded(model_dir, tmp_path):
    from ddrnet.runtime import Predictor

    target = _copy(model_dir, tmp_path)
    params = os.path.join(target, "inference.pdiparams")
    open(params, "wb").write(np.arange(64, dtype=np.uint8).tobytes())
    write_manifest(target, manifest_for([1, 3, 8, 16], files=[
        {"format": "onnx", "role": "model", "path": "model.onnx"},
        {"format": "paddle", "role": "params", "path": "inference.pdiparams"}]))
    Predictor(target)  # consistent: loads
    data = bytearray(open(params, "rb").read())
    data[-1] ^= 0xFF
    open(params, "wb").write(bytes(data))
    with pytest.raises(DDRNetError, match=r"inference\.pdiparams: SHA-256 mismatch with deploy\.yaml"):
        Predictor(target, backend="onnxruntime")  # the onnxruntime backend never reads that file


def _point_manifest_at(model_dir: str, rel_path: str, sha256: str) -> None:
    """Rewrite deploy.yaml by hand (write_manifest would refuse the path) with a valid hash."""
    path = os.path.join(model_dir, "deploy.yaml")
    data = yaml.safe_load(open(path))
    data["files"][0].update(path=rel_path, sha256=sha256)
    open(path, "w").write(yaml.safe_dump(data))


def test_escape_with_a_matching_hash_is_still_refused(model_dir, tmp_path):
    outside = _copy(model_dir, tmp_path, "outside")
    digest = sha256_file(os.path.join(outside, "model.onnx"))
    target = _copy(model_dir, tmp_path)
    for rel_path, problem in [("../outside/model.onnx", r"must not contain '\.\.'"),
                              ("..\\outside\\model.onnx", r"must not contain '\.\.'"),
                              (os.path.join(outside, "model.onnx"), "must be relative")]:
        _point_manifest_at(target, rel_path, digest)
        with pytest.raises(DDRNetError, match=problem):
            load_manifest(target)


def test_symlinked_folder_escaping_the_model_dir_is_refused(model_dir, tmp_path):
    from ddrnet.runtime import Predictor

    outside = _copy(model_dir, tmp_path, "outside")
    target = _copy(model_dir, tmp_path)
    os.symlink(outside, os.path.join(target, "weights"))  # a folder link: no '..' in the listed path
    _point_manifest_at(target, "weights/model.onnx", sha256_file(os.path.join(outside, "model.onnx")))
    with pytest.raises(DDRNetError, match="points outside the model dir"):
        Predictor(target)
    # a link that stays inside the model dir is fine
    os.remove(os.path.join(target, "weights"))
    os.makedirs(os.path.join(target, "store"))
    shutil.move(os.path.join(target, "model.onnx"), os.path.join(target, "store", "model.onnx"))
    os.symlink("store", os.path.join(target, "weights"))
    assert Predictor(target)(np.zeros((8, 16, 3), np.uint8)).shape == (8, 16)


# -- writing: runtime/fileio.py is the one way to write, and it leaves nothing half-written --------

def _names(folder) -> list:
    return sorted(os.listdir(str(folder)))


@pytest.mark.parametrize("failure", [ValueError("boom"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, failure):
    path = str(tmp_path / "report.json")
    fileio.write_json({"old": 1}, path)
    with pytest.raises(type(failure)):
        with fileio.atomic_write(path) as f:
            f.write('{"new": ')
            raise failure
    assert json.load(open(path)) == {"old": 1}
    assert _names(tmp_path) == ["report.json"]


def test_write_json_of_an_unserialisable_value_writes_nothing(tmp_path):
    path = str(tmp_path / "sub" / "r.json")
    with pytest.raises(TypeError):
        fileio.write_json({"x": object()}, path)
    assert not os.path.exists(str(tmp_path / "sub"))


def test_atomic_path_keeps_the_extension_for_writers_that_pick_a_format_by_name(tmp_path):
    path = str(tmp_path / "out" / "x.png")  # the folder is made with the file
    with fileio.atomic_path(path) as tmp:
        assert tmp.endswith(".png") and os.path.dirname(tmp) == os.path.dirname(path)
        assert cv2.imwrite(tmp, np.zeros((4, 4, 3), np.uint8))
    assert _names(tmp_path / "out") == ["x.png"]


def _fill(folder: str, name: str, text: str) -> None:
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)


def test_atomic_dir_replaces_a_folder_whole_with_the_umask_permissions(tmp_path):
    target = str(tmp_path / "ckpt")
    with fileio.atomic_dir(target) as stage:
        _fill(stage, "a.txt", "first")
    with fileio.atomic_dir(target) as stage:
        _fill(stage, "b.txt", "second")
    assert _names(target) == ["b.txt"] and _names(tmp_path) == ["ckpt"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700


def test_atomic_dir_failure_keeps_the_previous_folder(tmp_path):
    target = str(tmp_path / "ckpt")
    with fileio.atomic_dir(target) as stage:
        _fill(stage, "a.txt", "first")
    with pytest.raises(RuntimeError):
        with fileio.atomic_dir(target) as stage:
            _fill(stage, "a.txt", "half")
            raise RuntimeError("crash while writing")
    assert open(os.path.join(target, "a.txt")).read() == "first"
    assert _names(tmp_path) == ["ckpt"]


def test_atomic_dir_puts_the_previous_folder_back_when_the_new_one_cannot_be_renamed(tmp_path, monkeypatch):
    target = str(tmp_path / "ckpt")
    with fileio.atomic_dir(target) as stage:
        _fill(stage, "a.txt", "first")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(os.path.basename(src))
        if os.path.basename(src).startswith(".tmp-"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(DDRNetError, match=r"ckpt: cannot write \(No space left on device\)"):
        with fileio.atomic_dir(target) as stage:
            _fill(stage, "a.txt", "second")
    monkeypatch.undo()
    assert calls[0] == "ckpt" and calls[1].startswith(".tmp-ckpt-")  # moved aside, then the failed rename
    assert open(os.path.join(target, "a.txt")).read() == "first"
    assert _names(tmp_path) == ["ckpt"]


def test_output_checks_probe_for_real_and_create_nothing(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DDRNetError, match=r"^/proc/ddrnet/b\.json: cannot write --json \(no file can be created in /proc: "):
        fileio.check_output_file("/proc/ddrnet/b.json", "--json")  # os.access says yes here when root
    with pytest.raises(DDRNetError, match=r"afile/x\.json: cannot write --json \(.*afile is a file, not a folder\)"):
        fileio.check_output_file(str(afile / "x.json"), "--json")
    with pytest.raises(DDRNetError, match=r"is a folder; give a file name"):
        fileio.check_output_file(str(tmp_path), "--json")
    with pytest.raises(DDRNetError, match=r"afile: --out is a file, not a folder"):
        fileio.check_output_dir(str(afile), "--out")
    assert fileio.check_output_dir(str(tmp_path / "new" / "deeper"), "--out")
    assert _names(tmp_path) == ["afile"]  # the probe file is gone, the folder not made


def test_outputs_never_replace_inputs_however_they_are_spelt(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    image = data / "sub" / "a.png"
    image.write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(image)
    for output, inputs in [(str(image), [str(image)]), (str(tmp_path / "link.png"), [str(image)]),
                           (str(data / "sub" / ".." / "sub" / "a.png"), [str(image)]), (str(image), [str(data)])]:
        with pytest.raises(DDRNetError, match=r"--out would overwrite the input"):
            fileio.refuse_overwrite([output], inputs, "--out")
    fileio.refuse_overwrite([str(data / "sub" / "new.png")], [str(data)], "--out")  # a new file beside inputs
    with pytest.raises(DDRNetError, match=r"holds the input .*a\.png, which writing there would replace"):
        fileio.refuse_replacing(str(data), [str(image)], "--out")
    fileio.refuse_replacing(str(tmp_path / "elsewhere"), [str(image)], "--out")


@pytest.mark.parametrize("text,hw", [("512x1024", (512, 1024)), ("512,1024", (512, 1024)), (" 64 X 128 ", (64, 128))])
def test_parse_hw_reads_hxw_and_the_old_h_comma_w(text, hw):
    assert parse_hw(text, "--size") == hw


@pytest.mark.parametrize("text", ["", "512", "512x", "0x64", "64x0", "-1x64", "64by128", "1x2x3", "1.5x2"])
def test_parse_hw_refuses_anything_else_naming_the_option(text):
    with pytest.raises(DDRNetError, match="^" + re.escape("--frame {!r}: expected HEIGHTxWIDTH".format(text))):
        parse_hw(text, "--frame")


def test_thread_counts_are_1_to_the_cores_or_none():
    cores = cpu_count()
    assert check_threads(None) is None and check_threads(1) == 1 and check_threads(cores) == cores
    for bad in (0, -1, cores + 1):
        with pytest.raises(DDRNetError, match=r"^--threads {}: ".format(bad)):
            check_threads(bad)


# -- Paddle / PaddleSlim internals: train/compat.py checks the releases it supports -----------------

def test_compat_refuses_a_release_it_was_not_checked_against(monkeypatch):
    from ddrnet.train import compat

    monkeypatch.delenv(compat.OVERRIDE_ENV, raising=False)
    assert compat.check_version("paddlepaddle").startswith("2.6.")  # the pinned stack passes
    assert compat.check_version("paddleslim").startswith("2.6.")
    assert compat.check_version("paddlepaddle", "2.6.9") == "2.6.9"
    assert compat.check_version("paddlepaddle", "0.0.0") == "0.0.0"  # a develop build
    for dist, version in (("paddlepaddle", "3.0.0"), ("paddlepaddle", "2.5.2"), ("paddleslim", "2.7.0")):
        with pytest.raises(DDRNetError, match=r"^{} {}: ddrnet\.train\.compat supports 2\.6\.x only .*"
                                              r"pip install -c constraints\.txt {}==2\.6\.\*".format(
                                                  dist, re.escape(version), dist)):
            compat.check_version(dist, version)


def test_compat_override_turns_the_refusal_into_a_warning(monkeypatch, caplog):
    from ddrnet.train import compat

    monkeypatch.setenv(compat.OVERRIDE_ENV, "1")
    with caplog.at_level("WARNING", logger="ddrnet.train.compat"):
        assert compat.check_version("paddlepaddle", "3.1.0") == "3.1.0"
    assert "paddlepaddle 3.1.0: ddrnet.train.compat supports 2.6.x only" in caplog.text


def test_compat_layer_helpers_reach_sequential_items_and_resize_tensors():
    import paddle

    from ddrnet.train import compat

    model = paddle.nn.Sequential(paddle.nn.Conv2D(3, 8, 1), paddle.nn.Sequential(paddle.nn.BatchNorm2D(8)))
    bn = compat.get_sublayer(model, "1.0")
    assert isinstance(bn, paddle.nn.BatchNorm2D)
    compat.set_sublayer(model, "1.0", paddle.nn.Identity())
    assert isinstance(model[1][0], paddle.nn.Identity)
    mean, variance, epsilon = compat.bn_statistics(bn)
    assert list(mean.shape) == list(variance.shape) == [8] and 0 < epsilon < 1e-3
    conv = model[0]
    compat.set_tensor(conv.weight, np.ones((4, 3, 1, 1), np.float32))
    compat.set_tensor(conv.bias, np.zeros((4,), np.float32))
    compat.sync_channel_attrs(conv)
    assert list(conv.weight.shape) == [4, 3, 1, 1] and repr(conv).startswith("Conv2D(3, 4,")
    assert model(paddle.ones([1, 3, 2, 2])).shape == [1, 4, 2, 2]
