"""The guided loop gives the same trace whichever kernel implementation runs (tiny model)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mpcore.config import SamplerConfig
from mpcore.motionprompt import MotionPrompt
from mpcore.sampling import sample


def _guided_run(monkeypatch, implementation, motion_config, flow_estimator, discriminator):
    from mp_plugin_animatediff.backbone import load

    monkeypatch.setenv("MPCORE_KERNELS", implementation)
    config = SamplerConfig(steps=3, frames=2, height=32, width=32, seed=5)
    guidance = MotionPrompt(dataclasses.replace(motion_config, opt_range=(0, 2), iterations=2), flow_estimator, discriminator)
    return sample(load("tiny", seed=0), "a fox", config, guidance=guidance, progress=False)


def test_same_trace_with_torch_and_triton_kernels(monkeypatch, motion_config, flow_estimator, discriminator):
    reference = _guided_run(monkeypatch, "torch", motion_config, flow_estimator, discriminator)
    triton = _guided_run(monkeypatch, "triton", motion_config, flow_estimator, discriminator)
    for ours, theirs in zip(triton.guidance["trace"], reference.guidance["trace"]):
        assert ours["optimized"] == theirs["optimized"]
        for a, b in zip(ours.get("iterations", []), theirs.get("iterations", [])):
            assert a["pairs"] == b["pairs"]
            for term in ("total", "disc", "tv", "reg"):
                assert a[term] == pytest.approx(b[term], rel=1e-4, abs=1e-6)
        assert ours["cosine"] == pytest.approx(theirs["cosine"], abs=1e-5)
    assert torch.allclose(triton.latents, reference.latents, atol=1e-4)
