"""MotionPrompt guidance: what changes, what must not, and that the objective goes down."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mpcore.motionprompt import MotionPrompt, select_frame_pairs
from mpcore.sampling import sample


def test_guidance_changes_only_token_rows_and_the_video(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    table_before = tiny_backbone.text.embedding_table().detach().clone()
    params_before = {k: v.clone() for k, v in tiny_backbone.unet.state_dict().items()}
    baseline = sample(tiny_backbone, "a fox", sampler_config, progress=False).latents
    guidance = MotionPrompt(motion_config, flow_estimator, discriminator)
    guided = sample(tiny_backbone, "a fox", sampler_config, guidance=guidance, progress=False)

    table_after = tiny_backbone.text.embedding_table().detach()
    vocab = table_before.shape[0]
    assert table_after.shape[0] == vocab + motion_config.num_tokens
    assert torch.equal(table_after[:vocab], table_before), "a non-token embedding row changed"
    init = tiny_backbone.text.word_embedding("authentic")
    assert not torch.allclose(table_after[vocab].float(), init), "the learnable token row did not move"
    assert all(torch.equal(v, params_before[k]) for k, v in tiny_backbone.unet.state_dict().items())
    assert not torch.allclose(guided.latents, baseline)
    assert torch.isfinite(guided.latents).all()

    result = guided.guidance
    assert result["guided_prompt"] == "a fox <mp_0>"
    assert result["opt_range"] == [1, 3]
    optimized = [e["step"] for e in result["trace"] if e["optimized"]]
    assert optimized == [1, 2]
    assert all(len(e["iterations"]) == motion_config.iterations for e in result["trace"] if e["optimized"])
    assert result["final_cosine"][0] < 1.0


def test_only_the_token_gets_gradients(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    guidance = MotionPrompt(motion_config, flow_estimator, discriminator)
    sample(tiny_backbone, "a fox", sampler_config, guidance=guidance, progress=False)
    modules = (tiny_backbone.unet, tiny_backbone.vae, tiny_backbone.pipe.text_encoder)
    assert all(p.grad is None and not p.requires_grad for m in modules for p in m.parameters())


def test_condition_outside_the_range_is_the_original_prompt(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    """Record the text condition of the final (batched) DDIM prediction of every step."""
    used = []
    predict = tiny_backbone.predict

    def spy(latents, t, cond):
        if cond.shape[0] == 2 and not torch.is_grad_enabled():  # the DDIM step's [uncond, cond] batch
            used.append(cond[1].detach().clone())
        return predict(latents, t, cond)

    tiny_backbone.predict = spy
    plain = tiny_backbone.encode_prompt(["a fox"]).detach()
    guidance = MotionPrompt(motion_config, flow_estimator, discriminator)
    guided = sample(tiny_backbone, "a fox", sampler_config, guidance=guidance, progress=False)
    start, stop = guided.guidance["opt_range"]
    outside = [s for s in range(sampler_config.steps) if not start <= s < stop]
    # in the range the sampler reuses the unconditional output, so only outside steps are batched
    assert len(used) == len(outside)
    assert all(torch.equal(c, plain[0]) for c in used)


def test_k_iterations_lower_the_objective(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    """On a fixed noisy latent with a fixed discriminator, the optimizer lowers the loss."""
    config = dataclasses.replace(motion_config, iterations=6, lr=0.002, decoded_frames=2)
    guidance = MotionPrompt(config, flow_estimator, discriminator)
    scheduler = tiny_backbone.make_scheduler()
    scheduler.set_timesteps(sampler_config.steps)
    frames2 = dataclasses.replace(sampler_config, frames=2)
    guidance.prepare(tiny_backbone, "a fox", frames2, scheduler)
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    t = scheduler.timesteps[2]
    uncond = tiny_backbone.encode_prompt([""]).detach()
    pairs = [(0, 1)]  # the only pair of 2 frames: the objective is a fixed function of the token
    with torch.no_grad():
        before = guidance.objective(latents, t, uncond, None, pairs).total.item()
    records = guidance.optimize_step(latents, t, uncond, None)
    with torch.no_grad():
        after = guidance.objective(latents, t, uncond, None, pairs).total.item()
    assert [r["pairs"] for r in records] == [[(0, 1)]] * 6
    assert records[0]["total"] == pytest.approx(before, rel=1e-5)
    assert after < before


def test_nan_loss_is_skipped_counted_and_never_reaches_latents(tiny_backbone, sampler_config, motion_config, flow_estimator):
    nan_discriminator = lambda flow: flow.mean(dim=(1, 2, 3)) * float("nan")  # noqa: E731
    guidance = MotionPrompt(motion_config, flow_estimator, nan_discriminator)
    result = sample(tiny_backbone, "a fox", sampler_config, guidance=guidance, progress=False)
    expected = motion_config.iterations * 2  # two optimized steps
    assert result.guidance["skipped_updates"] == expected
    assert torch.isfinite(result.latents).all()
    # the token never moved, so the guided video is the plain prompt + init token's video
    assert result.guidance["final_cosine"][0] == pytest.approx(1.0, abs=1e-6)


def test_front_placement_and_several_tokens(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    config = dataclasses.replace(motion_config, num_tokens=3, placement="front", iterations=1)
    guidance = MotionPrompt(config, flow_estimator, discriminator)
    result = sample(tiny_backbone, "a fox", sampler_config, guidance=guidance, progress=False).guidance
    assert result["guided_prompt"] == "<mp_0> <mp_1> <mp_2> a fox"
    assert result["init_words"] == ["authentic", "real", "clear"]
    assert len(result["final_cosine"]) == 3


@pytest.mark.parametrize("frames,pairs", [(2, 1), (5, 2), (6, 3), (16, 3), (16, 1)])
def test_frame_pairs_are_adjacent_disjoint_seeded(frames, pairs):
    first = select_frame_pairs(frames, pairs, torch.Generator().manual_seed(1))
    again = select_frame_pairs(frames, pairs, torch.Generator().manual_seed(1))
    assert first == again
    used = [f for pair in first for f in pair]
    assert len(first) == pairs and len(set(used)) == 2 * pairs
    assert all(b == a + 1 and 0 <= a and b < frames for a, b in first)
    positions = {tuple(select_frame_pairs(frames, pairs, torch.Generator().manual_seed(s))) for s in range(40)}
    if frames > 2 * pairs:
        assert len(positions) > 1, "positions are not random"
    with pytest.raises(ValueError):
        select_frame_pairs(3, 2, torch.Generator())


def _objective_and_grad(backbone, config, flow_estimator, discriminator, sampler_config):
    guidance = MotionPrompt(config, flow_estimator, discriminator)
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(sampler_config.steps)
    guidance.prepare(backbone, "a fox", sampler_config, scheduler)
    latents = torch.randn(1, 4, sampler_config.frames, 8, 8, generator=torch.Generator().manual_seed(0)).to(backbone.dtype)
    uncond = backbone.encode_prompt([""]).detach()
    backbone.set_denoiser_checkpointing(config.checkpoint_denoiser)
    try:
        terms = guidance.objective(latents, scheduler.timesteps[1], uncond, None, [(0, 1)])
        terms.total.backward()
    finally:
        backbone.set_denoiser_checkpointing(False)
    return guidance, terms.total.detach(), guidance.tokens.grad.clone()


def test_denoiser_checkpointing_gives_the_same_objective_and_gradient(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    plain = _objective_and_grad(tiny_backbone, motion_config, flow_estimator, discriminator, sampler_config)
    lean_config = dataclasses.replace(motion_config, checkpoint_denoiser=True)
    lean = _objective_and_grad(tiny_backbone, lean_config, flow_estimator, discriminator, sampler_config)
    assert torch.allclose(plain[1], lean[1], atol=1e-5)
    assert torch.allclose(plain[2], lean[2], atol=1e-5)
    assert plain[2].abs().sum() > 0


def test_half_precision_weights_keep_token_optimizer_and_loss_float32(sampler_config, motion_config, flow_estimator, discriminator):
    from mp_plugin_animatediff.backbone import load

    backbone = load("tiny", seed=0, dtype=torch.bfloat16)
    assert backbone.unet.dtype == torch.bfloat16
    guidance = MotionPrompt(dataclasses.replace(motion_config, iterations=1), flow_estimator, discriminator)
    result = sample(backbone, "a fox", sampler_config, guidance=guidance, progress=False)
    assert result.latents.dtype == torch.bfloat16 and torch.isfinite(result.latents.float()).all()
    assert guidance.tokens.dtype == torch.float32
    state = guidance.optimizer.state[guidance.tokens]
    assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
    assert result.guidance["skipped_updates"] == 0
    assert result.guidance["final_cosine"][0] < 1.0
