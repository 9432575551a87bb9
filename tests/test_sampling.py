"""The unguided loop is diffusers' AnimateDiff loop; the Tweedie forms are the textbook ones; another
update rule (``scheduler_factory``) is passed to the loop, never patched onto the backbone."""

from __future__ import annotations

import pytest
import torch
from diffusers import AnimateDiffPipeline

from mpcore.config import SamplerConfig
from mpcore_kernels import subset_tweedie_reference

from mpcore.sampling import decode_video, sample, scheduler_factory


def pipeline_latents(backbone, prompt, config: SamplerConfig):
    pipe: AnimateDiffPipeline = backbone.pipe
    pipe.scheduler = backbone.make_scheduler()
    return pipe(
        prompt=prompt,
        negative_prompt=config.negative_prompt or None,
        num_frames=config.frames,
        height=config.height,
        width=config.width,
        num_inference_steps=config.steps,
        guidance_scale=config.cfg_scale,
        eta=config.eta,
        generator=torch.Generator().manual_seed(config.seed),
        output_type="latent",
    ).frames


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(eta=0.7, negative_prompt="blurry"), dict(cfg_scale=1.0)],
    ids=["cfg", "eta-negative", "no-cfg"],
)
def test_unguided_loop_equals_animatediff_pipeline(tiny_backbone, sampler_config, overrides):
    config = SamplerConfig(**{**sampler_config.__dict__, **overrides})
    ours = sample(tiny_backbone, "a fox on a rock", config, progress=False).latents
    theirs = pipeline_latents(tiny_backbone, "a fox on a rock", config)
    assert ours.shape == theirs.shape == (1, 4, config.frames, 8, 8)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_loaded_from_saved_folders_equals_pipeline(tmp_path, sampler_config):
    """The real loading path (SD folder + motion adapter folder) on tiny saved components."""
    from mp_plugin_animatediff.backbone import load
    from mp_plugin_animatediff.tiny import save_tiny

    base, adapter = save_tiny(tmp_path, seed=1)
    backbone = load(str(base), motion_adapter=str(adapter))
    assert not backbone.is_random_init
    ours = sample(backbone, "a red ball", sampler_config, progress=False).latents
    theirs = pipeline_latents(backbone, "a red ball", sampler_config)
    assert (ours - theirs).abs().max().item() <= 1e-5
    # and the same weights as the in-memory tiny model of that seed
    reference = load("tiny", seed=1)
    assert torch.equal(sample(reference, "a red ball", sampler_config, progress=False).latents, ours)


def test_same_seed_same_video_other_seed_differs(tiny_backbone, sampler_config):
    first = sample(tiny_backbone, "a fox", sampler_config, progress=False).latents
    again = sample(tiny_backbone, "a fox", sampler_config, progress=False).latents
    other = sample(tiny_backbone, "a fox", SamplerConfig(**{**sampler_config.__dict__, "seed": 4}), progress=False).latents
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    video = decode_video(tiny_backbone, first)
    assert video.shape == (sampler_config.frames, 3, sampler_config.height, sampler_config.width)
    assert video.min() >= -1 and video.max() <= 1


def test_scheduler_factory_changes_nothing_on_the_backbone(tiny_backbone, sampler_config):
    """``use_scheduler`` rebound ``backbone.make_scheduler`` on the instance, so every later sampling of that
    backbone (a baseline, another video) silently used DDPM. ``scheduler_factory`` only returns a factory:
    'ddpm' (diffusers' DDPMScheduler on the backbone's DDIM config) changes the video at eta = 0, 'ddim' and
    None are the backbone's own, bitwise."""
    from diffusers import DDIMScheduler, DDPMScheduler

    plain = sample(tiny_backbone, "a fox", sampler_config, progress=False).latents
    own_method = tiny_backbone.make_scheduler
    ddpm = scheduler_factory(tiny_backbone, "ddpm")
    assert "make_scheduler" not in vars(tiny_backbone) and tiny_backbone.make_scheduler == own_method
    assert type(ddpm()) is DDPMScheduler and type(tiny_backbone.make_scheduler()) is DDIMScheduler
    assert ddpm().config.num_train_timesteps == tiny_backbone.make_scheduler().config.num_train_timesteps
    assert ddpm().config.steps_offset == tiny_backbone.make_scheduler().config.steps_offset

    assert sampler_config.eta == 0.0
    with_ddpm = sample(tiny_backbone, "a fox", sampler_config, progress=False, make_scheduler=ddpm).latents
    assert torch.isfinite(with_ddpm).all() and not torch.allclose(with_ddpm, plain)
    for name in ("ddim", None):
        factory = scheduler_factory(tiny_backbone, name)
        assert type(factory()) is DDIMScheduler and factory().config == tiny_backbone.make_scheduler().config
        assert torch.equal(sample(tiny_backbone, "a fox", sampler_config, progress=False, make_scheduler=factory).latents,
                           plain)
    assert torch.equal(sample(tiny_backbone, "a fox", sampler_config, progress=False).latents, plain)  # still DDIM
    assert "make_scheduler" not in vars(tiny_backbone)


def test_tweedie_forms_match_hand_computation():
    # (B, C, F, H, W) = (1, 1, 1, 1, 2): one frame holding the values [1, -2]
    x_t = torch.tensor([[1.0, -2.0]]).view(1, 1, 1, 1, 2)
    out = torch.tensor([[0.5, 0.25]]).view(1, 1, 1, 1, 2)
    a = 0.64  # sqrt(a) = 0.8, sqrt(1 - a) = 0.6

    def tweedie_x0(x_t, out, a, prediction_type):
        return subset_tweedie_reference(x_t, out, [0], a, prediction_type=prediction_type).view(1, 2)

    eps_x0 = tweedie_x0(x_t, out, a, "epsilon")
    v_x0 = tweedie_x0(x_t, out, a, "v_prediction")
    assert torch.allclose(eps_x0, torch.tensor([[(1 - 0.6 * 0.5) / 0.8, (-2 - 0.6 * 0.25) / 0.8]]))
    assert torch.allclose(v_x0, torch.tensor([[0.8 * 1 - 0.6 * 0.5, 0.8 * -2 - 0.6 * 0.25]]))
    with pytest.raises(ValueError, match="prediction_type"):
        tweedie_x0(x_t, out, a, "sample_mean")
