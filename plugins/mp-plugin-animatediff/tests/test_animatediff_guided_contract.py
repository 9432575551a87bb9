"""The guided-sampling contract (:func:`mpcore.testing.run_guided_contract`) on the tiny AnimateDiff: the
rollout, clean estimate and diffusion against diffusers' DDIM and DDPM (training) schedulers, the token's
gradient through every rollout call, a guidance's x_t change kept, guidance off bitwise plain, and the
token where CLIP's encoder sees it."""

import torch
from diffusers import DDPMScheduler

from mp_plugin_animatediff.backbone import load
from mpcore.config import SamplerConfig
from mpcore.testing import run_guided_contract


def test_guided_contract_on_tiny_animatediff():
    backbone = load("tiny", seed=0)
    training = DDPMScheduler.from_config(backbone.make_scheduler().config)  # how SD-family models are noised in training
    config = SamplerConfig(steps=6, frames=4, height=32, width=32, seed=3, cfg_scale=7.5)
    result = run_guided_contract(backbone, config, lambda clean, noise, t: training.add_noise(
        clean, noise, torch.full((1,), t, dtype=torch.long)))
    assert result["rollout_error"] <= 1e-5 and result["latent_change_survival"] >= 0.5
