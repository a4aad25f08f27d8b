"""CPU stand-in for pycuda.driver: one "GPU" whose device memory is host memory, so the fake TensorRT
(tests/fake_gpu/tensorrt.py) reads and writes the buffers the backend allocates. DEVICE_COUNT = 0 plays
a machine whose driver sees no GPU."""
from __future__ import annotations

import itertools

import numpy as np

DEVICE_COUNT = 1
GPU_NAME = "Fake Orin 8GB"
_memory = {}  # address -> bytearray
_addresses = itertools.count(1 << 20, 1 << 20)


class Error(Exception):
    pass


def init() -> None:
    pass


class Context:
    depth = 0

    def push(self) -> None:
        Context.depth += 1

    def pop(self) -> None:
        Context.depth -= 1


class Device:
    def __init__(self, index: int):
        if index >= DEVICE_COUNT:
            raise Error("invalid device ordinal")

    @staticmethod
    def count() -> int:
        return DEVICE_COUNT

    def name(self) -> str:
        return GPU_NAME

    def compute_capability(self):
        return (8, 7)

    def retain_primary_context(self) -> Context:
        return Context()


class Stream:
    handle = 0

    def synchronize(self) -> None:
        pass


class DeviceAllocation:
    def __init__(self, nbytes: int):
        self.address = next(_addresses)
        _memory[self.address] = bytearray(nbytes)

    def __int__(self) -> int:
        return self.address


def mem_alloc(nbytes: int) -> DeviceAllocation:
    return DeviceAllocation(nbytes)


def pagelocked_empty(shape, dtype) -> np.ndarray:
    return np.empty(shape, dtype)


def device_array(address: int, shape, dtype) -> np.ndarray:
    """The device buffer at `address` as an array (for the fake TensorRT)."""
    return np.frombuffer(_memory[address], dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def memcpy_htod_async(dest: DeviceAllocation, src: np.ndarray, stream: Stream) -> None:
    device_array(int(dest), src.shape, src.dtype)[...] = src


def memcpy_dtoh_async(dest: np.ndarray, src: DeviceAllocation, stream: Stream) -> None:
    dest[...] = device_array(int(src), dest.shape, dest.dtype)
