"""The reserved model name ``tiny``: tiny random-init VideoCrafter2 / DynamiCrafter-architecture models
(same module tree, same key names, small widths; OpenCLIP's real 49408-token vocabulary), and savers
that write them as the official files look (``{"state_dict": ...}`` with the top-level prefixes) plus
a config YAML of the official schema, so the real loading path runs offline in tests. Output is noise.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from mp_plugin_lvdm import configs
from mp_plugin_lvdm.model import LatentDiffusion

TINY_OPENCLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 28, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_UNET = dict(model_channels=32, channel_mult=[1, 2], attention_resolutions=[1, 2], num_res_blocks=1,
                 num_head_channels=16, context_dim=32)
TINY_DDCONFIG = dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, resolution=32)
TINY_RESAMPLER = dict(dim=32, depth=1, dim_head=16, heads=2, embedding_dim=64, output_dim=32)
TINY_SAMPLER_DEFAULTS = dict(frames=16, height=32, width=32, steps=10, cfg_scale=7.5, eta=1.0)


def tiny_config(backbone: str, variant: str | None = None) -> dict[str, Any]:
    """The official config of ``backbone``/``variant`` with tiny widths (same schema, same switches)."""
    config = configs.default_config(backbone, variant)
    params = config["model"]["params"]
    params["unet_config"]["params"].update(copy.deepcopy(TINY_UNET))
    params["first_stage_config"]["params"]["ddconfig"].update(copy.deepcopy(TINY_DDCONFIG))
    params["cond_stage_config"]["params"]["arch"] = copy.deepcopy(TINY_OPENCLIP)
    if "img_cond_stage_config" in params:
        params["img_cond_stage_config"]["params"]["arch"] = copy.deepcopy(TINY_OPENCLIP)
        params["image_proj_stage_config"]["params"].update(copy.deepcopy(TINY_RESAMPLER))
    params["image_size"] = [8, 8]
    return config


def tiny_model(config: dict[str, Any], seed: int = 0) -> LatentDiffusion:
    """A random-init model at ``config``, deterministic in ``seed``; the learnable image-attention
    ``alpha`` scalars (zero at lvdm's init) are randomized so the 256 path is exercised."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LatentDiffusion(config)
        for name, param in model.named_parameters():
            if name.endswith("attn2.alpha"):
                torch.nn.init.normal_(param, std=0.5)
    return model.eval()


def save_checkpoint(path: str | Path, model: LatentDiffusion, wrap: bool = True, rename_256: bool = False) -> Path:
    """``torch.save`` the state dict as ``model.ckpt`` is: ``{"state_dict": state}`` (``wrap``) or bare;
    ``rename_256`` writes the 256 file's ``framestride_embed`` key names."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if rename_256:
        state = {k.replace("fps_embedding", "framestride_embed"): v for k, v in state.items()}
    torch.save({"state_dict": state} if wrap else state, str(path))
    return Path(path)


def save_tiny(folder: str | Path, backbone: str = "videocrafter2", variant: str | None = None, seed: int = 0) -> dict[str, Path]:
    """The tiny model as a user's files: ``{"checkpoint": model.ckpt, "config": config.yaml}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_config(backbone, variant)
    model = tiny_model(config, seed)
    return {
        "checkpoint": save_checkpoint(folder / "model.ckpt", model, rename_256=(variant == "256")),
        "config": configs.dump(config, folder / "config.yaml"),
    }
