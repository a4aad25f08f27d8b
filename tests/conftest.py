"""Suite-wide test settings."""
from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_compiled_model_cache(tmp_path_factory):
    """Compiled-model caches (OpenVINO, runtime/openvino_backend.py) go to a temporary folder, not the
    user's ~/.cache; subprocesses inherit it through the environment."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DDRNET_CACHE_DIR", str(tmp_path_factory.mktemp("ddrnet-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _no_trust_key_from_the_environment(tmp_path_factory):
    """Signed bundles (runtime/signing.py) are checked only where a test asks: a DDRNET_TRUST set in the
    developer's shell is ignored, and accepted versions go to a temporary state file, not ~/.local/state."""
    mp = pytest.MonkeyPatch()
    mp.delenv("DDRNET_TRUST", raising=False)
    mp.setenv("DDRNET_TRUST_STATE", str(tmp_path_factory.mktemp("trust") / "trust-state.json"))
    yield
    mp.undo()


@pytest.fixture
def fake_gpu(monkeypatch):
    """tests/fake_gpu's tensorrt and pycuda (a CPU stand-in) in place of any real ones, for one test:
    yields (tensorrt, pycuda.driver)."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_gpu")
    monkeypatch.syspath_prepend(folder)
    for name in ("tensorrt", "pycuda", "pycuda.driver"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import pycuda.driver
    import tensorrt

    assert tensorrt.__file__.startswith(folder)
    tensorrt.BUILDS.clear()
    yield tensorrt, pycuda.driver
    for name in ("tensorrt", "pycuda", "pycuda.driver"):
        sys.modules.pop(name, None)
