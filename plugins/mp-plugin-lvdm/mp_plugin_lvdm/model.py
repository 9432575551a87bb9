"""The whole ``LatentDiffusion`` / ``LatentVisualDiffusion`` module as the checkpoint stores it.

Top-level keys: 12 schedule buffers (+ ``scale_arr`` [1400] with use_scale / use_dynamic_rescale),
``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE), ``cond_stage_model.*`` (OpenCLIP
text), and for DynamiCrafter ``embedder.*`` + ``image_proj_model.*`` (the checkpoints' key lists,
tests/data/*_state_dict.json; lvdm/models/ddpm3d.py in github.com/AILab-CVC/VideoCrafter and
github.com/Doubiiu/DynamiCrafter).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mp_plugin_lvdm.clip import FrozenOpenCLIPEmbedder, FrozenOpenCLIPImageEmbedderV2, Resampler
from mp_plugin_lvdm.unet import LVDMUNet3D
from mp_plugin_lvdm.vae import AutoencoderKL

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def make_betas(timesteps: int, linear_start: float, linear_end: float, zero_snr: bool = False) -> np.ndarray:
    """lvdm's "linear" schedule (= diffusers "scaled_linear"), float64; optionally rescaled to zero
    terminal SNR (Lin et al. 2024, Algorithm 1)."""
    betas = np.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=np.float64) ** 2
    if zero_snr:
        s = np.sqrt(np.cumprod(1.0 - betas))
        s0, sT = s[0], s[-1]
        s = (s - sT) * s0 / (s0 - sT)
        a_bar = s**2
        alphas = np.concatenate([a_bar[:1], a_bar[1:] / a_bar[:-1]])
        betas = 1.0 - alphas
    return betas


def scale_arr(scale_b: float, scale_a: float = 1.0, mid_step: int = 400, timesteps: int = 1000) -> np.ndarray:
    """``concat(linspace(scale_a, scale_b, mid_step), full(timesteps, scale_b))``: 1400 entries for
    the released configs (only 0..999 are used)."""
    return np.concatenate([np.linspace(scale_a, scale_b, mid_step), np.full(timesteps, scale_b)])


def schedule_buffers(params: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The persistent buffers of ``register_schedule`` (+ ``scale_arr``), float32, for ``model.params``."""
    timesteps = params.get("timesteps", 1000)
    betas = make_betas(timesteps, params.get("linear_start", 1e-4), params.get("linear_end", 2e-2),
                       params.get("rescale_betas_zero_snr", False))
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        values = {
            "betas": betas, "alphas_cumprod": ac, "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": np.sqrt(ac), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
            "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac), "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
            "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        }
    if params.get("parameterization", "eps") == "v":  # lvdm stores zeros for any v-model (ddpm3d.py)
        values["sqrt_recip_alphas_cumprod"] = np.zeros_like(ac)
        values["sqrt_recipm1_alphas_cumprod"] = np.zeros_like(ac)
    buffers = {k: torch.tensor(values[k], dtype=torch.float32) for k in SCHEDULE_BUFFERS}
    scale = scale_settings(params)
    if scale is not None:
        buffers["scale_arr"] = torch.tensor(scale_arr(scale["scale_b"], scale["scale_a"], scale["mid_step"], timesteps),
                                            dtype=torch.float32)
    return buffers


def scale_settings(params: dict[str, Any]) -> dict[str, float] | None:
    """VideoCrafter2's ``use_scale`` (scale_b) or DynamiCrafter's ``use_dynamic_rescale`` (base_scale)."""
    if params.get("use_scale"):
        return dict(scale_a=params.get("scale_a", 1.0), scale_b=params.get("scale_b", 0.3),
                    mid_step=params.get("mid_step", 400), kind="use_scale")
    if params.get("use_dynamic_rescale"):
        return dict(scale_a=1.0, scale_b=params.get("base_scale", 0.7), mid_step=400, kind="dynamic_rescale")
    return None


class DiffusionWrapper(nn.Module):
    def __init__(self, unet_params: dict[str, Any]):
        super().__init__()
        self.diffusion_model = LVDMUNet3D(unet_params)


class LatentDiffusion(nn.Module):
    """The checkpoint's module tree. Built from ``config["model"]["params"]``; ``image`` conditioning
    parts are built when the config has ``img_cond_stage_config``."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        params = config["model"]["params"]
        self.params = params
        for name, value in schedule_buffers(params).items():
            self.register_buffer(name, value)
        self.model = DiffusionWrapper(params["unet_config"]["params"])
        self.first_stage_model = AutoencoderKL(params["first_stage_config"]["params"])
        self.cond_stage_model = FrozenOpenCLIPEmbedder(params["cond_stage_config"].get("params", {}))
        if "img_cond_stage_config" in params:
            self.embedder = FrozenOpenCLIPImageEmbedderV2(params["img_cond_stage_config"].get("params", {}))
            self.image_proj_model = Resampler(params["image_proj_stage_config"]["params"])

    @property
    def unet(self) -> LVDMUNet3D:
        return self.model.diffusion_model


def build_meta(config: dict[str, Any]) -> LatentDiffusion:
    """The module on the meta device: shapes and keys only, nothing allocated."""
    with torch.device("meta"):
        return LatentDiffusion(config)


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_meta(config).state_dict().items()}
