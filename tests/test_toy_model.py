"""The bundled toy model and its discriminator: offline loading, `mpcore run` defaults, the effect benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner

from mpcore.cli.main import build_cli
from mpcore.io.video import read_video

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle moving right over a striped background"


def test_bundled_files_are_small_and_complete():
    from mp_plugin_animatediff.toy import toy_folder, toy_paths

    for path in toy_paths().values():
        assert path.exists(), path
    assert (toy_folder() / "discriminator.json").is_file()
    total = sum(p.stat().st_size for p in toy_folder().rglob("*") if p.is_file())
    assert total < 25 * 2**20, f"bundled toy data is {total / 2**20:.1f} MiB"


def test_toy_loads_offline_through_the_real_path_and_keeps_clip_vocabulary():
    from mp_plugin_animatediff.backbone import load

    backbone = load(model="toy")
    info = backbone.describe()
    assert info["model"] == "toy" and info["random_init"] is False
    tokenizer = backbone.pipe.tokenizer
    assert len(tokenizer) == 49408
    assert tokenizer.tokenize("authentic") == ["authentic</w>"]  # the init word is one real CLIP token
    assert backbone.vae_scale_factor == 4 and backbone.latent_channels == 4
    assert all(p.dtype == torch.float32 for p in backbone.unet.parameters())


def test_run_without_backbone_or_model_uses_the_toy_model(tmp_path):
    out = tmp_path / "fox.mp4"
    result = CliRunner().invoke(build_cli(), ["run", "--prompt", PROMPT, "--guidance", "none", "--out", str(out),
                                              "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "bundled 'toy' model" in result.output
    frames = read_video(out)
    assert frames.shape == (8, 32, 32, 3)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["backbone"]["model"] == "toy" and manifest["backbone"]["name"] == "animatediff"
    assert manifest["warnings"] == []
    # the sample is not noise: neighbouring frames are far more alike than unrelated noise frames
    video = torch.from_numpy(frames).float()
    assert float((video[1:] - video[:-1]).abs().mean()) < 20.0


def test_guided_run_uses_the_bundled_discriminator_and_fast_tvl1(tmp_path):
    out = tmp_path / "guided.mp4"
    result = CliRunner().invoke(build_cli(), ["run", "--prompt", PROMPT, "--compare", "--steps", "6", "--out", str(out),
                                              "--no-progress"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["discriminator"]["path"].endswith("toy/discriminator.safetensors")
    assert manifest["flow"]["name"] == "tvl1_fast" and manifest["flow"]["warps"] == 3
    # the diagnostic's choice for the toy model: a 3-call rollout over [14, 20) of 25 steps
    assert manifest["motionprompt"]["estimate"] == "rollout" and manifest["motionprompt"]["rollout_steps"] == 3
    assert manifest["motionprompt"]["reference_opt_range"] == [28, 40]
    compare = read_video(tmp_path / "guided_compare.mp4")
    assert compare.shape[0] == 8 and compare.shape[2] > 64
    assert any(step["optimized"] and step["iterations"] for step in manifest["result"]["trace"])


def test_real_backbone_still_needs_its_own_weights(tmp_path):
    """`--backbone animatediff` alone means the real model, not the toy one."""
    result = CliRunner().invoke(build_cli(), ["run", "--backbone", "animatediff", "--model", str(tmp_path / "none"),
                                              "--prompt", "x", "--guidance", "none", "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code != 0 and "not found" in result.output


def test_effect_benchmark_smoke(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_effect.py"), "--smoke", "--work",
                             str(tmp_path / "work"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "bench_effect_smoke.json").read_text())
    assert summary["n_pairs"] == 2
    assert summary["split"] == "development" and [a["name"] for a in summary["arms"]] == ["guided", "flowmo"]
    metrics = summary["comparisons"]["guided"]["metrics"]
    for name in ("flow_warp_error", "temporal_flickering", "presence", "fidelity", "color_drift"):
        assert name in metrics and metrics[name]["n"] >= 1
        low, high = metrics[name]["ci"]
        assert low <= metrics[name]["diff"] <= high
    assert summary["real_reference"]["presence"] == 1.0
    assert set(summary["gates"]["guided"]) == {"over_iterations", "over_range", "passed"}
    assert summary["gates"]["guided"]["over_iterations"]["n"] == 2  # both guided videos' traces were read
    assert "flowmo" not in summary["gates"] and summary["decisions"] == {}  # no rule applied to development
    assert (tmp_path / "out" / "bench_effect_smoke.md").read_text().count("DEVELOPMENT split") == 1
