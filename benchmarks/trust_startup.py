"""What `--trust` (signed bundles, runtime/signing.py) adds to a Predictor's start-up, for a ~20 MB model.

    python benchmarks/trust_startup.py                       # builds a 21 MB ONNX bundle in a temp dir
    python benchmarks/trust_startup.py --model demo_out/export/fp32 --json trust.json

Each round times, one after the other in this process (medians over --repeat rounds):
  hash          SHA-256 of every listed file (load_manifest: every start pays it, with a key or not)
  verify        authenticate(): read deploy.yaml, load the trust key, check the Ed25519 signature,
                the expiry and the rollback state
  consistency   graph_summary() of the model file (runtime/consistency.py: also paid without a key)
  record        Accepted.record() for a version already recorded (a normal start: no write)
  start_plain / start_trusted   the whole Predictor(...) without / with the key
and, in fresh interpreters with the runtime imported, the first and second authenticate() (wall and CPU
time): the first one pays the one-off import of cryptography's Ed25519 module.
The bundle is copied and signed with a throw-away key; the rollback state goes to a temp file.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# a fresh interpreter with the runtime imported: the first verification pays cryptography's import
FIRST_VERIFY = """
import json, sys, time
from ddrnet.runtime import Predictor
from ddrnet.runtime.signing import authenticate
times = []
for _ in range(2):
    wall, cpu = time.perf_counter(), time.process_time()
    authenticate(sys.argv[1], sys.argv[2])
    times.append([(time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3])
print(json.dumps(times))
"""


def synthetic_bundle(model_dir: str, width: int = 2304) -> str:
    """An FP32 ONNX model (conv 3->256->`width` 3x3, 1x1 to 19 classes, argmax: 21 MB at 2304) and its
    deploy.yaml."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ddrnet.runtime.labels import CLASS_NAMES, PALETTE
    from ddrnet.runtime.manifest import write_manifest

    rng = np.random.default_rng(0)
    shapes = {"w1": (256, 3, 3, 3), "w2": (width, 256, 3, 3), "w3": (19, width, 1, 1)}
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in shapes.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "w3"], ["logits"]),
             helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=0),
             helper.make_node("Cast", ["idx"], ["mask"], to=TensorProto.INT32)]
    graph = helper.make_graph(nodes, "trust_startup",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 128])],
                              [helper.make_tensor_value_info("mask", TensorProto.INT32, [1, 64, 128])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    os.makedirs(model_dir)
    onnx.save(model, os.path.join(model_dir, "model.onnx"))
    write_manifest(model_dir, {
        "model_name": "trust_startup", "class_names": list(CLASS_NAMES), "palette": PALETTE, "precision": "fp32",
        "input": {"name": "x", "shape": [1, 3, 64, 128], "color_order": "RGB", "mean": [0.5] * 3, "std": [0.5] * 3},
        "output": {"op": "argmax"}, "files": [{"format": "onnx", "role": "model", "path": "model.onnx"}]})
    return model_dir


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def first_verify_ms(model_dir: str, trust: str, repeat: int) -> list:
    """[((wall, cpu) ms of the first authenticate(), (wall, cpu) of the second)] in fresh interpreters.
    The CPU time is what the process itself spent: less disturbed than wall time on a busy host."""
    return [json.loads(subprocess.run([sys.executable, "-c", FIRST_VERIFY, model_dir, trust], capture_output=True,
                                      text=True, check=True).stdout) for _ in range(repeat)]


def measure(model_dir: str, repeat: int, fresh_processes: int) -> dict:
    from ddrnet.runtime import Predictor, signing
    from ddrnet.runtime.consistency import graph_summary
    from ddrnet.runtime.manifest import load_manifest

    keys = os.path.join(os.path.dirname(model_dir), "key")
    signing.generate_keypair(keys)
    signing.sign_bundle(model_dir, signing.load_private_key(keys + ".key"))
    trust = keys + ".pub"
    model_file = os.path.join(model_dir, next(e["path"] for e in load_manifest(model_dir, verify=False)["files"]
                                              if e["format"] == "onnx"))
    Predictor(model_dir, trust=trust)  # warm the page cache, record the version, import everything once
    _, accepted = signing.authenticate(model_dir, trust)
    steps = {
        "hash": lambda: load_manifest(model_dir),
        "verify": lambda: signing.authenticate(model_dir, trust),
        "consistency": lambda: graph_summary(model_file),
        "record": accepted.record,
        "start_plain": lambda: Predictor(model_dir, threads=1, trust=False),
        "start_trusted": lambda: Predictor(model_dir, threads=1, trust=trust),
    }
    times = {name: [] for name in steps}
    for _ in range(repeat):
        for name, step in steps.items():
            times[name].append(_ms(step))
    result = {name: {"p50_ms": round(statistics.median(v), 3), "min_ms": round(min(v), 3)} for name, v in times.items()}
    paired = [t - p for t, p in zip(times["start_trusted"], times["start_plain"])]
    result["start_trusted_minus_plain"] = {"p50_ms": round(statistics.median(paired), 3)}
    fresh = first_verify_ms(model_dir, trust, fresh_processes)
    for i, name in enumerate(("verify_first_in_process", "verify_second_in_process")):
        for j, clock in enumerate(("wall", "cpu")):
            values = [pair[i][j] for pair in fresh]
            result["{}_{}".format(name, clock)] = {"p50_ms": round(statistics.median(values), 3),
                                                   "min_ms": round(min(values), 3)}
    size = sum(os.path.getsize(os.path.join(model_dir, e["path"])) for e in load_manifest(model_dir)["files"])
    result["model_mb"] = round(size / 1e6, 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", metavar="DIR", help="an exported model dir (default: a synthetic 21 MB one)")
    parser.add_argument("--repeat", type=int, default=30, help="rounds in this process (default 30)")
    parser.add_argument("--fresh", type=int, default=6, help="fresh interpreters for the first check (default 6)")
    parser.add_argument("--width", type=int, default=2304,
                        help="the synthetic model's wide layer (default 2304: 21 MB; tests use a tiny one)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="trust_startup.")
    os.environ["DDRNET_TRUST_STATE"] = os.path.join(work, "state.json")
    try:
        bundle = os.path.join(work, "bundle")
        if args.model:
            shutil.copytree(args.model, bundle)
        else:
            synthetic_bundle(bundle, args.width)
        result = measure(bundle, args.repeat, args.fresh)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from ddrnet.runtime.bench import host_info

    result["host"] = host_info()
    result["repeat"] = args.repeat
    for name, value in result.items():
        print("{:32s} {}".format(name, value))
    if args.json:
        from ddrnet.runtime.fileio import write_json

        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
