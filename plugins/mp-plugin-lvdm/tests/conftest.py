"""Fixtures of the lvdm plugin tests: tiny random VideoCrafter2/DynamiCrafter backbones, their files saved
as the official ones look, a test image, and small stand-in flow/discriminator (as in the core tests)."""

from __future__ import annotations

import pytest
import torch

from mpcore.config import SamplerConfig


@pytest.fixture
def start_image(tmp_path):
    from PIL import Image

    generator = torch.Generator().manual_seed(5)
    pixels = (torch.rand(40, 56, 3, generator=generator) * 255).to(torch.uint8).numpy()
    path = tmp_path / "start.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def sampler_config():
    return SamplerConfig(steps=5, frames=16, height=32, width=32, seed=3, cfg_scale=7.5, eta=1.0)


class DifferenceFlow(torch.nn.Module):
    """A differentiable stand-in flow: the colour difference of the frames scaled to pixels."""

    def forward(self, frame_a, frame_b):
        return (frame_b - frame_a)[:, :2] * 8.0


class LinearDiscriminator(torch.nn.Module):
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
