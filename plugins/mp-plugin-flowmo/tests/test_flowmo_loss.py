"""FlowMo's loss on planted latents: what it is zero on, what it is high on, and that its update lowers it."""

from __future__ import annotations

import pytest
import torch

from mp_plugin_flowmo import FlowMoConfig, temporal_variance_loss
from mpcore.config import ConfigError


def _blob_video(positions: list[float], size: int = 16, channels: int = 4) -> torch.Tensor:
    """(1, C, F, size, size): a Gaussian blob at x = positions[f] over a fixed textured background."""
    g = torch.Generator().manual_seed(0)
    background = torch.randn(channels, 1, size, size, generator=g)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    frames = [torch.exp(-((xs - x) ** 2 + (ys - size / 2) ** 2) / 8.0) for x in positions]
    return (background + 3.0 * torch.stack(frames)[None]).unsqueeze(0)


def test_static_video_has_zero_loss_whatever_its_appearance():
    video = _blob_video([8.0] * 6)
    assert float(temporal_variance_loss(video)) == 0.0


def test_a_popping_object_scores_far_higher_than_steady_motion():
    steady = _blob_video([4.0, 5.0, 6.0, 7.0, 8.0, 9.0])  # one pixel per frame
    popping = _blob_video([4.0, 4.0, 4.0, 11.0, 11.0, 11.0])  # still, a jump, still
    assert float(temporal_variance_loss(popping)) > 5 * float(temporal_variance_loss(steady)) > 0


def test_the_appearance_cancels():
    """A constant offset on every frame (a different background) does not change the loss."""
    video = _blob_video([4.0, 4.0, 6.0, 9.0, 9.0])
    assert torch.allclose(temporal_variance_loss(video), temporal_variance_loss(video + 5.0), atol=1e-5)


def test_the_normalized_gradient_step_lowers_the_loss():
    x = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = temporal_variance_loss(x).sum()
    (grad,) = torch.autograd.grad(loss, x)
    stepped = x.detach() - 0.02 * grad / grad.pow(2).mean().sqrt()
    assert float(temporal_variance_loss(stepped)) < float(loss.detach())
    ascended = x.detach() + 0.02 * grad / grad.pow(2).mean().sqrt()
    assert float(temporal_variance_loss(ascended)) > float(loss.detach())  # the sign matters


def test_top_fraction_keeps_the_worst_patches():
    x = torch.randn(2, 4, 5, 8, 8, generator=torch.Generator().manual_seed(2))
    every, worst = temporal_variance_loss(x, 2, 1.0), temporal_variance_loss(x, 2, 0.25)
    assert worst.shape == (2,) and bool((worst > every).all())


def test_too_few_frames_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="at least 3 latent frames"):
        temporal_variance_loss(torch.zeros(1, 4, 2, 8, 8))
    with pytest.raises(ConfigError, match="top_fraction=0"):
        FlowMoConfig(top_fraction=0).validate()
    assert FlowMoConfig().resolved_opt_range(25) == (0, 6)  # the first 12 of 50 steps, scaled
    assert FlowMoConfig(opt_range=(2, 4)).resolved_opt_range(25) == (2, 4)
