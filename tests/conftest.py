"""Shared fixtures: the tiny random AnimateDiff backbone and small stand-in flow/discriminator."""

from __future__ import annotations

import pytest
import torch

from mp_plugin_animatediff import PAPER_MOTIONPROMPT_DEFAULTS
from mpcore.config import MotionPromptConfig, SamplerConfig


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
    return MotionPromptConfig(**{**PAPER_MOTIONPROMPT_DEFAULTS, "opt_range": (1, 3), "iterations": 2})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the tiny models' many small ops run faster, and far more predictably on a
    shared CPU (OpenMP workers spin while other processes hold the cores); results are the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail loudly if any AnimateDiff backbone weights are loaded (checks that must come before loading)."""
    import mp_plugin_animatediff.backbone as backbone

    def refuse(**kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(backbone, "load", refuse)
