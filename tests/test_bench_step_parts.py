"""Smoke test of benchmarks/bench_step_parts.py: the tiny AnimateDiff at 8x64x64, one repeat, into a tmp dir;
the cost model's structure and its predictions checked against the timed parts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_step_parts  # noqa: E402

MODES = {"fast", "lean", "fast-stale", "rollout", "rollout-stale", "rollout-last"}
K, N, S, G = 3, 3, 50, 11  # the paper's AnimateDiff settings: iterations, rollout calls, steps, range [4, 15)


def test_bench_step_parts_smoke(tmp_path):
    threads = torch.get_num_threads()
    try:
        result = bench_step_parts.main(["--smoke", "--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # main sets the process's threads; the rest of the session keeps its own

    path = tmp_path / "bench_step_parts_tiny-smoke_cpu_1t.json"
    assert Path(result["json_path"]) == path
    data = json.loads(path.read_text())
    assert data["config"] == "tiny" and data["smoke"] is True and data["repeats"] == 1
    medians = {row["part"]: row["median_s"] for row in data["rows"]}
    assert list(medians)[:5] == ["cfg_forward_batch2", "forward_batch1", "cond_forward_backward",
                                 "decode2_forward_backward", "raft_disc_forward_backward"]  # committed results' names
    assert {"cfg_batch2_forward_backward", "cfg_batch2_forward_backward_ckpt", "cond_forward_backward_ckpt",
            "decode2_forward_backward_ckpt"} <= set(medians)
    assert all(row["median_s"] > 0 and len(row["all_s"]) == 1 for row in data["rows"])

    cost = data["cost_model"]
    assert (cost["steps"], cost["guided_steps"], cost["opt_range"], cost["iterations"], cost["rollout_calls"]) == \
        (S, G, [4, 15], K, N)
    modes = cost["modes"]
    assert set(modes) == MODES
    calls = {mode: dict(map(tuple, m["calls"])) for mode, m in modes.items()}
    # the call structure of a guided step
    assert calls["fast"] == {"forward_batch1": 2, "cond_forward_backward": K, "decode2_forward_backward": K,
                             "raft_disc_forward_backward": K}
    assert calls["fast-stale"] == {**calls["fast"], "forward_batch1": 1}
    assert calls["rollout"]["cfg_batch2_forward_backward_ckpt"] == K * (N - 1)
    assert calls["rollout"]["cond_forward_backward_ckpt"] == K and "cond_forward_backward" not in calls["rollout"]
    assert calls["rollout-stale"] == {**calls["rollout"], "forward_batch1": 1}
    assert calls["rollout-last"] == {**calls["fast"], "forward_batch1": 4, "cfg_forward_batch2": N - 2}
    assert calls["lean"]["cond_forward_backward_ckpt"] == K

    # each step is the sum of its parts; the video ratio follows from it
    unguided = medians["cfg_forward_batch2"]
    for mode, m in modes.items():
        assert m["step_s"] == pytest.approx(sum(medians[part] * count for part, count in calls[mode].items()))
        assert sum(m["shares"].values()) == pytest.approx(1.0)
        assert m["video_ratio"] == pytest.approx(((S - G) * unguided + G * m["step_s"]) / (S * unguided))
        assert 1 < m["floor_video_ratio"] < m["video_ratio"]
    assert modes["fast-stale"]["step_s"] == pytest.approx(modes["fast"]["step_s"] - medians["forward_batch1"])
    ratio = {mode: m["video_ratio"] for mode, m in modes.items()}
    assert ratio["rollout"] > ratio["rollout-last"] >= ratio["fast"] > ratio["fast-stale"] > 1
    assert ratio["rollout"] > ratio["rollout-stale"]
