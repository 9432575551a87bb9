"""A discriminator records what it was trained on (flow estimator, frame size, caches) and
``mpcore run`` checks it before any model loads (issue 15, item 3). Tiny caches and the tiny ViT:
seconds, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mpcore import plugins
from mpcore.cli.main import build_cli
from mpcore.config import ConfigError, MotionPromptConfig, SamplerConfig
from mpcore.disc.data import DiscTrainError
from mpcore.disc.train import TrainConfig, train_discriminator
from mpcore.flows.cache import FlowCacheWriter, VideoEntry

TINY_RUN = ["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox", "--frames", "4",
            "--height", "32", "--width", "32", "--steps", "2", "--no-progress"]
ONE_EPOCH = TrainConfig(epochs=1, batch_size=4, lr=0.01, val_fraction=0.0)



def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


def make_cache(path: Path, estimator: str | None, size: int = 16, meta_size: int | None = None) -> Path:
    """Two videos of two random 16x16 flows; index meta as `mpcore flows extract` writes it."""
    meta = {"label": path.name, "size": [meta_size or size, meta_size or size]}
    if estimator is not None:
        meta["estimator"] = {"name": estimator, "weights": None, "options": {}}
    generator = torch.Generator().manual_seed(len(path.name))
    with FlowCacheWriter(path, meta) as writer:
        for v in range(2):
            writer.add(VideoEntry(f"v{v}", f"v{v}.mp4", frames=8), torch.randn(2, 2, size, size, generator=generator),
                       [0, 1], [1, 2])
    return path


def save_tiny_disc(path: Path, trained_on: dict | None) -> Path:
    """A tiny random ViT discriminator saved with ``trained_on`` (through the plugin's own save)."""
    import mp_plugin_vit

    model = mp_plugin_vit.random(seed=0)
    model.trained_on = trained_on
    mp_plugin_vit.save(model, path)
    return path



# ---------------------------------------------------------------------------------------------------
# disc train writes it


def test_disc_train_records_trained_on_from_the_caches(tmp_path):
    real = make_cache(tmp_path / "real", "tvl1_fast")
    fake = make_cache(tmp_path / "fake", "tvl1_fast")
    out = tmp_path / "d.safetensors"
    spec = plugins.get("discriminator", "vit").spec
    train_discriminator(spec, real, fake, out, ONE_EPOCH, {"preset": "tiny"}, pretrained=False, progress=False,
                        echo=lambda _: None)
    recorded = json.loads(out.with_suffix(".json").read_text())["trained_on"]
    assert recorded["flow_estimator"] == "tvl1_fast" and recorded["frame_size"] == [16, 16]
    assert [c["label"] for c in recorded["caches"]] == ["real", "fake"]
    assert recorded["caches"][0]["path"] == str(real) and len(recorded["caches"][1]["index_sha256"]) == 64
    assert spec.load(out, "cpu").trained_on == recorded  # read back by the plugin
    assert json.loads(out.with_name("d_log.json").read_text())["data"]["trained_on"] == recorded


def test_caches_of_different_estimators_or_frame_sizes_are_refused(tmp_path, monkeypatch):
    import mp_plugin_vit

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(mp_plugin_vit.discriminator, "build_discriminator", refuse)
    real = make_cache(tmp_path / "real", "raft")
    fake = make_cache(tmp_path / "fake", "tvl1")
    out = tmp_path / "d.safetensors"
    result = invoke(["disc", "train", "--real", str(real), "--fake", str(fake), "--out", str(out), "--arch",
                     "preset=tiny", "--no-pretrained", "--epochs", "1", "--no-progress"])
    assert result.exit_code != 0
    assert "different flow estimators" in result.output and "'raft'" in result.output and "'tvl1'" in result.output
    # frames resized to another size before the flow (same stored flow size: only the index tells)
    other = make_cache(tmp_path / "other", "raft", meta_size=32)
    with pytest.raises(DiscTrainError, match=r"different frame size.*\[16, 16\].*\[32, 32\]"):
        train_discriminator(plugins.get("discriminator", "vit").spec, real, other, out, ONE_EPOCH, {"preset": "tiny"},
                            pretrained=False, progress=False, echo=lambda _: None)
    assert not out.exists()


def test_old_config_without_trained_on_still_loads(tmp_path):
    import mp_plugin_vit

    path = save_tiny_disc(tmp_path / "old.safetensors", None)
    data = json.loads(path.with_suffix(".json").read_text())
    assert "trained_on" not in data  # an unknown trained_on is not written: the file reads as before
    assert mp_plugin_vit.load(path, "cpu").trained_on is None
    config = mp_plugin_vit.ViTDiscriminatorConfig.from_dict(data)
    assert config.trained_on is None
    with pytest.raises(mp_plugin_vit.DiscriminatorConfigError, match="trained_on"):
        mp_plugin_vit.ViTDiscriminatorConfig.from_dict({**data, "trained_on": "raft"})


# ---------------------------------------------------------------------------------------------------
# mpcore run checks it


def test_run_refuses_a_discriminator_of_another_estimator_before_loading(tmp_path, no_model_loading):
    disc = save_tiny_disc(tmp_path / "d.safetensors", {"flow_estimator": "raft", "frame_size": [32, 32]})
    result = invoke(TINY_RUN + ["--discriminator", str(disc), "--flow", "tvl1", "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code != 0
    assert "trained on flows of the 'raft' estimator" in result.output and "'tvl1'" in result.output
    assert "--flow raft" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.mp4").exists()


def test_flow_defaults_to_the_estimator_the_discriminator_was_trained_on(tmp_path, capsys):
    """Issue 28: without --flow, a run refused a discriminator trained on another estimator than the
    backbone's default, and the user had to add --flow by hand; now the discriminator's own is used, said
    in a note. An explicit -o flow_estimator still wins (and is then checked)."""
    from mpcore.jobs.options import RunOptions
    from mpcore.jobs.setup import prepare

    disc = save_tiny_disc(tmp_path / "d.safetensors", {"flow_estimator": "tvl1_fast", "frame_size": [32, 32]})
    setup = prepare(RunOptions(backbone="animatediff", model="tiny", discriminator=str(disc), frames=4, height=32,
                               width=32, steps=4))
    assert setup.guidance.flow_spec.name == "tvl1_fast" and setup.guidance.config.flow_estimator == "tvl1_fast"
    assert "flows are computed with 'tvl1_fast', the estimator the discriminator" in capsys.readouterr().err
    assert setup.settings()["flow"]["name"] == "tvl1_fast"
    with pytest.raises(ConfigError, match="trained on flows of the 'tvl1_fast' estimator"):
        prepare(RunOptions(backbone="animatediff", model="tiny", discriminator=str(disc), frames=4, height=32,
                           width=32, steps=4, overrides=("flow_estimator=tvl1",)))


def test_toy_discriminator_records_tvl1_fast_at_32_and_refuses_tvl1(tmp_path):
    from mp_plugin_animatediff.toy import toy_folder

    recorded = json.loads((toy_folder() / "discriminator.json").read_text())["trained_on"]
    assert recorded["flow_estimator"] == "tvl1_fast" and recorded["frame_size"] == [32, 32]
    result = invoke(["run", "--prompt", "a red circle", "--out", str(tmp_path / "x.mp4"), "--flow", "tvl1"])
    assert result.exit_code != 0 and "--flow tvl1_fast" in result.output


def test_flow_size_comes_from_trained_on_unless_given(tmp_path):
    disc = save_tiny_disc(tmp_path / "d.safetensors", {"flow_estimator": "tvl1", "frame_size": [16, 16]})
    result = invoke(TINY_RUN + ["--discriminator", str(disc), "--out", str(tmp_path / "a.mp4")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "a.json").read_text())
    assert manifest["motionprompt"]["flow_size"] == 16  # decoded frames are 32x32
    assert manifest["motionprompt"]["flow_size_source"] == "discriminator trained_on"
    assert manifest["discriminator"]["trained_on"] == {"flow_estimator": "tvl1", "frame_size": [16, 16]}
    result = invoke(TINY_RUN + ["--discriminator", str(disc), "-o", "flow_size=24", "--out", str(tmp_path / "b.mp4")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b.json").read_text())
    assert manifest["motionprompt"]["flow_size"] == 24 and manifest["motionprompt"]["flow_size_source"] == "explicit"
    assert any("flow_size=24" in w and "16x16" in w for w in manifest["warnings"])


def test_check_trained_on_cases():
    from mpcore.jobs.trained_on import check_trained_on

    sampler = SamplerConfig(height=32, width=32)

    def check(trained_on, **motion):
        config = MotionPromptConfig(flow_estimator="tvl1", **motion)
        source, warnings = check_trained_on(trained_on, config, sampler, "d.safetensors")
        return config.flow_size, source, warnings

    assert check(None) == (None, "decoded frame size", [])
    assert check({"flow_estimator": "tvl1", "frame_size": [32, 32]}) == (None, "decoded frame size", [])
    assert check({"flow_estimator": None, "frame_size": [64, 64]}) == (64, "discriminator trained_on", [])
    assert check({"frame_size": [64, 64]}, flow_size=48)[:2] == (48, "explicit")
    size, source, warnings = check({"flow_estimator": "tvl1", "frame_size": [16, 24]})  # not square: warn only
    assert (size, source) == (None, "decoded frame size") and "16x24" in warnings[0]
    with pytest.raises(ConfigError, match="--flow raft"):
        check({"flow_estimator": "raft", "frame_size": [32, 32]})
