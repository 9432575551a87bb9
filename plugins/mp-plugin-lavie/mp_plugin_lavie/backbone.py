"""The LaVie backbone adapter: our UNet3D + SD v1.4's VAE and CLIP text encoder behind mpcore's interface."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from mp_plugin_lavie import loading, tiny
from mp_plugin_lavie.unet import LaVieUNet3D, read_config
from mpcore.backbones import choose_attention, describe, freeze, quiet_diffusers
from mpcore.interfaces import Backbone
from mpcore.vae import FrameByFrameVAE
from mpcore.text import HFTextTokens


class LaVieBackbone(FrameByFrameVAE, Backbone):
    """LaVie base (Wang et al. 2023): UNet3D, AutoencoderKL and CLIP ViT-L/14 text encoder of SD v1.4."""

    name = "lavie"

    def __init__(self, unet: LaVieUNet3D, vae, tokenizer, text_encoder, device: torch.device, dtype: torch.dtype,
                 source: dict[str, Any], is_random_init: bool = False):
        self.unet = unet
        self.vae = vae
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.device = device
        self.dtype = dtype
        self.source = source
        self.is_random_init = is_random_init
        self.scheduler_config = dict(loading.LAVIE_SCHEDULER)
        self.text = HFTextTokens(tokenizer, text_encoder, device, dtype)
        self.latent_channels = unet.config["in_channels"]
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.prediction_type = self.scheduler_config["prediction_type"]
        freeze(unet, vae, text_encoder)

    def make_scheduler(self) -> DDIMScheduler:
        return DDIMScheduler(**self.scheduler_config)

    def make_ddpm_scheduler(self) -> DDPMScheduler:
        """LaVie's own sampler (``--scheduler ddpm``): ancestral DDPM (Ho et al. 2020, Alg. 2) on the same
        linear betas, as its script builds it (:data:`loading.LAVIE_DDPM_SCHEDULER`: with 50 steps
        timesteps 980, 960, ..., 0, previous t = t - 20, fixed_small variance)."""
        return DDPMScheduler(**loading.LAVIE_DDPM_SCHEDULER)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # one text condition per video (B, L, D): the UNet repeats it per frame itself
        return self.unet(latents, t, cond)

    def latent_scale(self, t=None) -> float:
        return loading.LATENT_SCALE

    def set_denoiser_checkpointing(self, enabled: bool) -> None:
        self.unet.gradient_checkpointing = enabled

    def describe(self) -> dict[str, Any]:
        return describe(
            self,
            scheduler=dict(self.scheduler_config),
            latent_scale=loading.LATENT_SCALE,
            unet=dict(self.unet.config),
            unet_parameters=sum(p.numel() for p in self.unet.parameters()),
        )


def _configure_attention(modules, attention: str, device: torch.device) -> str:
    """Spatial/cross attention through diffusers' processors (torch SDPA by default, or xformers);
    the temporal attention always uses torch SDPA (as LaVie's never uses xformers)."""
    used = choose_attention(attention, device)
    if used == "xformers":
        for module in modules:
            module.set_use_memory_efficient_attention_xformers(True)
    return used


def load(
    model: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    offload: bool = False,
    attention: str = "auto",
    base: str | None = None,
    unet_config: str | None = None,
) -> LaVieBackbone:
    """Load LaVie: ``model`` is ``lavie_base.pt`` (or ``"tiny"``: the tiny random-init model from
    ``seed``), ``base`` the SD v1.4 folder or hub id, ``unet_config`` a diffusers UNet config JSON
    (default SD v1.4's)."""
    device = torch.device(device)
    if offload:
        raise RuntimeError("--offload is not supported by the lavie backbone; at float16 LaVie needs ~6 GB of GPU memory")
    if model == "tiny":
        parts = tiny.tiny_components(seed)
        unet, vae, tokenizer, text_encoder = parts["unet"], parts["vae"], parts["tokenizer"], parts["text_encoder"]
        source = {"model": "tiny", "seed": seed}
    else:
        loading.check_checkpoint(model)
        loading.check_base(base)
        unet = loading.load_unet(model, read_config(unet_config))
        tokenizer, text_encoder, vae = loading.load_base(base)
        source = {"model": model, "base": base, "unet_config": unet_config or "SD v1.4 (built in)"}
    with quiet_diffusers():
        for module in (unet, vae, text_encoder):
            module.to(device=device, dtype=dtype)
    spatial = [m for m in unet.modules() if hasattr(m, "set_use_memory_efficient_attention_xformers")]
    source["attention"] = _configure_attention(spatial + [vae], attention, device)
    source["offload"] = False
    return LaVieBackbone(unet, vae, tokenizer, text_encoder, device, dtype, source, is_random_init=(model == "tiny"))
