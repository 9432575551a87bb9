"""Fixtures of the LaVie plugin tests: the tiny random LaVie backbone, its files saved as users' look,
and small stand-in flow/discriminator (as in the core tests)."""

from __future__ import annotations

import pytest

from mp_plugin_lavie import PAPER_MOTIONPROMPT_DEFAULTS
from mpcore.config import MotionPromptConfig, SamplerConfig


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
    return MotionPromptConfig(**{**PAPER_MOTIONPROMPT_DEFAULTS, "opt_range": (1, 3), "iterations": 2})
