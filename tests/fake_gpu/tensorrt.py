"""A CPU stand-in for the TensorRT Python API, for tests without a GPU (put tests/fake_gpu first on
sys.path, with the pycuda stand-in beside it).

It implements exactly the attributes runtime/tensorrt_backend.py lists in its `API` (a test checks the
same list against the real bindings), with TensorRT's behaviour where the backend relies on it: the parser
reads the ONNX graph (Q/DQ layers counted), optimisation profiles bound the input shapes an execution
context accepts, an engine is bytes that deserialize only when they are an engine, output shapes follow
the input shape. "Engines" run the ONNX model with onnxruntime on the CPU. `BUILDS` records every build,
so a test can tell a loaded engine from a rebuilt one; an execution context that is entered from two
threads at once raises, as overlapping use of one TensorRT context would corrupt its buffers.
"""
from __future__ import annotations

import enum
import json
import threading
import time

import numpy as np

__version__ = "10.99.0"  # no real TensorRT has it
BUILDS = []  # (onnx path, flags, profile) of every build
EXECUTE_DELAY_S = 0.0  # widen the window in which overlapping executions are caught
BUILD_DELAY_S = 0.0  # let builds overlap

_MAGIC = b"FAKETRT1"


class Logger:
    WARNING = 2

    def __init__(self, level: int = 2):
        self.level = level


BuilderFlag = enum.IntEnum("BuilderFlag", ["FP16", "INT8"], start=0)
MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE"], start=0)
TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"], start=0)
LayerType = enum.IntEnum("LayerType", ["OTHER", "QUANTIZE", "DEQUANTIZE"], start=0)
NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH"], start=0)
DataType = enum.IntEnum("DataType", ["FLOAT", "INT32", "INT64"], start=0)

_NUMPY = {DataType.FLOAT: np.float32, DataType.INT32: np.int32, DataType.INT64: np.int64}
_ONNX_TYPES = {1: DataType.FLOAT, 6: DataType.INT32, 7: DataType.INT64}


def nptype(trt_type: DataType):
    return _NUMPY[trt_type]


class ITensor:
    name = ""
    shape = ()

    def __init__(self, name: str, shape: tuple, dtype: DataType):
        self.name, self.shape, self.dtype = name, shape, dtype


class ILayer:
    type = LayerType.OTHER

    def __init__(self, kind: LayerType):
        self.type = kind


class INetworkDefinition:
    num_layers = 0

    def __init__(self):
        self.layers, self.inputs, self.outputs, self.onnx = [], [], [], b""

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]

    def get_layer(self, index: int) -> ILayer:
        return self.layers[index]


def _dims(value_info) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


class OnnxParser:
    num_errors = 0

    def __init__(self, network: INetworkDefinition, logger: Logger):
        self.network, self.errors = network, []

    def parse_from_file(self, path: str) -> bool:
        import onnx

        try:
            model = onnx.load(path)
        except Exception as err:  # noqa: BLE001  TensorRT reports parse failures, it does not raise
            self.errors, self.num_errors = ["ModelImporter: {}".format(err)], 1
            return False
        kinds = {"QuantizeLinear": LayerType.QUANTIZE, "DequantizeLinear": LayerType.DEQUANTIZE}
        net = self.network
        net.layers = [ILayer(kinds.get(node.op_type, LayerType.OTHER)) for node in model.graph.node]
        net.num_layers = len(net.layers)
        for source, target in ((model.graph.input, net.inputs), (model.graph.output, net.outputs)):
            target.extend(ITensor(v.name, _dims(v), _ONNX_TYPES[v.type.tensor_type.elem_type]) for v in source)
        net.onnx = model.SerializeToString()
        return True

    def get_error(self, index: int) -> str:
        return self.errors[index]


class IOptimizationProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name: str, low, opt, high) -> None:
        self.shapes[name] = [list(low), list(opt), list(high)]


class ITimingCache:
    def __init__(self, data: bytes):
        self.data = bytes(data) or b"timing-cache"

    def serialize(self) -> bytes:
        return self.data


class IBuilderConfig:
    def __init__(self):
        self.flags, self.profiles, self.pools, self.cache = set(), [], {}, None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> ITimingCache:
        return ITimingCache(data)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self.cache


class Builder:
    def __init__(self, logger: Logger):
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition()

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes:
        tensor = network.get_input(0)
        if any(d < 0 for d in tensor.shape) and not config.profiles:
            return None  # TensorRT: a dynamic input needs an optimisation profile
        profile = config.profiles[0].shapes[tensor.name] if config.profiles else [list(tensor.shape)] * 3
        header = {"flags": sorted(int(f) for f in config.flags), "profile": profile,
                  "inputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.inputs],
                  "outputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.outputs]}
        time.sleep(BUILD_DELAY_S)
        BUILDS.append((tensor.name, header["flags"], profile))
        blob = json.dumps(header).encode()
        return _MAGIC + len(blob).to_bytes(4, "little") + blob + network.onnx


class Runtime:
    def __init__(self, logger: Logger):
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes):
        data = bytes(data)
        if not data.startswith(_MAGIC):
            return None  # TensorRT logs and returns None for bytes that are not its engine
        size = int.from_bytes(data[8:12], "little")
        return ICudaEngine(json.loads(data[12:12 + size]), data[12 + size:])


class ICudaEngine:
    num_io_tensors = 0

    def __init__(self, header: dict, onnx_bytes: bytes):
        import onnxruntime

        self.header = header
        self.session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.io = [(name, TensorIOMode.INPUT, shape, dtype) for name, shape, dtype in header["inputs"]]
        self.io += [(name, TensorIOMode.OUTPUT, shape, dtype) for name, shape, dtype in header["outputs"]]
        self.num_io_tensors = len(self.io)

    def _find(self, name: str):
        return next(t for t in self.io if t[0] == name)

    def get_tensor_name(self, index: int) -> str:
        return self.io[index][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._find(name)[1]

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(self._find(name)[2])

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self._find(name)[3])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
        return [tuple(dims) for dims in self.header["profile"]]

    def create_execution_context(self) -> "IExecutionContext":
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self._busy = threading.Lock()

    def set_input_shape(self, name: str, shape) -> bool:
        low, _, high = self.engine.header["profile"]
        if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
            return False  # TensorRT logs the error and returns False
        self.shapes = {name: tuple(shape)}
        inputs = {name: np.zeros(shape, np.float32)}
        for out, out_shape in zip(self.engine.session.get_outputs(), self.engine.session.run(None, inputs)):
            self.shapes[out.name] = out_shape.shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        return self.shapes[name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        from pycuda import driver

        if not self._busy.acquire(blocking=False):
            raise RuntimeError("execution context used by two threads at once")
        try:
            (in_name, _, _, _), outputs = self.engine.io[0], self.engine.io[1:]
            tensor = driver.device_array(self.addresses[in_name], self.shapes[in_name], np.float32)
            time.sleep(EXECUTE_DELAY_S)
            results = self.engine.session.run(None, {in_name: tensor.copy()})
            for (name, _, _, dtype), value in zip(outputs, results):
                driver.device_array(self.addresses[name], value.shape, nptype(DataType(dtype)))[...] = value
            return True
        finally:
            self._busy.release()
