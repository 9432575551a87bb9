"""FreeInit: re-initialize the noise's low frequencies from a finished sample, then sample again.

Wu et al., "FreeInit: Bridging Initialization Gap in Video Diffusion Models" (ECCV 2024, arXiv
2312.07537), Sec. 4 / Alg. 1. Video models are trained on noised real videos, whose low spatio-temporal
frequencies keep the video's layout even at t = T; pure Gaussian x_T lacks them. FreeInit closes the
gap iteratively: after one full sampling pass giving z_0,

1. diffuse z_0 back to the first timestep with the SAME initial noise eps:
   ``z_T = sqrt(a_T) z_0 + sqrt(1 - a_T) eps`` (``scheduler.add_noise`` at ``num_train_timesteps - 1``,
   as diffusers' AnimateDiff FreeInit does), by the backbone's own noising rule
   (:meth:`mpcore.schedules.NoiseSchedule.diffuse`: lvdm scales z_0 by its scale schedule first);
2. mix in the 3D (frames, height, width) frequency domain (eq. 6-7): ``x_T' = IFFT(FFT(z_T) * H +
   FFT(n) * (1 - H))`` with H a low-pass filter (butterworth / gaussian / ideal, stop frequencies D_s
   spatially and D_t temporally) and n fresh Gaussian noise;
3. sample again from x_T'.

The filter and the frequency mix are diffusers' own (``FreeInitMixin._get_free_init_freq_filter`` and
``_apply_freq_filter``, which read nothing from the pipeline and are called here as functions); the
fresh noise continues the sampler's seeded stream after x_T, as ``AnimateDiffPipeline`` draws it with
its one generator, so with eta = 0 the passes match the pipeline's.

With guidance, each pass is guided (the guidance's ``prepare`` runs again at the start of every pass:
MotionPrompt's token restarts from its init word; see the README's FreeInit section for why).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from mpcore.config import ConfigError, SamplerConfig, _require

FREE_INIT_METHODS = ("butterworth", "gaussian", "ideal")
MIN_SIGNAL = 1e-3
"""Below this fraction of the sample surviving diffusion to the start (sqrt(a_T) times any latent
rescale) FreeInit is refused: zero terminal SNR (diffusers stores a_T = 0, or 2^-24 for DDIM's rescaled
betas) or flow matching's sigma = 1. SD's linear-scaled betas keep 0.068 (VideoCrafter2 0.048 with its
scale schedule), LaVie's linear ones 0.006."""


@dataclass
class FreeInitConfig:
    """FreeInit's settings; the defaults are diffusers' ``enable_free_init`` (the official repo's).

    ``iterations`` counts sampling passes: 1 is plain sampling, N > 1 re-initializes N - 1 times."""

    iterations: int = 1
    method: str = "butterworth"
    order: int = 4
    spatial_stop_frequency: float = 0.25
    temporal_stop_frequency: float = 0.25

    def validate(self) -> None:
        _require(self.iterations >= 1, "free_init iterations", self.iterations, "an integer >= 1 (1 = off)")
        _require(self.method in FREE_INIT_METHODS, "free_init method", self.method, " | ".join(FREE_INIT_METHODS))
        _require(self.order >= 1, "free_init order", self.order, "an integer >= 1")
        for name in ("spatial_stop_frequency", "temporal_stop_frequency"):
            value = getattr(self, name)
            _require(0 < value <= 1, f"free_init {name}", value, "in (0, 1]")

    @property
    def enabled(self) -> bool:
        return self.iterations > 1


def low_pass_filter(shape: tuple[int, ...], config: FreeInitConfig, device) -> torch.Tensor:
    """H of eq. 6 for latents of ``shape`` (..., F, h, w): 1 at the centred zero frequency, falling to
    0 with the normalized distance ``d^2 = (D_s/D_t * f_t)^2 + f_h^2 + f_w^2``."""
    from diffusers.pipelines.free_init_utils import FreeInitMixin

    return FreeInitMixin._get_free_init_freq_filter(
        None, shape=(1, *shape[1:]), device=device, filter_type=config.method, order=config.order,
        spatial_stop_frequency=config.spatial_stop_frequency, temporal_stop_frequency=config.temporal_stop_frequency)


def mix_frequencies(low_from: torch.Tensor, high_from: torch.Tensor, filter_: torch.Tensor) -> torch.Tensor:
    """Eq. 7: the low frequencies (``filter_``) of ``low_from``, the high ones of ``high_from`` (float32)."""
    from diffusers.pipelines.free_init_utils import FreeInitMixin

    return FreeInitMixin._apply_freq_filter(None, low_from.float(), high_from.float(), filter_)


def diffuse_to_start(schedule, clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Step 1: the finished latents ``clean`` diffused to the start of sampling with ``noise``, by the
    backbone's own rule (:meth:`mpcore.schedules.NoiseSchedule.diffuse` at its ``start_timestep``: diffusers'
    ``add_noise`` at ``num_train_timesteps - 1`` for SD-family schedules; lvdm noises ``clean`` scaled by
    its scale schedule, ``scale_arr[T] / scale_arr[0]``), float32."""
    return schedule.diffuse(clean, noise, schedule.start_timestep()).float()


def check_free_init(backbone, scheduler) -> None:
    """FreeInit needs something of the sample to survive diffusion to the start of sampling: refused
    where the backbone's schedule keeps less than :data:`MIN_SIGNAL` of it there (zero terminal SNR:
    CogVideoX, DynamiCrafter 512/1024; flow matching, whose x_1 is pure noise: Wan)."""
    scheduler.set_timesteps(2, device=backbone.device)
    schedule = backbone.noise_schedule(scheduler)
    signal = schedule.start_signal()
    if signal < MIN_SIGNAL:
        raise ConfigError(f"--free-init: backbone {backbone.name!r}'s noise schedule keeps {signal:.2g} of a sample at the "
                          f"start of sampling (timestep {schedule.start_timestep()}; zero terminal SNR, e.g. CogVideoX, "
                          "DynamiCrafter 512/1024, or flow matching, e.g. Wan): FreeInit's re-initialized noise would "
                          "carry none of its low frequencies. Leave out --free-init for this backbone.")


def sample_free_init(backbone, prompt: str, config: SamplerConfig, free_init: FreeInitConfig, guidance=None,
                     progress: bool = True, description: str = "sampling"):
    """:func:`mpcore.sampling.sample` with FreeInit: ``free_init.iterations`` passes, each from the
    re-initialized noise of the previous pass's result. Returns the last pass's ``SampleResult`` with
    ``free_init`` set to the settings and one record per pass (the guidance result of every pass but
    the last is summarized there; the last one is the result's ``guidance``)."""
    from diffusers.utils.torch_utils import randn_tensor

    from mpcore.sampling import initial_latents, sample

    free_init.validate()
    if not free_init.enabled:
        return sample(backbone, prompt, config, guidance, progress, description)
    check_free_init(backbone, backbone.make_scheduler())
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(config.steps, device=backbone.device)
    schedule = backbone.noise_schedule(scheduler)
    # x_T as sample() draws it; the same generator then gives the fresh noise of every re-initialization
    generator = torch.Generator(device=backbone.device).manual_seed(config.seed)
    first_noise = initial_latents(backbone, config, scheduler, generator)
    latents, passes, result = first_noise, [], None
    for k in range(free_init.iterations):
        record: dict[str, Any] = {"iteration": k}
        if k > 0:
            z_t = diffuse_to_start(schedule, result.latents, first_noise)
            fresh = randn_tensor(tuple(z_t.shape), generator=generator, device=z_t.device, dtype=torch.float32)
            latents = mix_frequencies(z_t, fresh, low_pass_filter(tuple(z_t.shape), free_init, z_t.device))
            latents = latents.to(backbone.latent_dtype)
        record["x_T_std"] = float(latents.float().std())
        result = sample(backbone, prompt, config, guidance, progress, f"{description} (FreeInit {k + 1}/"
                        f"{free_init.iterations})", latents=latents)
        record["final_latents_std"] = float(result.latents.float().std())
        if result.guidance is not None:
            record["guidance"] = summarize_guidance(result.guidance)
        passes.append(record)
    result.free_init = {**asdict(free_init), "diffuse_timestep": schedule.start_timestep(),
                        "guidance_restarts": "each pass (the guidance's prepare runs again: MotionPrompt's token from its "
                                             "init word)",
                        "passes": passes}
    return result


def summarize_guidance(result: dict[str, Any]) -> dict[str, Any]:
    """A pass's guidance result in a few numbers (its full trace is only kept for the last pass)."""
    keys = ("skipped_updates", "final_cosine", "token_drift_l2")
    return {**{key: result[key] for key in keys if key in result}, "trace_entries": len(result.get("trace") or [])}
