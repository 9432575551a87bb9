"""The guided DDIM loop.

DDIM (Song et al., "Denoising Diffusion Implicit Models", ICLR 2021, eq. 12) through diffusers'
``DDIMScheduler``, with classifier-free guidance (Ho & Salimans 2022):
``out = out_uncond + s * (out_cond - out_uncond)``. Guidance is an object asked for the condition
of every step; with ``guidance=None`` the loop is exactly diffusers' AnimateDiff pipeline loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from mpcore.config import SamplerConfig
from mpcore.interfaces import Backbone


@dataclass
class StepCondition:
    """What a guidance object returns for one step: the condition to denoise with, and optionally
    the unconditional model output it already computed for (x_t, t) (reused, not recomputed)."""

    cond: torch.Tensor
    uncond_output: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Guidance(Protocol):
    def prepare(self, backbone: Backbone, prompt: str, config: SamplerConfig, scheduler) -> None: ...

    def condition(
        self, step: int, t: torch.Tensor, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor
    ) -> StepCondition | None:
        """The condition for step ``step``, or None to use the plain prompt's."""
        ...

    def finish(self) -> dict[str, Any]: ...


@dataclass
class SampleResult:
    latents: torch.Tensor
    """Final clean latents (B, C, F, h, w), still multiplied by the VAE scale."""
    guidance: dict[str, Any] | None = None


def cfg_output(
    backbone: Backbone,
    latents: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    cfg_scale: float,
    uncond_output: torch.Tensor | None = None,
) -> torch.Tensor:
    """Classifier-free guided model output. Batches [uncond, cond] as diffusers does, unless the
    unconditional output is given (it does not depend on the learnable token). With
    ``backbone.guidance_rescale`` > 0 the result is rescaled as :func:`rescale_cfg` does."""
    if cfg_scale <= 1.0:
        return backbone.predict(latents, t, cond)
    if uncond_output is not None:
        out_cond = backbone.predict(latents, t, cond)
        out = uncond_output + cfg_scale * (out_cond - uncond_output)
    else:
        out_uncond, out_cond = backbone.predict(torch.cat([latents] * 2), t, torch.cat([uncond, cond])).chunk(2)
        out = out_uncond + cfg_scale * (out_cond - out_uncond)
    rescale = getattr(backbone, "guidance_rescale", 0.0)
    return rescale_cfg(out, out_cond, rescale) if rescale > 0 else out


def rescale_cfg(out: torch.Tensor, out_cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    2024, eq. 15-16): match the guided output's std to the conditional output's (std over all
    non-batch dims), then mix ``rescale * rescaled + (1 - rescale) * out``."""
    dims = list(range(1, out.dim()))
    rescaled = out * (out_cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1.0 - rescale) * out


def initial_latents(backbone: Backbone, config: SamplerConfig, scheduler, generator: torch.Generator) -> torch.Tensor:
    f = backbone.vae_scale_factor
    shape = (1, backbone.latent_channels, config.frames, config.height // f, config.width // f)
    latents = randn_tensor(shape, generator=generator, device=backbone.device, dtype=backbone.dtype)
    return latents * scheduler.init_noise_sigma


def checked_latents(backbone: Backbone, config: SamplerConfig, latents: torch.Tensor) -> torch.Tensor:
    """Given initial noise x_T, checked against the config's latent shape (B, C, F, h, w) and moved to
    the backbone's device and dtype."""
    f = backbone.vae_scale_factor
    expected = (backbone.latent_channels, config.frames, config.height // f, config.width // f)
    if latents.dim() != 5 or tuple(latents.shape[1:]) != expected:
        raise ValueError(f"latents must have shape (B, {', '.join(map(str, expected))}) for this config, "
                         f"got {tuple(latents.shape)}")
    return latents.to(device=backbone.device, dtype=backbone.dtype)


def sample(
    backbone: Backbone,
    prompt: str,
    config: SamplerConfig,
    guidance: Guidance | None = None,
    progress: bool = True,
    description: str = "sampling",
    latents: torch.Tensor | None = None,
) -> SampleResult:
    """Sample one video for ``prompt``; ``guidance`` (e.g. MotionPrompt) may change each step's condition.

    ``latents``: the initial noise x_T (B, C, F, h, w) as diffusers pipelines take it (already
    multiplied by the scheduler's ``init_noise_sigma``); default: drawn from ``config.seed``. The
    seed still drives everything else (eta noise, MotionPrompt's frame pairs).
    """
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(config.steps, device=backbone.device)
    generator = torch.Generator(device=backbone.device).manual_seed(config.seed)
    if latents is None:
        latents = initial_latents(backbone, config, scheduler, generator)
    else:
        latents = checked_latents(backbone, config, latents)

    backbone.prepare_sampling(config)
    with torch.no_grad():
        cond = backbone.encode_prompt([prompt])
        uncond = backbone.encode_negative_prompt([config.negative_prompt]) if config.cfg_scale > 1.0 else cond
    if guidance is not None:
        guidance.prepare(backbone, prompt, config, scheduler)

    bar = tqdm(scheduler.timesteps, desc=description, disable=not progress, leave=False, unit="step")
    for step, t in enumerate(bar):
        # the step's condition: the plain prompt's, or the one the guidance returns
        step_cond, uncond_output = cond, None
        if guidance is not None:
            step_condition = guidance.condition(step, t, latents, cond, uncond)
            if step_condition is not None:
                step_cond, uncond_output = step_condition.cond, step_condition.uncond_output
                if step_condition.info:
                    bar.set_postfix(step_condition.info, refresh=False)
        with torch.no_grad():
            model_output = cfg_output(backbone, latents, t, step_cond, uncond, config.cfg_scale, uncond_output)
            # DDIM update x_t -> x_{t-1} (eq. 12; eta > 0 draws the sigma_t noise from the same generator)
            latents = scheduler.step(model_output, t, latents, eta=config.eta, generator=generator).prev_sample
    bar.close()
    return SampleResult(latents=latents, guidance=guidance.finish() if guidance is not None else None)


@torch.no_grad()
def decode_video(backbone: Backbone, latents: torch.Tensor) -> torch.Tensor:
    """Decode the first video of final latents (B, C, F, h, w) to frames (F, 3, H, W) in [-1, 1]."""
    frames = latents[0].permute(1, 0, 2, 3) / backbone.latent_scale(0)
    return backbone.decode(frames, checkpoint=False).float().clamp(-1, 1)
