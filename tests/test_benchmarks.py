"""Smoke test of the benchmark suite's building blocks at a tiny size (the `--quick` path, shrunk):
build every variant of a random 23-slim, time them interleaved, write the report."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

HW = (64, 128)


@pytest.fixture(scope="module")
def suite_results(tmp_path_factory):
    import peak
    import run as suite
    import steadiness
    from ddrnet.runtime.bench import host_info

    work = str(tmp_path_factory.mktemp("bench"))
    weights = suite.variants.random_checkpoint("ddrnet23_slim", os.path.join(work, "weights"))
    pruned = suite.variants.pruned_checkpoint(weights, os.path.join(work, "weights", "pruned"))
    art = suite.build_artifacts("ddrnet23_slim", HW, weights, pruned, None, None, 2, os.path.join(work, "art"))
    macs = {"full": suite.variants.model_macs(weights, HW), "pruned": suite.variants.model_macs(pruned, HW)}
    frame = suite.variants.calibration_frames(1, HW, None)[0]
    rows = suite.measure_for(suite.subjects_for(art, 1, frame, macs), budget_s=0.5, min_rounds=3, max_rounds=5)
    profile = {"ddrnet23_slim@64x128": suite.profile_models(art, frame, 1, runs=2)}
    results = {"command": "pytest", "mode": "test", "started": "-", "finished": "-", "host": host_info(),
               "versions": {}, "trained_weights": {}, "qat_weights": {}, "data_root": None,
               "peak": peak.measure_peaks([1], n=256, reps=2), "latency": rows, "miou": {}, "notes": {},
               "bf16": {}, "quantization": {"ddrnet23_slim": art.quantization}, "profile": profile,
               "steadiness": steadiness.check(1.0, window_s=0.5)}
    out = str(tmp_path_factory.mktemp("results"))
    written = suite.report.write(results, out)
    return {"rows": rows, "macs": macs, "quantization": art.quantization, "results": results, "out": out,
            "written": written}


def test_every_format_is_timed_with_real_samples(suite_results):
    import openvino

    from ddrnet.runtime.openvino_backend import has_bf16

    rows = suite_results["rows"]
    openvino_rows = ["openvino_fp32"] + (["openvino_bf16"] if has_bf16(openvino.Core()) else []) + [
        "openvino_int8_ours", "openvino_int8_nncf", "predictor_openvino_fp32", "predictor_openvino_int8_nncf",
        "predictor_openvino_lowres", "predictor_openvino_int8_lowres"]
    assert [r["format"] for r in rows] == ["paddle_fp32", "onnx_fp32", "predictor_fp32", "onnx_int8_ours",
                                           "onnx_int8_quantize_static", "onnx_fp32_pruned30", "predictor_int8_ours",
                                           "predictor_fp32_lowres", "predictor_int8_lowres"] + openvino_rows
    for row in rows:
        assert 3 <= row["iterations"] <= 5
        assert 0 < row["latency_ms"]["min"] <= row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
        assert row["fps_p50"] == pytest.approx(1000.0 / row["latency_ms"]["p50"])
        assert row["fps_mean"] == pytest.approx(1000.0 / row["latency_ms"]["mean"])
    by_format = {r["format"]: r for r in rows}
    # OpenVINO records the precision it ran the float layers in; INT8 models stay int8
    assert by_format["openvino_fp32"]["inference_precision"] == "fp32"
    assert by_format["predictor_openvino_int8_lowres"]["precision"] == "int8"
    assert by_format["predictor_openvino_fp32"]["precision"] in ("fp32", "bf16")


def test_our_int8_runs_every_convolution_as_an_integer_kernel(suite_results):
    ours = suite_results["quantization"]["ours"]["optimized_graph"]
    assert ours["float_convs"] == 0 and ours["op_histogram"].get("QLinearConv", 0) > 0
    assert "float_convs" in suite_results["quantization"]["quantize_static"]["optimized_graph"]


def test_pruning_cuts_macs(suite_results):
    macs = suite_results["macs"]
    assert 0.3 < macs["pruned"] / macs["full"] < 0.7  # 30 % of channels off both sides of a conv: ~0.49


def test_report_has_every_section_and_only_measured_ratios(suite_results):
    import report

    text = open(os.path.join(suite_results["out"], "README.md")).read()
    for heading in ("## Host peak", "## Key ratios", "## Head:", "## OpenVINO and the fastest CPU path",
                    "## Latency, FPS and efficiency", "## Where the time goes", "## What onnxruntime runs"):
        assert heading in text
    assert report.NA_UNTRAINED in text
    assert "CPU steadiness (2 windows of 0.5 s" in text
    assert all(os.path.getsize(p) > 0 for p in suite_results["written"])
    key = ("ddrnet23_slim", HW, 1)
    r = report.ratios(suite_results["rows"], key)
    assert r["paddle_int8_qat_vs_paddle_fp32"] is None  # no QAT checkpoint, so no figure
    fp32 = next(x for x in suite_results["rows"] if x["format"] == "onnx_fp32")["latency_ms"]["p50"]
    ours = next(x for x in suite_results["rows"] if x["format"] == "onnx_int8_ours")["latency_ms"]["p50"]
    assert r["int8_ours_vs_onnx_fp32"] == pytest.approx(fp32 / ours)
    assert r["int8_vs_fp32_lowres_end_to_end"] > 0 and r["lowres_gain_fp32"] > 0
    ours = next(x for x in suite_results["rows"] if x["format"] == "predictor_openvino_int8_lowres")
    peer = next(x for x in suite_results["rows"] if x["format"] == "predictor_openvino_int8_nncf")
    assert r["openvino_ours_vs_nncf_end_to_end"] == pytest.approx(peer["latency_ms"]["p50"] / ours["latency_ms"]["p50"])
    assert report.fastest_end_to_end(suite_results["rows"], key)["format"].startswith("predictor")


def test_profile_splits_the_time_by_operator(suite_results):
    """onnxruntime's profiler: shares add up, the INT8 model runs QLinearConv, the FP32 one Conv, and
    the lowres_logits models have no head ArgMax."""
    profile = suite_results["results"]["profile"]["ddrnet23_slim@64x128"]
    for name, prof in profile.items():
        assert prof["runs"] == 2 and prof["kernel_ms_per_run"] > 0
        assert sum(o["share"] for o in prof["ops"]) == pytest.approx(1.0)
        ops = {o["op"] for o in prof["ops"]}
        assert ("QLinearConv" in ops) == ("int8" in name) and ("ArgMax" in ops) == ("lowres" not in name)


def test_peak_measures_every_precision(suite_results):
    import report

    p = suite_results["results"]["peak"]
    assert p["numpy_sgemm_gmacs"] > 0 and p["fp32_gmacs"]["1"] > 0 and p["int8_gmacs"]["1"] > 0
    assert p["openvino"]["fp32"]["1"] > 0 and p["openvino"]["int8"]["1"] > 0
    json.dumps(p)  # what run.py writes
    results = suite_results["results"]
    # each precision is held against its own limit: INT8 the best integer rate, BF16 OpenVINO's BF16 one
    int8 = dict(suite_results["rows"][0], precision="int8", threads=1)
    assert report.efficiency(results, int8) == pytest.approx(report.achieved_gmacs(int8) / max(
        p["int8_gmacs"]["1"], p["openvino"]["int8"]["1"]))
    if "bf16" in p["openvino"]:
        bf16 = dict(int8, precision="bf16")
        assert report.efficiency(results, bf16) == pytest.approx(
            report.achieved_gmacs(bf16) / p["openvino"]["bf16"]["1"])


def test_steadiness_times_every_cpu_of_the_affinity_at_once():
    import steadiness

    series = steadiness.measure(1.0, window_s=0.5)
    assert list(series) == [str(cpu) for cpu in sorted(os.sched_getaffinity(0))]
    assert all(len(v) == 2 and min(v) > 0 for v in series.values())


def test_steadiness_counts_slow_windows_against_the_fastest():
    import steadiness

    # fastest window 1.0 ms: CPU 0 is slow in window 2 (2.0 > 1.5), CPU 1 in window 1 (1.6)
    result = steadiness.summarise({"0": [1.0, 1.0, 2.0, 1.0], "1": [1.1, 1.6, 1.0, 1.0]}, window_s=0.5)
    assert result["per_cpu"] == {"0": {"median_ms": 1.0, "slow_share": 0.25},
                                 "1": {"median_ms": 1.05, "slow_share": 0.25}}
    assert result["all_fast_share"] == 0.5 and result["windows"] == 4
    assert result["slowest_over_fastest_p50"] == pytest.approx(1.35)  # median of 1.1, 1.6, 2.0, 1.0
    assert "CPU 0 25%, CPU 1 25%" in steadiness.describe(result)


@pytest.mark.parametrize("argv, message", [(["--seconds", "0"], "--seconds and --window must be positive"),
                                           (["--seconds", "1", "--window", "2"], "window no longer than the run"),
                                           (["--json", "/proc/steady.json"], "cannot write --json")])
def test_steadiness_refuses_bad_arguments_in_one_line_before_measuring(argv, message, capsys, monkeypatch):
    import steadiness

    monkeypatch.setattr(steadiness, "measure", lambda *a: pytest.fail("measured despite a bad argument"))
    assert steadiness.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
