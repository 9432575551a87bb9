"""The reserved model name ``tiny``: a tiny random-init LaVie-architecture model, and savers that write
it as users' files look (``lavie_base.pt`` in the official ``{"ema": ...}`` layout, an SD v1.4-layout
diffusers folder, a UNet config JSON), so the real loading path runs offline in tests.

Same architecture as the real one (UNet3D with temporal attention, rotary embedding and relative
position bias; AutoencoderKL; CLIP text encoder with CLIP's real 49408-token vocabulary rebuilt
offline), at a size that samples in seconds on a CPU; deterministic in the seed. Its output is noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler

from mp_plugin_lavie.unet import LaVieUNet3D
from mpcore.backbones import tiny_clip_text_encoder, tiny_clip_tokenizer

# A diffusers UNet config of the SD v1.4 schema, as --unet-config takes it: 2 levels, head width 32
# (the rotary embedding covers 32 channels per head), 2D block names as in SD's unet/config.json.
TINY_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "attention_head_dim": [1, 2],
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
}
TINY_SAMPLER_DEFAULTS = dict(frames=8, height=32, width=32, steps=25, cfg_scale=7.5)

# SD v1.4's scheduler/scheduler_config.json (a PNDM config; LaVie overrides the betas)
SD14_SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
)


def tiny_unet(seed: int = 0, config: dict | None = None) -> LaVieUNet3D:
    """A random-init UNet3D; the temporal output projections (zero at LaVie's init) are randomized
    too, so the frames of the tiny model interact (a trained checkpoint's are not zero either)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = LaVieUNet3D(config or TINY_UNET_CONFIG)
        for name, param in unet.named_parameters():
            if "attn_temp.to_out.0.weight" in name:
                torch.nn.init.normal_(param, std=0.05)
            if "relative_attention_bias" in name:
                torch.nn.init.normal_(param, std=0.5)
    return unet


def tiny_components(seed: int = 0) -> dict:
    """Random-init UNet3D, VAE (4x down-sampling), CLIP text encoder and tokenizer, deterministic in ``seed``."""
    unet = tiny_unet(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            block_out_channels=(16, 32, 32),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            latent_channels=4,
            norm_num_groups=8,
            layers_per_block=1,
            sample_size=32,
        )
        text_encoder = tiny_clip_text_encoder(TINY_UNET_CONFIG["cross_attention_dim"])
    tokenizer = tiny_clip_tokenizer()
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)


def save_base(folder: str | Path, parts: dict) -> Path:
    """An SD v1.4-layout diffusers folder holding what LaVie takes from it (vae, tokenizer,
    text_encoder, scheduler); LaVie brings its own UNet."""
    folder = Path(folder)
    parts["vae"].save_pretrained(folder / "vae")
    parts["text_encoder"].save_pretrained(folder / "text_encoder")
    parts["tokenizer"].save_pretrained(folder / "tokenizer")
    PNDMScheduler(**SD14_SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
    return folder


def save_checkpoint(path: str | Path, unet: torch.nn.Module, wrap: bool = True) -> Path:
    """``torch.save`` the UNet's state dict as ``lavie_base.pt`` is: ``{"ema": state}`` (``wrap``)
    or bare."""
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    torch.save({"ema": state} if wrap else state, str(path))
    return Path(path)


def save_tiny(folder: str | Path, seed: int = 0) -> dict[str, Path]:
    """The tiny model as a user's files: ``{"checkpoint": lavie_tiny.pt ({"ema": ...}), "base": SD
    v1.4-layout folder, "unet_config": unet_config.json}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = tiny_components(seed)
    config_path = folder / "unet_config.json"
    config_path.write_text(json.dumps(TINY_UNET_CONFIG, indent=2))
    return {
        "checkpoint": save_checkpoint(folder / "lavie_tiny.pt", parts["unet"]),
        "base": save_base(folder / "base", parts),
        "unet_config": config_path,
    }
