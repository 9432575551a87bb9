"""AnimateDiff at its real size with random weights: for benchmarks (time and memory do not depend on
the weight values), no download.

The architecture of ``stable-diffusion-v1-5`` + ``guoyww/animatediff-motion-adapter-v1-5-2``: SD-1.5's
UNet (``unet/config.json``) with the v2 motion adapter (21 motion modules, mid block included, as in
``mm_sd_v15_v2.ckpt`` and AnimateDiff's configs/inference/inference-v2.yaml, github.com/guoyww/AnimateDiff),
SD's VAE and CLIP ViT-L/14's text tower, the exact CLIP tokenizer; sampled at 16 frames
of 512x512. Assembled as :func:`mp_plugin_animatediff.backbone.load` assembles a downloaded model: an
``AnimateDiffPipeline`` whose ``UNetMotionModel`` holds the motion modules (no separate adapter copy,
as :func:`~mp_plugin_animatediff.backbone.drop_adapter_copy` leaves a loaded model), the AnimateDiff
DDIM settings.

Built with the parameters on the meta device and then materialized with a cheap deterministic init on
the target device, in the target dtype (:func:`mpcore.backbones.materialize`); ``device="meta"`` stops
before that (shapes only, for tests).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel

from mp_plugin_animatediff.backbone import AnimateDiffBackbone
from mp_plugin_animatediff.loading import ANIMATEDIFF_SCHEDULER, MOTION_HEADS, MOTION_NORM_GROUPS
from mpcore.backbones import (
    CLIP_VIT_L14_TEXT_CONFIG,
    SD_VAE_CONFIG,
    choose_attention,
    clip_text_encoder,
    materialize,
    parameters_on_meta,
    quiet_diffusers,
    sd_vae,
    tiny_clip_tokenizer,
)

# stable-diffusion-v1-5's unet/config.json (the architecture keys; 859,520,964 parameters)
SD15_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)
# guoyww/animatediff-motion-adapter-v1-5-2's config.json (453,209,280 parameters)
MOTION_ADAPTER_V152_CONFIG: dict[str, Any] = dict(
    block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2, motion_mid_block_layers_per_block=1,
    motion_num_attention_heads=MOTION_HEADS, motion_norm_num_groups=MOTION_NORM_GROUPS, motion_max_seq_length=32,
    use_motion_mid_block=True,
)
REAL_ARCH: dict[str, dict[str, Any]] = dict(
    unet=SD15_UNET_CONFIG, motion_adapter=MOTION_ADAPTER_V152_CONFIG, vae=SD_VAE_CONFIG, text_encoder=CLIP_VIT_L14_TEXT_CONFIG,
)
REAL_SAMPLER = dict(frames=16, height=512, width=512)


def random_real_components(seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                           arch: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The pipeline's components at ``arch`` (default :data:`REAL_ARCH`) with random weights,
    deterministic in ``seed``: ``unet`` (the ``UNetMotionModel``), ``motion_adapter`` (None: the UNet
    holds the motion modules), ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``. ``device="meta"``: parameters on the meta device."""
    arch = {**REAL_ARCH, **(arch or {})}
    with parameters_on_meta():
        unet2d = UNet2DConditionModel(**arch["unet"])
        # from_unet2d derives the UNetMotionModel's config from the 2D UNet and the adapter (as the
        # pipeline does for a downloaded model)
        unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter(**arch["motion_adapter"]), load_weights=False)
        vae = sd_vae(arch["vae"])
        text_encoder = clip_text_encoder(arch["text_encoder"])
    parts = dict(unet=unet, vae=vae, text_encoder=text_encoder)
    for offset, name in enumerate(parts):
        materialize(parts[name], device, dtype, seed + offset + (name != "unet"))  # the seeds of before
    return dict(parts, motion_adapter=None, tokenizer=tiny_clip_tokenizer(), scheduler=DDIMScheduler(**ANIMATEDIFF_SCHEDULER))


def load_random_real(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                     attention: str = "auto", arch: dict[str, dict[str, Any]] | None = None) -> AnimateDiffBackbone:
    """The AnimateDiff backbone at the real architecture with random weights (see the module's doc)."""
    device = torch.device(device)
    parts = random_real_components(seed, device, dtype, arch)
    with quiet_diffusers():
        pipe = AnimateDiffPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    attention_used = choose_attention(attention, device)
    if attention_used == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    with quiet_diffusers():
        pipe.to(device=device, dtype=dtype)
    source = {"model": "real-random (SD-1.5 architecture, random init)",
              "motion_adapter": "real-random (animatediff-motion-adapter-v1-5-2 architecture, random init)",
              "seed": seed, "attention": attention_used, "offload": False}
    return AnimateDiffBackbone(pipe, dict(parts["scheduler"].config), device, dtype, source, is_random_init=True)
