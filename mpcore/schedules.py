"""Noise-schedule adapters: the one owner of each backbone's noise-schedule math (docs/design.md, "Contracts").

Everything the guided paths compute from a noise schedule goes through a :class:`NoiseSchedule` that the
backbone hands out for the scheduler the sampler configured (:meth:`mpcore.interfaces.Backbone.noise_schedule`):

* the Tweedie clean estimate at a sampling step (the parameters :func:`mpcore_kernels.subset_tweedie`
  takes, and the same estimate on whole latents);
* the deterministic move from one sampling step's noise level to another's (MotionPrompt's rollout;
  DDIM with eta = 0, Song et al. 2021 eq. 12, or its flow-matching counterpart, the Euler step of the
  probability-flow ODE);
* the diffusion of a clean latent to a timestep as the model was trained (FreeInit, ``mpcore diagnose``);
* what a multistep scheduler must forget when a guidance moves x_t (:meth:`NoiseSchedule.continue_from`).

Two families cover diffusers' schedulers; a backbone whose schedule differs subclasses one (lvdm's scale
schedule: :class:`mp_plugin_lvdm.schedule.ScaledAlphaBarSchedule`). ``mpcore.testing``'s guided-sampling
contract holds every backbone's adapter against the backbone's own scheduler.
"""

from __future__ import annotations

from typing import Any

import torch


class NoiseSchedule:
    """Shared by both families: a scheduler with ``set_timesteps`` already called, and its backbone."""

    def __init__(self, backbone, scheduler):
        self.backbone = backbone
        self.scheduler = scheduler
        self.prediction_type = backbone.prediction_type

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    def latent_scale(self, index: int) -> float:
        """Divide the clean estimate at sampling step ``index`` by this to decode it."""
        return float(self.backbone.latent_scale(self.timesteps[index]))

    def predicted_original_scale(self, index: int) -> float:
        """Divide the scheduler's own ``pred_original_sample`` of step ``index`` by this to decode it
        (the same as :meth:`latent_scale` unless the scheduler rescales its x0, as lvdm's does)."""
        return self.latent_scale(index)

    def continue_from(self, latents: torch.Tensor) -> None:
        """A guidance replaced x_t of the coming step by ``latents``: make the scheduler continue from them.

        UniPC's corrector (Zhao et al. 2023, UniC) rebuilds x_t from the previous step's sample and model
        outputs, which would undo the change (measured: 0.7-1.2% of it survives one step on the tiny Wan,
        ``benchmarks/bench_latent_survival.py``): its stored
        previous sample is dropped, so that step is taken from the given x_t without correction, as the
        scheduler takes its first step. Single-step schedulers (DDIM, Euler) and DPM-Solver keep no
        sample between steps: nothing to do."""
        if getattr(self.scheduler, "last_sample", None) is not None:
            self.scheduler.last_sample = None

    def start_timestep(self) -> int:
        """The timestep FreeInit diffuses a finished sample back to (the start of sampling)."""
        raise NotImplementedError

    def start_signal(self) -> float:
        """The fraction of a clean sample that x keeps at the start of sampling (0: pure noise)."""
        raise NotImplementedError


class AlphaBarSchedule(NoiseSchedule):
    """Variance-preserving diffusion on ``scheduler.alphas_cumprod`` (a_t): x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
    (Ho et al. 2020, eq. 4). Epsilon- or v-prediction (Salimans & Ho 2022: v = sqrt(a) eps - sqrt(1 - a) x0).
    Serves diffusers' DDIM / DDPM and CogVideoX's DDIM / DPM schedulers."""

    def alpha_bar(self, index: int) -> float:
        return self.alpha_bar_at(int(self.timesteps[index]))

    def alpha_bar_at(self, timestep: int) -> float:
        """a of ``timestep``; below 0 (past the last step) the scheduler's final a (DDIM's
        ``final_alpha_cumprod``)."""
        if timestep < 0:
            return float(getattr(self.scheduler, "final_alpha_cumprod", 1.0))
        return float(self.scheduler.alphas_cumprod[timestep])

    def previous_timestep(self, timestep) -> int:
        """The timestep the scheduler's own step from ``timestep`` lands on: its ``previous_timestep``
        where it has one (DDPM, lvdm's: the next timestep of the list), else DDIM's rule
        ``t - num_train_timesteps // num_inference_steps`` (diffusers' DDIM and CogVideoX's schedulers;
        the list's next timestep whenever the step count divides num_train_timesteps)."""
        rule = getattr(self.scheduler, "previous_timestep", None)
        if rule is not None:
            return int(rule(timestep))
        return int(timestep) - self.scheduler.config.num_train_timesteps // self.scheduler.num_inference_steps

    def landing_timestep(self, next_index: int) -> int:
        """The noise level x is at when the sampler calls the model at step ``next_index`` >= 1: where the
        scheduler's step from step ``next_index - 1`` lands."""
        return self.previous_timestep(self.timesteps[next_index - 1])

    def tweedie_level(self, index: int) -> dict[str, Any]:
        """The noise level of step ``index`` as :func:`mpcore_kernels.subset_tweedie` takes it."""
        return {"alpha_bar": self.scheduler.alphas_cumprod[int(self.timesteps[index])]}

    def clean_and_noise(self, x_t: torch.Tensor, output: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) of the model output at step ``index``, float32; x0 in the network's latent space at t.
        Epsilon: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a). v: x0 = sqrt(a) x_t - sqrt(1 - a) v,
        eps = sqrt(a) v + sqrt(1 - a) x_t (finite at a = 0, zero terminal SNR)."""
        a = self.alpha_bar(index)
        x, out = x_t.float(), output.float()
        if self.prediction_type == "epsilon":
            return (x - (1 - a) ** 0.5 * out) / a**0.5, out
        if self.prediction_type == "v_prediction":
            return a**0.5 * x - (1 - a) ** 0.5 * out, a**0.5 * out + (1 - a) ** 0.5 * x
        raise ValueError(f"AlphaBarSchedule: unsupported prediction_type {self.prediction_type!r}")

    def clean_estimate(self, x_t: torch.Tensor, output: torch.Tensor, index: int) -> torch.Tensor:
        """The Tweedie estimate x0_hat at step ``index`` (float32, latent scale NOT undone)."""
        return self.clean_and_noise(x_t, output, index)[0]

    def velocity(self, x_t: torch.Tensor, output: torch.Tensor, index: int) -> torch.Tensor:
        """The flow-matching velocity of the model output, eps_hat - x0_hat (float32): what a rectified-flow
        model such as Wan predicts, expressed for this parametrization (FlowMo's loss tensor)."""
        x0, eps = self.clean_and_noise(x_t, output, index)
        return eps - x0

    def transition(self, x_t: torch.Tensor, output: torch.Tensor, index: int, next_index: int) -> torch.Tensor:
        """Deterministic DDIM from step ``index`` to the level of step ``next_index`` (eq. 12, sigma = 0):
        x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps, s the scheduler's landing timestep
        (:meth:`landing_timestep`; for consecutive steps exactly ``scheduler.step`` with eta 0). Float32,
        returned in x_t's dtype; differentiable."""
        x0, eps = self.clean_and_noise(x_t, output, index)
        landing = self.landing_timestep(next_index)
        x0 = x0 * self.clean_rescale(int(self.timesteps[index]), landing)
        a_next = self.alpha_bar_at(landing)
        return (a_next**0.5 * x0 + (1 - a_next) ** 0.5 * eps).to(x_t.dtype)

    def clean_rescale(self, timestep: int, landing: int) -> float:
        """Factor taking x0 from ``timestep``'s latent space to ``landing``'s (1: one latent space)."""
        return 1.0

    def signal_scale(self, timestep: int) -> float:
        """What multiplies the clean latent (as :meth:`diffuse` takes it) in x_t at ``timestep``."""
        return float(self.scheduler.alphas_cumprod[int(timestep)]) ** 0.5

    def start_timestep(self) -> int:
        """``num_train_timesteps - 1``, where diffusers' FreeInit (``AnimateDiffPipeline``) diffuses to."""
        return int(self.scheduler.config.num_train_timesteps) - 1

    def start_signal(self) -> float:
        return self.signal_scale(self.start_timestep())

    def diffuse(self, clean: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """x_t of a clean latent at ``timestep`` as in training (q(x_t | x0), the scheduler's
        ``add_noise``). ``clean`` is in the convention of the sampler's final latents (what
        :meth:`~mpcore.interfaces.Backbone.decode_video` takes), float32 out."""
        t = torch.full((clean.shape[0],), int(timestep), dtype=torch.long, device=clean.device)
        return self.scheduler.add_noise(clean, noise, t).float()


class FlowMatchSchedule(NoiseSchedule):
    """Rectified flow (Liu et al. 2023; Esser et al. 2024 eq. 2-3): x_t = (1 - sigma_t) x0 + sigma_t eps, the
    model predicts v = eps - x0; sigma_t is the scheduler's (shifted) ``sigmas[index]`` (Wan's UniPC / Euler)."""

    def sigma(self, index: int) -> float:
        return float(self.scheduler.sigmas[index])

    def tweedie_level(self, index: int) -> dict[str, Any]:
        return {"alpha_bar": None, "sigma": self.scheduler.sigmas[index]}

    def clean_estimate(self, x_t: torch.Tensor, output: torch.Tensor, index: int) -> torch.Tensor:
        """x0_hat = x_t - sigma_t v (float32)."""
        return x_t.float() - self.sigma(index) * output.float()

    def velocity(self, x_t: torch.Tensor, output: torch.Tensor, index: int) -> torch.Tensor:
        """The model output itself, v = eps - x0 (float32)."""
        return output.float()

    def transition(self, x_t: torch.Tensor, output: torch.Tensor, index: int, next_index: int) -> torch.Tensor:
        """The Euler step of the flow ODE from sigma_t to sigma_s: x_s = x_t + (sigma_s - sigma_t) v (the
        deterministic DDIM step in this parametrization; FlowMatchEulerDiscreteScheduler's step)."""
        return (x_t.float() + (self.sigma(next_index) - self.sigma(index)) * output.float()).to(x_t.dtype)

    def timestep_sigma(self, timestep: int) -> float:
        """sigma of a timestep: ``timestep / num_train_timesteps`` (diffusers' flow schedulers set
        timesteps = sigmas * num_train_timesteps)."""
        return float(timestep) / self.scheduler.config.num_train_timesteps

    def start_timestep(self) -> int:
        """The first sampling timestep."""
        return int(self.timesteps[0])

    def start_signal(self) -> float:
        """1 - sigmas[0]: 0 for Wan's schedules (sigma_max = 1, x_1 is pure noise; UniPC calls that level
        timestep 999)."""
        return 1.0 - self.sigma(0)

    def diffuse(self, clean: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        sigma = self.timestep_sigma(timestep)
        return ((1.0 - sigma) * clean.float() + sigma * noise.float())


def default_noise_schedule(backbone, scheduler) -> NoiseSchedule:
    """The adapter for a backbone's diffusers scheduler, chosen by its prediction type."""
    if backbone.prediction_type == "flow_matching":
        return FlowMatchSchedule(backbone, scheduler)
    return AlphaBarSchedule(backbone, scheduler)
