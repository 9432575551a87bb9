"""`mpcore run --backbone wan` end to end, offline: the tiny random model with the CLI's defaults (baseline
and guided, the compare video, the manifest), a saved folder, and the early errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mp_plugin_wan import WAN_MOTIONPROMPT_DEFAULTS
from mp_plugin_wan.tiny import TINY_SAMPLER_DEFAULTS, save_tiny
from mpcore import plugins
from mpcore.cli.main import build_cli
from mpcore.io.video import read_video


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


@pytest.fixture
def no_model_loading(monkeypatch):
    import mp_plugin_wan.backbone as backbone

    def refuse(**kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(backbone, "load", refuse)


def test_tiny_run_with_compare_uses_the_plugins_defaults(tmp_path):
    out = tmp_path / "wan.mp4"
    result = invoke(["run", "--backbone", "wan", "--model", "tiny", "--prompt", "a dog running on the beach",
                     "--compare", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["backbone"]["name"] == "wan" and manifest["backbone"]["random_init"]
    assert manifest["backbone"]["scheduler"]["class"] == "UniPCMultistepScheduler"
    assert manifest["backbone"]["max_sequence_length"] == 512
    for key, value in TINY_SAMPLER_DEFAULTS.items():
        assert manifest["sampler"][key] == value, key
    for key, value in WAN_MOTIONPROMPT_DEFAULTS.items():
        assert manifest["motionprompt"][key] == (list(value) if isinstance(value, tuple) else value), key
    assert manifest["result"]["token_drift_l2"][0] > 0
    assert read_video(out).shape == (9, 32, 32, 3)
    assert read_video(tmp_path / "wan_compare.mp4").shape[:2] == (9, 32)  # baseline | guided, side by side


def test_a_saved_folder_runs_with_a_shorter_text(tmp_path):
    folder = save_tiny(tmp_path / "wan-tiny")
    out = tmp_path / "plain.mp4"
    result = invoke(["run", "--backbone", "wan", "--model", str(folder), "--prompt", "a cat", "--guidance", "none",
                     "--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--max-sequence-length", "16",
                     "--vae-tiling", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["backbone"]["max_sequence_length"] == 16 and manifest["backbone"]["vae_tiling"]
    assert manifest["backbone"]["model"] == str(folder)
    assert read_video(out).shape == (5, 32, 32, 3)


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent/wan"], "Wan model folder not found at /nonexistent/wan"),
    (["--model", "tiny", "--frames", "8"], "1 + 4 * k"),
    (["--model", "tiny", "--height", "40"], "multiple"),
    (["--model", "tiny", "--max-sequence-length", "0"], "--max-sequence-length must be >= 1"),
], ids=["missing-folder", "frames", "height", "text-length"])
def test_bad_arguments_fail_before_loading(no_model_loading, args, message):
    result = invoke(["run", "--backbone", "wan", "--prompt", "a cat", "--guidance", "none", *args])
    assert result.exit_code != 0 and message in result.output, result.output


def test_an_incomplete_folder_names_what_is_missing(tmp_path, no_model_loading):
    folder = save_tiny(tmp_path / "wan-tiny")
    for path in (folder / "text_encoder").iterdir():
        path.unlink()
    (folder / "text_encoder").rmdir()
    result = invoke(["run", "--backbone", "wan", "--model", str(folder), "--prompt", "a cat", "--guidance", "none"])
    assert result.exit_code != 0 and "no text_encoder/" in result.output, result.output


def test_wan_options_belong_to_wan(no_model_loading):
    result = invoke(["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a cat",
                     "--max-sequence-length", "16"])
    assert result.exit_code != 0 and "--max-sequence-length is an option of backbone(s)" in result.output
