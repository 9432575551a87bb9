"""Sampling LaVie through mpcore: guidance off is LaVie's plain CFG + DDIM loop; guidance on changes
only the learnable token rows (as the foundation tests check for AnimateDiff)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler

from mp_plugin_lavie.loading import LAVIE_SCHEDULER
from mpcore.config import SamplerConfig
from mpcore.motionprompt import MotionPrompt
from mpcore.sampling import sample


@torch.no_grad()
def lavie_loop(backbone, prompt: str, config: SamplerConfig) -> torch.Tensor:
    """LaVie's pipeline loop written out (pipeline_videogen.py, its 'ddim' option): batch [uncond, cond]
    with uncond = "" (or the negative prompt), eps = eps_u + g (eps_c - eps_u), DDIM step."""
    tokenizer, text_encoder = backbone.tokenizer, backbone.text_encoder
    ids = tokenizer([config.negative_prompt, prompt], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    text = text_encoder(ids)[0]
    scheduler = DDIMScheduler(**LAVIE_SCHEDULER)
    scheduler.set_timesteps(config.steps)
    generator = torch.Generator().manual_seed(config.seed)
    latents = torch.randn((1, 4, config.frames, config.height // 4, config.width // 4), generator=generator)
    for t in scheduler.timesteps:
        eps_u, eps_c = backbone.unet(torch.cat([latents] * 2), t, text).chunk(2)
        eps = eps_u + config.cfg_scale * (eps_c - eps_u)
        latents = scheduler.step(eps, t, latents, eta=config.eta, generator=generator).prev_sample
    return latents


@pytest.mark.parametrize("overrides", [dict(), dict(eta=0.5, negative_prompt="blurry")], ids=["cfg", "eta-negative"])
def test_unguided_sampling_is_lavies_loop(tiny_lavie, sampler_config, overrides):
    config = dataclasses.replace(sampler_config, **overrides)
    ours = sample(tiny_lavie, "a fox on a rock", config, progress=False).latents
    theirs = lavie_loop(tiny_lavie, "a fox on a rock", config)
    assert ours.shape == (1, 4, config.frames, 8, 8)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_guidance_changes_only_token_rows_and_the_video(tiny_lavie, sampler_config, motion_config, flow_estimator,
                                                        discriminator):
    table_before = tiny_lavie.text.embedding_table().detach().clone()
    params_before = {k: v.clone() for k, v in tiny_lavie.unet.state_dict().items()}
    baseline = sample(tiny_lavie, "a fox", sampler_config, progress=False).latents
    guidance = MotionPrompt(motion_config, flow_estimator, discriminator)
    guided = sample(tiny_lavie, "a fox", sampler_config, guidance=guidance, progress=False)

    table_after = tiny_lavie.text.embedding_table().detach()
    vocab = table_before.shape[0]
    assert table_after.shape[0] == vocab + 1
    assert torch.equal(table_after[:vocab], table_before), "a non-token embedding row changed"
    assert not torch.allclose(table_after[vocab].float(), tiny_lavie.text.word_embedding("authentic"))
    assert all(torch.equal(v, params_before[k]) for k, v in tiny_lavie.unet.state_dict().items())
    modules = (tiny_lavie.unet, tiny_lavie.vae, tiny_lavie.text_encoder)
    assert all(p.grad is None and not p.requires_grad for m in modules for p in m.parameters())
    assert not torch.allclose(guided.latents, baseline) and torch.isfinite(guided.latents).all()

    result = guided.guidance
    assert result["guided_prompt"] == "a fox <mp_0>"
    assert [e["step"] for e in result["trace"] if e["optimized"]] == [1, 2]
    # LaVie's paper setting decodes 6 frames: 3 adjacent pairs per iteration
    first = next(e for e in result["trace"] if e["optimized"])
    assert len(first["iterations"]) == motion_config.iterations
    assert all(len(i["pairs"]) == 3 for i in first["iterations"])


def test_guided_sampling_is_reproducible(sampler_config, motion_config, flow_estimator,
                                                                          discriminator):
    from mp_plugin_lavie.backbone import load

    runs = []
    for _ in range(2):
        backbone = load("tiny", seed=0)
        guidance = MotionPrompt(dataclasses.replace(motion_config, iterations=1), flow_estimator, discriminator)
        runs.append(sample(backbone, "a fox", sampler_config, guidance=guidance, progress=False).latents)
    assert torch.equal(runs[0], runs[1])


def test_denoiser_checkpointing_gives_the_same_gradient(tiny_lavie, sampler_config, motion_config, flow_estimator,
                                                        discriminator):
    def objective_and_grad(checkpointing):
        guidance = MotionPrompt(motion_config, flow_estimator, discriminator)
        scheduler = tiny_lavie.make_scheduler()
        scheduler.set_timesteps(sampler_config.steps)
        guidance.prepare(tiny_lavie, "a fox", sampler_config, scheduler)
        latents = torch.randn(1, 4, sampler_config.frames, 8, 8, generator=torch.Generator().manual_seed(0))
        uncond = tiny_lavie.encode_prompt([""]).detach()
        tiny_lavie.set_denoiser_checkpointing(checkpointing)
        try:
            terms = guidance.objective(latents, 1, uncond, None, [(0, 1)])
            terms.total.backward()
        finally:
            tiny_lavie.set_denoiser_checkpointing(False)
        return terms.total.detach(), guidance.tokens.grad.clone()

    plain, lean = objective_and_grad(False), objective_and_grad(True)
    assert torch.allclose(plain[0], lean[0], atol=1e-5) and torch.allclose(plain[1], lean[1], atol=1e-5)
    assert plain[1].abs().sum() > 0


def test_paper_defaults_are_the_backbones():
    from mp_plugin_lavie import motionprompt_defaults, sampler_defaults

    # the paper's LaVie row: 1 token, K=3, 5 < i < 15 (stored [6, 15)), 6 decoded frames, l_tv 1, l_reg 10, lr 5e-4
    assert motionprompt_defaults("lavie_base.pt") == dict(num_tokens=1, iterations=3, reference_opt_range=(6, 15),
                                                          decoded_frames=6, l_disc=1.0, l_tv=1.0, l_reg=10.0, lr=0.0005)
    assert sampler_defaults("lavie_base.pt") == dict(frames=16, height=320, width=512, steps=50, cfg_scale=7.5)
