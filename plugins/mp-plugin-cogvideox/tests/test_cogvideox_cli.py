"""`mpcore run --backbone cogvideox --model tiny` end to end (baseline, guided, compare video, manifest),
and its early errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mp_plugin_cogvideox import COGVIDEOX_MOTIONPROMPT_DEFAULTS
from mpcore import plugins
from mpcore.cli.main import build_cli
from mpcore.io.video import read_video

RUN = ["run", "--backbone", "cogvideox", "--model", "tiny", "--prompt", "a dog running on the beach", "--no-progress"]


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


def test_run_tiny_with_compare_writes_videos_and_manifest(tmp_path):
    out = tmp_path / "cog.mp4"
    result = invoke(RUN + ["--steps", "5", "-o", "iterations=1", "--compare", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_video(out).shape == (9, 32, 32, 3)  # the tiny defaults: 9 frames of 32x32
    assert read_video(tmp_path / "cog_compare.mp4").shape[2] > 2 * 32
    manifest = json.loads(out.with_suffix(".json").read_text())
    backbone = manifest["backbone"]
    assert backbone["name"] == "cogvideox" and backbone["random_init"] is True
    assert backbone["scheduler"]["class"] == "CogVideoXDDIMScheduler" and backbone["max_sequence_length"] == 32
    assert manifest["sampler"]["cfg_scale"] == 6.0 and manifest["sampler"]["frames"] == 9
    assert manifest["motionprompt"]["lr"] == COGVIDEOX_MOTIONPROMPT_DEFAULTS["lr"]
    trace = manifest["result"]["trace"]
    assert any(entry["optimized"] for entry in trace) and manifest["result"]["token_drift_l2"][0] > 0


def test_frames_must_be_one_plus_four_k_and_sizes_multiples_of_16():
    result = invoke(RUN + ["--frames", "8", "--guidance", "none"])
    assert result.exit_code != 0 and "1 + 4 * k" in result.output
    result = invoke(RUN + ["--height", "24", "--guidance", "none"])
    assert result.exit_code != 0 and "16" in result.output


def test_a_missing_model_folder_fails_before_loading(tmp_path):
    result = invoke(["run", "--backbone", "cogvideox", "--model", str(tmp_path / "CogVideoX-2b"), "--prompt", "x",
                     "--guidance", "none"])
    assert result.exit_code == 1 and "not found at" in result.output and "huggingface-cli download" in result.output
