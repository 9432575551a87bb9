"""MotionPrompt on the tiny cogvideox backbone: the learnable T5 token moves, the guided frames go
through decode_pairs as latent pairs, and the defaults hold together."""

from __future__ import annotations

import torch

from mp_plugin_cogvideox import COGVIDEOX_MOTIONPROMPT_DEFAULTS, COGVIDEOX_SAMPLER_DEFAULTS
from mp_plugin_cogvideox.backbone import load
from mp_plugin_cogvideox.tiny import TINY_SAMPLER_DEFAULTS
from mpcore.config import MotionPromptConfig, SamplerConfig
from mpcore.motionprompt import MotionPrompt
from mpcore.sampling import sample

PROMPT = "a dog running on the beach"


def test_guided_run_moves_the_token_and_decodes_latent_pairs(monkeypatch, flow_estimator, discriminator):
    backbone = load("tiny")
    calls = []
    decode_pairs = backbone.decode_pairs

    def spy(latents, checkpoint=False):
        calls.append((tuple(latents.shape), checkpoint, latents.requires_grad))
        return decode_pairs(latents, checkpoint=checkpoint)

    monkeypatch.setattr(backbone, "decode_pairs", spy)
    sampler = SamplerConfig(frames=9, height=32, width=32, steps=4, cfg_scale=6.0, seed=0)
    config = MotionPromptConfig(**{**COGVIDEOX_MOTIONPROMPT_DEFAULTS, "opt_range": (1, 3), "iterations": 2,
                                   "checkpoint_denoiser": True})
    baseline = sample(backbone, PROMPT, sampler, progress=False).latents
    result = sample(backbone, PROMPT, sampler, MotionPrompt(config, flow_estimator, discriminator), progress=False)
    info = result.guidance
    assert info["token_drift_l2"][0] > 0
    assert info["guided_prompt"] == PROMPT + " <mp_0>"
    optimized = [entry for entry in info["trace"] if entry["optimized"]]
    assert [entry["step"] for entry in optimized] == [1, 2]
    for entry in optimized:
        for iteration in entry["iterations"]:
            (a, b), = iteration["pairs"]
            assert b == a + 1 and 0 <= a and b < 3  # a latent pair of the 3 latent frames
    # 2 steps x 2 iterations, each one latent pair (2, C, h, w) with gradient, decoder checkpointed
    assert calls == [((2, 4, 4, 4), True, True)] * 4
    assert not torch.equal(result.latents, baseline)
    assert not backbone.transformer.gradient_checkpointing  # switched off after the optimized steps


def test_the_t5_token_sits_before_eos_and_padding():
    backbone = load("tiny")
    [token] = backbone.text.add_tokens(["<mp_0>"])
    ids = backbone.text.token_ids(PROMPT + " <mp_0>")
    assert ids[-2:] == [token, backbone.text.tokenizer.eos_token_id]
    encoded = backbone.encode_prompt([PROMPT + " <mp_0>"])
    assert encoded.shape == (1, backbone.max_sequence_length, 32)  # padded to the text length, no mask


def test_defaults_hold_together():
    for sampler_defaults, latent_frames in ((COGVIDEOX_SAMPLER_DEFAULTS, 13), (TINY_SAMPLER_DEFAULTS, 3)):
        sampler = SamplerConfig(**sampler_defaults)
        sampler.validate(16, 4)
        config = MotionPromptConfig(**COGVIDEOX_MOTIONPROMPT_DEFAULTS)
        config.validate(sampler, latent_frames)
    assert MotionPromptConfig(**COGVIDEOX_MOTIONPROMPT_DEFAULTS).resolved_opt_range(50) == (4, 15)
    assert COGVIDEOX_SAMPLER_DEFAULTS == dict(frames=49, height=480, width=720, steps=50, cfg_scale=6.0)


def test_rollout_estimate_and_gate_probe_on_the_dpm_rotary_model(flow_estimator, discriminator):
    """The 5b-style model (DPM scheduler, rotary embeddings): the rollout estimate's DDIM steps read the
    same alphas_cumprod, and the gate probe decodes its pairs through the same window."""
    backbone = load("tiny", tiny_variant="5b")
    sampler = SamplerConfig(frames=9, height=32, width=32, steps=4, cfg_scale=6.0, seed=0)
    config = MotionPromptConfig(**{**COGVIDEOX_MOTIONPROMPT_DEFAULTS, "opt_range": (1, 2), "iterations": 1,
                                   "estimate": "rollout", "rollout_steps": 2, "probe_pairs": 1})
    info = sample(backbone, PROMPT, sampler, MotionPrompt(config, flow_estimator, discriminator), progress=False).guidance
    probe = info["trace"][1]["probe"]
    assert info["token_drift_l2"][0] > 0 and info["skipped_updates"] == 0
    assert probe["disc_before"] != probe["disc_after"]  # the updated token changes the estimate
