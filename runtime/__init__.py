"""Lean runtime: numpy, OpenCV and one backend. Never imports Paddle unless its backend is asked for."""
from __future__ import annotations


def __getattr__(name):
    # Lazy so `import ddrnet.runtime.metrics` does not pull in a backend.
    if name == "Predictor":
        from ddrnet.runtime.predictor import Predictor

        return Predictor
    raise AttributeError(name)
