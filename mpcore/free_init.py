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

The filter and the frequency mix (:func:`low_pass_filter`, :func:`mix_frequencies`) are our own code with
the semantics of diffusers' ``FreeInitMixin._get_free_init_freq_filter`` and ``_apply_freq_filter``
(``diffusers/pipelines/free_init_utils.py``, adapted there from the official repository), pinned to them
by a parity test; the fresh noise continues the sampler's seeded stream after x_T, as
``AnimateDiffPipeline`` draws it with its one generator, so with eta = 0 the passes match the pipeline's.

With guidance, each pass is guided (the guidance's ``prepare`` runs again at the start of every pass:
MotionPrompt's token restarts from its init word; see the README's FreeInit section for why).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable

import torch

from mpcore.config import ConfigError, FreeInitConfig, SamplerConfig

MIN_SIGNAL = 1e-3
"""Below this fraction of the sample surviving diffusion to the start (sqrt(a_T) times any latent
rescale) FreeInit is refused: zero terminal SNR (diffusers stores a_T = 0, or 2^-24 for DDIM's rescaled
betas) or flow matching's sigma = 1. SD's linear-scaled betas keep 0.068 (VideoCrafter2 0.048 with its
scale schedule), LaVie's linear ones 0.006."""

FREQ_DIMS = (-3, -2, -1)
"""The 3D frequency domain of latents (..., F, h, w): frames, height, width."""


def low_pass_filter(shape: tuple[int, ...], config: FreeInitConfig, device) -> torch.Tensor:
    """H of eq. 6 (Wu et al. 2023, Sec. 4) for latents of ``shape`` (B, C, F, h, w), on the
    fftshift-centred spectrum: a float32 (1, C, F, h, w) tensor, largest at the centre, falling with the
    normalized distance

        d^2 = (D_s / D_t * f_t)^2 + f_h^2 + f_w^2,   f_k = 2 k / K - 1 for k = 0 .. K - 1

    (the frame axis scaled so D_t is its stop frequency; the grid is diffusers': at the fftshift centre
    k = K // 2, f = 0 on an even axis but -1/K on an odd one). With D_s = ``spatial_stop_frequency``,
    D_t = ``temporal_stop_frequency`` and n = ``order``:

    - butterworth: ``1 / (1 + (d^2 / D_s^2)^n)``
    - gaussian: ``exp(-d^2 / (2 D_s^2))``
    - ideal: ``1 where d^2 <= 2 D_s`` else 0 (diffusers' threshold: d^2 against 2 D_s, not d against D_s)

    Semantics of diffusers' ``FreeInitMixin._get_free_init_freq_filter``
    (``diffusers/pipelines/free_init_utils.py``), computed on a float64 grid and stored as float32."""
    config.validate()
    if len(shape) < 3:
        raise ValueError(f"latents must end in (frames, height, width), got shape {tuple(shape)}")
    frames, height, width = shape[-3:]

    def axis(size: int) -> torch.Tensor:  # f_k = 2k/K - 1: -1 at k = 0, the fftshift order of the spectrum
        return torch.arange(size, dtype=torch.float64) * 2 / size - 1

    d_s = config.spatial_stop_frequency
    f_t = (d_s / config.temporal_stop_frequency) * axis(frames)
    d_square = f_t.view(-1, 1, 1) ** 2 + axis(height).view(1, -1, 1) ** 2 + axis(width).view(1, 1, -1) ** 2
    if config.method == "butterworth":
        h = 1 / (1 + (d_square / d_s**2) ** config.order)
    elif config.method == "gaussian":
        h = torch.exp(-1 / (2 * d_s**2) * d_square)
    else:  # ideal
        h = (d_square <= 2 * d_s).to(torch.float64)
    filter_shape = (1, *shape[1:])
    return h.to(torch.float32).expand(filter_shape).contiguous().to(device)


def mix_frequencies(low_from: torch.Tensor, high_from: torch.Tensor, filter_: torch.Tensor) -> torch.Tensor:
    """Eq. 6-7 (Wu et al. 2023, Sec. 4): ``IFFT(FFT(low_from) * H + FFT(high_from) * (1 - H))``, FFT / IFFT the
    unnormalized / 1/N-normalized 3D transforms over (frames, h, w) with the zero frequency shifted to the
    centre (``fftshift``) where H = ``filter_`` (:func:`low_pass_filter`) is defined; the real part, float32.

    Semantics of diffusers' ``FreeInitMixin._apply_freq_filter`` (``diffusers/pipelines/free_init_utils.py``)."""

    def spectrum(x: torch.Tensor) -> torch.Tensor:  # centred 3D spectrum
        return torch.fft.fftshift(torch.fft.fftn(x.float(), dim=FREQ_DIMS), dim=FREQ_DIMS)

    mixed = spectrum(low_from) * filter_ + spectrum(high_from) * (1 - filter_)
    return torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=FREQ_DIMS), dim=FREQ_DIMS).real


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
                     progress: bool = True, description: str = "sampling",
                     make_scheduler: Callable[[], Any] | None = None,
                     health: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
    """:func:`mpcore.sampling.sample` with FreeInit: ``free_init.iterations`` passes, each from the
    re-initialized noise of the previous pass's result. Returns the last pass's ``SampleResult`` with
    ``free_init`` set to the settings and one record per pass (the guidance result of every pass but
    the last is summarized there; the last one is the result's ``guidance``).

    ``make_scheduler``: a new scheduler per call, as :func:`mpcore.sampling.sample` takes it (e.g.
    :func:`mpcore.sampling.scheduler_factory`); None = ``backbone.make_scheduler``. Every pass, the
    diffusion to the start and the refusal check use it. ``health``: the guidance spec's update counter,
    recorded for every pass (``passes[k]["guidance"]["health"]``)."""
    from diffusers.utils.torch_utils import randn_tensor

    from mpcore.sampling import initial_latents, sample

    free_init.validate()
    make_scheduler = make_scheduler or backbone.make_scheduler
    if not free_init.enabled:
        return sample(backbone, prompt, config, guidance, progress, description, make_scheduler=make_scheduler)
    check_free_init(backbone, make_scheduler())
    scheduler = make_scheduler()
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
                        f"{free_init.iterations})", latents=latents, make_scheduler=make_scheduler)
        record["final_latents_std"] = float(result.latents.float().std())
        if result.guidance is not None:
            record["guidance"] = summarize_guidance(result.guidance)
            if health is not None:  # the guidance's update counts of every pass (the run sums them)
                record["guidance"]["health"] = health(result.guidance)
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
