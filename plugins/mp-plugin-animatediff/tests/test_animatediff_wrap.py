"""``mpcore.wrap_pipeline`` on an ``AnimateDiffPipeline`` the caller built: the same video as ``mpcore run
--model tiny`` (the same tiny weights, loaded by name), the caller's modules used as they are, a guided run
on them, and the pipeline still usable afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffPipeline

import mpcore
from mpcore.testing import check_wrapped_samples_like_run
from mp_plugin_animatediff import tiny
from mpcore import plugins
from mpcore.backbones import quiet_diffusers
from mpcore.jobs.options import RANDOM_INIT_SEED

PROMPT = "a red ball rolls over a striped floor"
SETTINGS = dict(seed=3, steps=3, frames=4, height=32, width=32)


def tiny_pipeline() -> AnimateDiffPipeline:
    """The pipeline ``load(model="tiny", seed=RANDOM_INIT_SEED)`` builds, before it moves or drops anything."""
    with quiet_diffusers():
        return AnimateDiffPipeline(**tiny.tiny_components(RANDOM_INIT_SEED))


def module_state(pipe) -> dict:
    """Per module: the object, its parameters' storage, dtype and device, and its attention processors."""
    state = {}
    for name in ("unet", "vae", "text_encoder", "motion_adapter"):
        module = getattr(pipe, name)
        state[name] = (id(module), [(p.data_ptr(), p.dtype, p.device) for p in module.parameters()],
                       sorted((k, type(v).__name__) for k, v in getattr(module, "attn_processors", {}).items()))
    return state


def plain_call(pipe) -> np.ndarray:
    return pipe(PROMPT, num_frames=4, height=32, width=32, num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0)).frames[0]


def test_wrapping_uses_the_callers_modules_as_they_are():
    pipe = tiny_pipeline()
    before, scheduler, config = module_state(pipe), pipe.scheduler, dict(pipe.scheduler.config)
    backbone = mpcore.wrap_pipeline(pipe)
    assert backbone.unet is pipe.unet and backbone.vae is pipe.vae and backbone.pipe is pipe
    assert backbone.text.text_encoder is pipe.text_encoder and backbone.text.tokenizer is pipe.tokenizer
    assert module_state(pipe) == before  # nothing moved, cast, replaced or dropped (the motion adapter stays)
    assert pipe.scheduler is scheduler and dict(pipe.scheduler.config) == config
    assert not hasattr(pipe, "_progress_bar_config")
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):  # what the docstring says changes
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert (backbone.device, backbone.dtype) == (torch.device("cpu"), torch.float32)
    assert backbone.make_scheduler().config == tiny.tiny_components(0)["scheduler"].config  # DDIM, its own config
    assert backbone.origin.wrapped and backbone.origin.model is None
    described = backbone.describe()
    assert described["wrapped"] == "AnimateDiffPipeline" and described["model"] is None
    with pytest.raises(TypeError):
        mpcore.wrap_pipeline(pipe, motion_adapter="guoyww/animatediff-motion-adapter-v1-5-2")


def test_wrapped_pipeline_samples_what_mpcore_run_samples(tmp_path):
    wrapped = check_wrapped_samples_like_run("animatediff", mpcore.wrap_pipeline(tiny_pipeline()), PROMPT, SETTINGS,
                                             tmp_path / "run")  # no suffix: lossless PNG frames
    assert wrapped.video.shape == (4, 32, 32, 3)


def test_guided_run_on_a_wrapped_pipeline_leaves_it_usable():
    pipe = tiny_pipeline()
    backbone = mpcore.wrap_pipeline(pipe)
    # after wrapping: putting the VAE in eval mode alone moves diffusers' decode by float rounding (ResnetBlock2D
    # makes its shortcut input contiguous only in training mode); a from_pretrained pipeline is in eval mode already
    plain, vocabulary = plain_call(pipe), len(pipe.tokenizer)
    guidance = mpcore.build_guidance("motionprompt", backbone, discriminator="random", flow="tvl1",
                                     opt_range=(0, 1), iterations=1)
    result = mpcore.generate(backbone, PROMPT, guidance=guidance, progress=False, compare=True,
                             **dict(SETTINGS, steps=2))
    assert result.guided and result.manifest["result"]["token_drift_l2"][0] > 0
    assert not np.array_equal(result.video, result.baseline)
    # the learned token was added to the caller's tokenizer and text encoder; prompts without it encode as before
    assert len(pipe.tokenizer) > vocabulary
    # equal up to float rounding: in the full suite's order the two calls differed by 4e-8 (a [0, 1] image), alone
    # they are bitwise equal; a changed encoding or a module left in another state moves the output far more
    np.testing.assert_allclose(plain_call(pipe), plain, rtol=0, atol=1e-5)


def test_an_object_no_backbone_wraps_names_the_wrappable_pipelines():
    plugins.load_plugins(reload=True)
    with pytest.raises(mpcore.OptionError) as error:
        mpcore.wrap_pipeline(object())
    message = str(error.value)
    assert "no installed backbone wraps a object" in message and "AnimateDiffPipeline (animatediff)" in message
    for item in plugins.registry("backbone").values():
        assert all(name in message for name in item.spec.wraps)
