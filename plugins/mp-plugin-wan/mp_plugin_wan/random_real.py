"""Wan 2.1 T2V 1.3B at its real size with random weights: for benchmarks (time and memory do not depend
on the weight values), no download.

The architecture of ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` (:data:`mp_plugin_wan.loading.TRANSFORMER_CONFIGS`,
``VAE_CONFIG``, ``UMT5_XXL_CONFIG``): the 1.3B transformer, the Wan 2.1 VAE, UMT5-XXL's encoder (its 256384
x 4096 embedding table included: MotionPrompt runs the encoder with gradients at every token update, so its
cost belongs in the measurement), the official folder's UniPC flow scheduler; sampled at 81 frames of
480x832, as WanPipeline's defaults. The tokenizer is the tiny offline one (ids are all below UMT5's
vocabulary; the text length, 512 tokens, is what costs). Assembled as :func:`mp_plugin_wan.backbone.load`
assembles a downloaded model.

Built with the parameters on the meta device and then materialized with a cheap deterministic init on the
target device (:func:`mpcore.backbones.materialize`), the transformer and text encoder in the target dtype,
the VAE in float32 (as the loader keeps it); ``device="meta"`` stops before that (shapes only, for tests).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from mp_plugin_wan.backbone import WanBackbone, place
from mp_plugin_wan.loading import FLOW_SCHEDULER, TRANSFORMER_CONFIGS, UMT5_XXL_CONFIG, VAE_CONFIG
from mpcore.backbones import materialize, parameters_on_meta, quiet_diffusers, tiny_t5_tokenizer

REAL_ARCH: dict[str, dict[str, Any]] = dict(transformer=TRANSFORMER_CONFIGS["1.3B"], vae=VAE_CONFIG,
                                            text_encoder=UMT5_XXL_CONFIG)
REAL_SAMPLER = dict(frames=81, height=480, width=832)


def random_real_components(seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                           arch: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The components at ``arch`` (default :data:`REAL_ARCH`; any of its three entries may be replaced)
    with random weights, deterministic in ``seed``: ``transformer``, ``vae``, ``text_encoder``,
    ``tokenizer``, ``scheduler``, ``scheduler_class``, ``scheduler_config``. ``device="meta"``:
    parameters on the meta device."""
    arch = {**REAL_ARCH, **(arch or {})}
    with parameters_on_meta(), quiet_diffusers():
        transformer = WanTransformer3DModel(**arch["transformer"])
        vae = AutoencoderKLWan(**arch["vae"])
        text_encoder = UMT5EncoderModel(UMT5Config(**arch["text_encoder"]))
    materialize(transformer, device, dtype, seed)
    materialize(vae, device, torch.float32, seed + 1)
    materialize(text_encoder, device, dtype, seed + 2)
    scheduler = UniPCMultistepScheduler(**FLOW_SCHEDULER)
    return dict(transformer=transformer.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
                tokenizer=tiny_t5_tokenizer(), scheduler=scheduler, scheduler_class=UniPCMultistepScheduler,
                scheduler_config=dict(scheduler.config))


def load_random_real(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                     attention: str = "auto", arch: dict[str, dict[str, Any]] | None = None) -> WanBackbone:
    """The wan backbone at the real 1.3B architecture with random weights (see the module's doc)."""
    if attention == "xformers":
        raise RuntimeError("--attention xformers is not available for wan; use sdpa")
    device = torch.device(device)
    parts = random_real_components(seed, device, dtype, arch)
    place(parts, device, dtype, offload=False)
    source = {"model": "real-random (Wan2.1-T2V-1.3B architecture, random init)", "seed": seed, "attention": "sdpa",
              "offload": False}
    return WanBackbone(parts, device, dtype, source, is_random_init=True)
