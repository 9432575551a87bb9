"""lvdm's DDIM sampler as a diffusers ``DDIMScheduler`` (so mpcore's loop and MotionPrompt drive it).

As ``lvdm/models/samplers/ddim.py`` and ``lvdm/models/utils_diffusion.py`` in VideoCrafter2
(github.com/AILab-CVC/VideoCrafter) and DynamiCrafter (github.com/Doubiiu/DynamiCrafter).

- ᾱ are the checkpoint's ``alphas_cumprod`` buffer (not recomputed); the final step's ᾱ_prev is ᾱ₀
  (``set_alpha_to_one=False``); timesteps "uniform" = diffusers "leading" + ``steps_offset=1``
  ([981 .. 1] for 50 steps), "uniform_trailing" = diffusers "trailing" ([999 .. 19]).
- eps or v output; for v: ``x0 = √ᾱ_t x − √(1−ᾱ_t) v``, ``eps = √ᾱ_t v + √(1−ᾱ_t) x`` (finite at ᾱ=0).
- Latent scale schedule (``scale_arr``): the network's x0 lives in a per-timestep scaled space,
  ``x0_net = scale_arr[t] · x0``. The update uses ``x0 = x0_net · s_prev / s_t`` where s_prev is the
  scale of the next (lower) timestep; at the last step s_prev is ``scale_arr[0]`` for VideoCrafter2
  (``use_scale``) and ``s_t`` (factor 1) for DynamiCrafter (``use_dynamic_rescale``).
- ``x_prev = √ᾱ_prev x0 + √(1−ᾱ_prev−σ²) eps + σ z``, ``σ = η √((1−ᾱ_prev)/(1−ᾱ_t) (1−ᾱ_t/ᾱ_prev))``;
  z is drawn from the loop's generator only when η > 0 (as diffusers does).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from mpcore.schedules import AlphaBarSchedule


def scheduler_config(params: dict[str, Any], spacing: str) -> dict[str, Any]:
    """diffusers DDIMScheduler settings of ``model.params`` with lvdm's timestep ``spacing``
    ('uniform' or 'uniform_trailing')."""
    if spacing not in ("uniform", "uniform_trailing"):
        raise ValueError(f"timestep spacing must be 'uniform' or 'uniform_trailing', got {spacing!r}")
    return dict(
        num_train_timesteps=params.get("timesteps", 1000),
        beta_start=params.get("linear_start", 1e-4),
        beta_end=params.get("linear_end", 2e-2),
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1 if spacing == "uniform" else 0,
        prediction_type="v_prediction" if params.get("parameterization", "eps") == "v" else "epsilon",
        timestep_spacing="leading" if spacing == "uniform" else "trailing",
        rescale_betas_zero_snr=bool(params.get("rescale_betas_zero_snr", False)),
    )


class LVDMDDIMScheduler(DDIMScheduler):
    """diffusers' DDIM timesteps; lvdm's ᾱ (from the checkpoint) and update with the scale schedule."""

    def set_lvdm(self, alphas_cumprod: torch.Tensor, scale_arr: torch.Tensor | None, last_prev_scale: str) -> None:
        """``last_prev_scale``: 'first' (VideoCrafter2: s_prev = scale_arr[0] at the last step) or
        'same' (DynamiCrafter: factor 1 at the last step)."""
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64).float()
        self.final_alpha_cumprod = self.alphas_cumprod[0]
        self.scale_arr = None if scale_arr is None else scale_arr.detach().to("cpu", torch.float32)
        self.last_prev_scale = last_prev_scale

    def previous_timestep(self, timestep) -> int:
        """The next timestep of the list (lvdm's ``a_prev = alphas_cumprod[ddim_timesteps[i - 1]]``), -1 after
        the last; for step counts dividing 1000 this is diffusers' ``t - 1000 // steps``, for others
        (trailing spacing, e.g. 6 steps: 999 -> 832, not 833) it is lvdm's own."""
        timesteps = [int(t) for t in self.timesteps]
        index = timesteps.index(int(timestep))
        return timesteps[index + 1] if index + 1 < len(timesteps) else -1

    def scales(self, t: int) -> tuple[float, float]:
        """(s_t, s_prev) of the step at timestep ``t`` (1.0, 1.0 without a scale schedule)."""
        if self.scale_arr is None:
            return 1.0, 1.0
        prev = self.previous_timestep(t)
        s_t = float(self.scale_arr[t])
        if prev >= 0:
            return s_t, float(self.scale_arr[prev])
        return s_t, float(self.scale_arr[0]) if self.last_prev_scale == "first" else s_t

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise=None, return_dict: bool = True):
        t = int(timestep)
        prev = self.previous_timestep(t)
        a_t = float(self.alphas_cumprod[t])
        a_prev = float(self.alphas_cumprod[prev]) if prev >= 0 else float(self.final_alpha_cumprod)
        if self.config.prediction_type == "v_prediction":
            eps = math.sqrt(a_t) * model_output + math.sqrt(1 - a_t) * sample
            x0 = math.sqrt(a_t) * sample - math.sqrt(1 - a_t) * model_output
        else:
            eps = model_output
            x0 = (sample - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        s_t, s_prev = self.scales(t)
        if s_t != s_prev:
            x0 = x0 * (s_prev / s_t)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) if eta > 0 else 0.0
        prev_sample = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            prev_sample = prev_sample + sigma * variance_noise
        if not return_dict:
            return (prev_sample, x0)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


def make_scheduler(params: dict[str, Any], spacing: str, alphas_cumprod: torch.Tensor,
                   scale: torch.Tensor | None) -> LVDMDDIMScheduler:
    scheduler = LVDMDDIMScheduler(**scheduler_config(params, spacing))
    last = "first" if params.get("use_scale") else "same"
    scheduler.set_lvdm(alphas_cumprod, scale, last)
    return scheduler


class ScaledAlphaBarSchedule(AlphaBarSchedule):
    """lvdm's noise-schedule math with its latent scale schedule (``scale_arr`` in ddpm3d.py): the network's
    clean latent at t is ``scale_arr[t]`` times the clean latent.

    - transition t -> s: the x0 estimate is moved to s's space, ``x0 * s_s / s_t`` (``ddim.py``'s
      ``pred_x0 / scale_t * scale_prev``), before ``sqrt(a_s) x0 + sqrt(1 - a_s) eps``;
    - diffusion (training's ``q_sample``): ``sqrt(a_t) scale_arr[t] x0 + sqrt(1 - a_t) eps``, where the
      sampler's final latents are in ``scale_arr[0]``'s space, so ``clean * s_t / s_0`` is noised;
    - the scheduler's ``pred_original_sample`` is in the NEXT step's space (decode: divide by
      ``scale_factor * s_prev``).
    """

    def scale(self, timestep) -> float:
        arr = self.scheduler.scale_arr
        return 1.0 if arr is None else float(arr[int(timestep)])

    def clean_rescale(self, timestep: int, landing: int) -> float:
        return self.scale(landing) / self.scale(timestep)

    def predicted_original_scale(self, index: int) -> float:
        s_t, s_prev = self.scheduler.scales(int(self.timesteps[index]))
        return self.latent_scale(index) * s_prev / s_t

    def signal_scale(self, timestep: int) -> float:
        return super().signal_scale(timestep) * self.scale(timestep) / self.scale(0)

    def diffuse(self, clean: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        return super().diffuse(clean * (self.scale(timestep) / self.scale(0)), noise, timestep)
