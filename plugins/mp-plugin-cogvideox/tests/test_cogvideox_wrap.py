"""``mpcore.wrap_pipeline`` on a ``CogVideoXPipeline`` the caller built: the same video as ``mpcore run --backbone
cogvideox --model tiny`` (the same tiny weights, loaded by name; the 5b-style variant with its DPM scheduler too),
the caller's modules used as they are, what it refuses, a guided run on it, and the pipeline still usable
afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import CogVideoXPipeline, DDIMScheduler

import mpcore
from mpcore.testing import check_wrapped_samples_like_run
from mp_plugin_cogvideox import tiny
from mpcore import plugins
from mpcore.backbones import quiet_diffusers
from mpcore.jobs.load import load_spec
from mpcore.jobs.options import RANDOM_INIT_SEED

PROMPT = "a dog running on the beach"
# 9 frames = 3 latent frames: with an even latent count (5 frames = 2) the CogVideoX VAE decodes 8 frames, in
# CogVideoXPipeline too
SETTINGS = dict(seed=3, steps=3, frames=9, height=32, width=32)


def tiny_pipeline(variant: str = "2b") -> CogVideoXPipeline:
    """The pipeline ``load(model="tiny", seed=RANDOM_INIT_SEED, tiny_variant=variant)`` builds, before it moves
    or configures anything."""
    with quiet_diffusers():
        return CogVideoXPipeline(**tiny.tiny_components(RANDOM_INIT_SEED, variant))


def module_state(pipe) -> dict:
    """Per module: the object, and its parameters' storage, dtype and device."""
    return {name: (id(getattr(pipe, name)), [(p.data_ptr(), p.dtype, p.device) for p in getattr(pipe, name).parameters()])
            for name in ("transformer", "vae", "text_encoder")}


def plain_call(pipe) -> np.ndarray:
    return pipe(PROMPT, num_frames=5, height=32, width=32, num_inference_steps=2, output_type="np",
                max_sequence_length=tiny.TINY_TEXT_LENGTH, generator=torch.Generator().manual_seed(0)).frames[0]


def test_wrapping_uses_the_callers_modules_as_they_are():
    pipe = tiny_pipeline()
    before, scheduler, config = module_state(pipe), pipe.scheduler, dict(pipe.scheduler.config)
    backbone = mpcore.wrap_pipeline(pipe)
    assert backbone.transformer is pipe.transformer and backbone.vae is pipe.vae and backbone.pipe is pipe
    assert backbone.text.text_encoder is pipe.text_encoder and backbone.text.tokenizer is pipe.tokenizer
    assert module_state(pipe) == before  # nothing moved, cast or replaced
    assert pipe.scheduler is scheduler and dict(pipe.scheduler.config) == config
    assert not hasattr(pipe, "_progress_bar_config") and not pipe.vae.use_tiling and not pipe.vae.use_slicing
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert (backbone.device, backbone.dtype) == (torch.device("cpu"), torch.float32)
    assert backbone.scheduler_class == "CogVideoXDDIMScheduler" and backbone.max_sequence_length == tiny.TINY_TEXT_LENGTH
    assert backbone.origin.wrapped and backbone.origin.model is None
    assert backbone.describe()["wrapped"] == "CogVideoXPipeline"


def test_refusals():
    pipe = tiny_pipeline()
    with pytest.raises(TypeError):
        mpcore.wrap_pipeline(pipe, vae_tiling=True)  # would change the caller's VAE: not a wrap option
    with pytest.raises(ValueError, match="sincos position embeddings"):
        mpcore.wrap_pipeline(pipe, max_sequence_length=16)  # the 2b's text length is fixed
    parts = dict(transformer=pipe.transformer, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    with pytest.raises(mpcore.OptionError, match="names the scheduler DDIMScheduler"):
        mpcore.wrap_pipeline(CogVideoXPipeline(**parts, scheduler=DDIMScheduler()))
    pipe.transformer.register_to_config(patch_size_t=2)  # how a CogVideoX 1.5 transformer looks
    with pytest.raises(mpcore.OptionError, match="CogVideoX 1.5"):
        mpcore.wrap_pipeline(pipe)


def test_wrapped_pipeline_samples_what_mpcore_run_samples(tmp_path):
    wrapped = check_wrapped_samples_like_run("cogvideox", mpcore.wrap_pipeline(tiny_pipeline()), PROMPT, SETTINGS,
                                             tmp_path / "run")  # no suffix: lossless PNG frames
    assert wrapped.video.shape == (9, 32, 32, 3)


def test_a_wrapped_5b_style_pipeline_samples_with_its_dpm_scheduler_as_loaded():
    """The 5b-style tiny model (rotary embeddings, CogVideoXDPMScheduler, which draws noise at every step): the
    plugin's load path (``tiny_variant`` is not a CLI option) and the wrapped pipeline give the same latents."""
    backbone = mpcore.wrap_pipeline(tiny_pipeline("5b"))
    assert backbone.scheduler_class == "CogVideoXDPMScheduler" and backbone.rotary
    wrapped = mpcore.generate(backbone, PROMPT, guidance=None, progress=False, **SETTINGS)
    spec = plugins.get("backbone", "cogvideox").spec
    loaded = load_spec(spec, "tiny", torch.device("cpu"), torch.float32, options={"tiny_variant": "5b"}, progress=False)
    assert torch.equal(mpcore.generate(loaded, PROMPT, guidance=None, progress=False, **SETTINGS).latents,
                       wrapped.latents)


def test_guided_run_on_a_wrapped_pipeline_leaves_it_usable():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    backbone = mpcore.wrap_pipeline(pipe)
    # after wrapping: freezing puts the modules in eval mode, which may round differently in a fresh pipeline
    plain, vocabulary = plain_call(pipe), len(pipe.tokenizer)
    guidance = mpcore.build_guidance("motionprompt", backbone, discriminator="random", flow="tvl1",
                                     opt_range=(0, 1), iterations=1)
    result = mpcore.generate(backbone, PROMPT, guidance=guidance, progress=False, compare=True,
                             **dict(SETTINGS, steps=2))
    assert result.guided and result.manifest["result"]["token_drift_l2"][0] > 0
    assert not np.array_equal(result.video, result.baseline)
    # the learned token was added to the caller's tokenizer and text encoder; prompts without it encode as before
    assert len(pipe.tokenizer) > vocabulary
    assert np.array_equal(plain_call(pipe), plain)
