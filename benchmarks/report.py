"""Markdown tables and PNG plots from the suite's results (nothing here measures; every number printed
comes from the results dict, and a figure that was not measured is shown as "n/a" with the reason)."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

from steadiness import describe
from timing import only

from ddrnet.runtime.fileio import atomic_path, write_text

NA_UNTRAINED = "n/a (untrained)"


def host_line(results: dict) -> str:
    host = results["host"]
    isa = " ".join(host["isa"]) or "no ISA flags"
    return "{} ({} cores; {}), {}, Python {}".format(host["cpu"], host["cores"], isa, host["os"], host["python"])


def load_range(results: dict) -> str:
    loads = [row["load_average_after"][0] for row in results.get("latency", []) if row.get("load_average_after")]
    return "{:.1f} to {:.1f}".format(min(loads), max(loads)) if loads else "not recorded"


def _peak_gmacs(results: dict, precision: str, threads: int) -> Optional[float]:
    """The best measured GEMM rate for `precision` at `threads`: onnxruntime's (Integer)MatMul and
    OpenVINO's MatMul in that precision, and for FP32 at all cores also numpy's sgemm (its BLAS uses
    every core). A BF16 row is held against the BF16 peak (AMX), an INT8 one against the integer peak."""
    peak = results["peak"]
    openvino = peak.get("openvino") or {}
    key = str(threads)
    found = [(openvino.get(precision) or {}).get(key)]
    if precision == "int8":
        found.append(peak["int8_gmacs"].get(key))
    elif precision == "fp32":
        found += [peak["fp32_gmacs"].get(key), peak["numpy_sgemm_gmacs"] if threads == results["host"]["cores"]
                  else None]
    found = [g for g in found if g]
    return max(found) if found else None


def achieved_gmacs(row: dict) -> float:
    return row["macs"] / (row["latency_ms"]["p50"] / 1e3) / 1e9


def efficiency(results: dict, row: dict) -> Optional[float]:
    """Achieved MAC/s over the host's measured peak for the row's precision and thread count."""
    peak = _peak_gmacs(results, row["precision"], row["threads"])
    return achieved_gmacs(row) / peak if peak else None


def groups(rows: Sequence[dict]) -> List[tuple]:
    """(model, hw, threads) in measured order."""
    seen = []  # type: List[tuple]
    for row in rows:
        key = (row["model"], tuple(row["hw"]), row["threads"])
        if key not in seen:
            seen.append(key)
    return seen


def _p50(rows: Sequence[dict], key: tuple, fmt: str) -> Optional[float]:
    row = only(rows, model=key[0], hw=list(key[1]), threads=key[2], format=fmt)
    return row["latency_ms"]["p50"] if row else None


def ratios(rows: Sequence[dict], key: tuple) -> Dict[str, Optional[float]]:
    """Speed ratios within one interleaved group (>1: the first named is faster)."""
    def ratio(slow: str, fast: str) -> Optional[float]:
        a, b = _p50(rows, key, slow), _p50(rows, key, fast)
        return a / b if a and b else None

    return {"int8_ours_vs_onnx_fp32": ratio("onnx_fp32", "onnx_int8_ours"),
            "int8_ours_vs_quantize_static": ratio("onnx_int8_quantize_static", "onnx_int8_ours"),
            "quantize_static_vs_onnx_fp32": ratio("onnx_fp32", "onnx_int8_quantize_static"),
            "onnx_fp32_vs_paddle_fp32": ratio("paddle_fp32", "onnx_fp32"),
            "predictor_overhead": (lambda a, b: a / b if a and b else None)(
                _p50(rows, key, "predictor_fp32"), _p50(rows, key, "onnx_fp32")),
            "pruned30_vs_onnx_fp32": ratio("onnx_fp32", "onnx_fp32_pruned30"),
            "paddle_int8_qat_vs_paddle_fp32": ratio("paddle_fp32", "paddle_int8_qat"),
            # end to end through the Predictor (frame in, mask out): with the runtime head (lowres_logits)
            "int8_vs_fp32_end_to_end": ratio("predictor_fp32", "predictor_int8_ours"),
            "int8_vs_fp32_lowres_end_to_end": ratio("predictor_fp32_lowres", "predictor_int8_lowres"),
            "lowres_gain_fp32": ratio("predictor_fp32", "predictor_fp32_lowres"),
            "lowres_gain_int8": ratio("predictor_int8_ours", "predictor_int8_lowres"),
            # OpenVINO: raw runs against onnxruntime FP32, and end to end (targets: >= 5x onnxruntime FP32,
            # >= 1.2x the peer)
            "openvino_fp32_vs_onnx_fp32": ratio("onnx_fp32", "openvino_fp32"),
            "openvino_bf16_vs_onnx_fp32": ratio("onnx_fp32", "openvino_bf16"),
            "nncf_vs_onnx_fp32": ratio("onnx_fp32", "openvino_int8_nncf"),
            "openvino_on_ours_vs_nncf": ratio("openvino_int8_nncf", "openvino_int8_ours"),
            "openvino_ours_vs_onnx_fp32_end_to_end": ratio("predictor_fp32", "predictor_openvino_int8_lowres"),
            "openvino_ours_vs_nncf_end_to_end": ratio("predictor_openvino_int8_nncf", "predictor_openvino_int8_lowres"),
            "openvino_fp32_export_vs_onnx_fp32_end_to_end": ratio("predictor_fp32", "predictor_openvino_fp32"),
            "predictor_overhead_openvino": (lambda a, b: a / b if a and b else None)(
                _p50(rows, key, "predictor_openvino_int8_nncf"), _p50(rows, key, "openvino_int8_nncf"))}


def fastest_end_to_end(rows: Sequence[dict], key: tuple) -> Optional[dict]:
    """The fastest row of a group that goes frame in, mask out (the Predictor rows)."""
    e2e = [r for r in rows if (r["model"], tuple(r["hw"]), r["threads"]) == key and r["format"].startswith("predictor")]
    return min(e2e, key=lambda r: r["latency_ms"]["p50"]) if e2e else None


def _fmt(value: Optional[float], spec: str = "{:.2f}", missing: str = "-") -> str:
    return missing if value is None else spec.format(value)


def _miou(results: dict, row: dict) -> str:
    key = "{}@{}x{}".format(row["model"], *row["hw"])
    found = results.get("miou", {}).get(key)
    if not found:
        return NA_UNTRAINED
    same_model = {"predictor_fp32": "onnx_fp32", "predictor_int8_ours": "onnx_int8_ours",
                  "openvino_int8_nncf": "predictor_openvino_int8_nncf",
                  "openvino_bf16": "predictor_openvino_fp32"}  # the default precision where BF16 exists
    value = found.get(same_model.get(row["format"], row["format"]))
    return _fmt(value, "{:.4f}", "not evaluated")


def latency_table(results: dict) -> str:
    rows = results["latency"]
    lines = ["| Model | Input | Threads | Format | Prec. | p50 ms | p99 ms | FPS (1000/p50) | GMAC/s | % of peak | "
             "vs ONNX FP32 | mIoU | rounds |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for key in groups(rows):
        base = _p50(rows, key, "onnx_fp32")
        for row in [r for r in rows if (r["model"], tuple(r["hw"]), r["threads"]) == key]:
            eff = efficiency(results, row)
            lines.append("| {} | {}x{} | {} | {} | {} | {:.1f} | {:.1f} | {:.2f} | {:.1f} | {} | {} | {} | {} |".format(
                row["model"], row["hw"][0], row["hw"][1], row["threads"], row["format_label"], row["precision"],
                row["latency_ms"]["p50"], row["latency_ms"]["p99"], row["fps_p50"], achieved_gmacs(row),
                _fmt(None if eff is None else 100 * eff, "{:.0f} %"),
                _fmt(base / row["latency_ms"]["p50"] if base else None, "{:.2f}x"), _miou(results, row),
                row["iterations"]))
    return "\n".join(lines)


def _ratio_columns(rows: Sequence[dict], columns: Sequence[tuple]) -> str:
    """One line per (model, input, threads) group, one column per (header, ratios() key)."""
    lines = ["| Model | Input | Threads | " + " | ".join(header for header, _ in columns) + " |",
             "|---|---|---|" + "---:|" * len(columns)]
    for key in groups(rows):
        r = ratios(rows, key)
        lines.append("| {} | {}x{} | {} | ".format(key[0], key[1][0], key[1][1], key[2])
                     + " | ".join(_fmt(r[name], "{:.2f}x") for _, name in columns) + " |")
    return "\n".join(lines)


def head_table(results: dict) -> str:
    """End-to-end ratios (Predictor: frame in, mask out) with the graph's argmax head and with the runtime's
    upsample + argmax of lowres_logits."""
    return _ratio_columns(results["latency"], (
        ("INT8 / FP32, argmax head", "int8_vs_fp32_end_to_end"),
        ("INT8 / FP32, runtime head", "int8_vs_fp32_lowres_end_to_end"),
        ("runtime head gain FP32", "lowres_gain_fp32"), ("runtime head gain INT8", "lowres_gain_int8")))


def profile_table(results: dict, top: int = 5) -> str:
    """The operator types that take the time, from onnxruntime's profiler."""
    lines = ["| Model@input | ONNX model | threads | run p50 ms | top operators (share of kernel time) |",
             "|---|---|---:|---:|---|"]
    for key, models in results.get("profile", {}).items():
        for name, prof in models.items():
            ops = ", ".join("{} {:.0%}".format(o["op"], o["share"]) for o in prof["ops"][:top])
            lines.append("| {} | {} | {} | {:.1f} | {} |".format(key, name, prof["threads"], prof["run_ms_median"],
                                                                 ops))
    return "\n".join(lines)


def ratio_table(results: dict) -> str:
    return _ratio_columns(results["latency"], (
        ("INT8 ours / ONNX FP32", "int8_ours_vs_onnx_fp32"),
        ("ours vs quantize_static", "int8_ours_vs_quantize_static"),
        ("quantize_static / FP32", "quantize_static_vs_onnx_fp32"),
        ("ONNX FP32 vs Paddle FP32", "onnx_fp32_vs_paddle_fp32"), ("Predictor / raw run", "predictor_overhead"),
        ("pruned 30 % / FP32", "pruned30_vs_onnx_fp32"), ("Paddle INT8 / FP32", "paddle_int8_qat_vs_paddle_fp32")))


def peak_table(results: dict) -> str:
    p = results["peak"]
    lines = ["| Kernel (best of {} runs) | Threads | GMAC/s | GFLOP(OP)/s |".format(p["reps"]),
             "|---|---:|---:|---:|",
             "| numpy sgemm {n}x{n}x{n} (BLAS, all cores) | - | {:.1f} | {:.1f} |".format(
                 p["numpy_sgemm_gmacs"], 2 * p["numpy_sgemm_gmacs"], n=p["n"])]
    tables = [("onnxruntime MatMul FP32", p["fp32_gmacs"]), ("onnxruntime MatMulInteger u8 x s8", p["int8_gmacs"])]
    labels = {"fp32": "OpenVINO MatMul FP32", "bf16": "OpenVINO MatMul BF16", "int8": "OpenVINO Q/DQ MatMul u8 x i8"}
    tables += [(labels[kind], table) for kind, table in (p.get("openvino") or {}).items()]
    for name, table in tables:
        for threads, gmacs in table.items():
            lines.append("| {} {n}x{n}x{n} | {} | {:.1f} | {:.1f} |".format(name, threads, gmacs, 2 * gmacs, n=p["n"]))
    return "\n".join(lines)


def graph_table(results: dict) -> str:
    """Float vs integer kernels left in onnxruntime's optimized graph of each INT8 model."""
    lines = ["| Model@input | INT8 model | float Conv | QLinearConv | DequantizeLinear / QuantizeLinear left |",
             "|---|---|---:|---:|---|"]
    for key, entry in results.get("quantization", {}).items():
        for name in ("ours", "quantize_static"):
            graph = (entry.get(name) or {}).get("optimized_graph")
            if not graph:
                continue
            h = graph["op_histogram"]
            lines.append("| {} | {} | {} | {} | {} DQ, {} Q |".format(
                key, name, graph["float_convs"], h.get("QLinearConv", 0), h.get("DequantizeLinear", 0),
                h.get("QuantizeLinear", 0)))
    return "\n".join(lines)


def bf16_table(results: dict) -> str:
    lines = ["| Model | Input | Threads | FP32 p50 ms | BF16 p50 ms | BF16 speed-up | argmax agreement | weights | "
             "OpenVINO BF16 vs FP32 agreement |", "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for key, entry in results.get("bf16", {}).items():
        if "skipped" in entry:
            lines.append("| {} | skipped: {} |||||||".format(key, entry["skipped"]))
            continue
        fp32 = only(entry["rows"], precision="fp32")
        bf16 = only(entry["rows"], precision="bf16")
        lines.append("| {} | {}x{} | {} | {:.1f} | {:.1f} | {:.2f}x | {:.2%} | {} | {} |".format(
            fp32["model"], fp32["hw"][0], fp32["hw"][1], fp32["threads"], fp32["latency_ms"]["p50"],
            bf16["latency_ms"]["p50"], fp32["latency_ms"]["p50"] / bf16["latency_ms"]["p50"],
            entry["argmax_agreement_bf16_vs_fp32"], entry["weights"],
            _fmt(entry.get("openvino_argmax_agreement_bf16_vs_fp32"), "{:.2%}")))
    return "\n".join(lines)


def training_table(results: dict) -> str:
    t = results["training"]
    lines = ["Model {}, batch {}, crop {}x{}, {} (images/s from the difference of a {}- and a {}-iteration run; "
             "data loader workers {}; data {}).".format(t["model"], t["batch"], t["crop"], t["crop"], t["optimizer"],
                                                        t["iters"][0], t["iters"][1], t["num_workers"],
                                                        t["data_root"]), "",
             "| Trainer | images/s | loader wait | note |", "|---|---:|---:|---|"]
    for row in t["rows"]:
        if "error" in row:
            lines.append("| {} | - | - | could not run: {} |".format(row["trainer"], row["error"]))
            continue
        lines.append("| {} | {:.3f} | {} | |".format(row["trainer"], row["images_per_s"], _fmt(
            row.get("loader_wait_fraction"), "{:.1%}", "not reported")))
    return "\n".join(lines)


def summary(results: dict) -> str:
    """The key ratios, one line per timed group, for the terminal, and what wins end to end."""
    lines = ["host: " + host_line(results)]
    if results.get("steadiness"):
        lines.append(describe(results["steadiness"]))
    for key in groups(results["latency"]):
        r = ratios(results["latency"], key)
        group = "{} {}x{} {}".format(key[0], key[1][0], key[1][1],
                                     "t{}".format(key[2]) if isinstance(key[2], int) else key[2])
        lines.append("{}: INT8 ours/FP32 {}  ours vs quantize_static {}  Predictor/raw {}  ONNX vs Paddle FP32 {}  "
                     "end to end INT8/FP32 with runtime head {}".format(group, *[_fmt(r[k], "{:.2f}x") for k in (
                         "int8_ours_vs_onnx_fp32", "int8_ours_vs_quantize_static", "predictor_overhead",
                         "onnx_fp32_vs_paddle_fp32", "int8_vs_fp32_lowres_end_to_end")]))
        best = fastest_end_to_end(results["latency"], key)
        base = _p50(results["latency"], key, "predictor_fp32")
        if best and base:
            lines.append("{}: fastest end to end {} ({}) {:.1f} ms = {:.2f}x onnxruntime FP32; OpenVINO INT8 ours vs "
                         "NNCF peer {}".format(group, best["format_label"], best["precision"],
                                               best["latency_ms"]["p50"], base / best["latency_ms"]["p50"],
                                               _fmt(r["openvino_ours_vs_nncf_end_to_end"], "{:.2f}x")))
    return "\n".join(lines)


def openvino_table(results: dict) -> str:
    """The fastest-CPU-path targets per group: ours (OpenVINO-shaped INT8, runtime head) end to end against
    onnxruntime FP32 (>= 5x) and OpenVINO + NNCF INT8 (>= 1.2x), with the rest of the OpenVINO ratios."""
    rows = results["latency"]
    lines = ["| Model | Input | Threads | fastest end to end (p50 ms) | vs onnxruntime FP32 | ours vs ONNX FP32 "
             "(target 5x) | ours vs NNCF peer (target 1.2x) | FP32 export in OpenVINO vs ONNX FP32 | OpenVINO BF16 "
             "raw vs ONNX FP32 raw | NNCF raw vs ONNX FP32 raw | Predictor / raw (OpenVINO) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in groups(rows):
        r = ratios(rows, key)
        best = fastest_end_to_end(rows, key)
        base = _p50(rows, key, "predictor_fp32")
        lines.append("| {} | {}x{} | {} | {} | {} | ".format(
            key[0], key[1][0], key[1][1], key[2],
            "{} ({}) {:.1f}".format(best["format_label"], best["precision"], best["latency_ms"]["p50"])
            if best else "-",
            _fmt(base / best["latency_ms"]["p50"] if best and base else None, "{:.2f}x"))
            + " | ".join(_fmt(r[k], "{:.2f}x") for k in (
                "openvino_ours_vs_onnx_fp32_end_to_end", "openvino_ours_vs_nncf_end_to_end",
                "openvino_fp32_export_vs_onnx_fp32_end_to_end", "openvino_bf16_vs_onnx_fp32", "nncf_vs_onnx_fp32",
                "predictor_overhead_openvino")) + " |")
    return "\n".join(lines)


def markdown(results: dict, plots: Sequence[str]) -> str:
    untrained = not results.get("miou")
    parts = [
        "# Benchmark results ({} mode)".format(results["mode"]), "",
        "Generated by `{}` from {} to {} (UTC). Every figure below was measured in that one run.".format(
            results["command"], results["started"], results["finished"]), "",
    ]
    if results.get("interrupted"):
        parts += ["**This run stopped early ({}); only the groups below were measured.**".format(
            results["interrupted"]), ""]
    parts += [
        "- Host: " + host_line(results),
        "- Host load (1-minute load average after each timed group, on {} cores): {}".format(
            results["host"]["cores"], load_range(results)),
        "- Versions: " + ", ".join("{} {}".format(k, v) for k, v in sorted(results["versions"].items())),
        "- Weights: " + ("random initialisation (speed does not depend on the weights; mIoU is {})".format(
            NA_UNTRAINED) if untrained else "trained: {}; data: {}".format(results["trained_weights"],
                                                                            results["data_root"])),
        "- QAT checkpoint: " + (", ".join(results["qat_weights"].values()) if results["qat_weights"]
                                else "none given, so no Paddle INT8 (oneDNN) rows"),
        "- Method: within each (model, input, threads) group every format runs once per round, in an order that "
        "rotates from round to round, "
        "after 2 warm-up rounds; latency is wall time of one `run` on a prepared tensor (the Predictor row: "
        "BGR frame in, mask out); p50/p99 over the rounds; FPS = 1000 / p50 (`fps_p50`; the JSON also has "
        "`fps_mean` = 1000 / mean). MACs counted on the network (`count_macs`); % of peak = achieved MAC/s over the "
        "best same-thread GEMM rate below for the row's precision (FP32: onnxruntime or OpenVINO MatMul, or numpy "
        "sgemm at all cores if higher; BF16: OpenVINO MatMul BF16; INT8: onnxruntime MatMulInteger or OpenVINO's "
        "Q/DQ MatMul). Peaks "
        "are best-of-N; onnxruntime sessions use the runtime backend's options with thread spinning off, and Paddle's "
        "OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE, KMP_BLOCKTIME=0): a pool left spinning after its "
        "run takes the cores from the next subject of the round. The lowres_logits rows are "
        "the same weights exported with `--output-op lowres_logits` (the graph stops before the final 8x "
        "upsample; the Predictor upsamples and takes the argmax only at class boundaries, exactly); their "
        "time includes that post-processing, so they are compared with the Predictor rows.", "",
        "## Host peak (same run)", "", peak_table(results), "",
    ]
    if results.get("steadiness"):
        parts += [describe(results["steadiness"]) + " A multi-threaded run that splits its work evenly goes at its "
                  "slowest CPU's pace, so where CPUs are often slow the multi-thread ratios below swing between "
                  "two modes.", ""]
    parts += [
        "## Key ratios (p50, same interleaved loop; >1 means the first named is faster)", "", ratio_table(results), "",
        "## Head: graph argmax vs runtime upsample + argmax (`--output-op lowres_logits`), end to end", "",
        head_table(results), "",
    ]
    if any(row["format"].startswith(("openvino", "predictor_openvino")) for row in results["latency"]):
        parts += ["## OpenVINO and the fastest CPU path (end to end: BGR frame in, mask out; p50)", "",
                  "Ours = the `lowres_logits` export quantized for OpenVINO (export/openvino_int8.py) with the runtime "
                  "head; the peer = OpenVINO on NNCF's `nncf.quantize` of the default (argmax) FP32 ONNX, same "
                  "calibration frames. BF16 rows hold against the BF16 peak, INT8 rows against the best INT8 peak.",
                  "", openvino_table(results), ""]
    parts += ["## Latency, FPS and efficiency", "", latency_table(results), ""]
    if results.get("profile"):
        parts += ["## Where the time goes (onnxruntime profiler, per operator type)", "", profile_table(results), ""]
    if "gpu" in results["mode"]:
        from gpu import ANCHORS

        parts += ["## Published GPU figures (not measured here, for comparison)", "", "| Source | Figures |",
                  "|---|---|"] + ["| {} | {} |".format(*anchor) for anchor in ANCHORS] + [""]
    if results.get("quantization"):
        parts += ["## What onnxruntime runs for each INT8 model (optimized graph)", "", graph_table(results), ""]
    if results.get("notes"):
        parts += ["Notes: " + "; ".join("{}: {}".format(k, v) for k, v in results["notes"].items()), ""]
    if results.get("bf16"):
        parts += ["## BF16 through oneDNN (Paddle Inference `enable_mkldnn_bfloat16`)", "", bf16_table(results), ""]
    if "training" in results:
        parts += ["## Training throughput (CPU)", "", training_table(results), ""]
    parts += ["## Plots", ""] + ["![{0}]({0})".format(os.path.basename(p)) for p in plots]
    return "\n".join(parts) + "\n"


def plot_latency(results: dict, path: str) -> None:
    """FPS per format, one panel per (input, threads), models side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = results["latency"]
    panels = sorted({(tuple(r["hw"]), r["threads"]) for r in rows})
    formats = [f for f in dict.fromkeys(r["format"] for r in rows)]
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(10, 2.2 * len(models) + 6), 3.6 * len(panels)),
                             squeeze=False)
    width = 0.8 / len(formats)
    for ax, (hw, threads) in zip(axes[:, 0], panels):
        for i, fmt in enumerate(formats):
            fps = []
            for model in models:
                row = only(rows, model=model, hw=list(hw), threads=threads, format=fmt)
                fps.append(row["fps_p50"] if row else 0.0)
            label = next(r["format_label"] for r in rows if r["format"] == fmt)
            ax.bar(np.arange(len(models)) + i * width, fps, width, label=label)
        ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2)
        ax.set_xticklabels(models)
        ax.set_ylabel("FPS (1000 / p50)")
        ax.set_title("{}x{}, {} thread(s)".format(hw[0], hw[1], threads), fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(host_line(results)[:110], fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)


def plot_efficiency(results: dict, path: str) -> None:
    """Achieved MAC/s as a fraction of the measured peak, per format, at the most threads and largest input."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["latency"]
    threads = max(r["threads"] for r in rows)
    hw = max((tuple(r["hw"]) for r in rows), key=lambda s: s[0] * s[1])
    chosen = [r for r in rows if r["threads"] == threads and tuple(r["hw"]) == hw
              and not r["format"].startswith("predictor")]  # those include pre/post-processing
    labels = ["{}\n{}".format(r["model"], r["format_label"].replace(" (", "\n(")) for r in chosen]
    values = [100 * (efficiency(results, r) or 0.0) for r in chosen]
    colours = ["#cc6677" if r["precision"] == "int8" else "#4477aa" for r in chosen]
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(chosen)), 4.5))
    ax.bar(range(len(chosen)), values, color=colours)
    ax.set_xticks(range(len(chosen)))
    ax.set_xticklabels(labels, fontsize=6)
    ax.set_ylabel("% of measured GEMM peak (blue FP32, red INT8)")
    ax.set_title("{}x{}, {} threads - {}".format(hw[0], hw[1], threads, host_line(results)[:80]), fontsize=8)
    fig.tight_layout()
    _save_fig(fig, path)


def _save_fig(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)


def write(results: dict, out: str) -> List[str]:
    """README.md and the plots into `out`; returns the files written."""
    plots = []  # type: List[str]
    if results.get("latency"):
        for name, draw in (("latency.png", plot_latency), ("efficiency.png", plot_efficiency)):
            draw(results, os.path.join(out, name))
            plots.append(os.path.join(out, name))
    readme = os.path.join(out, "README.md")
    write_text(readme, markdown(results, plots))
    return [readme] + plots
