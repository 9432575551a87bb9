"""FlowMo against the authors' published loop, re-derived here from its semantics (the fact sheet in the
module docstring of :mod:`mp_plugin_flowmo.flowmo`), not from its code:

* the objective: for every latent position, the population variance over the F - 1 absolute consecutive
  frame differences of each channel, averaged over channels; the loss is the largest of these (written
  below as plain loops in float64);
* the update: one step of a fresh Adam at lr 1e-3, i.e. x - lr * m_hat / (sqrt(v_hat) + eps) with
  m_hat = g and v_hat = g^2 after bias correction: x - lr * g / (|g| + 1e-8);
* the tensor: the CFG-combined velocity at x_t with gradient through both branches; the scheduler then
  steps with that output as predicted BEFORE the update, the model is not run again, and UniPC keeps its
  state.

Each test fails if one row of that list is changed in the plugin (checked by reverting each)."""

from __future__ import annotations

import math

import pytest
import torch

from mp_plugin_flowmo import FlowMo, FlowMoConfig, flowmo_loss
from mp_plugin_wan.backbone import load
from mp_plugin_wan.tiny import TINY_SAMPLER_DEFAULTS
from mpcore.config import SamplerConfig
from mpcore.sampling import initial_latents
from mpcore.testing import measure_latent_change_survival, relative_error


def published_loss_and_position(video) -> tuple[float, tuple[int, int]]:
    """The published objective of one latent video (C, F, H, W), by loops in float64; and where the max is."""
    channels, frames, height, width = video.shape
    best, where = -math.inf, None
    for h in range(height):
        for w in range(width):
            per_channel = []
            for c in range(channels):
                diffs = [abs(float(video[c, f, h, w]) - float(video[c, f - 1, h, w])) for f in range(1, frames)]
                mean = sum(diffs) / len(diffs)
                per_channel.append(sum((d - mean) ** 2 for d in diffs) / len(diffs))  # population variance
            value = sum(per_channel) / channels
            if value > best:
                best, where = value, (h, w)
    return best, where


def test_loss_equals_the_published_objective_on_random_tensors():
    for seed, shape in ((0, (3, 5, 4, 6)), (1, (4, 7, 3, 5))):
        video = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        expected, _ = published_loss_and_position(video)
        assert float(flowmo_loss(video[None])) == pytest.approx(expected, rel=1e-12)


def test_the_max_reductions_gradient_sits_at_the_published_argmax_only():
    video = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, (h, w) = published_loss_and_position(video)
    x = video[None].clone().requires_grad_(True)
    flowmo_loss(x).sum().backward()
    magnitude = x.grad[0].abs().sum(dim=(0, 1))  # (H, W)
    assert magnitude[h, w] > 0
    magnitude[h, w] = 0
    assert float(magnitude.abs().max()) == 0.0


@pytest.fixture(scope="module")
def wan():
    return load("tiny", seed=0)


def _step0(wan, **settings):
    config = SamplerConfig(**{**TINY_SAMPLER_DEFAULTS, "steps": 6, "seed": 4})
    scheduler = wan.make_scheduler()
    scheduler.set_timesteps(config.steps)
    x = initial_latents(wan, config, scheduler, torch.Generator().manual_seed(config.seed))
    with torch.no_grad():
        cond, uncond = wan.encode_prompt(["a red ball rolling"]), wan.encode_prompt([config.negative_prompt])
    guidance = FlowMo(FlowMoConfig(**settings))
    guidance.prepare(wan, "a red ball rolling", config, scheduler)
    t = scheduler.timesteps[0]
    return guidance.condition(0, t, x, cond, uncond), x, t, cond, uncond, config


def published_update(wan, x, t, cond, uncond, scale, lr=1e-3):
    """The published step 0: CFG velocity with gradient through both branches, the objective on it, one
    fresh-Adam step (its first step in closed form); also the no-grad output the scheduler steps with."""
    x_var = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out_cond, out_uncond = wan.predict(x_var, t, cond).float(), wan.predict(x_var, t, uncond).float()
        velocity = out_uncond + scale * (out_cond - out_uncond)
        d = (velocity[0, :, 1:] - velocity[0, :, :-1]).abs()  # (C, F-1, H, W)
        variance = (d**2).mean(dim=1) - d.mean(dim=1) ** 2  # population variance, another formula
        loss = variance.mean(dim=0).max()
        (grad,) = torch.autograd.grad(loss, x_var)
    with torch.no_grad():
        before_uncond = wan.predict(x, t, uncond).float()
        before = before_uncond + scale * (wan.predict(x, t, cond).float() - before_uncond)
    return float(loss.detach()), x - lr * grad / (grad.abs() + 1e-8), before


def test_step_zero_through_the_tiny_wan_equals_the_published_step(wan):
    condition, x, t, cond, uncond, config = _step0(wan)
    loss, expected, before = published_update(wan, x, t, cond, uncond, config.cfg_scale)
    assert condition.latents is not None and condition.keep_scheduler_state  # UniPC keeps its state
    assert relative_error(condition.latents - x, expected - x) <= 1e-5  # the update
    assert relative_error(condition.model_output, before) <= 1e-5  # the scheduler steps with the pre-update output
    assert float(condition.info["loss"]) == pytest.approx(loss, rel=1e-3)


def test_the_variant_settings_leave_the_published_step(wan):
    """Each variant changes the update or the output handed to the scheduler (so each row is tested)."""
    condition, x, *_ = _step0(wan)
    for settings in ({"loss_on": "clean_estimate"}, {"channel_mean": "before_variance"}, {"patch_size": 2},
                     {"reduction": "mean"}, {"step_rule": "normalized"}):
        other, *_ = _step0(wan, **settings)
        assert relative_error(other.latents - x, condition.latents - x) > 1e-3, settings
    recompute, *_ = _step0(wan, step_output="recompute")
    assert recompute.model_output is None  # the sampler predicts again at the updated x_t
    assert not _step0(wan, keep_scheduler_state=False)[0].keep_scheduler_state


def test_how_much_of_an_update_survives_unipc(wan):
    """The published loop hands UniPC the updated x_t without touching its state: from step 1 on, its
    corrector rebuilds x_t from the previous step and keeps a small part of the change (measured on the
    tiny Wan, README); with keep_scheduler_state=False the change survives."""
    config = SamplerConfig(**{**TINY_SAMPLER_DEFAULTS, "steps": 6, "seed": 2})
    published = measure_latent_change_survival(wan, config, at=1, min_fraction=0.0, keep_scheduler_state=True)
    ours = measure_latent_change_survival(wan, config, at=1)
    assert published < 0.3 and ours > 0.8
