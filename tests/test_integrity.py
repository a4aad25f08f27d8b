"""Integrity and safe loading (issue 6, item 5), beyond what test_runtime.py already proves
(a changed model byte, a missing listed file or deploy.yaml, '..' / absolute / symlinked-file paths):
YAML tags that would run code, `--opt` values, pickle in the runtime, and escapes that carry a
matching hash."""
from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.manifest import load_manifest, sha256_file, write_manifest
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
