"""CPU stand-in for pycuda (see tests/fake_gpu/tensorrt.py)."""
