"""The three terms of the MotionPrompt objective (mpcore.losses): sign, form and exact value of each,
and that MotionPrompt.objective's total is their weighted sum."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mpcore import losses
from mpcore.motionprompt import MotionPrompt


def minus_mean_magnitude(flow: torch.Tensor) -> torch.Tensor:
    """A discriminator with a known verdict: the less a pair moves, the more real (logit = -mean |flow|)."""
    return -flow.norm(dim=1).mean(dim=(1, 2))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------------- L_disc


def test_adversarial_term_is_lower_for_flows_the_discriminator_calls_real():
    still = torch.zeros(1, 2, 4, 4)
    moving = torch.full((1, 2, 4, 4), 3.0)  # |flow| = 3 sqrt(2) everywhere
    real, fake = losses.adversarial(minus_mean_magnitude(still)), losses.adversarial(minus_mean_magnitude(moving))
    assert real < fake
    # softplus(-D) with D = 0 and D = -3 sqrt(2)
    assert float(real) == pytest.approx(math.log(2.0), rel=1e-6)
    assert float(fake) == pytest.approx(softplus(3 * math.sqrt(2)), rel=1e-6)
    # the mean over pairs, not the sum
    both = losses.adversarial(minus_mean_magnitude(torch.cat([still, moving])))
    assert float(both) == pytest.approx((math.log(2.0) + softplus(3 * math.sqrt(2))) / 2, rel=1e-6)


def test_adversarial_gradient_raises_the_logit():
    """d/dD mean softplus(-D) = -sigmoid(-D) / n: a descent step raises every logit."""
    logits = torch.tensor([-2.0, 0.0, 1.5], requires_grad=True)
    losses.adversarial(logits).backward()
    assert torch.allclose(logits.grad, -torch.sigmoid(-logits.detach()) / 3, atol=1e-7)
    assert (logits.grad < 0).all()


def test_adversarial_term_is_float32_for_half_precision_logits():
    term = losses.adversarial(torch.tensor([0.5, -0.25], dtype=torch.bfloat16))
    assert term.dtype == torch.float32 and term.dim() == 0
    assert float(term) == pytest.approx((softplus(-0.5) + softplus(0.25)) / 2, rel=1e-6)


# ----------------------------------------------------------------------------- L_TV


def test_total_variation_is_zero_for_a_constant_flow():
    assert float(losses.total_variation(torch.full((2, 2, 5, 7), -1.25))) == 0.0


def test_total_variation_matches_a_hand_computed_value():
    flow = torch.zeros(2, 2, 2, 3)  # the second pair is constant (zero): it adds nothing but counts in the mean
    flow[0, 0] = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]])
    flow[0, 1] = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, -1.0]])
    # channel 0: horizontal |1-0| + |3-1| = 3, vertical |2-0| + |2-1| + |2-3| = 4 -> 7
    # channel 1: horizontal |-1-1| = 2, vertical |-1-1| = 2 -> 4
    # summed over channels and divided by pairs * H * W = 2 * 2 * 3
    assert float(losses.total_variation(flow)) == pytest.approx(11 / 12, rel=1e-6)


def test_total_variation_gradient_flattens_a_spike():
    flow = torch.zeros(1, 2, 5, 5)
    flow[0, 0, 2, 2] = 1.0
    flow.requires_grad_(True)
    losses.total_variation(flow).backward()
    # four neighbours, each |spike - 0|, mean over 1 * 5 * 5 pixels: d/d spike = 4 / 25 > 0
    assert float(flow.grad[0, 0, 2, 2]) == pytest.approx(4 / 25, rel=1e-6)
    assert float(flow.grad[0, 0, 1, 2]) == pytest.approx(-1 / 25, rel=1e-6)


# ----------------------------------------------------------------------------- L_reg


def test_token_regularizer_is_zero_at_init_and_grows_quadratically():
    init = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    direction = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    assert float(losses.token_regularizer(init.clone(), init)) == 0.0
    near = float(losses.token_regularizer(init + 0.1 * direction, init))
    far = float(losses.token_regularizer(init + 0.2 * direction, init))
    assert near == pytest.approx(0.01 * float(direction.pow(2).sum()), rel=1e-5)  # ||e - e0||^2, summed
    assert far == pytest.approx(4 * near, rel=1e-5)


def test_token_regularizer_gradient_points_away_from_init():
    init = torch.randn(1, 8, generator=torch.Generator().manual_seed(0))
    offset = torch.randn(1, 8, generator=torch.Generator().manual_seed(1))
    tokens = (init + offset).requires_grad_(True)
    losses.token_regularizer(tokens, init).backward()
    assert torch.allclose(tokens.grad, 2 * offset, atol=1e-6)
    # so a descent step moves the token back towards its init embedding
    stepped = tokens.detach() - 0.1 * tokens.grad
    assert (stepped - init).norm() < offset.norm()


# ----------------------------------------------------------------------------- the objective


def test_objective_total_is_the_weighted_sum_of_the_three_terms(monkeypatch, tiny_backbone, sampler_config,
                                                                motion_config, flow_estimator, discriminator):
    seen: dict[str, list] = {"adversarial": [], "total_variation": [], "token_regularizer": [], "flow": []}
    for name in ("adversarial", "total_variation", "token_regularizer"):
        def spy(*args, _name=name, _term=getattr(losses, name)):
            if _name == "total_variation":
                seen["flow"].append(args[0].detach())
            value = _term(*args)
            seen[_name].append(value)
            return value
        monkeypatch.setattr(losses, name, spy)

    config = dataclasses.replace(motion_config, l_disc=1.5, l_tv=2.0, l_reg=3.0)
    guidance = MotionPrompt(config, flow_estimator, discriminator)
    scheduler = tiny_backbone.make_scheduler()
    scheduler.set_timesteps(sampler_config.steps)
    guidance.prepare(tiny_backbone, "a fox", sampler_config, scheduler)
    with torch.no_grad():
        guidance.tokens.add_(0.1)  # off its init, so the regulariser has a value
    latents = torch.randn(1, 4, sampler_config.frames, 8, 8, generator=torch.Generator().manual_seed(0))
    uncond = tiny_backbone.encode_prompt([""]).detach()
    with torch.no_grad():
        terms = guidance.objective(latents, 1, uncond, None, [(0, 1)])

    # each term is computed once by mpcore.losses and recorded as it is
    assert [len(seen[k]) for k in ("adversarial", "total_variation", "token_regularizer")] == [1, 1, 1]
    assert terms.disc is seen["adversarial"][0] and terms.tv is seen["total_variation"][0]
    assert terms.reg is seen["token_regularizer"][0]
    # the GAN term is on the same flow as the TV term
    assert torch.equal(terms.disc, losses.adversarial(discriminator(seen["flow"][0])))
    weighted = {"disc": config.l_disc * float(terms.disc), "tv": config.l_tv * float(terms.tv),
                "reg": config.l_reg * float(terms.reg)}
    total = float(terms.total)
    assert all(value > 1e-3 * total for value in weighted.values()), weighted  # each one moves the total
    assert total == pytest.approx(sum(weighted.values()), rel=1e-6)
