"""LaVie base at its real size with random weights: for benchmarks (time and memory do not depend on the
weight values), no download.

The architecture of ``lavie_base.pt`` (our UNet3D at SD v1.4's UNet config with LaVie's temporal
attention: the 830 keys of its state dict, listed in tests/data/lavie_base_state_dict.json) + SD v1.4's
VAE and CLIP ViT-L/14 text tower, the exact CLIP tokenizer; sampled at 16 frames of 320x512. Assembled
as :func:`mp_plugin_lavie.backbone.load` assembles a downloaded model. The rotary embedding is built
for real (its ``freqs`` are fixed frequencies, not weights), as
:func:`mp_plugin_lavie.loading.load_unet` builds it.

Built with the parameters on the meta device and then materialized with a cheap deterministic init on
the target device, in the target dtype (:func:`mpcore.backbones.materialize`); ``device="meta"`` stops
before that (shapes only, for tests).
"""

from __future__ import annotations

from typing import Any

import torch

from mp_plugin_lavie.backbone import LaVieBackbone, _configure_attention
from mp_plugin_lavie.unet import LaVieUNet3D, make_rotary
from mpcore.backbones import (
    CLIP_VIT_L14_TEXT_CONFIG,
    SD_VAE_CONFIG,
    clip_text_encoder,
    materialize,
    parameters_on_meta,
    quiet_diffusers,
    sd_vae,
    tiny_clip_tokenizer,
)

REAL_ARCH: dict[str, dict[str, Any] | None] = dict(
    unet=None,  # None: SD v1.4's unet/config.json (mp_plugin_lavie.unet.SD14_UNET_CONFIG) + LaVie's temporal settings
    vae=SD_VAE_CONFIG,
    text_encoder=CLIP_VIT_L14_TEXT_CONFIG,
)
REAL_SAMPLER = dict(frames=16, height=320, width=512)


def random_real_components(seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                           arch: dict[str, dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """``unet``, ``vae``, ``text_encoder``, ``tokenizer`` at ``arch`` (default :data:`REAL_ARCH`) with
    random weights, deterministic in ``seed``. ``device="meta"``: parameters on the meta device."""
    arch = {**REAL_ARCH, **(arch or {})}
    rotary = make_rotary()  # real: its freqs are fixed, 1/10000^(arange(0,32,2)/32)
    with parameters_on_meta():
        unet = LaVieUNet3D(arch["unet"], rotary_emb=rotary)
        vae = sd_vae(arch["vae"])
        text_encoder = clip_text_encoder(arch["text_encoder"])
    parts = dict(unet=unet, vae=vae, text_encoder=text_encoder)
    for offset, name in enumerate(parts):
        materialize(parts[name], device, dtype, seed + offset)
    return dict(parts, tokenizer=tiny_clip_tokenizer())


def load_random_real(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                     attention: str = "auto", arch: dict[str, dict[str, Any] | None] | None = None) -> LaVieBackbone:
    """The LaVie backbone at the real architecture with random weights (see the module's doc)."""
    device = torch.device(device)
    parts = random_real_components(seed, device, dtype, arch)
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    with quiet_diffusers():
        for module in (unet, vae, text_encoder):
            module.to(device=device, dtype=dtype)
    spatial = [m for m in unet.modules() if hasattr(m, "set_use_memory_efficient_attention_xformers")]
    source = {"model": "real-random (lavie_base architecture, random init)",
              "base": "real-random (SD v1.4 VAE and text encoder architecture, random init)", "seed": seed,
              "attention": _configure_attention(spatial + [vae], attention, device), "offload": False}
    return LaVieBackbone(unet, vae, parts["tokenizer"], text_encoder, device, dtype, source, is_random_init=True)
