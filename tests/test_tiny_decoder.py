"""``-o guidance_decoder=tiny``: the guided frames decoded by a diffusers AutoencoderTiny for the loss.

The option validates; ``full`` (the default) decodes exactly as before; ``tiny`` runs end to end through
``mpcore run`` with the loss's images from the tiny decoder and the video from the full VAE; a missing
or unfitting decoder is a clear error before sampling; the tiny decode is on the full decode's scale.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mpcore import plugins
from mpcore.backbones import SD_TINY_DECODER, ModelNotFoundError
from mpcore.config import ConfigError, MotionPromptConfig, SamplerConfig, apply_overrides
from mpcore.motionprompt import MotionPrompt
from mpcore.sampling import sample
from mpcore.vae import TinyDecoder, check_tiny_decoder

TINY = ["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox", "--frames", "4",
        "--height", "32", "--width", "32", "--steps", "3", "--no-progress", "-o", "iterations=2"]


def tiny_autoencoder(stages: int = 3, channels: int = 8, scaling_factor: float = 1.0, seed: int = 0):
    """A random AutoencoderTiny whose decoder up-samples 2 ** (stages - 1) x (the tiny AnimateDiff VAE: 4x)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(encoder_block_out_channels=(channels,) * stages, decoder_block_out_channels=(channels,) * stages,
                           num_encoder_blocks=(1,) * stages, num_decoder_blocks=(1,) * stages,
                           scaling_factor=scaling_factor)


@pytest.fixture
def tiny_decoder_dir(tmp_path):
    folder = tmp_path / "tiny_decoder"
    tiny_autoencoder().save_pretrained(folder)
    return folder


def invoke(args):
    from mpcore.cli.main import build_cli

    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


# ----------------------------------------------------------------------------- the option


def test_option_validates_and_names_the_field_and_allowed_values():
    sampler = SamplerConfig(steps=6, frames=4, height=32, width=32)
    assert MotionPromptConfig().guidance_decoder == "full" and MotionPromptConfig().guidance_decoder_path is None
    with pytest.raises(ConfigError, match=r"guidance_decoder='small'.*full \| tiny"):
        apply_overrides(MotionPromptConfig(), ["guidance_decoder=small"]).validate(sampler)
    # a path only means something with the tiny decoder
    with pytest.raises(ConfigError, match="guidance_decoder_path"):
        apply_overrides(MotionPromptConfig(), ["guidance_decoder_path=/x"]).validate(sampler)
    config = apply_overrides(MotionPromptConfig(), ["guidance_decoder=tiny", "guidance_decoder_path=/some/folder"])
    config.validate(sampler)
    assert config.guidance_decoder_path == "/some/folder"
    assert apply_overrides(config, ["guidance_decoder_path=none"]).guidance_decoder_path is None


def test_motionprompt_refuses_a_tiny_config_without_a_decoder(flow_estimator, discriminator):
    with pytest.raises(ConfigError, match="guidance_decoder"):
        MotionPrompt(MotionPromptConfig(guidance_decoder="tiny"), flow_estimator, discriminator)
    with pytest.raises(ConfigError, match="guidance_decoder"):
        MotionPrompt(MotionPromptConfig(), flow_estimator, discriminator, decoder=lambda x, checkpoint=False: x)


# ----------------------------------------------------------------------------- full: unchanged


class DecodeAsBefore(MotionPrompt):
    """MotionPrompt.decode_frames as it was before the option existed (verbatim)."""

    def decode_frames(self, x0_frames):
        return self.backbone.decode(x0_frames.to(self.backbone.dtype), checkpoint=self.config.checkpoint_vae).float()


def test_full_decoder_gives_bitwise_the_guided_sample_of_before(tiny_backbone, sampler_config, motion_config,
                                                               flow_estimator, discriminator):
    from mp_plugin_animatediff.backbone import load

    assert motion_config.guidance_decoder == "full"
    now = MotionPrompt(motion_config, flow_estimator, discriminator)
    result_now = sample(tiny_backbone, "a fox", sampler_config, now, progress=False)
    before = DecodeAsBefore(motion_config, flow_estimator, discriminator)
    result_before = sample(load("tiny", seed=0), "a fox", sampler_config, before, progress=False)
    assert torch.equal(result_now.latents, result_before.latents)
    assert torch.equal(now.tokens, before.tokens)
    assert [e.get("iterations") for e in now.trace] == [e.get("iterations") for e in before.trace]


# ----------------------------------------------------------------------------- the tiny decode itself


def test_tiny_decode_takes_the_full_vaes_latents_scaled_into_its_latent_space():
    """Input: the full VAE's raw latents x its scaling factor / the tiny decoder's (diffusers' convention)."""
    for tiny_scale in (1.0, 0.5):
        model = tiny_autoencoder(scaling_factor=tiny_scale).requires_grad_(False)
        seen = []
        model.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
        latents = torch.randn(2, 4, 4, 4)
        images = TinyDecoder(model, vae_scaling_factor=0.18215)(latents)
        torch.testing.assert_close(seen[0], latents * 0.18215 / tiny_scale)
        assert images.shape == (2, 3, 16, 16)


def test_tiny_decode_is_on_the_full_decodes_scale_minus_one_to_one():
    """TAESD decodes to [0, 1]; diffusers' DecoderTiny maps that to [-1, 1] and the wrapper keeps it: a
    decoder whose last conv outputs the constant 0.25 (TAESD scale) gives -0.5, not 0.25 nor 2 * -0.5 - 1."""
    model = tiny_autoencoder().requires_grad_(False)
    last = model.decoder.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.25)
    images = TinyDecoder(model, vae_scaling_factor=0.18215)(torch.randn(3, 4, 4, 4))
    torch.testing.assert_close(images, torch.full_like(images, -0.5))


def test_tiny_decode_respects_gradient_checkpointing():
    model = tiny_autoencoder().requires_grad_(False)
    decoder = TinyDecoder(model, vae_scaling_factor=0.18215)
    flags = []
    model.decoder.register_forward_pre_hook(lambda module, args: flags.append(module.gradient_checkpointing))
    latents = torch.randn(2, 4, 4, 4)
    grads = []
    for checkpoint in (False, True):
        x = latents.clone().requires_grad_(True)
        decoder(x, checkpoint=checkpoint).square().sum().backward()
        grads.append(x.grad)
    assert flags[0] is False and flags[1] is True
    assert not model.decoder.gradient_checkpointing  # restored
    torch.testing.assert_close(grads[0], grads[1])


def test_toy_models_bundled_tiny_decoder_matches_its_vae():
    """The distilled decoder shipped with the toy model decodes real toy latents close to the full VAE,
    on the same [-1, 1] scale (a wrong latent scale or image range would be far off)."""
    from mp_plugin_animatediff import default_guidance_decoder
    from mp_plugin_animatediff.backbone import load
    from mpcore.toy import world
    from mpcore.vae import load_tiny_decoder

    path = default_guidance_decoder("toy")
    check_tiny_decoder(path, "reinstall")
    backbone = load("toy")
    decoder = TinyDecoder(load_tiny_decoder(path, "cpu", torch.float32), backbone.vae_scaling_factor(), path)
    decoder.check_fits(backbone.latent_channels, backbone.vae_scale_factor)
    frames = world.make_clip(9_100_000, split="heldout").frames[:4] * 2 - 1
    latents = backbone.encode(frames)
    with torch.no_grad():
        full, tiny = backbone.decode(latents), decoder(latents)
    assert tiny.shape == full.shape == frames.shape
    assert -1.3 < float(tiny.min()) and float(tiny.max()) < 1.3
    mse = ((tiny.clamp(-1, 1) - full.clamp(-1, 1)) / 2).square().mean()
    assert float(10 * torch.log10(1 / mse)) > 22  # dB, images in [0, 1]


# ----------------------------------------------------------------------------- mpcore run


def test_run_with_tiny_decoder_loss_from_tiny_video_from_full_vae(tmp_path, tiny_decoder_dir, monkeypatch):
    from diffusers import AutoencoderTiny

    from mpcore.vae import FrameByFrameVAE

    calls = {"tiny": [], "full": []}
    tiny_decode, full_decode = AutoencoderTiny.decode, FrameByFrameVAE.decode

    def spy_tiny(self, *args, **kwargs):
        calls["tiny"].append(torch.is_grad_enabled())
        return tiny_decode(self, *args, **kwargs)

    def spy_full(self, latents, checkpoint=False):
        calls["full"].append((torch.is_grad_enabled(), latents.shape[0]))
        return full_decode(self, latents, checkpoint)

    monkeypatch.setattr(AutoencoderTiny, "decode", spy_tiny)
    monkeypatch.setattr(FrameByFrameVAE, "decode", spy_full)
    out = tmp_path / "fox.mp4"
    result = invoke(TINY + ["-o", "guidance_decoder=tiny", "-o", f"guidance_decoder_path={tiny_decoder_dir}",
                            "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    iterations = [it for entry in manifest["result"]["trace"] for it in entry.get("iterations", [])]
    assert len(iterations) >= 2
    # every loss evaluation decoded through the tiny decoder, with gradient; the full VAE only decoded the video
    assert calls["tiny"] == [True] * len(iterations)
    assert calls["full"] == [(False, 4)]
    assert manifest["motionprompt"]["guidance_decoder"] == "tiny"
    decoder = manifest["guidance_decoder"]
    assert decoder["name"] == "tiny" and decoder["path"] == str(tiny_decoder_dir)
    assert decoder["source"] == "-o guidance_decoder_path" and decoder["class"] == "AutoencoderTiny"
    assert decoder["latent_multiplier"] == pytest.approx(decoder["vae_scaling_factor"] / decoder["tiny_scaling_factor"])


def test_run_default_full_decoder_is_recorded(tmp_path):
    out = tmp_path / "fox.mp4"
    result = invoke(TINY + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["guidance_decoder"] == {"name": "full", "path": None, "source": "the backbone's VAE"}
    assert manifest["motionprompt"]["guidance_decoder"] == "full"


def test_missing_tiny_decoder_is_a_clear_error_before_any_model_loads(tmp_path, no_model_loading):
    missing = tmp_path / "no_such_folder"
    result = invoke(TINY + ["-o", "guidance_decoder=tiny", "-o", f"guidance_decoder_path={missing}",
                            "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code == 1
    assert f"looked for {missing / 'config.json'}" in result.output
    assert "-o guidance_decoder_path=FOLDER" in result.output
    assert "Traceback" not in result.output
    # a folder that is not an AutoencoderTiny
    (tmp_path / "kl").mkdir()
    (tmp_path / "kl" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (tmp_path / "kl" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="not a diffusers AutoencoderTiny"):
        check_tiny_decoder(str(tmp_path / "kl"), "")
    # no path, and the model has no default (the random tiny model): the option to pass is named
    result = invoke(TINY + ["-o", "guidance_decoder=tiny", "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code == 2 and "guidance_decoder_path" in result.output
    assert not (tmp_path / "x.mp4").exists()


def test_a_decoder_of_another_latent_space_is_refused_before_sampling(tmp_path, monkeypatch):
    import mpcore.sampling

    folder = tmp_path / "two_stages"
    tiny_autoencoder(stages=2).save_pretrained(folder)  # 2x: the tiny model's VAE is 4x

    def refuse(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(mpcore.sampling, "sample", refuse)
    result = invoke(TINY + ["-o", "guidance_decoder=tiny", "-o", f"guidance_decoder_path={folder}",
                            "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code != 0
    assert "2x up" in result.output and "4x down-sampling" in result.output


def test_backbones_declare_their_default_tiny_decoder():
    plugins.load_plugins(reload=True)
    for name in ("animatediff", "lavie", "videocrafter2", "dynamicrafter"):
        spec = plugins.get("backbone", name).spec
        assert spec.default_guidance_decoder("some/model") == SD_TINY_DECODER
        assert spec.default_guidance_decoder("tiny") is None
    toy = plugins.get("backbone", "animatediff").spec.default_guidance_decoder("toy")
    check_tiny_decoder(toy, "")  # bundled as package data


def test_lvdm_tiny_decoder_scale_ignores_the_per_timestep_scale():
    """DynamiCrafter-style latent_scale(t) = scale_factor * scale_arr[t]; TAESD sees scale_factor only."""
    from mp_plugin_lvdm.backbone import LVDMBackbone

    backbone = LVDMBackbone.__new__(LVDMBackbone)
    backbone.scale_factor, backbone.scale_arr = 0.18215, torch.linspace(1.0, 0.7, 1000)
    assert backbone.latent_scale(999) != pytest.approx(0.18215)
    assert backbone.vae_scaling_factor() == 0.18215


def test_bench_tiny_decoder_smoke(tmp_path, tiny_decoder_dir):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_tiny_decoder.py"), "--smoke", "--model", "tiny",
                           "--decoder", str(tiny_decoder_dir), "--threads", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "bench_tiny_decoder.json").read_text())
    assert summary["decodes"] >= 1 and summary["timing"]["ratio_tiny_full"] > 0
    assert {"flow_epe", "logit_diff", "grad_cosine"} <= set(summary["measures"])
    assert (tmp_path / "bench_tiny_decoder.md").read_text().startswith("# Tiny guidance decoder")
