"""Fixtures of the LaVie plugin tests: the tiny random LaVie backbone, its files saved as users' look,
and small stand-in flow/discriminator (as in the core tests)."""

from __future__ import annotations

import pytest
import torch

from mpcore.config import PAPER_DEFAULTS, MotionPromptConfig, SamplerConfig


@pytest.fixture
def tiny_lavie():
    """A fresh tiny LaVie backbone (guidance adds tokens to it, so one per test)."""
    from mp_plugin_lavie.backbone import load

    return load("tiny", seed=0)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """{"checkpoint": {"ema": ...} .pt, "base": SD v1.4-layout folder, "unet_config": JSON} of seed 0."""
    from mp_plugin_lavie.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("lavie"), seed=0)


@pytest.fixture
def sampler_config():
    return SamplerConfig(steps=6, frames=6, height=32, width=32, seed=3, cfg_scale=7.5)


@pytest.fixture
def motion_config():
    return MotionPromptConfig(**{**PAPER_DEFAULTS["lavie"], "opt_range": (1, 3), "iterations": 2})


class DifferenceFlow(torch.nn.Module):
    """A differentiable stand-in flow: the colour difference of the frames scaled to pixels."""

    def forward(self, frame_a, frame_b):
        return (frame_b - frame_a)[:, :2] * 8.0


class LinearDiscriminator(torch.nn.Module):
    """A fixed random linear discriminator on flow (deterministic per seed)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(2, generator=generator), requires_grad=False)

    def forward(self, flow):
        return (flow * self.weight[None, :, None, None]).mean(dim=(1, 2, 3)) - flow.abs().mean(dim=(1, 2, 3))


@pytest.fixture
def flow_estimator():
    return DifferenceFlow()


@pytest.fixture
def discriminator():
    return LinearDiscriminator()
