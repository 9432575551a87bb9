"""MotionPrompt on the tiny Wan: the token moves and changes the sample, the guided frames go through the
causal-window decode (decode_pairs, never the per-frame decode), and the clean estimate is the
flow-matching one, x0 = x_t - sigma_t v with sigma_t = scheduler.sigmas[step]."""

from __future__ import annotations

import pytest
import torch

import mpcore.motionprompt as motionprompt
from mp_plugin_wan import WAN_MOTIONPROMPT_DEFAULTS
from mp_plugin_wan.tiny import TINY_SAMPLER_DEFAULTS
from mpcore.config import ConfigError, MotionPromptConfig, SamplerConfig
from mpcore.motionprompt import MotionPrompt
from mpcore.sampling import sample

PROMPT = "a dog running on the beach"


def sampler_config(**changes) -> SamplerConfig:
    return SamplerConfig(**{**TINY_SAMPLER_DEFAULTS, "steps": 6, "seed": 2, **changes})


def motion_config(**changes) -> MotionPromptConfig:
    return MotionPromptConfig(**{**WAN_MOTIONPROMPT_DEFAULTS, "iterations": 2, "opt_range": (1, 3), **changes})


def test_guidance_moves_the_token_and_changes_the_sample(make_backbone, flow_estimator, discriminator):
    baseline = sample(make_backbone(), PROMPT, sampler_config(), progress=False).latents
    guidance = MotionPrompt(motion_config(), flow_estimator, discriminator)
    result = sample(make_backbone(), PROMPT, sampler_config(), guidance, progress=False)
    info = result.guidance
    assert info["skipped_updates"] == 0
    assert info["token_drift_l2"][0] > 0 and info["final_cosine"][0] < 1.0
    assert [e["step"] for e in info["trace"] if e["optimized"]] == [1, 2]
    assert not torch.equal(result.latents, baseline) and torch.isfinite(result.latents).all()
    # the learnable token survives the tokenizer, before the EOS the T5 tokenizer appends
    backbone = guidance.backbone
    ids = backbone.text.token_ids(info["guided_prompt"])
    assert ids[-2] == guidance.token_ids[0] and ids[-1] == backbone.text.tokenizer.eos_token_id


def test_guided_frames_are_decoded_as_causal_windows(make_backbone, flow_estimator, discriminator, monkeypatch):
    backbone = make_backbone()
    windows = []
    decode_pairs = backbone.decode_pairs

    def record(latents, checkpoint=False):
        windows.append((tuple(latents.shape), checkpoint))
        return decode_pairs(latents, checkpoint=checkpoint)

    def refuse(*args, **kwargs):
        raise AssertionError("MotionPrompt decoded latent frames one by one (Backbone.decode)")

    monkeypatch.setattr(backbone, "decode_pairs", record)
    monkeypatch.setattr(backbone, "decode", refuse)
    guidance = MotionPrompt(motion_config(checkpoint_vae=True), flow_estimator, discriminator)
    sample(backbone, PROMPT, sampler_config(), guidance, progress=False)
    # 2 optimized steps x 2 iterations, one latent pair (decoded_frames 2) each, checkpointed as configured
    assert windows == [((2, 16, 4, 4), True)] * 4
    pairs = [tuple(p) for e in guidance.trace if e["optimized"] for it in e["iterations"] for p in it["pairs"]]
    assert all(b == a + 1 and b < 3 for a, b in pairs)  # adjacent LATENT frames of the 3


def test_the_clean_estimate_is_the_flow_matching_one(make_backbone, flow_estimator, discriminator, monkeypatch):
    calls = []
    tweedie = motionprompt.subset_tweedie

    def record(x_t, model_out, frame_index, alpha_bar=None, **kwargs):
        calls.append((alpha_bar, kwargs["prediction_type"], kwargs["sigma"], kwargs["latent_scale"]))
        return tweedie(x_t, model_out, frame_index, alpha_bar, **kwargs)

    monkeypatch.setattr(motionprompt, "subset_tweedie", record)
    guidance = MotionPrompt(motion_config(), flow_estimator, discriminator)
    sample(make_backbone(), PROMPT, sampler_config(), guidance, progress=False)
    sigmas = guidance.scheduler.sigmas
    assert len(calls) == 4  # 2 optimized steps x 2 iterations
    for (alpha_bar, kind, sigma, scale), step in zip(calls, [1, 1, 2, 2]):
        assert alpha_bar is None and kind == "flow_matching" and scale == 1.0
        assert float(sigma) == float(sigmas[step])
    assert 0 < float(sigmas[2]) < float(sigmas[1]) < 1  # the shifted flow sigmas, not alphas_cumprod


def test_decoded_frames_are_counted_in_latent_frames(make_backbone, flow_estimator, discriminator):
    """9 video frames are 3 latent frames: 4 decoded frames (2 latent pairs) do not fit."""
    guidance = MotionPrompt(motion_config(decoded_frames=4), flow_estimator, discriminator)
    with pytest.raises(ConfigError, match="latent frames=3"):
        sample(make_backbone(), PROMPT, sampler_config(), guidance, progress=False)
