"""MotionPrompt guidance: what changes, what must not, and that the objective goes down."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mpcore.config import SamplerConfig
from mpcore.motionprompt import MotionPrompt, estimate_clean_frames, rollout_indices, select_frame_pairs
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
    step = 2
    uncond = tiny_backbone.encode_prompt([""]).detach()
    pairs = [(0, 1)]  # the only pair of 2 frames: the objective is a fixed function of the token
    with torch.no_grad():
        before = guidance.objective(latents, step, uncond, None, pairs).total.item()
    records = guidance.optimize_step(latents, step, uncond, None)
    with torch.no_grad():
        after = guidance.objective(latents, step, uncond, None, pairs).total.item()
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
        terms = guidance.objective(latents, 1, uncond, None, [(0, 1)])
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


# ----------------------------------------------------------------------------- the estimate


def _prepared(backbone, config, flow_estimator, discriminator, sampler_config):
    guidance = MotionPrompt(config, flow_estimator, discriminator)
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(sampler_config.steps)
    guidance.prepare(backbone, "a fox", sampler_config, scheduler)
    return guidance, scheduler


@pytest.mark.parametrize("steps,step,calls,expected", [
    (25, 4, 1, [4]), (25, 4, 3, [4, 11, 18]), (25, 24, 3, [24]), (6, 0, 6, [0, 1, 2, 3, 4, 5]), (10, 2, 4, [2, 4, 6, 8]),
])
def test_rollout_indices_split_the_rest_of_the_trajectory(steps, step, calls, expected):
    assert rollout_indices(steps, step, calls) == expected


def test_rollout_over_every_remaining_step_is_the_sampler(tiny_backbone, sampler_config):
    """N plain DDIM steps: a rollout from x_T over all steps (plain prompt) is the sampler's own output."""
    scheduler = tiny_backbone.make_scheduler()
    assert scheduler.config.set_alpha_to_one  # the last DDIM step then lands on the Tweedie estimate
    scheduler.set_timesteps(sampler_config.steps)
    x_T = torch.randn(1, 4, sampler_config.frames, 8, 8, generator=torch.Generator().manual_seed(5))
    final = sample(tiny_backbone, "a fox", sampler_config, progress=False, latents=x_T).latents
    with torch.no_grad():
        cond = tiny_backbone.encode_prompt(["a fox"])
        uncond = tiny_backbone.encode_prompt([""])
        frames = estimate_clean_frames(tiny_backbone, tiny_backbone.noise_schedule(scheduler), x_T, 0, cond, uncond, sampler_config.cfg_scale,
                                       [1, 2], calls=sampler_config.steps).frames
        one_step = estimate_clean_frames(tiny_backbone, tiny_backbone.noise_schedule(scheduler), x_T, 0, cond, uncond, sampler_config.cfg_scale,
                                         [1, 2], calls=1).frames
    expected = final[0, :, [1, 2]].permute(1, 0, 2, 3) / tiny_backbone.latent_scale(0)
    assert torch.allclose(frames, expected, atol=1e-4)
    assert not torch.allclose(one_step, expected, atol=1e-2)  # the one-step estimate is not the sample


def test_rollout_of_one_call_is_the_tweedie_estimate(tiny_backbone, sampler_config):
    scheduler = tiny_backbone.make_scheduler()
    scheduler.set_timesteps(sampler_config.steps)
    x_t = torch.randn(1, 4, sampler_config.frames, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cond = tiny_backbone.encode_prompt(["a fox"])
        t = scheduler.timesteps[2]
        eps = tiny_backbone.predict(x_t, t, cond)
        a = float(scheduler.alphas_cumprod[int(t)])
        tweedie = (x_t - (1 - a) ** 0.5 * eps) / a**0.5 / tiny_backbone.latent_scale(t)
        frames = estimate_clean_frames(tiny_backbone, tiny_backbone.noise_schedule(scheduler), x_t, 2, cond, cond, 1.0, [3, 0],
                                       calls=1).frames
    assert torch.allclose(frames, tweedie[0, :, [3, 0]].permute(1, 0, 2, 3), atol=1e-5)


def test_rollout_gradient_reaches_only_the_token(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    config = dataclasses.replace(motion_config, estimate="rollout", rollout_steps=3)
    guidance, _ = _prepared(tiny_backbone, config, flow_estimator, discriminator, sampler_config)
    latents = torch.randn(1, 4, sampler_config.frames, 8, 8, generator=torch.Generator().manual_seed(0))
    uncond = tiny_backbone.encode_prompt([""]).detach()
    terms = guidance.objective(latents, 1, uncond, None, [(0, 1)])
    terms.total.backward()
    assert guidance.tokens.grad is not None and guidance.tokens.grad.abs().sum() > 0
    modules = (tiny_backbone.unet, tiny_backbone.vae, tiny_backbone.pipe.text_encoder)
    assert all(p.grad is None for m in modules for p in m.parameters())
    # a rollout is a different estimate than the one-step one (the loss differs)
    one_step, _ = _prepared(tiny_backbone, motion_config, flow_estimator, discriminator, sampler_config)
    with torch.no_grad():
        assert one_step.objective(latents, 1, uncond, None, [(0, 1)]).disc != pytest.approx(float(terms.disc), rel=1e-4)


def test_rollout_guidance_samples_and_records_the_estimate(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    config = dataclasses.replace(motion_config, estimate="rollout", rollout_steps=2, iterations=1)
    calls = []
    predict = tiny_backbone.predict

    def counting(latents, t, cond):
        if torch.is_grad_enabled():
            calls.append(int(t))
        return predict(latents, t, cond)

    tiny_backbone.predict = counting
    result = sample(tiny_backbone, "a fox", sampler_config, guidance=MotionPrompt(config, flow_estimator, discriminator),
                    progress=False)
    assert torch.isfinite(result.latents).all()
    assert len(calls) == 2 * 2  # two optimized steps, one iteration each, two model calls with gradient each


# ----------------------------------------------------------------------------- the objective


class PrefersRightwardFlow(torch.nn.Module):
    """A discriminator with a known preference: 'real' means a large mean horizontal flow. It keeps
    its last verdict, so a test reads D itself, not the loss built from it."""

    def forward(self, flow):
        self.last = flow[:, 0].mean(dim=(1, 2)).detach()
        return flow[:, 0].mean(dim=(1, 2))


def test_guidance_moves_the_flow_towards_what_the_discriminator_calls_real(tiny_backbone, motion_config, flow_estimator):
    """The sign of the GAN term: softplus(-D) must RAISE D. With softplus(+D) this test fails."""
    frames2 = SamplerConfig(steps=6, frames=2, height=32, width=32, seed=3, cfg_scale=7.5)
    config = dataclasses.replace(motion_config, iterations=8, lr=0.05, l_tv=0.0, l_reg=0.0)
    discriminator = PrefersRightwardFlow()
    guidance, _ = _prepared(tiny_backbone, config, flow_estimator, discriminator, frames2)
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    uncond = tiny_backbone.encode_prompt([""]).detach()

    def logit() -> float:
        with torch.no_grad():
            guidance.objective(latents, 2, uncond, None, [(0, 1)])
        return float(discriminator.last.mean())

    before = logit()
    guidance.optimize_step(latents, 2, uncond, None)
    after = logit()
    assert after > before + 1e-3, f"D's logit did not rise: {before} -> {after}"


@pytest.mark.parametrize("zeroed", ["l_disc", "l_tv", "l_reg"])
def test_a_zero_loss_weight_removes_its_term(zeroed, tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    config = dataclasses.replace(motion_config, **{"l_disc": 1.5, "l_tv": 2.0, "l_reg": 3.0, zeroed: 0.0})
    guidance, _ = _prepared(tiny_backbone, config, flow_estimator, discriminator, sampler_config)
    with torch.no_grad():
        guidance.tokens.add_(0.01)  # off its init, so the regulariser has a value and a gradient
    latents = torch.randn(1, 4, sampler_config.frames, 8, 8, generator=torch.Generator().manual_seed(0))
    uncond = tiny_backbone.encode_prompt([""]).detach()
    terms = guidance.objective(latents, 1, uncond, None, [(0, 1)])
    weights = {"disc": config.l_disc, "tv": config.l_tv, "reg": config.l_reg}
    assert all(float(getattr(terms, name).detach()) > 0 for name in weights)
    expected = sum(w * getattr(terms, name) for name, w in weights.items() if w > 0)
    assert float(terms.total.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    # and the gradient is that of the remaining terms only
    terms.total.backward()
    grad = guidance.tokens.grad.clone()
    guidance.tokens.grad = None
    terms = guidance.objective(latents, 1, uncond, None, [(0, 1)])
    sum(w * getattr(terms, name) for name, w in weights.items() if w > 0).backward()
    assert torch.allclose(grad, guidance.tokens.grad, atol=1e-7)


def test_the_ddim_step_in_the_range_uses_the_optimized_condition(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    used = {}
    predict = tiny_backbone.predict
    guidance = MotionPrompt(motion_config, flow_estimator, discriminator)
    step_of = {}

    def spy(latents, t, cond):
        # in the range: uncond (no grad), K iterations (grad), then the DDIM step's cond (no grad): keep the last
        if not torch.is_grad_enabled() and cond.shape[0] == 1:
            used[step_of[int(t)]] = cond.detach().clone()
        return predict(latents, t, cond)

    scheduler = tiny_backbone.make_scheduler()
    scheduler.set_timesteps(sampler_config.steps)
    step_of.update({int(t): i for i, t in enumerate(scheduler.timesteps)})
    tiny_backbone.predict = spy
    result = sample(tiny_backbone, "a fox", sampler_config, guidance=guidance, progress=False)
    plain = tiny_backbone.encode_prompt(["a fox"])
    final = tiny_backbone.encode_prompt([result.guidance["guided_prompt"]], guidance.override()).detach()
    last_step = result.guidance["opt_range"][1] - 1
    assert last_step in used
    # the last optimized step's DDIM prediction used c* with the final token (the one after its K updates)
    assert torch.allclose(used[last_step], final, atol=1e-6)
    assert not torch.allclose(used[last_step], plain, atol=1e-4)


def test_sample_takes_initial_latents(tiny_backbone, sampler_config):
    scheduler = tiny_backbone.make_scheduler()
    scheduler.set_timesteps(sampler_config.steps)
    from mpcore.sampling import initial_latents

    seeded = initial_latents(tiny_backbone, sampler_config, scheduler, torch.Generator().manual_seed(sampler_config.seed))
    default = sample(tiny_backbone, "a fox", sampler_config, progress=False).latents
    given = sample(tiny_backbone, "a fox", sampler_config, progress=False, latents=seeded.clone()).latents
    other = sample(tiny_backbone, "a fox", sampler_config, progress=False, latents=torch.randn_like(seeded)).latents
    assert torch.equal(default, given)
    assert not torch.allclose(default, other)
    with pytest.raises(ValueError, match="latents must have shape"):
        sample(tiny_backbone, "a fox", sampler_config, progress=False, latents=seeded[:, :, :2])


def test_a_non_finite_token_update_is_rolled_back(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    config = dataclasses.replace(motion_config, lr=1e38, optimizer="sgd")
    guidance = MotionPrompt(config, flow_estimator, discriminator)
    result = sample(tiny_backbone, "a fox", sampler_config, guidance=guidance, progress=False)
    assert torch.isfinite(result.latents).all()
    assert torch.isfinite(guidance.tokens).all()
    records = [r for e in result.guidance["trace"] if e["optimized"] for r in e["iterations"]]
    assert result.guidance["skipped_updates"] == sum(r["skipped"] for r in records) > 0
    assert any(r.get("skip_reason") == "non-finite token or prompt embedding after the update" for r in records)


def test_a_long_prompt_is_cut_so_the_token_survives(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    """A prompt longer than the context used to truncate the token away: guidance silently did nothing."""
    long_prompt = " ".join(["a red fox jumps over the lazy dog"] * 12)
    baseline = sample(tiny_backbone, long_prompt, sampler_config, progress=False).latents
    guidance = MotionPrompt(motion_config, flow_estimator, discriminator)
    with pytest.warns(UserWarning, match="were cut so that the learnable token"):
        result = sample(tiny_backbone, long_prompt, sampler_config, guidance=guidance, progress=False)
    cut = result.guidance["prompt_cut"]
    assert cut["words"] > 0 and cut["tokens"] > 0
    assert guidance.guided_prompt.endswith("<mp_0>") and long_prompt.startswith(cut["prompt_used"])
    assert guidance.token_ids[0] in tiny_backbone.text.token_ids(guidance.guided_prompt)
    assert result.guidance["final_cosine"][0] < 1.0
    assert not torch.allclose(result.latents, baseline)
    # a prompt that fits is used as it is
    short = MotionPrompt(motion_config, flow_estimator, discriminator)
    assert sample(tiny_backbone, "a fox", sampler_config, guidance=short, progress=False).guidance["prompt_cut"] is None


def test_openclip_tokens_survive_a_long_prompt():
    from mp_plugin_lvdm.backbone import load

    backbone = load("tiny", seed=0, backbone="videocrafter2")
    ids = backbone.text.add_tokens(["<mp_0>"])
    from mpcore.motionprompt import fit_guided_prompt

    with pytest.warns(UserWarning):
        guided, cut = fit_guided_prompt(backbone.text, "a fox " * 60, ["<mp_0>"], ids, "end")
    assert ids[0] in backbone.text.token_ids(guided) and cut["words"] > 0
    assert len(backbone.text.token_ids(guided)) <= backbone.text.context_length


def test_the_gate_probe_measures_on_fixed_pairs_and_leaves_the_video_alone(tiny_backbone, sampler_config, motion_config, flow_estimator, discriminator):
    plain = sample(tiny_backbone, "a fox", sampler_config,
                   guidance=MotionPrompt(motion_config, flow_estimator, discriminator), progress=False)
    config = dataclasses.replace(motion_config, probe_pairs=2)
    guidance = MotionPrompt(config, flow_estimator, discriminator)
    probed = sample(tiny_backbone, "a fox", sampler_config, guidance=guidance, progress=False)
    assert torch.equal(plain.latents, probed.latents)  # the probe has its own pairs and no gradient
    optimized = [e for e in probed.guidance["trace"] if e["optimized"]]
    assert all(len(e["probe"]["pairs"]) == 2 for e in optimized)
    # before and after the step's updates: the token moved in between, so the term differs
    assert all(e["probe"]["disc_before"] != e["probe"]["disc_after"] for e in optimized)


def test_rollout_prompt_as_sampled_conditions_only_the_calls_past_the_range(tiny_backbone, sampler_config,
                                                                            motion_config, flow_estimator, discriminator):
    """6 steps, range [1, 3), a 3-call rollout from step 2 calls the model at steps 2, 3, 4 (rollout_indices):
    'as_sampled' conditions the calls at 3 and 4 on the plain prompt, which changes the estimate; with a
    range reaching past every call it gives exactly 'guided'."""
    latents = torch.randn(1, 4, sampler_config.frames, 8, 8, generator=torch.Generator().manual_seed(2))
    uncond = tiny_backbone.encode_prompt([""]).detach()

    def disc_term(rollout_prompt, opt_range):
        config = dataclasses.replace(motion_config, estimate="rollout", rollout_steps=3, opt_range=opt_range,
                                     rollout_prompt=rollout_prompt)
        guidance, _ = _prepared(tiny_backbone, config, flow_estimator, discriminator, sampler_config)
        with torch.no_grad():
            guidance.tokens += 0.5  # a token far from the plain prompt, so the two conditions differ
            return float(guidance.objective(latents, 2, uncond, None, [(0, 1)]).disc)

    assert rollout_indices(sampler_config.steps, 2, 3) == [2, 3, 4]
    assert disc_term("as_sampled", (1, 3)) != pytest.approx(disc_term("guided", (1, 3)), rel=1e-6)
    assert disc_term("as_sampled", (1, 6)) == disc_term("guided", (1, 6))


def test_rollout_through_every_remaining_step_is_the_video_the_token_gives(tiny_backbone, sampler_config, motion_config,
                                                                           flow_estimator, discriminator):
    """rollout_steps = steps with rollout_prompt='as_sampled' (issue 32's upper bound): from the last optimized
    step, with the condition the sampler then steps with, the estimate IS the finished video's latents: no
    approximation left between what the discriminator judges and what is sampled."""
    config = dataclasses.replace(motion_config, estimate="rollout", rollout_steps=sampler_config.steps,
                                 rollout_prompt="as_sampled", opt_range=(1, 3))

    class Recording(MotionPrompt):
        def condition(self, step, t, latents, cond, uncond):
            result = super().condition(step, t, latents, cond, uncond)
            if step == 2:  # the last optimized step: x_t and the condition the sampler steps with
                self.seen = (latents.clone(), result.cond.clone(), uncond, result.uncond_output)
            return result

    guidance = Recording(config, flow_estimator, discriminator)
    final = sample(tiny_backbone, "a fox", sampler_config, guidance, progress=False).latents
    latents, cond, uncond, uncond_output = guidance.seen
    frames = list(range(sampler_config.frames))
    with torch.no_grad():
        x0 = estimate_clean_frames(tiny_backbone, guidance.schedule, latents, 2, cond, uncond, sampler_config.cfg_scale,
                                   frames, calls=sampler_config.steps, uncond_output=uncond_output,
                                   plain_cond=guidance.plain_condition(), plain_from=3).frames
        guided_throughout = estimate_clean_frames(tiny_backbone, guidance.schedule, latents, 2, cond, uncond,
                                                  sampler_config.cfg_scale, frames, calls=sampler_config.steps,
                                                  uncond_output=uncond_output).frames
    finished = (final[0].permute(1, 0, 2, 3) / tiny_backbone.latent_scale(0)).float()
    torch.testing.assert_close(x0, finished, rtol=1e-4, atol=1e-4)
    # the plain prompt past the range is what makes it exact: the guided prompt there gives another video
    assert (guided_throughout - finished).abs().max() > 1e-3


# ----------------------------------------------------------------------------- cheaper variants (issue 31)


def _count_model_calls(backbone, run) -> list[tuple[bool, int]]:
    """(with gradient, batch size) of every denoiser call while ``run()`` samples."""
    calls = []
    predict = backbone.predict

    def counting(latents, t, cond):
        calls.append((torch.is_grad_enabled(), latents.shape[0]))
        return predict(latents, t, cond)

    backbone.predict = counting
    try:
        run()
    finally:
        backbone.predict = predict
    return calls


def test_stale_step_output_saves_one_forward_per_optimized_step(tiny_backbone, sampler_config, motion_config,
                                                                flow_estimator, discriminator):
    """step_output='last_iteration': the same gradient calls, and exactly one no-gradient call fewer at each of
    the 2 optimized steps (the fresh conditional forward); the video changes (the step's token is one update
    stale). That it is the output after K - 1 updates is :func:`mpcore.testing.check_stale_step_output`, run on
    every backbone by its guided contract."""
    def run(step_output):
        config = dataclasses.replace(motion_config, step_output=step_output, lr=0.05)
        result = {}
        calls = _count_model_calls(tiny_backbone, lambda: result.setdefault("latents", sample(
            tiny_backbone, "a fox", sampler_config, MotionPrompt(config, flow_estimator, discriminator),
            progress=False).latents))
        return calls, result["latents"]

    fresh_calls, fresh = run("fresh")
    stale_calls, stale = run("last_iteration")
    assert [c for c in stale_calls if c[0]] == [c for c in fresh_calls if c[0]]
    assert len([c for c in fresh_calls if not c[0]]) - len([c for c in stale_calls if not c[0]]) == 2
    assert not torch.equal(fresh, stale)


def test_last_call_rollout_runs_the_earlier_calls_once_per_step(tiny_backbone, sampler_config, motion_config,
                                                                flow_estimator, discriminator):
    """rollout_gradient='last_call', 3-call rollout, K = 2, 2 optimized steps: the gradient calls are the last
    call's conditional branch alone (batch 1), K per step; every_call runs all three calls with gradient at
    every iteration (the later two as CFG batches of 2)."""
    def gradient_calls(rollout_gradient):
        config = dataclasses.replace(motion_config, estimate="rollout", rollout_steps=3,
                                     rollout_gradient=rollout_gradient)
        calls = _count_model_calls(tiny_backbone, lambda: sample(
            tiny_backbone, "a fox", sampler_config, MotionPrompt(config, flow_estimator, discriminator), progress=False))
        return [batch for grad, batch in calls if grad], len([1 for grad, _ in calls if not grad])

    last_grad, last_plain = gradient_calls("last_call")
    every_grad, every_plain = gradient_calls("every_call")
    assert last_grad == [1] * (2 * 2)
    assert sorted(every_grad) == sorted([1, 2, 2] * (2 * 2))
    # once per step without gradient: the call at x_t, the middle CFG call, the unconditional one at the last call
    assert last_plain - every_plain == 2 * 3


def test_last_call_rollout_has_the_exact_value_and_another_gradient(tiny_backbone, sampler_config, motion_config,
                                                                   flow_estimator, discriminator):
    """At the step's start (token not yet updated) the last-call objective has the exact rollout's value; its
    gradient reaches the token and differs from the exact one (the earlier calls' paths are cut)."""
    latents = torch.randn(1, 4, sampler_config.frames, 8, 8, generator=torch.Generator().manual_seed(0))
    uncond = tiny_backbone.encode_prompt([""]).detach()
    values = {}
    for rollout_gradient in ("every_call", "last_call"):
        config = dataclasses.replace(motion_config, estimate="rollout", rollout_steps=3, rollout_gradient=rollout_gradient)
        guidance, _ = _prepared(tiny_backbone, config, flow_estimator, discriminator, sampler_config)
        t = guidance.schedule.timesteps[1]
        uncond_output = guidance.predict_uncond(latents, t, uncond)
        guidance.rollout_start = guidance.start_rollout(latents, 1, uncond, uncond_output)
        assert (guidance.rollout_start is None) == (rollout_gradient == "every_call")
        terms = guidance.objective(latents, 1, uncond, uncond_output, [(0, 1)])
        terms.total.backward()
        values[rollout_gradient] = (float(terms.disc.detach()), guidance.tokens.grad.clone())
    assert values["last_call"][0] == pytest.approx(values["every_call"][0], rel=1e-5)
    assert values["last_call"][1].abs().sum() > 0
    assert not torch.allclose(values["last_call"][1], values["every_call"][1], rtol=1e-3)
