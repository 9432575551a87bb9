"""FlowMo's loss on planted latents: what it is zero on, what it is high on, that its update lowers it,
and that every variant setting changes it (the published rule is the default)."""

from __future__ import annotations

import pytest
import torch

from mp_plugin_flowmo import FlowMoConfig, flowmo_loss
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
    assert float(flowmo_loss(video)) == 0.0


def test_a_popping_object_scores_far_higher_than_steady_motion():
    steady = _blob_video([4.0, 5.0, 6.0, 7.0, 8.0, 9.0])  # one pixel per frame
    popping = _blob_video([4.0, 4.0, 4.0, 11.0, 11.0, 11.0])  # still, a jump, still
    assert float(flowmo_loss(popping)) > 5 * float(flowmo_loss(steady)) > 0


def test_the_appearance_cancels():
    """A constant offset on every frame (a different background) does not change the loss."""
    video = _blob_video([4.0, 4.0, 6.0, 9.0, 9.0])
    assert torch.allclose(flowmo_loss(video), flowmo_loss(video + 5.0), atol=1e-5)


@pytest.mark.parametrize("rule", ["sign", "normalized"])
def test_a_step_down_the_gradient_lowers_the_loss_and_up_raises_it(rule):
    x = torch.randn(1, 4, 6, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = flowmo_loss(x).sum()
    (grad,) = torch.autograd.grad(loss, x)
    direction = grad.sign() if rule == "sign" else grad / grad.pow(2).mean().sqrt()
    assert float(flowmo_loss(x.detach() - 1e-3 * direction)) < float(loss.detach())
    assert float(flowmo_loss(x.detach() + 1e-3 * direction)) > float(loss.detach())  # the sign matters


def test_each_variant_setting_changes_the_loss():
    x = torch.randn(2, 4, 5, 8, 8, generator=torch.Generator().manual_seed(2))
    published = flowmo_loss(x)
    for kwargs in ({"channel_mean": "before_variance"}, {"patch_size": 2}, {"reduction": "mean"},
                   {"reduction": "top", "top_fraction": 0.25}):
        assert not torch.allclose(flowmo_loss(x, **kwargs), published), kwargs
    top, mean = flowmo_loss(x, reduction="top", top_fraction=0.25), flowmo_loss(x, reduction="mean")
    assert bool((published >= top).all()) and bool((top > mean).all())  # max >= mean of the worst 25% > mean


def test_too_few_frames_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="at least 3 latent frames"):
        flowmo_loss(torch.zeros(1, 4, 2, 8, 8))
    for key, value in (("top_fraction", 0), ("loss_on", "x0"), ("reduction", "min"), ("step_rule", "sgd"),
                       ("step_output", "after"), ("channel_mean", "never")):
        with pytest.raises(ConfigError, match=f"{key}="):
            FlowMoConfig(**{key: value}).validate()
    assert FlowMoConfig().resolved_opt_range(50) == (0, 12)  # the first 12 of 50, as published
    assert FlowMoConfig().resolved_opt_range(25) == (0, 6)  # scaled
    assert FlowMoConfig(opt_range=(2, 4)).resolved_opt_range(25) == (2, 4)
