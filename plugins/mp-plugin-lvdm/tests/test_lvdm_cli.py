"""`mpcore run --backbone videocrafter2/dynamicrafter` and `mpcore weights expected/check` end to end,
on tiny files saved as the official ones look."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mp_plugin_lvdm.tiny import save_tiny
from mpcore import plugins
from mpcore.cli.main import build_cli
from mp_plugin_lvdm import VIDEOCRAFTER2_MOTIONPROMPT_DEFAULTS
from mpcore.io.video import read_video

DATA = Path(__file__).resolve().parent / "data"


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


@pytest.fixture(scope="module")
def vc2_files(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("vc2"), "videocrafter2", seed=0)


@pytest.fixture(scope="module")
def dc_files(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("dc256"), "dynamicrafter", "256", seed=0)


@pytest.fixture
def no_model_loading(monkeypatch):
    import mp_plugin_lvdm.backbone as backbone

    def refuse(**kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(backbone, "load", refuse)


COMMON = ["--prompt", "a fox", "--frames", "16", "--height", "32", "--width", "32", "--steps", "4", "--no-progress"]


def test_videocrafter2_run_with_the_papers_defaults(tmp_path, vc2_files):
    out = tmp_path / "guided.mp4"
    result = invoke(["run", "--backbone", "videocrafter2", "--model", str(vc2_files["checkpoint"]), "--config",
                     str(vc2_files["config"]), *COMMON, "--flow", "tvl1", "--flow-option", "iterations=2",
                     "--discriminator", "random", "-o", "iterations=1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    motion = manifest["motionprompt"]
    for key, value in VIDEOCRAFTER2_MOTIONPROMPT_DEFAULTS.items():
        if key == "iterations":
            continue  # -o iterations=1 keeps the test short
        assert motion[key] == (list(value) if isinstance(value, tuple) else value), key
    assert manifest["backbone"]["name"] == "videocrafter2" and manifest["backbone"]["fs"] == 28
    assert manifest["sampler"]["cfg_scale"] == 12.0 and manifest["sampler"]["eta"] == 1.0
    assert read_video(out).shape == (16, 32, 32, 3)


def test_dynamicrafter_run_baseline(tmp_path, dc_files, start_image):
    out = tmp_path / "plain.mp4"
    result = invoke(["run", "--backbone", "dynamicrafter", "--variant", "256", "--model", str(dc_files["checkpoint"]),
                     "--config", str(dc_files["config"]), "--image", str(start_image), *COMMON, "--guidance", "none",
                     "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["backbone"]["variant"] == "256" and manifest["backbone"]["fs"] == 3
    assert read_video(out).shape == (16, 32, 32, 3)


def test_dynamicrafter_without_image_fails_early(dc_files, no_model_loading):
    result = invoke(["run", "--backbone", "dynamicrafter", "--model", str(dc_files["checkpoint"]), "--prompt", "a fox",
                     "--guidance", "none"])
    assert result.exit_code == 2, result.output
    assert "image-to-video: pass --image PATH" in result.output


def test_dynamicrafter_unreadable_image_fails_early(tmp_path, dc_files, no_model_loading):
    broken = tmp_path / "start.png"
    broken.write_bytes(b"not a png")
    result = invoke(["run", "--backbone", "dynamicrafter", "--model", str(dc_files["checkpoint"]), "--image",
                     str(broken), "--prompt", "a fox", "--guidance", "none"])
    assert result.exit_code == 2 and "not a readable image" in result.output, result.output
    result = invoke(["run", "--backbone", "dynamicrafter", "--model", str(dc_files["checkpoint"]), "--image",
                     str(tmp_path / "missing.png"), "--prompt", "a fox", "--guidance", "none"])
    assert result.exit_code == 2 and "file not found" in result.output, result.output


def test_options_belong_to_their_backbone(no_model_loading, start_image):
    result = invoke(["run", "--backbone", "videocrafter2", "--model", "tiny", "--image", str(start_image),
                     "--prompt", "a fox"])
    assert result.exit_code == 2 and "--image is an option of backbone(s) dynamicrafter" in result.output


@pytest.mark.parametrize("backbone,variant,name", [("videocrafter2", None, "videocrafter2"),
                                                   ("dynamicrafter", "256", "dynamicrafter_256"),
                                                   ("dynamicrafter", "1024", "dynamicrafter_1024")])
def test_weights_expected_is_the_manifest(backbone, variant, name):
    args = ["weights", "expected", "--backbone", backbone, "--json"] + (["--variant", variant] if variant else [])
    result = invoke(args)
    assert result.exit_code == 0, result.output
    reference = {k: v[0] for k, v in json.loads((DATA / f"{name}_state_dict.json").read_text()).items()}
    assert json.loads(result.stdout) == reference


def test_weights_check_ok_and_mismatch(tmp_path, vc2_files, dc_files):
    for files, extra in ((vc2_files, ["--backbone", "videocrafter2"]),
                         (dc_files, ["--backbone", "dynamicrafter", "--variant", "256"])):
        result = invoke(["weights", "check", *extra, "--config", str(files["config"]), str(files["checkpoint"])])
        assert result.exit_code == 0 and "OK" in result.output, result.output

    state = torch.load(vc2_files["checkpoint"], weights_only=True)["state_dict"]
    dropped = "cond_stage_model.model.logit_scale"
    del state[dropped]
    broken = tmp_path / "broken.ckpt"
    torch.save({"state_dict": state}, broken)
    result = invoke(["weights", "check", "--backbone", "videocrafter2", "--config", str(vc2_files["config"]),
                     str(broken)])
    assert result.exit_code == 1 and "1 missing key(s)" in result.output and dropped in result.output
    result = invoke(["weights", "check", "--backbone", "videocrafter2", "--limit", "3", str(vc2_files["checkpoint"])])
    assert result.exit_code == 1 and "shape mismatch" in result.output and "... and" in result.output
