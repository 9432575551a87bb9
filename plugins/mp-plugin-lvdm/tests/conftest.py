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
