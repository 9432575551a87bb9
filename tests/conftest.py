"""Shared fixtures: the tiny random AnimateDiff backbone and small stand-in flow/discriminator."""

from __future__ import annotations

import pytest

from mpcore.testing import DifferenceFlow, LinearDiscriminator
from mpcore.config import PAPER_DEFAULTS, MotionPromptConfig, SamplerConfig


@pytest.fixture
def tiny_backbone():
    """A fresh tiny AnimateDiff backbone (guidance adds tokens to it, so one per test)."""
    from mp_plugin_animatediff.backbone import load

    return load("tiny", seed=0)


@pytest.fixture
def sampler_config():
    return SamplerConfig(steps=6, frames=4, height=32, width=32, seed=3, cfg_scale=7.5)


@pytest.fixture
def motion_config():
    return MotionPromptConfig(**{**PAPER_DEFAULTS["animatediff"], "opt_range": (1, 3), "iterations": 2})


@pytest.fixture
def flow_estimator():
    return DifferenceFlow()


@pytest.fixture
def discriminator():
    return LinearDiscriminator()
