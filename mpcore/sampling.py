"""The guided sampling loop.

The backbone's own diffusers scheduler takes each step: DDIM (Song et al., "Denoising Diffusion
Implicit Models", ICLR 2021, eq. 12) for the paper's backbones, flow-matching Euler / UniPC for Wan,
CogVideoX's DDIM / DPM-Solver (:class:`SchedulerStep`), with classifier-free guidance (Ho & Salimans
2022): ``out = out_uncond + s * (out_cond - out_uncond)``. Guidance is an object asked for the
condition of every step; with ``guidance=None`` the loop is exactly the backbone's diffusers pipeline
loop (AnimateDiff's, Wan's, CogVideoX's).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from tqdm.auto import tqdm

from mpcore.config import SCHEDULERS, ConfigError, SamplerConfig
from mpcore.interfaces import Backbone


@dataclass
class StepCondition:
    """What a guidance object returns for one step: the condition to denoise with, and optionally
    the unconditional model output it already computed for (x_t, t) (reused, not recomputed).

    ``latents``: a guidance that moves x_t itself (FlowMo: gradient steps on the latent) returns the
    updated x_t here; the step's model call and scheduler update then use it (``uncond_output``, if
    given, must be for these latents), and the scheduler continues from it
    (:meth:`mpcore.schedules.NoiseSchedule.continue_from`: UniPC's corrector would otherwise rebuild
    the old x_t from its previous step). None: the sampler's own x_t."""

    cond: torch.Tensor
    uncond_output: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    latents: torch.Tensor | None = None
    model_output: torch.Tensor | None = None
    """The (CFG-combined) model output the scheduler steps with, if the guidance already has it: the
    sampler then calls no model this step. FlowMo as published steps with the output predicted BEFORE its
    update of x_t, applied to the updated x_t. None: the sampler predicts at (``latents``, t)."""
    keep_scheduler_state: bool = False
    """With moved ``latents``: True leaves a multistep scheduler's state as it is (UniPC's corrector then
    rebuilds x_t from its previous step, as FlowMo's published loop lets it); False (default) makes the
    scheduler continue from the moved x_t (:meth:`mpcore.schedules.NoiseSchedule.continue_from`)."""


class Guidance(Protocol):
    def prepare(self, backbone: Backbone, prompt: str, config: SamplerConfig, scheduler) -> None: ...

    def condition(
        self, step: int, t: torch.Tensor, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor
    ) -> StepCondition | None:
        """The condition for step ``step``, or None to use the plain prompt's."""
        ...

    def finish(self) -> dict[str, Any]: ...


def count_trace_updates(result: dict[str, Any], name: str, unit: str, advice: str,
                        skipped: int | None = None) -> dict[str, Any]:
    """A guidance's update counts (``GuidanceSpec.health``) from a trace whose guided steps list their updates
    under ``iterations``, each with ``skipped`` and ``skip_reason`` when it was skipped. ``skipped``: the
    guidance's own count, when it keeps one; default: the skipped records."""
    records = [record for entry in result.get("trace", []) for record in entry.get("iterations", [])]
    reasons: dict[str, int] = {}
    for record in records:
        if record.get("skipped"):
            reason = record.get("skip_reason", "unknown")
            reasons[reason] = reasons.get(reason, 0) + 1
    skipped = sum(reasons.values()) if skipped is None else int(skipped)
    return {"name": name, "unit": unit, "updates": len(records), "skipped": skipped, "skip_reasons": reasons,
            "all_skipped": bool(records) and skipped >= len(records), "advice": advice}


@dataclass
class SampleResult:
    latents: torch.Tensor
    """Final clean latents (B, C, F, h, w), still multiplied by the VAE scale."""
    guidance: dict[str, Any] | None = None
    free_init: dict[str, Any] | None = None
    """FreeInit's settings and per-pass records (:func:`mpcore.free_init.sample_free_init`); None without it."""


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
    if uncond_output is not None or getattr(backbone, "separate_cfg_passes", False):
        out_cond = backbone.predict(latents, t, cond)
        if uncond_output is None:
            uncond_output = backbone.predict(latents, t, uncond)
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


def latent_shape(backbone: Backbone, config: SamplerConfig) -> tuple[int, int, int, int]:
    """(C, F_latent, h, w) of one video of ``config`` in the backbone's latent space."""
    f = backbone.vae_scale_factor
    return (backbone.latent_channels, backbone.latent_frames(config.frames), config.height // f, config.width // f)


def initial_latents(backbone: Backbone, config: SamplerConfig, scheduler, generator: torch.Generator) -> torch.Tensor:
    """x_T: noise drawn as the backbone's pipeline draws it, times the scheduler's ``init_noise_sigma``
    where it has one."""
    latents = backbone.draw_noise((1, *latent_shape(backbone, config)), generator)
    # flow-matching Euler has no init_noise_sigma (its x_1 is the unit noise itself)
    return latents * getattr(scheduler, "init_noise_sigma", 1.0)


def checked_latents(backbone: Backbone, config: SamplerConfig, latents: torch.Tensor) -> torch.Tensor:
    """Given initial noise x_T, checked against the config's latent shape (B, C, F, h, w) and moved to
    the backbone's device and latent dtype."""
    expected = latent_shape(backbone, config)
    if latents.dim() != 5 or tuple(latents.shape[1:]) != expected:
        raise ValueError(f"latents must have shape (B, {', '.join(map(str, expected))}) for this config, "
                         f"got {tuple(latents.shape)}")
    return latents.to(device=backbone.device, dtype=backbone.latent_dtype)


class SchedulerStep:
    """x_t -> x_{t-1} through a diffusers scheduler, called as the backbones' pipelines call it.

    ``eta`` and the noise generator go to schedulers whose ``step`` takes them (diffusers' own rule:
    DDIM gets ``eta``, UniPC / Euler do not). CogVideoX's DPM-Solver (``CogVideoXDPMScheduler``) is
    second order: its step also takes the previous step's x0 prediction and the previous timestep,
    which this object carries from step to step.
    """

    def __init__(self, scheduler, config: SamplerConfig, generator: torch.Generator):
        self.scheduler = scheduler
        params = inspect.signature(scheduler.step).parameters
        if config.eta > 0 and "eta" not in params:
            raise ConfigError(f"invalid config: eta={config.eta}; {type(scheduler).__name__} has no eta (it is "
                              "DDIM's stochasticity): use eta=0 with this backbone")
        self.kwargs: dict[str, Any] = {}
        if "eta" in params:
            self.kwargs["eta"] = config.eta
        if "generator" in params:
            self.kwargs["generator"] = generator
        self.second_order = "old_pred_original_sample" in params
        self.previous_x0: torch.Tensor | None = None

    def __call__(self, model_output: torch.Tensor, step: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        if self.second_order:
            previous_t = self.scheduler.timesteps[step - 1] if step > 0 else None
            latents, self.previous_x0 = self.scheduler.step(model_output, self.previous_x0, t, previous_t, latents,
                                                            **self.kwargs, return_dict=False)
            return latents
        return self.scheduler.step(model_output, t, latents, **self.kwargs).prev_sample


def scheduler_factory(backbone: Backbone, name: str | None) -> Callable[[], Any]:
    """A zero-argument function giving a new scheduler for ``backbone`` to sample with (``sample``'s
    ``make_scheduler``): None = the backbone's own (``backbone.make_scheduler``); 'ddim' or 'ddpm'
    (:data:`mpcore.config.SCHEDULERS`) = DDIM or ancestral DDPM (Ho et al. 2020, Alg. 2; diffusers'
    ``DDPMScheduler``) on the same betas, timestep spacing and prediction type as its own DDIM.

    Named schedulers are only for backbones whose own scheduler is diffusers' ``DDIMScheduler`` (the SD
    family; :class:`ConfigError` otherwise); a backbone may define ``make_ddpm_scheduler()`` where its
    reference script's DDPM differs (LaVie's takes no steps offset), which then wins. 'ddim' is the
    backbone's own scheduler, unchanged. The ancestral noise comes from the sampler's seeded generator
    (:class:`SchedulerStep`); MotionPrompt's clean estimate reads ``alphas_cumprod[t]`` and does not
    depend on the update rule. Nothing on ``backbone`` changes."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if name is None:
        return backbone.make_scheduler
    if name not in SCHEDULERS:
        raise ConfigError(f"--scheduler {name!r}: allowed: {', '.join(SCHEDULERS)}")
    own = backbone.make_scheduler()
    if type(own) is not DDIMScheduler or backbone.prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"--scheduler {name}: backbone {backbone.name!r} samples with its own "
                          f"{type(own).__name__} ({backbone.prediction_type}); --scheduler swaps diffusers' "
                          "DDIMScheduler of SD-family backbones only. Leave out --scheduler for this backbone.")
    if name == "ddim":
        return backbone.make_scheduler
    custom = getattr(backbone, "make_ddpm_scheduler", None)
    if custom is not None:
        return custom
    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters)
    ddpm_config = {k: v for k, v in own.config.items() if k in accepted}
    return lambda: DDPMScheduler(**ddpm_config)


def sample(
    backbone: Backbone,
    prompt: str,
    config: SamplerConfig,
    guidance: Guidance | None = None,
    progress: bool = True,
    description: str = "sampling",
    latents: torch.Tensor | None = None,
    make_scheduler: Callable[[], Any] | None = None,
) -> SampleResult:
    """Sample one video for ``prompt``; ``guidance`` (e.g. MotionPrompt) may change each step's condition.

    ``latents``: the initial noise x_T (B, C, F, h, w) as diffusers pipelines take it (already
    multiplied by the scheduler's ``init_noise_sigma``); default: drawn from ``config.seed``. The
    seed still drives everything else (eta noise, MotionPrompt's frame pairs).

    ``make_scheduler``: gives the new scheduler that takes the steps (e.g. :func:`scheduler_factory`);
    None = the backbone's own, ``backbone.make_scheduler``.
    """
    scheduler = (make_scheduler or backbone.make_scheduler)()
    scheduler.set_timesteps(config.steps, device=backbone.device)
    if hasattr(scheduler, "set_begin_index"):  # multistep schedulers: the first step is index 0 (as WanPipeline)
        scheduler.set_begin_index(0)
    generator = torch.Generator(device=backbone.device).manual_seed(config.seed)
    if latents is None:
        latents = initial_latents(backbone, config, scheduler, generator)
    else:
        latents = checked_latents(backbone, config, latents)

    scheduler_step = SchedulerStep(scheduler, config, generator)
    backbone.prepare_sampling(config)
    with torch.no_grad():
        cond = backbone.encode_prompt([prompt])
        uncond = backbone.encode_negative_prompt([config.negative_prompt]) if config.cfg_scale > 1.0 else cond
    if guidance is not None:
        guidance.prepare(backbone, prompt, config, scheduler)

    bar = tqdm(scheduler.timesteps, desc=description, disable=not progress, leave=False, unit="step")
    for step, t in enumerate(bar):
        # the step's condition: the plain prompt's, or the one the guidance returns
        step_cond, uncond_output, model_output = cond, None, None
        if guidance is not None:
            step_condition = guidance.condition(step, t, latents, cond, uncond)
            if step_condition is not None:
                step_cond, uncond_output = step_condition.cond, step_condition.uncond_output
                model_output = step_condition.model_output
                if step_condition.latents is not None:  # a guidance that moved x_t (e.g. FlowMo)
                    moved = step_condition.latents.detach().to(backbone.latent_dtype)
                    if not step_condition.keep_scheduler_state and not torch.equal(moved, latents):
                        # the step continues from the moved x_t (a multistep corrector would rebuild the old one)
                        backbone.noise_schedule(scheduler).continue_from(moved)
                    latents = moved
                if step_condition.info:
                    bar.set_postfix(step_condition.info, refresh=False)
        with torch.no_grad():
            if model_output is None:
                model_output = cfg_output(backbone, latents, t, step_cond, uncond, config.cfg_scale, uncond_output)
            model_output = model_output.detach()
            # scheduler update x_t -> x_{t-1} (DDIM: eq. 12; eta > 0 draws the sigma_t noise from the same generator)
            # kept in the latent dtype, as the pipelines keep them (CogVideoX's rounds them back each step)
            latents = scheduler_step(model_output, step, t, latents).to(backbone.latent_dtype)
    bar.close()
    return SampleResult(latents=latents, guidance=guidance.finish() if guidance is not None else None)


@torch.no_grad()
def decode_video(backbone: Backbone, latents: torch.Tensor) -> torch.Tensor:
    """Decode the first video of final latents (B, C, F, h, w) to frames (F_video, 3, H, W) in [-1, 1]
    (:meth:`Backbone.decode_video`)."""
    return backbone.decode_video(latents)
