"""The guided-sampling contract (:func:`mpcore.testing.run_guided_contract`) on the tiny LaVie (its own
linear betas, epsilon), with its DDIM and with ``--scheduler ddpm`` for the training-time noising."""

import torch
from diffusers import DDPMScheduler

from mp_plugin_lavie.backbone import load
from mpcore.config import SamplerConfig
from mpcore.testing import run_guided_contract


def test_guided_contract_on_tiny_lavie():
    backbone = load("tiny", seed=0)
    training = DDPMScheduler.from_config(backbone.make_scheduler().config)
    config = SamplerConfig(steps=6, frames=4, height=32, width=32, seed=3, cfg_scale=7.5)
    run_guided_contract(backbone, config, lambda clean, noise, t: training.add_noise(
        clean, noise, torch.full((1,), t, dtype=torch.long)))
