"""--scheduler ddpm: LaVie's own ancestral DDPM sampler on its linear betas (LaVie's
base/pipelines/sample.py), through :func:`mpcore.sampling.scheduler_factory`; ddim unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from diffusers import DDPMScheduler

from mpcore.config import ConfigError, SamplerConfig
from mpcore.sampling import cfg_output, initial_latents, sample, scheduler_factory


def ddpm_reference_loop(backbone, prompt: str, config: SamplerConfig) -> torch.Tensor:
    """DDPMScheduler's own loop on the same components: LaVie's script's sampler, written out."""
    scheduler = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False,
                              num_train_timesteps=1000)
    scheduler.set_timesteps(config.steps)
    generator = torch.Generator().manual_seed(config.seed)
    latents = initial_latents(backbone, config, scheduler, generator)
    with torch.no_grad():
        cond, uncond = backbone.encode_prompt([prompt]), backbone.encode_prompt([config.negative_prompt])
        for t in scheduler.timesteps:
            out = cfg_output(backbone, latents, t, cond, uncond, config.cfg_scale)
            latents = scheduler.step(out, t, latents, generator=generator).prev_sample
    return latents


def test_ddpm_steps_equal_ddpm_scheduler_loop_and_lavie_timesteps(tiny_lavie, sampler_config):
    plain_ddim = sample(tiny_lavie, "a fox", sampler_config, progress=False).latents
    ddpm = scheduler_factory(tiny_lavie, "ddpm")
    scheduler = ddpm()
    assert isinstance(scheduler, DDPMScheduler)
    assert scheduler.config == tiny_lavie.make_ddpm_scheduler().config  # LaVie's own DDPM wins over the generic one
    scheduler.set_timesteps(50)
    # diffusers 0.16's DDPM, as LaVie's sample.py ran it, ignored steps_offset: 980, 960, ..., 0
    assert scheduler.timesteps[:2].tolist() == [980, 960] and scheduler.timesteps[-1].item() == 0
    ours = sample(tiny_lavie, "a fox", sampler_config, progress=False, make_scheduler=ddpm).latents
    assert torch.equal(ours, ddpm_reference_loop(tiny_lavie, "a fox", sampler_config))
    assert torch.equal(ours, sample(tiny_lavie, "a fox", sampler_config, progress=False, make_scheduler=ddpm).latents)
    other = SamplerConfig(**{**sampler_config.__dict__, "seed": 4})
    assert not torch.allclose(ours, sample(tiny_lavie, "a fox", other, progress=False, make_scheduler=ddpm).latents)
    assert not torch.allclose(ours, plain_ddim)  # really another update rule
    # the backbone itself still samples with its DDIM: the factory changed nothing on it
    assert torch.equal(sample(tiny_lavie, "a fox", sampler_config, progress=False).latents, plain_ddim)


def test_ddim_stays_bitwise_the_backbone_own(tiny_lavie, sampler_config):
    before = sample(tiny_lavie, "a fox", sampler_config, progress=False).latents
    ddim = scheduler_factory(tiny_lavie, "ddim")
    assert type(ddim()) is type(tiny_lavie.make_scheduler())
    assert ddim().config == tiny_lavie.make_scheduler().config
    assert torch.equal(sample(tiny_lavie, "a fox", sampler_config, progress=False, make_scheduler=ddim).latents, before)


def test_ddpm_refuses_eta_and_other_schedulers(tiny_lavie, sampler_config):
    ddpm = scheduler_factory(tiny_lavie, "ddpm")
    with pytest.raises(ConfigError, match="no eta"):
        sample(tiny_lavie, "a", SamplerConfig(**{**sampler_config.__dict__, "eta": 0.5}), progress=False,
               make_scheduler=ddpm)
    with pytest.raises(ConfigError, match="allowed: ddim, ddpm"):
        scheduler_factory(tiny_lavie, "euler")
    from diffusers import UniPCMultistepScheduler

    tiny_lavie.make_scheduler = lambda: UniPCMultistepScheduler()
    for name in ("ddpm", "ddim"):
        with pytest.raises(ConfigError, match="SD-family"):
            scheduler_factory(tiny_lavie, name)


def test_guided_ddpm_moves_the_token(tiny_lavie, sampler_config, motion_config, flow_estimator, discriminator):
    from mpcore.motionprompt import MotionPrompt

    result = sample(tiny_lavie, "a fox", sampler_config, MotionPrompt(motion_config, flow_estimator, discriminator),
                    progress=False, make_scheduler=scheduler_factory(tiny_lavie, "ddpm"))
    assert result.guidance["final_cosine"][0] < 1.0 and torch.isfinite(result.latents).all()


def test_cli_run_lavie_tiny_ddpm(tmp_path):
    from mpcore.cli.main import build_cli

    out = tmp_path / "x.mp4"
    args = ["run", "--backbone", "lavie", "--model", "tiny", "--prompt", "a fox", "--frames", "6", "--height", "32",
            "--width", "32", "--steps", "3", "--scheduler", "ddpm", "--compare", "--no-progress", "--out", str(out)]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["scheduler"] == "ddpm"
