"""``mpcore.wrap_pipeline`` on a ``WanPipeline`` the caller built: the same video as ``mpcore run --backbone wan
--model tiny`` (the same tiny weights, loaded by name), the caller's modules used as they are, its options, what
it refuses, a guided run on it, and the pipeline still usable afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, WanPipeline

import mpcore
from mpcore.testing import check_wrapped_samples_like_run
from mp_plugin_wan import tiny
from mpcore.jobs.options import RANDOM_INIT_SEED

PROMPT = "a dog running on the beach"
SETTINGS = dict(seed=3, steps=3, frames=5, height=32, width=32)


def tiny_pipeline() -> WanPipeline:
    """A WanPipeline of the components ``load(model="tiny", seed=RANDOM_INIT_SEED)`` builds."""
    return WanPipeline(**tiny.pipeline_components(tiny.tiny_components(RANDOM_INIT_SEED)))


def module_state(pipe) -> dict:
    """Per module: the object, and its parameters' storage, dtype and device."""
    return {name: (id(getattr(pipe, name)), [(p.data_ptr(), p.dtype, p.device) for p in getattr(pipe, name).parameters()])
            for name in ("transformer", "vae", "text_encoder")}


def plain_call(pipe) -> np.ndarray:
    return pipe(PROMPT, num_frames=5, height=32, width=32, num_inference_steps=2, output_type="np",
                max_sequence_length=16, generator=torch.Generator().manual_seed(0)).frames[0]


def test_wrapping_uses_the_callers_modules_as_they_are():
    pipe = tiny_pipeline()
    before, scheduler, config = module_state(pipe), pipe.scheduler, dict(pipe.scheduler.config)
    backbone = mpcore.wrap_pipeline(pipe)
    assert backbone.transformer is pipe.transformer and backbone.vae is pipe.vae
    assert backbone.text_encoder is pipe.text_encoder and backbone.text.tokenizer is pipe.tokenizer
    assert module_state(pipe) == before  # nothing moved, cast or replaced
    assert pipe.scheduler is scheduler and dict(pipe.scheduler.config) == config
    assert not hasattr(pipe, "_progress_bar_config") and not pipe.vae.use_tiling
    for module in (pipe.transformer, pipe.vae, pipe.text_encoder):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert (backbone.device, backbone.dtype) == (torch.device("cpu"), torch.float32)
    assert backbone.scheduler_class is type(scheduler) and backbone.max_sequence_length == 512
    assert backbone.origin.wrapped and backbone.origin.model is None
    assert backbone.describe()["wrapped"] == "WanPipeline"


def test_options_and_refusals():
    pipe = tiny_pipeline()
    backbone = mpcore.wrap_pipeline(pipe, max_sequence_length=16, flow_shift=5.0)
    assert backbone.max_sequence_length == 16 and backbone.make_scheduler().config.flow_shift == 5.0
    assert pipe.scheduler.config.flow_shift == 3.0  # the sampling copy's shift, not the pipeline's
    assert backbone.describe()["flow_shift"] == 5.0 and backbone.origin.options == dict(max_sequence_length=16,
                                                                                         flow_shift=5.0)
    with pytest.raises(TypeError):
        mpcore.wrap_pipeline(pipe, vae_tiling=True)  # would change the caller's VAE: not a wrap option
    with pytest.raises(mpcore.OptionError, match="flow_shift must be a number > 0"):
        mpcore.wrap_pipeline(pipe, flow_shift=0)
    parts = tiny.pipeline_components(dict(transformer=pipe.transformer, vae=pipe.vae, text_encoder=pipe.text_encoder,
                                          tokenizer=pipe.tokenizer, scheduler=pipe.scheduler))
    with pytest.raises(mpcore.OptionError, match="Wan 2.2"):
        mpcore.wrap_pipeline(WanPipeline(**parts, transformer_2=pipe.transformer, boundary_ratio=0.875))
    with pytest.raises(mpcore.OptionError, match="not a flow-matching scheduler"):
        mpcore.wrap_pipeline(WanPipeline(**dict(parts, scheduler=DDIMScheduler())))


def test_wrapped_pipeline_samples_what_mpcore_run_samples(tmp_path):
    wrapped = check_wrapped_samples_like_run("wan", mpcore.wrap_pipeline(tiny_pipeline()), PROMPT, SETTINGS,
                                             tmp_path / "run")  # no suffix: lossless PNG frames
    assert wrapped.video.shape == (5, 32, 32, 3)


def test_guided_run_on_a_wrapped_pipeline_leaves_it_usable():
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    backbone = mpcore.wrap_pipeline(pipe, max_sequence_length=16)
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
