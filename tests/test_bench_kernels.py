"""Smoke test of benchmarks/bench_kernels.py on CPU: tiny sizes, 2 repeats, into a tmp dir (a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_kernels.py"
KERNELS = {"flow_tv", "subset_tweedie"}


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def test_bench_kernels_smoke(tmp_path):
    bench = load_bench()
    summary = bench.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])

    json_path, md_path = tmp_path / "bench_kernels_smoke_cpu.json", tmp_path / "bench_kernels_smoke_cpu.md"
    assert Path(summary["json_path"]) == json_path and Path(summary["md_path"]) == md_path
    data = json.loads(json_path.read_text())
    assert data["device"] == "cpu" and data["smoke"] is True
    assert data["sizes"] == [16, 32] and data["repeats"] == 2
    assert data["providers"] == ["torch", "triton"]  # --smoke leaves torch.compile out unless asked
    assert data["copy_bandwidth"]["gbps"] > 0
    assert set(data["byte_model"]) == KERNELS

    rows = data["rows"]
    measured = {(r["kernel"], r["size"]): r for r in rows if r["provider"] == "torch"}
    assert set(measured) == {(k, s) for k in KERNELS for s in (16, 32)}
    for row in measured.values():
        assert row["error"] is None and row["skipped"] is None
        for key in ("fwd_ms", "bwd_ms", "full_ms", "gbps", "gbps_fwd", "gbps_bwd", "bytes_fwd", "bytes_bwd"):
            assert row[key] > 0, key
        assert row["relative_to_torch"] == 1.0
        assert row["matches_reference"] is True and row["max_abs_err"] <= 1e-6
        assert row["peak_mem_bytes"] is None  # not measurable per call on CPU
        assert row["device"] == "cpu" and row["device_name"] and row["torch"] == torch.__version__
        assert row["mpcore_kernels"] and row["timestamp"] and "git_sha" in row and "triton" in row
        assert row["pct_of_copy_bw"] > 0
    # the byte model: flow_tv moves the flow 3x; subset_tweedie's backward writes both full gradients
    flow_bytes = 4 * 2 * 32 * 32 * 4
    assert measured[("flow_tv", 32)]["bytes_fwd"] + measured[("flow_tv", 32)]["bytes_bwd"] == 3 * flow_bytes + 8
    selected, full = 1 * 4 * 2 * 4 * 4, 1 * 4 * 16 * 4 * 4
    tweedie = measured[("subset_tweedie", 32)]
    assert tweedie["bytes_fwd"] == 3 * selected * 4 and tweedie["bytes_bwd"] == (selected + 2 * full) * 4

    triton_rows = [r for r in rows if r["provider"] == "triton"]
    assert len(triton_rows) == 4 and all(r["skipped"] and r["full_ms"] is None for r in triton_rows)
    assert all(t["met"] is None for t in data["targets"])  # targets are evaluated on CUDA only

    md = md_path.read_text()
    assert md.startswith("# Kernel benchmarks (bench_kernels.py)")
    assert sum(line.startswith("| flow_tv | ") for line in md.splitlines()) == 4
    for path in (json_path, md_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    assert not list(tmp_path.glob(".*.tmp"))


def test_bench_kernels_compile_failure_is_recorded(tmp_path, monkeypatch):
    bench = load_bench()

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler (simulated)")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    summary = bench.main(["--smoke", "--device", "cpu", "--out", str(tmp_path), "--kernels", "flow_tv",
                          "--sizes", "16", "--providers", "compiled"])
    rows = {r["provider"]: r for r in summary["rows"]}
    assert set(rows) == {"torch", "compiled"}  # torch is always measured: the ratios need it
    assert rows["torch"]["full_ms"] > 0
    assert rows["compiled"]["full_ms"] is None and "simulated" in rows["compiled"]["error"]
    assert "ERROR" in (tmp_path / "bench_kernels_smoke_cpu.md").read_text()
