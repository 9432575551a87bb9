"""Guidance off, mpcore's sampler on the cogvideox backbone equals ``diffusers.CogVideoXPipeline`` on the
same tiny components, seed, text length and settings -- bitwise -- for both CogVideoX schedulers (DDIM:
2b-style, sincos positions; DPM, the core's second-order step and the step's own noise: 5b-style,
rotary embeddings); and a saved folder loads through the plugin's loader to the same output."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXPipeline
from mpcore_kernels import subset_tweedie

from mp_plugin_cogvideox.backbone import load
from mp_plugin_cogvideox.tiny import TINY_TEXT_LENGTH, save_tiny, tiny_components
from mpcore.config import SamplerConfig
from mpcore.schedules import AlphaBarSchedule
from mpcore.sampling import decode_video, sample

PROMPT = "a dog running on the beach"
SEED = 3
CONFIG = dict(frames=9, height=32, width=32, steps=4, seed=SEED)


def pipeline_output(variant: str, cfg_scale: float, output_type: str):
    pipe = CogVideoXPipeline(**tiny_components(0, variant))
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, num_frames=CONFIG["frames"], height=CONFIG["height"], width=CONFIG["width"],
                num_inference_steps=CONFIG["steps"], guidance_scale=cfg_scale,
                generator=torch.Generator("cpu").manual_seed(SEED), output_type=output_type,
                max_sequence_length=TINY_TEXT_LENGTH).frames


@pytest.mark.parametrize("variant,cfg_scale", [("2b", 6.0), ("5b", 6.0), ("2b", 1.0)],
                         ids=["ddim-sincos-cfg6", "dpm-rotary-cfg6", "ddim-no-cfg"])
def test_sampling_equals_the_pipeline_bitwise(variant, cfg_scale):
    backbone = load("tiny", tiny_variant=variant)
    assert backbone.scheduler_class == ("CogVideoXDDIMScheduler" if variant == "2b" else "CogVideoXDPMScheduler")
    ours = sample(backbone, PROMPT, SamplerConfig(cfg_scale=cfg_scale, **CONFIG), progress=False).latents
    theirs = pipeline_output(variant, cfg_scale, "latent")  # (B, F, C, h, w)
    assert ours.shape == (1, 4, 3, 4, 4)
    assert torch.equal(ours, theirs.permute(0, 2, 1, 3, 4))


def test_decoded_video_equals_the_pipelines_bitwise(tiny_2b):
    latents = sample(tiny_2b, PROMPT, SamplerConfig(cfg_scale=6.0, **CONFIG), progress=False).latents
    frames = decode_video(tiny_2b, latents)  # (F_video, 3, H, W) in [-1, 1]
    theirs = pipeline_output("2b", 6.0, "np")[0]  # (F_video, H, W, 3) in [0, 1]
    assert frames.shape == (9, 3, 32, 32) and frames.dtype == torch.float32
    # the pipeline's postprocess is x * 0.5 + 0.5 clamped to [0, 1]: the same on our clamped frames
    ours = (frames * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert (ours == theirs).all()


@pytest.mark.parametrize("variant", ["2b", "5b"])
def test_the_v_estimate_is_the_schedulers_own_x0(variant):
    """MotionPrompt's clean estimate reads alphas_cumprod[t]: in both CogVideoX schedulers that is the
    SNR-shifted, zero-SNR-rescaled table their step uses, so the estimate IS the step's x0."""
    backbone = load("tiny", tiny_variant=variant)
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 4, 4, generator=generator)
    v = torch.randn(1, 4, 3, 4, 4, generator=generator)
    for index in (0, 4, 9):
        t = scheduler.timesteps[index]
        if variant == "2b":
            x0 = scheduler.step(v, t, x, return_dict=False)[1]
        else:
            x0 = scheduler.step(v, None, t, None, x, generator=torch.Generator().manual_seed(1))[1]
        estimate = subset_tweedie(x, v, [0, 1, 2], prediction_type="v_prediction", latent_scale=1.0,
                                  **AlphaBarSchedule(_VPrediction(), scheduler).tweedie_level(index))  # (F, C, h, w)
        torch.testing.assert_close(estimate, x0[0].permute(1, 0, 2, 3).float(), rtol=1e-6, atol=1e-6)
    assert scheduler.alphas_cumprod[999] == 0  # zero terminal SNR: step 0's estimate is -v


@pytest.mark.parametrize("variant", ["2b", "5b"])
def test_a_saved_folder_loads_to_the_same_output(tmp_path, variant):
    folder = save_tiny(tmp_path / "cogvideox-tiny", seed=0, variant=variant)
    assert {p.name for p in folder.iterdir()} >= {"model_index.json", "transformer", "vae", "text_encoder",
                                                   "tokenizer", "scheduler"}
    loaded = load(str(folder), max_sequence_length=TINY_TEXT_LENGTH)
    memory = load("tiny", tiny_variant=variant)
    assert loaded.scheduler_class == memory.scheduler_class and not loaded.is_random_init
    config = SamplerConfig(cfg_scale=6.0, **CONFIG)
    assert torch.equal(sample(loaded, PROMPT, config, progress=False).latents,
                       sample(memory, PROMPT, config, progress=False).latents)


class _VPrediction:
    """What AlphaBarSchedule reads of a backbone here: its prediction type."""

    prediction_type = "v_prediction"
