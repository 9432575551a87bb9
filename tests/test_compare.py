"""Paired comparison: hand-checkable bootstrap cases, seeding, None and ties, written files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mpcore.analysis.compare import bootstrap_ci, paired_comparison, write_comparison

METRICS = {
    "temporal_flickering": {"vbench": True, "description": "VBench temporal flickering"},
    "flow_smoothness": {"vbench": False, "description": "our substitute for motion smoothness"},
}


def results(base_values: dict[str, list], guided_values: dict[str, list], unavailable=None):
    """Two eval results over n videos b{i}.mp4 / g{i}.mp4 and their pairs."""
    n = len(next(iter(base_values.values())))
    base = {"videos": {f"b{i}.mp4": {m: v[i] for m, v in base_values.items()} for i in range(n)},
            "mean": {}, "unavailable": dict(unavailable or {}), "metrics": dict(METRICS)}
    guided = {"videos": {f"g{i}.mp4": {m: v[i] for m, v in guided_values.items()} for i in range(n)},
              "mean": {}, "unavailable": dict(unavailable or {}), "metrics": dict(METRICS)}
    return base, guided, [(f"b{i}.mp4", f"g{i}.mp4") for i in range(n)]


def test_constant_difference_gives_a_point_interval_and_full_win_rate():
    base_vals = [0.5, 0.7, 0.2, 0.9]
    base, guided, pairs = results({"temporal_flickering": base_vals},
                                  {"temporal_flickering": [v + 0.1 for v in base_vals]})
    row = paired_comparison(base, guided, pairs, resamples=500)["metrics"]["temporal_flickering"]
    assert row["n"] == 4
    assert row["baseline"] == pytest.approx(0.575) and row["guided"] == pytest.approx(0.675)
    assert row["diff"] == pytest.approx(0.1)
    assert row["ci"] == pytest.approx([0.1, 0.1])
    assert row["win_rate"] == 1.0 and (row["wins"], row["ties"], row["losses"]) == (4, 0, 0)
    assert row["vbench"] is True


def test_hand_checked_mixed_case():
    # differences +0.2, -0.1, 0.0, +0.3: mean 0.1, wins 2, ties 1 (half), losses 1 -> 2.5 / 4
    base, guided, pairs = results({"temporal_flickering": [0.5, 0.5, 0.5, 0.5]},
                                  {"temporal_flickering": [0.7, 0.4, 0.5, 0.8]})
    row = paired_comparison(base, guided, pairs, resamples=2000)["metrics"]["temporal_flickering"]
    assert row["diff"] == pytest.approx(0.1)
    assert row["win_rate"] == pytest.approx(0.625)
    assert (row["wins"], row["ties"], row["losses"]) == (2, 1, 1)
    low, high = row["ci"]
    assert -0.1 <= low < 0.1 < high <= 0.3  # inside the range of resampled means


def test_bootstrap_matches_a_loop_implementation():
    d = np.array([0.3, -0.2, 0.05, 0.4, -0.1])
    rng = np.random.default_rng(7)
    means = np.array([d[rng.integers(0, d.size, size=d.size)].mean() for _ in range(300)])
    expected = np.percentile(means, [2.5, 97.5])
    assert bootstrap_ci(d, seed=7, resamples=300) == pytest.approx(tuple(expected))


def test_seeded_reproducible_and_seed_matters_on_noisy_data():
    rng = np.random.default_rng(123)
    base_vals = rng.normal(0.9, 0.05, 30).tolist()
    guided_vals = (np.array(base_vals) + rng.normal(0.01, 0.05, 30)).tolist()
    base, guided, pairs = results({"temporal_flickering": base_vals}, {"temporal_flickering": guided_vals})
    first = paired_comparison(base, guided, pairs, seed=0, resamples=1000)
    again = paired_comparison(base, guided, pairs, seed=0, resamples=1000)
    other = paired_comparison(base, guided, pairs, seed=1, resamples=1000)
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    assert first["metrics"]["temporal_flickering"]["ci"] != other["metrics"]["temporal_flickering"]["ci"]
    assert first["metrics"]["temporal_flickering"]["diff"] == other["metrics"]["temporal_flickering"]["diff"]


def test_none_values_skip_the_pair_and_all_none_is_unavailable():
    base, guided, pairs = results(
        {"temporal_flickering": [0.5, None, 0.5], "flow_smoothness": [None, None, None]},
        {"temporal_flickering": [0.6, 0.9, None], "flow_smoothness": [0.1, 0.2, 0.3]},
    )
    out = paired_comparison(base, guided, pairs, resamples=100)
    row = out["metrics"]["temporal_flickering"]
    assert row["n"] == 1 and row["skipped_pairs"] == 2
    assert row["diff"] == pytest.approx(0.1) and row["ci"] == pytest.approx([0.1, 0.1])
    assert "flow_smoothness" not in out["metrics"]
    assert "no pair" in out["unavailable"]["flow_smoothness"]


def test_unavailable_metric_keeps_its_reason():
    base, guided, pairs = results({"temporal_flickering": [0.5, 0.6], "dynamic_degree": [None, None]},
                                  {"temporal_flickering": [0.5, 0.7], "dynamic_degree": [None, None]},
                                  unavailable={"dynamic_degree": "RAFT weights not found"})
    out = paired_comparison(base, guided, pairs, resamples=100)
    assert out["unavailable"]["dynamic_degree"] == "RAFT weights not found"
    guided["unavailable"] = {}
    assert paired_comparison(base, guided, pairs)["unavailable"]["dynamic_degree"] == "baseline: RAFT weights not found"
    # all ties -> win rate 0.5
    base, guided, pairs = results({"temporal_flickering": [0.5, 0.6]}, {"temporal_flickering": [0.5, 0.6]})
    row = paired_comparison(base, guided, pairs, resamples=100)["metrics"]["temporal_flickering"]
    assert row["win_rate"] == 0.5 and row["ties"] == 2 and row["ci"] == [0.0, 0.0]


def test_missing_pair_path_is_a_clear_error():
    base, guided, pairs = results({"temporal_flickering": [0.5]}, {"temporal_flickering": [0.6]})
    with pytest.raises(ValueError, match="not in the evaluation results"):
        paired_comparison(base, guided, pairs + [("b9.mp4", "g0.mp4")])


def test_write_comparison_files(tmp_path):
    from matplotlib.image import imread

    rng = np.random.default_rng(0)
    base, guided, pairs = results(
        {"temporal_flickering": rng.uniform(0.9, 1.0, 8).tolist(), "flow_smoothness": rng.uniform(0, 10, 8).tolist(),
         "dynamic_degree": [None] * 8},
        {"temporal_flickering": rng.uniform(0.9, 1.0, 8).tolist(), "flow_smoothness": rng.uniform(0, 10, 8).tolist(),
         "dynamic_degree": [None] * 8},
        unavailable={"dynamic_degree": "weights missing"},
    )
    result = paired_comparison(base, guided, pairs, resamples=200)
    paths = write_comparison(result, tmp_path / "cmp")
    assert set(paths) == {"markdown", "png", "json"}
    assert all(p.stat().st_size > 0 for p in paths.values())
    text = paths["markdown"].read_text()
    assert "| metric | n | baseline | guided | diff | 95% CI | win rate |" in text
    assert "| temporal_flickering | 8 |" in text and "| flow_smoothness † | 8 |" in text
    assert "† not a VBench definition" in text and "our substitute" in text
    assert "- dynamic_degree: weights missing" in text
    image = imread(paths["png"])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert json.loads(paths["json"].read_text())["metrics"]["flow_smoothness"]["n"] == 8
    assert not list((tmp_path / "cmp").glob(".*tmp*")), "temp files left behind"


def test_write_comparison_with_nothing_comparable(tmp_path):
    base, guided, pairs = results({"temporal_flickering": [None]}, {"temporal_flickering": [None]})
    paths = write_comparison(paired_comparison(base, guided, pairs), tmp_path)
    assert paths["png"].stat().st_size > 0 and "no metric could be compared" in paths["markdown"].read_text()
