"""`mpcore run --backbone lavie` and `mpcore weights expected/check --backbone lavie` end to end, on
tiny files saved as users' look."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mpcore import plugins
from mpcore.cli.main import build_cli
from mp_plugin_lavie import PAPER_MOTIONPROMPT_DEFAULTS
from mpcore.io.video import read_video

REFERENCE = Path(__file__).resolve().parent / "data" / "lavie_base_state_dict.json"


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


def run_args(files, *extra):
    return ["run", "--backbone", "lavie", "--model", str(files["checkpoint"]), "--base", str(files["base"]),
            "--unet-config", str(files["unet_config"]), "--prompt", "a fox", "--frames", "6", "--height", "32",
            "--width", "32", "--steps", "4", "--no-progress", *extra]


@pytest.fixture
def no_model_loading(monkeypatch):
    import mp_plugin_lavie.backbone as backbone

    def refuse(**kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(backbone, "load", refuse)


def test_run_baseline_and_motionprompt_with_the_papers_lavie_defaults(tmp_path, saved_tiny):
    plain = tmp_path / "plain.mp4"
    result = invoke(run_args(saved_tiny, "--guidance", "none", "--out", str(plain)))
    assert result.exit_code == 0, result.output
    assert read_video(plain).shape == (6, 32, 32, 3)

    out = tmp_path / "guided.mp4"
    result = invoke(run_args(saved_tiny, "--flow", "tvl1", "--discriminator", "random", "--out", str(out)))
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    motion = manifest["motionprompt"]
    for key, value in PAPER_MOTIONPROMPT_DEFAULTS.items():
        assert motion[key] == (list(value) if isinstance(value, tuple) else value), key
    assert motion["lr"] == 0.0005 and motion["decoded_frames"] == 6 and motion["l_tv"] == 1.0
    assert motion["opt_range"] == [0, 1]  # the paper's 5 < i < 15 of 50 steps, scaled to 4
    backbone = manifest["backbone"]
    assert backbone["name"] == "lavie" and backbone["model"] == str(saved_tiny["checkpoint"])
    assert backbone["base"] == str(saved_tiny["base"]) and backbone["scheduler"]["beta_end"] == 0.02
    assert [e["step"] for e in manifest["result"]["trace"] if e["optimized"]] == [0]
    assert read_video(out).shape == (6, 32, 32, 3)


def test_missing_base_is_an_early_clear_error(saved_tiny, no_model_loading):
    result = invoke(["run", "--backbone", "lavie", "--model", str(saved_tiny["checkpoint"]), "--prompt", "a fox",
                     "--guidance", "none"])
    assert result.exit_code == 2, result.output
    assert "needs --base" in result.output and "CompVis/stable-diffusion-v1-4" in result.output


def test_missing_checkpoint_is_an_early_clear_error(tmp_path, saved_tiny, no_model_loading):
    result = invoke(["run", "--backbone", "lavie", "--model", str(tmp_path / "lavie_base.pt"), "--base",
                     str(saved_tiny["base"]), "--prompt", "a fox", "--guidance", "none"])
    assert result.exit_code == 1 and "LaVie checkpoint not found" in result.output, result.output


def test_lavie_options_belong_to_lavie(saved_tiny, no_model_loading):
    result = invoke(["run", "--backbone", "animatediff", "--model", "tiny", "--base", str(saved_tiny["base"]),
                     "--prompt", "a fox"])
    assert result.exit_code == 2 and "--base is an option of backbone(s) lavie" in result.output


def test_weights_expected_at_the_real_config_is_the_official_manifest():
    result = invoke(["weights", "expected", "--backbone", "lavie", "--json"])
    assert result.exit_code == 0, result.output
    reference = {k: v[0] for k, v in json.loads(REFERENCE.read_text()).items()}
    assert json.loads(result.stdout) == reference


def test_weights_check_ok_and_mismatch(tmp_path, saved_tiny):
    config = str(saved_tiny["unet_config"])
    result = invoke(["weights", "check", "--backbone", "lavie", "--config", config, str(saved_tiny["checkpoint"])])
    assert result.exit_code == 0 and "OK" in result.output, result.output

    state = torch.load(saved_tiny["checkpoint"], weights_only=True)["ema"]
    dropped = next(k for k in state if k.endswith("attn_temp.to_q.weight"))
    del state[dropped]
    broken = tmp_path / "broken.pt"
    torch.save({"ema": state}, broken)
    result = invoke(["weights", "check", "--backbone", "lavie", "--config", config, str(broken)])
    assert result.exit_code == 1 and "1 missing key(s)" in result.output and dropped in result.output

    # against the real config, the tiny file misses nearly everything
    result = invoke(["weights", "check", "--backbone", "lavie", "--limit", "3", str(saved_tiny["checkpoint"])])
    assert result.exit_code == 1 and "missing key(s)" in result.output and "... and" in result.output
