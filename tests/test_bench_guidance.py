"""Smoke test of benchmarks/bench_guidance.py: tiny model, 4 steps, baseline and fast, into a tmp dir."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_guidance.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_guidance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_guidance_smoke(tmp_path):
    bench = load_bench()
    summary = bench.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])

    json_path = tmp_path / "bench_guidance_tiny-smoke_cpu.json"
    assert Path(summary["json_path"]) == json_path
    data = json.loads(json_path.read_text())
    rows = {row["mode"]: row for row in data["rows"]}
    assert set(rows) == {"baseline", "fast"}
    for row in rows.values():
        assert row["wall_s"] > 0
        assert row["steps"] == 4 and row["frames"] == 8 and row["size"] == [64, 64]
        assert row["peak_mem_bytes"] > 0 and row["peak_increase_bytes"] >= 0
        assert row["device"] == "cpu" and row["torch"] and row["mpcore"] and row["timestamp"]
        assert "git_sha" in row
    assert rows["baseline"]["opt_range"] is None
    fast = rows["fast"]
    assert fast["iterations"] == 3 and fast["checkpoint_denoiser"] is False
    assert fast["opt_range"] == [0, 1]  # the paper's (4, 15) at 50 steps, scaled to 4 steps
    assert fast["skipped_updates"] == 0  # gradients reached the token
    ratio = data["ratios"]["fast/baseline"]
    assert ratio["time"] > 0 and ratio["mem_total"] > 0
    assert {t["mode"] for t in data["targets"]} == {"fast", "lean"}
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))

    md = (tmp_path / "bench_guidance.md").read_text()
    assert md.startswith("# MotionPrompt guidance cost")
    table_rows = [line for line in md.splitlines() if line.startswith("| tiny (smoke) | cpu |")]
    assert [line.split("|")[3].strip() for line in table_rows] == ["baseline", "fast"]
