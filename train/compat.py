"""Every private Paddle / PaddleSlim internal the suite relies on, in one place, behind a version check.

Paddle and PaddleSlim offer no public API for what these helpers do (wake a DataLoader whose reader
thread failed, set the CPU math threads, replace a sublayer by name, read a BatchNorm's running
statistics, keep a pruned layer's channel attributes in step with its tensors, round pruning ratios,
teach the pruner a new op, build and save Paddle's quantization layers and ops). Their private names
and module paths change between releases, so they are reached only through this
module, which accepts the releases it was checked against (`SUPPORTED`, the pins of
constraints.txt) and refuses any other with one line, before anything is trained or compressed.
Setting DDRNET_UNSUPPORTED_PADDLE=1 turns the refusal into a warning, to try a newer release.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Dict, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from ddrnet.runtime.errors import DDRNetError

log = logging.getLogger(__name__)

# distribution -> the major.minor releases whose internals below were checked
SUPPORTED = {"paddlepaddle": ("2.6",), "paddleslim": ("2.6",)}
OVERRIDE_ENV = "DDRNET_UNSUPPORTED_PADDLE"
_checked = {}  # type: Dict[str, str]


def _installed_version(dist: str) -> str:
    if dist == "paddlepaddle":  # also paddlepaddle-gpu: the module knows its own version
        return paddle.__version__
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        raise DDRNetError("{}: not installed; install the train extra: pip install -c constraints.txt "
                          "'ddrnet-suite[train]'".format(dist)) from None


def check_version(dist: str, installed: Optional[str] = None) -> str:
    """Refuse (DDRNetError) a release of `dist` whose internals were not checked; returns its version.
    `installed` defaults to the version actually installed; develop builds (0.0.0) are accepted."""
    if installed is None and dist in _checked:
        return _checked[dist]
    found = installed or _installed_version(dist)
    major_minor = ".".join(found.split(".")[:2])
    if major_minor not in SUPPORTED[dist] and found != "0.0.0":
        message = "{} {}: ddrnet.train.compat supports {} only (it uses private internals that change " \
                  "between releases); install the pinned one: pip install -c constraints.txt {}=={}.*".format(
                      dist, found, ", ".join(v + ".x" for v in SUPPORTED[dist]), dist, SUPPORTED[dist][-1])
        if os.environ.get(OVERRIDE_ENV) != "1":
            raise DDRNetError(message + " (or set {}=1 to try it)".format(OVERRIDE_ENV))
        log.warning("%s (%s=1: trying it anyway)", message, OVERRIDE_ENV)
    if installed is None:
        _checked[dist] = found
    return found


# --- paddle.io.DataLoader iterators -------------------------------------------------------------

def wake_loader(iterator: Any) -> None:
    """Make a DataLoader iterator's consumer raise SystemError ("Blocking queue is killed") instead of
    waiting for a batch that a failed reader thread will never deliver."""
    iterator._exit_thread_unexpectedly()


def loader_thread(iterator: Any) -> Any:
    """The iterator's reader thread (None when it has none, e.g. before it started)."""
    return getattr(iterator, "_thread", None)


def shutdown_loader(iterator: Any, sigchld_before: Any) -> None:
    """Stop the iterator's reader thread and workers now rather than in __del__ at interpreter exit,
    where stopping them deadlocks; then put back the SIGCHLD handler from before the iterator.

    Paddle's multi-process iterator installs a process-wide SIGCHLD handler that calls
    core._throw_error_if_process_failed() at every child exit, and leaves it there after its workers
    are gone. Once OpenVINO's libraries are loaded in the process, that call crashes it with SIGSEGV
    when any later subprocess exits (seen: training, then OpenVINO, then a subprocess)."""
    iterator._try_shutdown_all()
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal.signal's rule
    if in_main_thread and signal.getsignal(signal.SIGCHLD) is not sigchld_before:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL if sigchld_before is None else sigchld_before)
        paddle.io.multiprocess_utils._SIGCHLD_handler_set = False  # the next multi-process iterator re-installs it


# --- CPU threads ---------------------------------------------------------------------------------

# an idle OpenMP thread spins this long (ms) before it sleeps; Intel OpenMP's default is 200
OMP_BLOCKTIME_MS = 1


def set_cpu_threads(threads: int) -> None:
    """Threads of Paddle's CPU math libraries (MKL GEMMs, OpenMP kernels) in this process. Paddle sets
    OMP_NUM_THREADS=1 at import when it is unset, so without this CPU training runs on one core.

    Paddle's Intel OpenMP runtime (paddle/libs/libiomp5.so) lets idle threads spin 200 ms after each
    parallel region; between a training step's thousands of small GEMMs they then take the core from
    the data loader and any other process. Measured on a 2-core host with other work running (the
    demo's recipe, interleaved runs): two threads trained at 0.6-0.75x the speed of one with 200 ms,
    0.7-1.15x with 1 ms. KMP_BLOCKTIME in the environment wins."""
    paddle.base.core.set_num_threads(int(threads))
    library = os.path.join(os.path.dirname(paddle.__file__), "libs", "libiomp5.so")
    if "KMP_BLOCKTIME" not in os.environ and os.path.isfile(library):
        import ctypes

        ctypes.CDLL(library).kmp_set_blocktime(OMP_BLOCKTIME_MS)  # the loaded runtime, this thread's teams


# --- layers and tensors -------------------------------------------------------------------------

def get_sublayer(model: nn.Layer, name: str) -> nn.Layer:
    """The sublayer at a dotted name ("spp.scale1.0"), including Sequential indices."""
    layer = model
    for part in name.split("."):
        layer = layer._sub_layers[part]
    return layer


def set_sublayer(model: nn.Layer, name: str, new: nn.Layer) -> None:
    """Replace the sublayer at a dotted name (setattr cannot address Sequential/LayerList items)."""
    *path, last = name.split(".")
    parent = get_sublayer(model, ".".join(path)) if path else model
    parent._sub_layers[last] = new


def bn_statistics(bn: nn.BatchNorm2D) -> Tuple[paddle.Tensor, paddle.Tensor, float]:
    """(running mean, running variance, epsilon) of a BatchNorm layer."""
    return bn._mean, bn._variance, bn._epsilon


def set_pool_exclusive(pool: nn.AvgPool2D, exclusive: bool) -> None:
    """Whether an average pool's border windows divide by the in-image count (True) or the full window."""
    pool._exclusive = exclusive


def drop_buffers(layer: nn.Layer, suffix: str) -> None:
    """Remove a layer's own buffers whose names end with `suffix`."""
    for name in [n for n in layer._buffers if n.endswith(suffix)]:
        del layer._buffers[name]


def sync_channel_attrs(layer: nn.Layer) -> None:
    """Make a Conv2D's / BatchNorm2D's channel attributes (used by repr, cost counts and re-export)
    describe its weight tensor after the tensor was resized in place."""
    if isinstance(layer, nn.Conv2D):
        layer._out_channels = layer.weight.shape[0]
        layer._in_channels = layer.weight.shape[1] * layer._groups
    elif isinstance(layer, nn.BatchNorm2D):
        layer._num_features = layer.weight.shape[0]


def set_tensor(tensor: paddle.Tensor, value: np.ndarray) -> None:
    """Replace a parameter's or buffer's storage by `value`, whose shape may differ (`set_value`
    insists on the old shape)."""
    tensor.value().get_tensor().set(value, paddle.framework._current_expected_place())


# --- PaddleSlim ---------------------------------------------------------------------------------

def round_prune_ratios(pruner: Any, ratios: Dict[str, float], factor: int) -> Dict[str, float]:
    """A PaddleSlim dygraph pruner's ratios adjusted so that every group keeps a multiple of `factor`
    output channels (the rounding its `prune_vars` applies only with its own fixed factor)."""
    check_version("paddleslim")
    return pruner._round_to(ratios, dims=0, factor=factor)


def register_channel_preserving_mean() -> None:
    """Teach PaddleSlim's pruning tracer that `reduce_mean` over axes other than the pruned one keeps
    channels aligned between its input and output (PaddleSlim 2.6 skips the op instead of following
    it, so the layers after DDRNet's global pool would keep their width while their input shrinks)."""
    from paddleslim.prune.prune_worker import PRUNE_WORKER, PruneWorker, UnsupportOpError

    check_version("paddleslim")
    if PRUNE_WORKER.get("reduce_mean") is not None:
        return

    class reduce_mean(PruneWorker):  # noqa: N801 (PaddleSlim looks workers up by op type)
        def _prune(self, var, pruned_axis, transforms):
            in_var, out_var = self.op.inputs("X")[0], self.op.outputs("Out")[0]
            rank = len(in_var.shape())
            dims = [d % rank for d in self.op.attr("dim")]
            if self.op.attr("reduce_all") or not self.op.attr("keep_dim") or pruned_axis in dims:
                raise UnsupportOpError("reduce_mean over the pruned axis")
            self._visit_and_search(out_var if var == in_var else in_var, pruned_axis, transforms)

    PRUNE_WORKER.register(reduce_mean)


# --- Paddle's quantization layers (paddle.nn.quant.quant_layers, paddle.quantization.imperative) --

def append_quantize_dequantize(x: Any, scale: paddle.Tensor, zero_point: paddle.Tensor, bits: int) -> Any:
    """In a static program: x -> quantize_linear -> dequantize_linear (per tensor, `scale` the abs-max
    range), the ops Paddle Inference INT8 and paddle2onnx read."""
    from paddle.base.layer_helper import LayerHelper

    helper = LayerHelper("quantize_linear")
    quantized = helper.create_variable_for_type_inference(dtype=x.dtype)
    out = helper.create_variable_for_type_inference(dtype=x.dtype)
    attrs = {"quant_axis": -1, "bit_length": bits}
    helper.append_op(type="quantize_linear", inputs={"X": x, "Scale": scale, "ZeroPoint": zero_point},
                     outputs={"Y": quantized}, attrs=attrs)
    helper.append_op(type="dequantize_linear", inputs={"X": quantized, "Scale": scale, "ZeroPoint": zero_point},
                     outputs={"Y": out}, attrs=attrs)
    return out


def weight_quantized_conv(conv: nn.Conv2D, weight_quantize_type: str, bits: int) -> nn.Layer:
    """Paddle's QuantizedConv2D around `conv` with fake-quantized weights only (its own input
    quantizer replaced by an identity); its weight and bias are the conv's (same parameter names)."""
    from paddle.nn.quant.quant_layers import QuantizedConv2D

    return QuantizedConv2D(conv, weight_bits=bits, weight_quantize_type=weight_quantize_type,
                           act_quant_layer=nn.Identity)


def is_conv(layer: nn.Layer) -> bool:
    """A Conv2D or its weight-quantized wrapper."""
    from paddle.nn.quant.quant_layers import QuantizedConv2D

    return isinstance(layer, (nn.Conv2D, QuantizedConv2D))


def save_quantized_program(layer: nn.Layer, path_prefix: str, input_spec: list, bits: int) -> None:
    """`paddle.jit.save` of a fake-quantized layer with every fake-quant op turned into a
    quantize_linear / dequantize_linear pair holding its scale, and the weights stored as INT8
    (Paddle's ImperativeQuantizeOutputs, ONNX format): the Paddle Inference INT8 model."""
    from paddle.quantization.imperative.qat import ImperativeQuantizeOutputs

    ImperativeQuantizeOutputs(activation_bits=bits, onnx_format=True).save_quantized_model(
        layer, path_prefix, input_spec=input_spec)


check_version("paddlepaddle")
