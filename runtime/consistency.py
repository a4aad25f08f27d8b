"""Does the model a backend loaded match what deploy.yaml says about it?

Hashes prove a file is the one deploy.yaml lists, not that deploy.yaml describes it: a model swapped
in with its hash updated (an FP32 `lowres_logits` export in place of an INT8 `argmax` one) would
otherwise run, and its masks would be wrong or its speed not what was measured. This check runs
after the backend has loaded the model and compares:

- the output the backend reports (dtype, rank, classes, size) with the output op: `argmax` gives an
  integer class map [N, H, W] (or [N, 1, H, W]), `softmax` / `none` float scores [N, C, H, W] at the
  input size, `lowres_logits` float scores [N, C, h, w] smaller than the input;
- the precision with the graph: INT8 has quantization operators (ONNX QuantizeLinear / QLinear* /
  *Integer; Paddle quantize ops), any other precision none;
- an ONNX file's own metadata (written by `ddrnet export`: model_name, precision, output_op).

The input shape is compared by the Predictor itself (`Predictor._merge_shapes`).

The graphs are read without the onnx or paddle packages (a runtime install has neither): the files
are protocol buffers, and only the few fields needed are walked, memory-mapped, so the megabytes
of weights are skipped rather than read (0.5-1.5 ms for the 6-23 MB DDRNet-23-slim exports).
"""
from __future__ import annotations

import mmap
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ddrnet.runtime.errors import DDRNetError

Field = Tuple[int, int, int]  # (field number, payload start, payload end) of a length-delimited field

# ONNX ModelProto / GraphProto / NodeProto / StringStringEntryProto field numbers (onnx.proto3)
ONNX_GRAPH, ONNX_METADATA = 7, 14
GRAPH_NODE = 1
# an ONNX NodeProto.op_type field (tag 0x22, length, name) naming a quantized operator
ONNX_QUANT_OP = re.compile(rb"\x22[\x01-\x7f](?:QuantizeLinear|DequantizeLinear|QLinear[A-Za-z]+|[A-Za-z]+Integer)")
# Paddle ProgramDesc.blocks (1) -> BlockDesc.ops (4) -> OpDesc.type (3, tag 0x1a): quantize_linear,
# dequantize_linear, fake_quantize_* ...
PADDLE_BLOCKS, BLOCK_OPS = 1, 4
PADDLE_QUANT_OP = re.compile(rb"\x1a[\x01-\x7f][a-z_]*quantize[a-z_]*")


def _varint(buf, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int) -> Iterator[Field]:
    """The length-delimited fields of the message in buf[start:end]; scalar fields are skipped."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield tag >> 3, pos, pos + length
            pos += length
        else:
            raise ValueError("wire type {} at byte {}".format(wire, pos))
    if pos != end:
        raise ValueError("a field runs past its message")


def _has_field(pattern, buf, start: int, end: int) -> bool:
    """A match of (tag, length, name) whose length byte is the name's: a real op-type field, not a
    tensor or variable name that happens to contain the word."""
    return any(buf[m.start() + 1] == m.end() - m.start() - 2 for m in pattern.finditer(buf, start, end))


def _span(fields: Iterator[Field], number: int) -> Tuple[int, int]:
    """From the first to the end of the last field `number` (repeated fields are written together)."""
    start = end = -1
    for field, a, b in fields:
        if field == number:
            start = a if start < 0 else start
            end = b
    return start, end


def _onnx_summary(buf) -> Tuple[bool, Dict[str, str]]:
    """(has quantized operators, metadata_props) of a serialized ONNX ModelProto."""
    quantized, metadata = False, {}
    for field, start, end in _fields(buf, 0, len(buf)):
        if field == ONNX_GRAPH:
            first, last = _span(_fields(buf, start, end), GRAPH_NODE)
            quantized = quantized or (first >= 0 and _has_field(ONNX_QUANT_OP, buf, first, last))
        elif field == ONNX_METADATA:
            entry = {k: bytes(buf[a:b]).decode("utf-8", "replace") for k, a, b in _fields(buf, start, end)}
            metadata[entry.get(1, "")] = entry.get(2, "")
    return quantized, metadata


def _paddle_quantized(buf) -> bool:
    for field, start, end in _fields(buf, 0, len(buf)):
        if field == PADDLE_BLOCKS:
            first, last = _span(_fields(buf, start, end), BLOCK_OPS)
            if first >= 0 and _has_field(PADDLE_QUANT_OP, buf, first, last):
                return True
    return False


def graph_summary(path: str) -> Tuple[Optional[bool], Dict[str, str]]:
    """(quantized, ONNX metadata) of an .onnx or .pdmodel file; (None, {}) for other files."""
    if not path.endswith((".onnx", ".pdmodel")):
        return None, {}
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if path.endswith(".onnx"):
                return _onnx_summary(buf)
            return _paddle_quantized(buf), {}
    except (OSError, ValueError, IndexError) as err:
        raise DDRNetError("{}: not a readable model graph ({})".format(path, err)) from None


def _output_problems(op: str, dtype: Optional[str], shape: Optional[Sequence[int]],
                     input_hw: Sequence[int], classes: int) -> List[str]:
    if dtype is None or shape is None:
        return []  # this backend does not report its output before running
    got = "output {} {}".format(dtype, [d if d > 0 else "?" for d in shape])
    if op == "argmax":
        if not (dtype.startswith(("int", "uint")) and
                (len(shape) == 3 or (len(shape) == 4 and shape[1] in (1, -1)))):
            return ["{} where output op argmax gives an integer class map [N, H, W]".format(got)]
        return _size_problems(got, op, shape[-2:], input_hw, same=True)
    if not (dtype.startswith("float") and len(shape) == 4):
        return ["{} where output op {} gives float scores [N, C, H, W]".format(got, op)]
    if shape[1] > 0 and shape[1] != classes:
        return ["{} has {} classes where deploy.yaml lists {}".format(got, shape[1], classes)]
    return _size_problems(got, op, shape[2:], input_hw, same=op != "lowres_logits")


def _size_problems(got: str, op: str, out_hw: Sequence[int], input_hw: Sequence[int], same: bool) -> List[str]:
    for out, inp in zip(out_hw, input_hw):
        if out > 0 and inp > 0 and (out != inp if same else out >= inp):
            size = "the input size" if same else "smaller than the input"
            return ["{} where output op {} is {} {}".format(got, op, size, list(input_hw))]
    return []


def _graph_problems(manifest: dict, quantized: Optional[bool], metadata: Dict[str, str]) -> List[str]:
    problems = []
    precision = manifest["precision"]
    if quantized is not None and quantized != (precision == "int8"):
        found = "quantization operators" if quantized else "no quantization operators"
        problems.append("the graph has {} where deploy.yaml says precision {}".format(found, precision))
    declared = {"model_name": manifest["model_name"], "precision": precision,
                "output_op": manifest["output"]["op"]}
    for key, value in declared.items():
        if key in metadata and metadata[key] != value:
            problems.append("its metadata says {} {} where deploy.yaml says {}".format(key, metadata[key], value))
    return problems


def check_model(manifest: dict, backend, input_shape: Sequence[int]) -> None:
    """Raise DDRNetError (one line, every mismatch) when the loaded model is not what deploy.yaml says.
    `backend` may report `output_dtype` (numpy dtype name) and `output_shape` (-1 for dynamic dims)."""
    model_file = backend.model_files[0]
    quantized, metadata = graph_summary(model_file)
    problems = _output_problems(manifest["output"]["op"], getattr(backend, "output_dtype", None),
                                getattr(backend, "output_shape", None), input_shape[2:],
                                len(manifest["class_names"]))
    problems += _graph_problems(manifest, quantized, metadata)
    if problems:
        raise DDRNetError("{}: does not match deploy.yaml (swapped model?): {}".format(
            model_file, "; ".join(problems)))
