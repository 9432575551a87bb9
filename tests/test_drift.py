"""Token drift (the paper's Fig. 4): the per-step cosine in the trace, curves, the top/bottom split, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from mpcore.analysis.drift import DriftError, drift_curves, load_manifests, match_values, plot_drift, split_top_bottom
from mpcore.cli.drift import drift
from mpcore.io.manifest import build_manifest, write_json_atomic

STEPS = 6


@pytest.fixture(scope="module")
def guided_runs(tmp_path_factory):
    """Three real guided runs of the tiny model (seeds 0-2), written as run manifests like `mpcore run`'s."""
    from mpcore.testing import DifferenceFlow, LinearDiscriminator
    from mp_plugin_animatediff.backbone import load

    from mp_plugin_animatediff import PAPER_MOTIONPROMPT_DEFAULTS
    from mpcore.config import MotionPromptConfig, SamplerConfig
    from mpcore.motionprompt import MotionPrompt
    from mpcore.sampling import sample

    folder = tmp_path_factory.mktemp("runs")
    motion = MotionPromptConfig(**{**PAPER_MOTIONPROMPT_DEFAULTS, "opt_range": (1, 3), "iterations": 2})
    paths = []
    for seed in range(3):
        backbone = load("tiny", seed=0)
        sampler = SamplerConfig(steps=STEPS, frames=4, height=32, width=32, seed=seed, cfg_scale=7.5)
        guidance = MotionPrompt(motion, DifferenceFlow(), LinearDiscriminator())
        result = sample(backbone, "a fox", sampler, guidance=guidance, progress=False)
        name = f"p0000_s{seed:04d}"
        manifest = build_manifest(prompt="a fox", seed=seed, result=result.guidance,
                                  outputs={"video": str(folder / f"{name}.mp4"), "manifest": str(folder / f"{name}.json")})
        paths.append(write_json_atomic(manifest, folder / f"{name}.json"))
    # a baseline-only manifest and a generate summary in the same folder are skipped
    write_json_atomic(build_manifest(prompt="a fox", seed=9, result=None, outputs={"video": str(folder / "base.mp4")}),
                      folder / "base.json")
    write_json_atomic({"settings": {}, "items": []}, folder / "generate.json")
    return folder, paths


def fake_manifest(cosines: list[float], video: str = "v.mp4", opt_range=(1, 3)) -> dict:
    trace = [{"step": i, "optimized": opt_range[0] <= i < opt_range[1], "cosine": [c]} for i, c in enumerate(cosines)]
    return {"mpcore_manifest_version": 1, "outputs": {"video": video},
            "result": {"opt_range": list(opt_range), "trace": trace}}


def test_trace_records_the_cosine_at_every_step(guided_runs):
    _, paths = guided_runs
    for path in paths:
        result = json.loads(path.read_text())["result"]
        trace = result["trace"]
        assert [e["step"] for e in trace] == list(range(STEPS))
        cos = [e["cosine"][0] for e in trace]
        assert cos[0] == pytest.approx(1.0, abs=1e-6)  # before the range: the init embedding
        assert cos[1] < 1.0 and cos[2] != cos[1]  # optimized steps 1 and 2 move the token
        assert cos[3:] == [cos[2]] * (STEPS - 3)  # after the range it stays where it ended
        assert result["final_cosine"][0] == pytest.approx(cos[-1])


def test_drift_curves_shapes_and_values(guided_runs):
    _, paths = guided_runs
    manifests = [json.loads(p.read_text()) for p in paths]
    steps, mean, std, per_run = drift_curves(manifests)
    assert steps.tolist() == list(range(STEPS))
    assert mean.shape == std.shape == (STEPS,) and per_run.shape == (3, STEPS)
    assert mean[0] == pytest.approx(1.0) and std[0] == pytest.approx(0.0, abs=1e-6)
    assert np.allclose(mean, per_run.mean(axis=0)) and np.allclose(std, per_run.std(axis=0))


def test_drift_curves_by_hand_and_errors():
    a, b = fake_manifest([1.0, 0.9, 0.8, 0.8]), fake_manifest([1.0, 0.7, 0.6, 0.6])
    b["result"]["trace"][3]["cosine"] = [None]  # a missing value is ignored, not a failure
    steps, mean, std, per_run = drift_curves([a, b])
    assert mean.tolist() == pytest.approx([1.0, 0.8, 0.7, 0.8])
    assert std.tolist() == pytest.approx([0.0, 0.1, 0.1, 0.0])
    assert math.isnan(per_run[1, 3])
    two_tokens = fake_manifest([1.0, 0.9])
    two_tokens["result"]["trace"][1]["cosine"] = [0.9, 0.7]  # several tokens: their mean
    assert drift_curves([two_tokens])[1].tolist() == pytest.approx([1.0, 0.8])
    with pytest.raises(DriftError, match="different sampling steps"):
        drift_curves([a, fake_manifest([1.0, 0.9])])
    with pytest.raises(DriftError, match="no guided"):
        drift_curves([{"result": None}])


def test_split_top_bottom_and_matching(tmp_path):
    assert split_top_bottom([0.1, 0.9, None, 0.5, 0.7]) == ([1, 4], [3, 0])
    assert split_top_bottom([0.1, 0.9, 0.5, 0.7], top_fraction=0.25) == ([1], [0])
    with pytest.raises(DriftError, match="at least 2"):
        split_top_bottom([0.3, None])
    manifests = [(tmp_path / "x.json", fake_manifest([1.0], video=str(tmp_path / "x.mp4"))),
                 (tmp_path / "y.json", fake_manifest([1.0], video="elsewhere/y.mp4")),
                 (tmp_path / "z.json", fake_manifest([1.0], video="z.mp4"))]
    # x by full path, y by a unique stem, z's stem is ambiguous (baseline and guided both named z)
    values = match_values(manifests, {str(tmp_path / "x.mp4"): 0.5, "other/y.mp4": 0.7,
                                      "baseline/z.mp4": 0.1, "guided/z.mp4": 0.2})
    assert values == [0.5, 0.7, None]


def test_plot_drift_all_runs_and_split(guided_runs, tmp_path):
    from matplotlib.image import imread

    folder, paths = guided_runs
    summary = plot_drift([folder], tmp_path / "drift.png")
    assert summary["runs"] == 3 and len(summary["skipped"]) == 2
    assert list(summary["curves"]) == ["all runs"]
    assert imread(tmp_path / "drift.png").shape[0] > 100
    split = {str(folder / "p0000_s0000.mp4"): 0.9, "p0000_s0001": 0.1, str(folder / "p0000_s0002.mp4"): 0.5}
    summary = plot_drift(paths, tmp_path / "split.png", split_by=split, metric="fake")
    curves = summary["curves"]
    assert list(curves) == ["top 50% by fake", "bottom 50% by fake"]
    assert curves["top 50% by fake"]["runs"] == [str(paths[0])]
    assert curves["bottom 50% by fake"]["runs"] == [str(paths[1])]
    assert (tmp_path / "split.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".*tmp*")), "temp files left behind"


def test_load_manifests_skips_non_guided(guided_runs):
    folder, paths = guided_runs
    guided, skipped = load_manifests([folder, paths[0]])  # a file given twice counts once
    assert [p.name for p, _ in guided] == [p.name for p in paths]
    assert {p.name: reason for p, reason in skipped} == {
        "base.json": "no guided result (baseline-only run)",
        "generate.json": "a generate summary, not a run manifest"}


def test_drift_cli(guided_runs, tmp_path):
    folder, paths = guided_runs
    runner = CliRunner()
    out = tmp_path / "d.png"
    result = runner.invoke(drift, [str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "skipped 2" in result.output and "3 guided run(s)" in result.output and out.stat().st_size > 1000

    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({
        "videos": {str(folder / f"p0000_s{s:04d}.mp4"): {"temporal_flickering": v, "dynamic_degree": None}
                   for s, v in enumerate([0.95, 0.97, 0.99])},
        "mean": {}, "unavailable": {"dynamic_degree": "no RAFT weights"},
        "metrics": {"temporal_flickering": {"vbench": True, "description": ""},
                    "dynamic_degree": {"vbench": True, "description": ""}}}))
    out = tmp_path / "split.png"
    result = runner.invoke(drift, [str(folder), "--out", str(out), "--eval", str(eval_json),
                                   "--metric", "temporal_flickering"])
    assert result.exit_code == 0, result.output
    assert "top 50% by temporal_flickering: 1 run(s)" in result.output and out.stat().st_size > 1000

    result = runner.invoke(drift, [str(folder), "--out", str(out), "--eval", str(eval_json), "--metric", "nope"])
    assert result.exit_code != 0
    assert "'nope' is not in" in result.output and "temporal_flickering, dynamic_degree" in result.output
    result = runner.invoke(drift, [str(folder), "--out", str(out), "--eval", str(eval_json), "--metric", "dynamic_degree"])
    assert result.exit_code != 0 and "no RAFT weights" in result.output
    result = runner.invoke(drift, [str(folder), "--out", str(out), "--metric", "temporal_flickering"])
    assert result.exit_code != 0 and "--metric needs --eval" in result.output

    empty = tmp_path / "empty"
    empty.mkdir()
    write_json_atomic(build_manifest(prompt="a", seed=0, result=None), empty / "base.json")
    result = runner.invoke(drift, [str(empty), "--out", str(tmp_path / "e.png")])
    assert result.exit_code != 0 and "no guided run manifests" in result.output and "skipped 1" in result.output
