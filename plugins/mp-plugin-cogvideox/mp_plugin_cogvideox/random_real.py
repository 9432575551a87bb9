"""CogVideoX at its real size with random weights: for benchmarks (time and memory do not depend on the
weight values), no download.

The architecture of ``THUDM/CogVideoX-2b`` (``mp_plugin_cogvideox.loading``: the converter's facts and
diffusers' defaults): the 30-layer, 30-head transformer (sincos position embeddings), the causal 3D
VAE, T5 v1.1 XXL's encoder (4.8B parameters; a real run keeps it too), its DDIM scheduler; sampled at
the pipeline's 49 frames of 480x720. The tokenizer is the tiny offline one (token ids, not values,
matter for cost; prompts are padded to 226 tokens either way). ``variant="5b"`` builds the 5b
transformer and VAE scaling factor instead (with the 2b's DDIM scheduler).

Built with the parameters on the meta device and materialized with a cheap deterministic init on the
target device, in the target dtype (:func:`mpcore.backbones.materialize`); ``device="meta"`` stops
before that (shapes only, for tests).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

from mp_plugin_cogvideox.backbone import CogVideoXBackbone
from mp_plugin_cogvideox.loading import COGVIDEOX_SCHEDULER, T5_V11_XXL, TRANSFORMER_CONFIGS, VAE_SCALING_FACTOR
from mp_plugin_cogvideox.tiny import tiny_tokenizer
from mpcore.backbones import choose_attention, materialize, parameters_on_meta, quiet_diffusers

REAL_SAMPLER = dict(frames=49, height=480, width=720)


def random_real_components(seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                           variant: str = "2b", arch: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``CogVideoXPipeline``'s components at the released architecture ``variant`` with random weights,
    deterministic in ``seed``; ``device="meta"``: parameters on the meta device. ``arch`` overrides
    settings of ``transformer``, ``vae`` and ``text_encoder`` (tests build the same path small)."""
    from transformers import T5Config, T5EncoderModel

    arch = arch or {}
    with parameters_on_meta():
        transformer = CogVideoXTransformer3DModel(**{**TRANSFORMER_CONFIGS[variant], **arch.get("transformer", {})})
        vae = AutoencoderKLCogVideoX(**{"scaling_factor": VAE_SCALING_FACTOR[variant], **arch.get("vae", {})})
        text_encoder = T5EncoderModel(T5Config(**{**T5_V11_XXL, **arch.get("text_encoder", {})}))
    parts = dict(transformer=transformer, vae=vae, text_encoder=text_encoder)
    for offset, name in enumerate(parts):
        materialize(parts[name], device, dtype, seed + offset)
    return dict(parts, tokenizer=tiny_tokenizer(), scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER))


def load_random_real(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                     attention: str = "auto", variant: str = "2b",
                     arch: dict[str, dict[str, Any]] | None = None) -> CogVideoXBackbone:
    """The CogVideoX backbone at the real architecture with random weights (see the module's doc)."""
    device = torch.device(device)
    if attention == "xformers":
        raise RuntimeError("--attention xformers: CogVideoX's joint attention has its own processor; use sdpa")
    attention_used = choose_attention(attention, device)
    with quiet_diffusers():
        pipe = CogVideoXPipeline(**random_real_components(seed, device, dtype, variant, arch))
        pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    source = {"model": f"real-random (CogVideoX-{variant} architecture, random init)", "seed": seed,
              "attention": attention_used, "offload": False}
    return CogVideoXBackbone(pipe, device, dtype, source, is_random_init=True)
