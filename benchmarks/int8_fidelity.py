"""Faithful INT8: the figures README "Faithful INT8" reports, from a QAT checkpoint and its FP32 source.

    python benchmarks/int8_fidelity.py --qat-weights demo_out/qat/best_model \
        --weights demo_out/train/best_model --data-root demo_out/data

1. Every INT8 format of the QAT checkpoint at every input size (ONNX for onnxruntime's CPU kernels, for
   TensorRT, for OpenVINO when the exporter offers it, and Paddle Inference), exported with its learned
   ranges: the export's own parity record (raw argmax agreement with the fake-quant model, agreement on
   the pixels where that model is confident, and whether the gate passed). Failing exports are kept
   (`accept_parity`) so that they are measured, not hidden.
2. mIoU on the val split at the network sizes a car runs (`--miou-sizes`): the fake-quant model through
   the runtime's Predictor (same resize in, masks out at label resolution) against each INT8 export.
3. PTQ of the FP32 checkpoint at 512x1024 and 1024x2048 (`--ptq-sizes`): these must pass their gate.
4. Speed: INT8 (onnxruntime CPU graph) against FP32 ONNX of the same checkpoint, graph only, one thread,
   interleaved rounds (runtime/timing.py), as the INT8 / FP32 column of benchmarks/results.

Writes OUT/int8_fidelity.json and prints a Markdown table; the host (CPU model, ISA flags) is recorded.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # interleaved timing: idle pools sleep (benchmarks/run.py)

import numpy as np  # noqa: E402

from ddrnet.runtime.bench import host_info, versions  # noqa: E402
from ddrnet.runtime.fileio import write_json  # noqa: E402
from ddrnet.runtime.options import parse_hw  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _shape(size: str) -> Tuple[str, Optional[Tuple[int, int]]]:
    """(--input-shape value, fixed HxW or None) of a size word: HxW or `dynamic`."""
    if size == "dynamic":
        return "dynamic", None
    h, w = parse_hw(size, "--sizes")
    return "1,3,{},{}".format(h, w), (h, w)


def int8_flavours() -> List[str]:
    from ddrnet.export.onnx_int8 import TARGETS

    return list(TARGETS)


def export_qat(qat: str, data: str, size: str, work: str) -> Dict[str, dict]:
    """Every INT8 format of the QAT checkpoint at one size -> {format label: parity record + dir}."""
    from ddrnet.export.exporter import export_model

    shape, _ = _shape(size)
    rows = {}
    for flavour in int8_flavours():
        formats = ("paddle", "onnx") if flavour == "cpu" else ("onnx",)  # Paddle INT8 is flavour-free
        out = os.path.join(work, "{}_{}".format(flavour, size))
        manifest = export_model(qat, out, formats=formats, input_shape=shape, output_op="argmax", int8=True,
                                calib_dir=data, int8_target=flavour, accept_parity=True)
        for fmt, parity in manifest["parity"].items():
            label = "paddle" if fmt == "paddle" else "onnx-" + flavour
            rows[label] = {"dir": out, "raw": parity["argmax_agreement"],
                           "confident": parity.get("confident_agreement"),
                           "confident_fraction": parity.get("confident_fraction"),
                           "gate_passed": parity["gate"]["passed"]}
    return rows


def miou_rows(qat: str, data: str, exports: Dict[str, dict], split: str, limit: Optional[int]) -> Dict[str, float]:
    """mIoU of the fake-quant model and of each INT8 export (one size), through the same Predictor path."""
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.manifest import load_manifest
    from ddrnet.runtime.metrics import evaluate_model_dir
    from ddrnet.train.checkpoint import load_checkpoint
    from ddrnet.train.predict import DygraphBackend, checkpoint_manifest

    checkpoint = load_checkpoint(qat)
    any_dir = next(iter(exports.values()))["dir"]
    manifest = checkpoint_manifest(checkpoint)
    manifest["input"] = dict(manifest["input"], shape=load_manifest(any_dir)["input"]["shape"])
    reference = Predictor.from_backend(DygraphBackend(checkpoint.model), manifest, source=qat)
    result = {"fakequant": evaluate_model_dir(reference, data, split, False, limit=limit)["miou"]}
    for label, row in exports.items():
        backend = "paddle" if label == "paddle" else "openvino" if label == "onnx-openvino" else "onnxruntime"
        predictor = Predictor(row["dir"], backend=backend, trust=False)
        result[label] = evaluate_model_dir(predictor, data, split, False, limit=limit)["miou"]
    return result


def ptq_rows(weights: str, data: str, sizes: List[str], work: str) -> Dict[str, dict]:
    """PTQ INT8 of the FP32 checkpoint at `sizes` (it must pass its gate), and FP32 ONNX beside it."""
    from ddrnet.export.exporter import export_model
    from ddrnet.runtime.errors import DDRNetError

    rows = {}
    for size in sizes:
        shape, _ = _shape(size)
        fp32 = os.path.join(work, "fp32_" + size)
        export_model(weights, fp32, formats=("onnx",), input_shape=shape, output_op="argmax")
        ptq = os.path.join(work, "ptq_" + size)
        try:
            parity = export_model(weights, ptq, formats=("onnx",), input_shape=shape, output_op="argmax", int8=True,
                                  calib_dir=data)["parity"]["onnx"]
            rows[size] = {"fp32_dir": fp32, "dir": ptq, "passed": True, "raw": parity["argmax_agreement"],
                          "confident": parity.get("confident_agreement")}
        except DDRNetError as err:
            rows[size] = {"fp32_dir": fp32, "passed": False, "error": str(err)}
    return rows


def speed_rows(pairs: Dict[str, Tuple[str, str]], rounds: int) -> Dict[str, dict]:
    """{size: (FP32 dir, INT8 dir)} -> p50 of each and the ratio, one thread, interleaved per size."""
    import onnxruntime as ort

    from ddrnet.runtime.timing import Subject, measure

    def session(model_dir: str):
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        return ort.InferenceSession(os.path.join(model_dir, "model.onnx"), options,
                                    providers=["CPUExecutionProvider"])

    results = {}
    for size, (fp32_dir, int8_dir) in pairs.items():
        h, w = parse_hw(size)
        tensor = np.random.default_rng(0).uniform(-1, 1, (1, 3, h, w)).astype(np.float32)
        subjects = []
        for label, model_dir in (("fp32", fp32_dir), ("int8", int8_dir)):
            sess = session(model_dir)
            subjects.append(Subject({"model": label}, lambda s=sess: s.run(None, {"x": tensor})))
        measure(subjects, rounds, warmup=2, progress="speed " + size)
        fp32, int8 = (float(np.median(s.samples_ms)) for s in subjects)
        results[size] = {"fp32_p50_ms": fp32, "int8_p50_ms": int8, "int8_speedup": fp32 / int8}
    return results


def markdown(result: dict) -> str:
    lines = ["| size | format | raw agreement | confident agreement | gate |", "|---|---|---:|---:|---|"]
    for size, rows in result["parity"].items():
        for label, row in rows.items():
            lines.append("| {} | {} | {:.2%} | {} | {} |".format(
                size, label, row["raw"], "-" if row["confident"] is None else "{:.3%}".format(row["confident"]),
                "pass" if row["gate_passed"] else "FAIL"))
    lines += ["", "| size | " + " | ".join(next(iter(result["miou"].values()))) + " |",
              "|---|" + "---:|" * len(next(iter(result["miou"].values())))] if result["miou"] else []
    for size, row in result["miou"].items():
        lines.append("| {} | ".format(size) + " | ".join("{:.4f}".format(v) for v in row.values()) + " |")
    lines += ["", "| size | PTQ export | FP32 ONNX ms | INT8 ms | INT8 / FP32 |", "|---|---|---:|---:|---:|"]
    for size, row in result["ptq"].items():
        speed = result["speed"].get(size, {})
        lines.append("| {} | {} | {:.1f} | {:.1f} | {:.2f}x |".format(
            size, "pass" if row["passed"] else "refused: " + row.get("error", ""), speed.get("fp32_p50_ms", 0),
            speed.get("int8_p50_ms", 0), speed.get("int8_speedup", 0)))
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qat-weights", required=True, help="QAT checkpoint (ddrnet compress --qat)")
    p.add_argument("--weights", required=True, help="its FP32 source checkpoint (PTQ and the FP32 speed baseline)")
    p.add_argument("--data-root", required=True, help="Cityscapes-layout root: calibration (train), mIoU (val)")
    p.add_argument("--sizes", default="256x512,512x1024,1024x2048,dynamic")
    p.add_argument("--miou-sizes", default="256x512,512x1024")
    p.add_argument("--ptq-sizes", default="512x1024,1024x2048",
                   help="PTQ exports of the FP32 checkpoint, and the INT8 / FP32 speed pairs")
    p.add_argument("--max-images", type=int, help="evaluate only the first N val images")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds per speed pair (default 20)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for int8_fidelity.json")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    ptq_sizes = [s.strip() for s in args.ptq_sizes.split(",") if s.strip()]
    for size in sizes + args.miou_sizes.split(","):
        _shape(size)  # a bad size fails before any export
    for size in ptq_sizes:
        parse_hw(size, "--ptq-sizes")  # timed: a fixed size
    result = {"created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "host": host_info(), "versions": versions(), "qat_weights": os.path.abspath(args.qat_weights),
              "weights": os.path.abspath(args.weights), "parity": {}, "miou": {}}
    with tempfile.TemporaryDirectory(prefix="int8-fidelity-") as work:
        for size in sizes:
            result["parity"][size] = export_qat(args.qat_weights, args.data_root, size, work)
            if size in args.miou_sizes.split(","):
                result["miou"][size] = miou_rows(args.qat_weights, args.data_root, result["parity"][size], "val",
                                                 args.max_images)
        result["ptq"] = ptq_rows(args.weights, args.data_root, ptq_sizes, work)
        pairs = {size: (row["fp32_dir"], result["parity"][size]["onnx-cpu"]["dir"])
                 for size, row in result["ptq"].items() if size in result["parity"]}
        result["speed"] = speed_rows(pairs, args.rounds)
        for rows in result["parity"].values():  # the temporary folders are gone after this
            for row in rows.values():
                row.pop("dir", None)
        for row in result["ptq"].values():
            row.pop("dir", None)
            row.pop("fp32_dir", None)
    write_json(result, os.path.join(args.out, "int8_fidelity.json"))
    print("host: {} ({})".format(result["host"]["cpu"], ", ".join(result["host"]["isa"])))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
