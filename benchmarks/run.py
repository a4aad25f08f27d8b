"""The benchmark suite (`make bench`, `make bench-quick`): latency / FPS / efficiency per model, format,
backend (onnxruntime, OpenVINO, Paddle Inference), resolution and thread count, the host's peaks (FP32,
BF16, INT8) measured in the same run, BF16 through oneDNN and OpenVINO, and training throughput against
PaddleSeg's own trainer. Writes JSON, a Markdown report and PNG plots.

    python benchmarks/run.py            # full: 3 models x 2 resolutions x 1/2 threads (~30 min, 2 cores)
    python benchmarks/run.py --quick    # smoke: ddrnet23_slim, 256x512, 2 threads (~1 min)
    python benchmarks/run.py --device gpu   # every GPU path of the runtime (see gpu.py)
    python benchmarks/run.py --models ddrnet23_slim,ddrnet23 --skip-training   # the fastest-CPU-path tables

Without trained weights every network is randomly initialised: speed does not depend on the
weights, and the mIoU column then says so rather than showing a number. `--weights` (a trained
checkpoint, default demo_out/train/best_model when present) adds mIoU on its data set;
`--qat-weights` (default demo_out/qat/best_model) adds the Paddle INT8 (oneDNN) and QAT INT8 ONNX rows.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

# Idle worker threads must sleep, not spin, or the subject that ran last takes cores from the one timed
# next: Paddle's OpenMP pool (oneDNN) here, onnxruntime's pool in timing.py. Measured on 2 cores at
# 2 threads: with Paddle's threads spinning, our INT8 timed 17.7 ms after another session, 11.4 ms after a
# Paddle one; with both off every ONNX INT8 model times 11.6-11.8 ms. Set before Paddle loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # run as a script: the sibling modules import by name
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import gpu  # noqa: E402
import peak  # noqa: E402
import report  # noqa: E402
import steadiness  # noqa: E402
import timing  # noqa: E402
import training  # noqa: E402
import variants  # noqa: E402

from ddrnet.runtime.backends import installed  # noqa: E402
from ddrnet.runtime.fileio import write_json  # noqa: E402
from ddrnet.runtime.timing import measure_for  # noqa: E402

ROOT = os.path.dirname(HERE)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class Plan:
    """What one mode measures and how long each timed group may take."""

    def __init__(self, quick: bool):
        self.quick = quick
        if quick:
            self.models = ["ddrnet23_slim"]
            self.sizes = [(256, 512)]
            self.threads = [2]
            self.calib_num = 4
            self.peak_n, self.peak_reps = 2048, 5
            self.steady_s = 6.0
            self.bf16_models = ["ddrnet23_slim"]
            self.train = dict(batch=2, crop=256, short=1, long=3, n_train=4, image_hw=(256, 512))
            self.max_images = 4
            self.profile_runs = 3
        else:
            self.models = ["ddrnet23_slim", "ddrnet23", "ddrnet39"]
            self.sizes = [(512, 1024), (1024, 2048)]
            self.threads = [1, 2]
            self.calib_num = 8
            self.peak_n, self.peak_reps = 2048, 10
            self.steady_s = 30.0
            self.bf16_models = ["ddrnet23_slim", "ddrnet23"]
            self.train = dict(batch=2, crop=512, short=3, long=13, n_train=8, image_hw=(512, 1024))
            self.max_images = 20
            self.profile_runs = 5

    def budget(self, model: str, hw: Tuple[int, int]) -> Tuple[float, int, int]:
        """(seconds, min rounds, max rounds) for one timed group: the big models at full size get few
        rounds (each round runs every format once, seconds each on 2 cores); the minimum is a floor.
        ddrnet23 (one of the OpenVINO targets' two models) gets ~10 rounds on 2 cores: 5 gave medians that
        moved by 2x between neighbouring groups on a noisy host."""
        if self.quick:
            return 20.0, 5, 40
        big = hw[0] * hw[1] >= 1024 * 2048
        seconds = {"ddrnet23_slim": 35.0, "ddrnet23": 80.0, "ddrnet39": 45.0}[model] * (1.5 if big else 1.0)
        return seconds, (3 if big and model == "ddrnet39" else 5), 200

    def calib_for(self, model: str, hw: Tuple[int, int]) -> int:
        # the ONNX calibrators hold activations of whole frames: fewer at full size for the big nets
        big = hw[0] * hw[1] >= 1024 * 2048
        return 4 if big and model != "ddrnet23_slim" else self.calib_num


def _default(path: str) -> Optional[str]:
    full = os.path.join(ROOT, path)
    return full if os.path.isdir(full) else None


def _model_of(weights: str) -> str:
    from ddrnet.train.checkpoint import resolve_weights, weights_meta

    meta = weights_meta(resolve_weights(weights)) or {}
    return meta.get("name", "?")


class Artifacts:
    """Every model file of one architecture at one input size."""

    def __init__(self, model: str, hw: Tuple[int, int], folder: str):
        self.model, self.hw, self.folder = model, hw, folder
        self.fp32_dir = os.path.join(folder, "fp32")
        self.ours = os.path.join(folder, "int8_ours.onnx")
        self.plain = os.path.join(folder, "int8_quantize_static.onnx")
        self.pruned_dir = os.path.join(folder, "pruned_fp32")
        self.fp32_lowres_dir = os.path.join(folder, "fp32_lowres")  # output op lowres_logits
        # the exporter's default INT8 export (variants.export_default_int8): what users get
        self.default_int8_dir = os.path.join(folder, "int8_default")
        self.ours_lowres = os.path.join(self.default_int8_dir, "model.onnx")
        self.qat_dir = os.path.join(folder, "qat_int8")  # only with a QAT checkpoint
        self.nncf = os.path.join(folder, "int8_nncf.onnx")  # OpenVINO's peer: NNCF of the FP32 (argmax) ONNX
        self.openvino_lowres = os.path.join(self.default_int8_dir, "model.openvino.onnx")  # ours, for OpenVINO
        self.notes = {}  # type: Dict[str, str]
        self.quantization = {}  # type: Dict[str, dict]


def build_artifacts(model: str, hw: Tuple[int, int], weights: str, pruned: str, qat: Optional[str],
                    data_root: Optional[str], calib_num: int, folder: str) -> Artifacts:
    art = Artifacts(model, hw, folder)
    variants.export_fp32(weights, art.fp32_dir, hw)
    frames = variants.calibration_frames(calib_num, hw, data_root)
    art.quantization["ours"] = variants.quantize_ours(art.fp32_dir, frames, art.ours)
    art.quantization["quantize_static"] = variants.quantize_plain(art.fp32_dir, frames, art.plain, folder)
    for name, path in (("ours", art.ours), ("quantize_static", art.plain)):
        art.quantization[name]["optimized_graph"] = variants.optimized_graph(path)
    variants.export_fp32(pruned, art.pruned_dir, hw, formats=("onnx",))
    variants.export_fp32(weights, art.fp32_lowres_dir, hw, formats=("onnx",), output_op="lowres_logits")
    calib_dir = data_root or variants.frames_dir(frames, os.path.join(folder, "calib"))
    default = variants.export_default_int8(qat or weights, art.default_int8_dir, hw, calib_dir, calib_num)
    quantization = dict(default["quantization"], parity=default["parity"])
    art.quantization["openvino_lowres"] = quantization.pop("openvino")
    art.quantization["ours_lowres"] = quantization
    if installed("openvino"):
        art.quantization["nncf"] = variants.quantize_nncf(art.fp32_dir, frames, art.nncf)
    if qat:
        try:
            variants.export_qat_int8(qat, art.qat_dir, hw, data_root, calib_num)
        except Exception as err:  # noqa: BLE001  reported in the table instead of a figure
            art.notes["qat"] = "{}: {}".format(type(err).__name__, str(err).strip().splitlines()[0])
    return art


FORMATS = (  # key, label, precision
    ("paddle_fp32", "Paddle Inference (oneDNN)", "fp32"),
    ("onnx_fp32", "ONNX (onnxruntime)", "fp32"),
    ("predictor_fp32", "ONNX via runtime Predictor (end to end)", "fp32"),
    ("onnx_int8_ours", "ONNX INT8 (ours)", "int8"),
    ("onnx_int8_quantize_static", "ONNX INT8 (onnxruntime quantize_static)", "int8"),
    ("onnx_fp32_pruned30", "ONNX pruned 30 %", "fp32"),
    ("paddle_int8_qat", "Paddle Inference INT8 (oneDNN, QAT)", "int8"),
    ("onnx_int8_qat", "ONNX INT8 (ours, QAT weights)", "int8"),
    ("predictor_int8_ours", "ONNX INT8 (ours) via runtime Predictor", "int8"),
    ("predictor_fp32_lowres", "ONNX lowres_logits + runtime head (Predictor)", "fp32"),
    ("predictor_int8_lowres", "ONNX INT8 (ours: the default export's model.onnx) lowres_logits + runtime head "
                              "(Predictor)", "int8"),
    ("openvino_fp32", "OpenVINO FP32", "fp32"),
    ("openvino_bf16", "OpenVINO BF16 (FP32 ONNX)", "bf16"),
    ("openvino_int8_ours", "OpenVINO on ONNX INT8 (ours, onnxruntime-shaped)", "int8"),
    ("openvino_int8_nncf", "OpenVINO on NNCF INT8", "int8"),
    ("predictor_openvino_fp32", "OpenVINO, default precision, via runtime Predictor (end to end)", "auto"),
    ("predictor_openvino_int8_nncf", "OpenVINO + NNCF INT8 via runtime Predictor: the peer", "int8"),
    ("predictor_openvino_lowres", "OpenVINO, default precision, lowres_logits + runtime head (Predictor)", "auto"),
    ("predictor_openvino_int8_lowres", "OpenVINO INT8 (ours: the default export's model.openvino.onnx) "
                                       "lowres_logits + runtime head (Predictor)", "int8"),
)
FORMAT_LABEL = {key: (label, precision) for key, label, precision in FORMATS}


def _labels(art: Artifacts, threads: int, macs: Dict[str, int], key: str) -> dict:
    label, precision = FORMAT_LABEL[key]
    return {"model": art.model, "hw": list(art.hw), "threads": threads, "format": key, "format_label": label,
            "precision": precision, "macs": macs["pruned" if "pruned" in key else "full"]}


def subjects_for(art: Artifacts, threads: int, frame: np.ndarray, macs: Dict[str, int]) -> List[timing.Subject]:
    predictor = ort_predictor(os.path.join(art.fp32_dir, "model.onnx"), art.fp32_dir, threads)
    tensor = predictor.preprocess(frame)

    def labels(key: str) -> dict:
        return _labels(art, threads, macs, key)

    subjects = [
        timing.paddle_subject(labels("paddle_fp32"), art.fp32_dir, threads, tensor),
        # the Predictor's own session doubles as the raw ONNX FP32 run: the ratio is pure runtime overhead
        timing.Subject(labels("onnx_fp32"), lambda: predictor.backend.run(tensor)),
        timing.predictor_subject(labels("predictor_fp32"), predictor, frame),
        timing.onnx_subject(labels("onnx_int8_ours"), art.ours, threads, tensor),
        timing.onnx_subject(labels("onnx_int8_quantize_static"), art.plain, threads, tensor),
        timing.onnx_subject(labels("onnx_fp32_pruned30"), os.path.join(art.pruned_dir, "model.onnx"), threads,
                            tensor),
    ]
    lowres = os.path.join(art.fp32_lowres_dir, "model.onnx")
    subjects += [
        timing.predictor_subject(labels("predictor_int8_ours"), ort_predictor(art.ours, art.fp32_dir, threads,
                                                                              "int8"), frame),
        timing.predictor_subject(labels("predictor_fp32_lowres"), ort_predictor(lowres, art.fp32_lowres_dir,
                                                                                threads), frame),
        timing.predictor_subject(labels("predictor_int8_lowres"), ort_predictor(art.ours_lowres, art.fp32_lowres_dir,
                                                                                threads, "int8"), frame),
    ]
    if os.path.isdir(art.qat_dir):
        subjects.append(timing.paddle_subject(labels("paddle_int8_qat"), art.qat_dir, threads, tensor, "int8"))
        subjects.append(timing.onnx_subject(labels("onnx_int8_qat"), os.path.join(art.qat_dir, "model.onnx"),
                                            threads, tensor))
    if installed("openvino"):
        subjects += openvino_subjects(art, threads, frame, tensor, labels)
    return subjects


def openvino_subjects(art: Artifacts, threads: int, frame: np.ndarray, tensor: np.ndarray,
                      labels) -> List[timing.Subject]:
    """OpenVINO raw runs (FP32, BF16 where the CPU has it, our onnxruntime-shaped INT8, NNCF INT8) and end to
    end through the Predictor: the default FP32 export in OpenVINO's default precision, the NNCF peer, and the
    lowres_logits exports (default precision; our OpenVINO-shaped INT8) with the runtime head."""
    import openvino

    from ddrnet.runtime.openvino_backend import has_bf16

    fp32 = os.path.join(art.fp32_dir, "model.onnx")
    lowres = os.path.join(art.fp32_lowres_dir, "model.onnx")
    subjects = [timing.openvino_subject(labels("openvino_fp32"), fp32, threads, tensor, "fp32")]
    if has_bf16(openvino.Core()):
        subjects.append(timing.openvino_subject(labels("openvino_bf16"), fp32, threads, tensor, "bf16"))
    subjects += [
        timing.openvino_subject(labels("openvino_int8_ours"), art.ours, threads, tensor),
        timing.openvino_subject(labels("openvino_int8_nncf"), art.nncf, threads, tensor),
    ]
    e2e = (("predictor_openvino_fp32", fp32, art.fp32_dir, "fp32"),
           ("predictor_openvino_int8_nncf", art.nncf, art.fp32_dir, "int8"),
           ("predictor_openvino_lowres", lowres, art.fp32_lowres_dir, "fp32"),
           ("predictor_openvino_int8_lowres", art.openvino_lowres, art.fp32_lowres_dir, "int8"))
    for key, path, model_dir, precision in e2e:
        predictor = ov_predictor(path, model_dir, threads, precision)
        subjects.append(timing.predictor_subject(dict(labels(key), precision=predictor.precision), predictor, frame))
    return subjects


def ort_predictor(path: str, model_dir: str, threads: Optional[int] = None, precision: str = "fp32"):
    """The runtime's Predictor over `path` (model_dir's .onnx, or a quantization of it) with model_dir's
    deploy.yaml, on an onnxruntime session without thread spinning (see timing.py)."""
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.backends import OnnxRuntimeBackend
    from ddrnet.runtime.manifest import load_manifest

    manifest = dict(load_manifest(model_dir), precision=precision)
    return Predictor.from_backend(OnnxRuntimeBackend(path, "cpu", threads, spinning=False), manifest, path)


def ov_predictor(path: str, model_dir: str, threads: Optional[int] = None, precision: str = "fp32"):
    """The runtime's Predictor over `path` with model_dir's deploy.yaml on the OpenVINO backend as the
    runtime opens it: default precision (BF16 on AMX / AVX512-BF16 CPUs for the float layers), uint8
    frames normalised in the graph."""
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.manifest import load_manifest
    from ddrnet.runtime.openvino_backend import OpenVINOBackend

    manifest = dict(load_manifest(model_dir), precision=precision)
    backend = OpenVINOBackend(path, "cpu", threads, model_precision=precision, cache=False,
                              frames=manifest["input"])
    return Predictor.from_backend(backend, manifest, path)


def evaluate_all(art: Artifacts, data_root: str, max_images: Optional[int]) -> Dict[str, float]:
    """mIoU of each ONNX variant through the runtime Predictor's pre/post-processing."""
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.metrics import evaluate_model_dir

    fp32, lowres = art.fp32_dir, art.fp32_lowres_dir
    predictors = {"onnx_fp32": Predictor(fp32), "paddle_fp32": Predictor(fp32, backend="paddle"),
                  "onnx_int8_ours": ort_predictor(art.ours, fp32, precision="int8"),
                  "onnx_int8_quantize_static": ort_predictor(art.plain, fp32, precision="int8"),
                  "predictor_fp32_lowres": Predictor(lowres),
                  "predictor_int8_lowres": ort_predictor(art.ours_lowres, lowres, precision="int8")}
    if installed("openvino"):
        predictors.update({"predictor_openvino_fp32": ov_predictor(os.path.join(fp32, "model.onnx"), fp32),
                           "predictor_openvino_int8_nncf": ov_predictor(art.nncf, fp32, precision="int8"),
                           "predictor_openvino_lowres": ov_predictor(os.path.join(lowres, "model.onnx"), lowres),
                           "predictor_openvino_int8_lowres": ov_predictor(art.openvino_lowres, lowres,
                                                                          precision="int8")})
    found = {key: evaluate_model_dir(p, data_root, "val", False, max_images)["miou"] for key, p in predictors.items()}
    if os.path.isdir(art.qat_dir):
        for key, backend in (("onnx_int8_qat", "onnxruntime"), ("paddle_int8_qat", "paddle")):
            found[key] = evaluate_model_dir(Predictor(art.qat_dir, backend=backend), data_root, "val", False,
                                            max_images)["miou"]
    return found


def bf16_rows(art: Artifacts, frame: np.ndarray, plan: Plan, weights_kind: str) -> dict:
    """Paddle Inference FP32 vs BF16 (oneDNN) interleaved at 2 threads, and their argmax agreement; OpenVINO's
    BF16 vs FP32 agreement on the same tensor (its speed is in the latency rows)."""
    from ddrnet.runtime import Predictor

    tensor = Predictor(art.fp32_dir).preprocess(frame)
    threads = max(plan.threads)
    base = {"model": art.model, "hw": list(art.hw), "threads": threads}
    fp32 = timing.paddle_backend(art.fp32_dir, threads, "fp32")
    bf16 = timing.paddle_backend(art.fp32_dir, threads, "bf16")
    agreement = timing.agreement(fp32.run(tensor), bf16.run(tensor))
    seconds, low, high = plan.budget(art.model, art.hw)
    rows = measure_for([timing.Subject(dict(base, precision="fp32"), lambda: fp32.run(tensor)),
                        timing.Subject(dict(base, precision="bf16"), lambda: bf16.run(tensor))],
                       seconds / 2, low, high, progress="bf16 " + art.model)
    found = {"rows": rows, "argmax_agreement_bf16_vs_fp32": agreement, "weights": weights_kind}
    if installed("openvino"):
        from ddrnet.runtime.openvino_backend import OpenVINOBackend

        path = os.path.join(art.fp32_dir, "model.onnx")
        found["openvino_argmax_agreement_bf16_vs_fp32"] = timing.agreement(
            *[OpenVINOBackend(path, "cpu", threads, p, cache=False).run(tensor) for p in ("fp32", "bf16")])
    return found


def profile_models(art: Artifacts, frame: np.ndarray, threads: int, runs: int) -> Dict[str, dict]:
    """onnxruntime's time per operator of the FP32 and our INT8 model, argmax and lowres_logits heads."""
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.opprofile import op_profile

    tensor = Predictor(art.fp32_dir).preprocess(frame)
    models = {"onnx_fp32": os.path.join(art.fp32_dir, "model.onnx"), "onnx_int8_ours": art.ours,
              "onnx_fp32_lowres": os.path.join(art.fp32_lowres_dir, "model.onnx"),
              "onnx_int8_ours_lowres": art.ours_lowres}
    return {name: op_profile(path, tensor, threads, runs) for name, path in models.items()}


def gpu_group(model: str, hw: Tuple[int, int], weights: str, data_root: Optional[str], plan: Plan, work: str,
              results: dict) -> None:
    """One model at one size through every GPU path of the runtime (gpu.py): a path this GPU should run and
    does not, or that disagrees with the CPU, goes into results["failures"]; one it cannot run is a note."""
    from ddrnet.runtime import Predictor

    key = "{}@{}x{}".format(model, *hw)
    print("building {} for the GPU (FP32 export, INT8 Q/DQ for TensorRT) ...".format(key))
    frames = variants.calibration_frames(plan.calib_for(model, hw), hw, data_root)
    art = gpu.build(weights, hw, frames, os.path.join(work, key))
    frame = _frame(hw, data_root)
    base = {"model": model, "hw": list(hw), "threads": "gpu", "macs": variants.model_macs(weights, hw)}
    subjects, notes, failures = gpu.subjects(art, Predictor(art.fp32_dir).preprocess(frame), base)
    results["notes"].update({key + " " + k: v for k, v in notes.items()})
    results["notes"].update({"FAILED " + key + " " + f.split(":")[0]: f for f in failures})
    results.setdefault("failures", []).extend(key + " " + f for f in failures)
    if subjects:
        seconds, low, high = plan.budget(model, hw)
        results["latency"].extend(measure_for(subjects, seconds, low, high, progress=key + " gpu"))


def _frame(hw: Tuple[int, int], data_root: Optional[str]) -> np.ndarray:
    import cv2

    if data_root:
        from ddrnet.runtime.cityscapes import list_samples
        from ddrnet.runtime.imageio import read_image

        image = read_image(list_samples(data_root, "val")[0][0])
        return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return variants.calibration_frames(1, hw, None)[0]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 23-slim, 256x512, 2 threads (~3 min)")
    parser.add_argument("--models", metavar="NAMES", help="only these of the mode's models, comma-separated "
                        "(e.g. ddrnet23_slim,ddrnet23 for the OpenVINO targets without ddrnet39)")
    parser.add_argument("--weights", default=_default("demo_out/train/best_model"),
                        help="trained FP32 checkpoint: its model gets mIoU figures (default: the demo's, if any)")
    parser.add_argument("--qat-weights", default=_default("demo_out/qat/best_model"),
                        help="QAT checkpoint: adds Paddle INT8 (oneDNN) rows (default: the demo's, if any)")
    parser.add_argument("--data-root", default=_default("demo_out/data"),
                        help="Cityscapes-layout data for mIoU and calibration (default: demo_out/data, if any)")
    parser.add_argument("--out", help="results folder (default benchmarks/results, or benchmarks/results/quick)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: onnxruntime GPU providers, native TensorRT FP32/FP16/INT8 and Paddle GPU instead "
                             "of the CPU formats (paths that cannot start here are noted, not timed)")
    parser.add_argument("--skip-training", action="store_true", help="leave out the training comparison")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rebuild README.md and the plots from the results folder's JSON")
    return parser.parse_args(argv)


EXPERIMENTS = ("peak", "latency", "miou", "bf16", "training", "quantization", "profile", "notes")


def load_results(out: str) -> dict:
    """The results dict back from the JSON files `_save` wrote (each holds the run's header too)."""
    import json

    results = {}  # type: dict
    for name in EXPERIMENTS:
        path = os.path.join(out, name + ".json")
        if os.path.isfile(path):
            with open(path) as f:
                results.update(json.load(f))
    if "peak" not in results:
        raise SystemExit("{}: no peak.json, nothing to report (run the benchmarks first)".format(out))
    return results


def run(args: argparse.Namespace) -> int:
    from ddrnet.runtime.bench import host_info, versions

    plan = Plan(args.quick)
    if args.models:
        chosen = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(chosen) - set(plan.models))
        if unknown or not chosen:
            raise SystemExit("--models {}: choose from {}".format(args.models, ",".join(plan.models)))
        plan.models = chosen
    out = args.out or os.path.join(HERE, "results", "gpu" if args.device == "gpu" else "",
                                   "quick" if args.quick else "")
    if args.report_only:
        report.write(load_results(out), out)
        return 0
    os.makedirs(out, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    trained = {_model_of(args.weights): args.weights} if args.weights else {}
    qat = {_model_of(args.qat_weights): args.qat_weights} if args.qat_weights else {}
    data_root = args.data_root  # calibration images; mIoU only for the trained model
    work = tempfile.mkdtemp(prefix="ddrnet-bench-")
    mode = ("quick" if args.quick else "full") + (", gpu" if args.device == "gpu" else "")
    results = {"command": " ".join([os.path.relpath(sys.executable, ROOT)] + sys.argv), "mode": mode,
               "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"), "host": host_info(), "trained_weights": trained,
               "qat_weights": qat, "data_root": data_root}
    try:
        print("host peak (numpy sgemm, onnxruntime MatMul / MatMulInteger) ...")
        results["peak"] = peak.measure_peaks(plan.threads, plan.peak_n, plan.peak_reps)
        print("CPU steadiness ({:g} s) ...".format(plan.steady_s))
        results["steadiness"] = steadiness.check(plan.steady_s)
        results["latency"], results["miou"], results["notes"], results["quantization"] = [], {}, {}, {}
        results["bf16"], results["profile"] = {}, {}
        bf16_ok = bool(set(BF16_FLAGS) & set(results["host"]["isa"]))
        for model in plan.models:
            weights = trained.get(model) or variants.random_checkpoint(model, os.path.join(work, "weights"))
            if args.device == "gpu":
                for hw in plan.sizes:
                    gpu_group(model, hw, weights, data_root, plan, work, results)
                    _save(out, results)
                continue
            pruned = variants.pruned_checkpoint(weights, os.path.join(work, "weights", model + "_pruned"))
            for hw in plan.sizes:
                key = "{}@{}x{}".format(model, *hw)
                print("building {} (export, INT8 ours + quantize_static, pruned{}) ...".format(
                    key, ", QAT" if model in qat else ""))
                art = build_artifacts(model, hw, weights, pruned, qat.get(model), data_root,
                                      plan.calib_for(model, hw), os.path.join(work, key))
                results["notes"].update({key + " " + k: v for k, v in art.notes.items()})
                results["quantization"][key] = art.quantization
                macs = {"full": variants.model_macs(weights, hw), "pruned": variants.model_macs(pruned, hw)}
                frame = _frame(hw, data_root)
                for threads in plan.threads:
                    seconds, low, high = plan.budget(model, hw)
                    rows = measure_for(subjects_for(art, threads, frame, macs), seconds, low, high,
                                       progress="{} t{}".format(key, threads))
                    results["latency"].extend(rows)
                    _save(out, results)
                if hw == plan.sizes[0]:
                    print("profiling {} (onnxruntime, {} thread) ...".format(key, min(plan.threads)))
                    results["profile"][key] = profile_models(art, frame, min(plan.threads), plan.profile_runs)
                if model in trained and data_root:
                    results["miou"][key] = evaluate_all(art, data_root, plan.max_images)
                if model in plan.bf16_models and hw == plan.sizes[0]:
                    kind = "trained" if model in trained else "random"
                    results["bf16"][key] = bf16_rows(art, frame, plan, kind) if bf16_ok else {
                        "skipped": "CPU has none of " + ", ".join(BF16_FLAGS)}
                _save(out, results)
                shutil.rmtree(art.folder, ignore_errors=True)
        if not args.skip_training and args.device == "cpu":
            print("training throughput: ours vs PaddleSeg core.train ...")
            results["training"] = training.compare(work, **plan.train)
    except BaseException as err:  # what was measured before the failure is still written, marked as such
        results["interrupted"] = "{}: {}".format(type(err).__name__, str(err).strip()[:200])
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        results["versions"] = _versions(versions())
        results["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        _save(out, results)
        if results.get("peak"):
            report.write(results, out)
    print(report.summary(results))
    print("wrote {}".format(out))
    for failure in results.get("failures", []):
        print("FAILED " + failure)
    return 1 if results.get("failures") else 0


def _versions(found: Dict[str, str]) -> Dict[str, str]:
    for name in ("onnx", "paddleseg", "paddleslim", "paddle2onnx"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = str(getattr(module, "__version__", "?"))
    return found


def _save(out: str, results: dict) -> None:
    """One JSON per experiment, rewritten after every group so an interrupted run keeps what it measured."""
    meta = {k: results.get(k) for k in ("command", "mode", "started", "finished", "interrupted", "host", "versions",
                                         "trained_weights", "qat_weights", "data_root")}
    for name in EXPERIMENTS:
        if name in results:
            write_json(dict(meta, **{name: results[name]}), os.path.join(out, name + ".json"))


def main(argv: Optional[List[str]] = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
