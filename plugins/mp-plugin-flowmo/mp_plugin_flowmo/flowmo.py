"""FlowMo: variance-based motion guidance on the latent.

Shaulov, Hazan, Wolf, Chefer, "FlowMo: Variance-Based Flow Guidance for Coherent Motion in Video
Generation" (2025, arXiv:2506.01144). Training-free: no flow estimator, no discriminator. At each
sampling step in the guided range:

1. the model's clean estimate x0_hat of x_t (Tweedie / v / flow-matching form, whichever the backbone
   predicts: :func:`mpcore.motionprompt.estimate_clean_frames` over all latent frames);
2. an appearance-debiased temporal representation: the distance between consecutive latent frames,
   d_f = mean_c |x0_hat[c, f+1] - x0_hat[c, f]| (what stays the same from frame to frame -- the
   appearance -- cancels);
3. the patch-wise temporal variance: d averaged over p x p spatial patches, then its variance over f.
   Coherent motion changes each patch by about the same amount every frame (low variance); a
   patch that pops, vanishes or jitters has a spiky d (high variance);
4. gradient steps on x_t itself lowering the mean of the largest ``top_fraction`` of those variances;
   the step then continues from the updated x_t with the plain prompt.

Settings and where they come from (the guided range is given for 50 steps and scaled to ``--steps``
as MotionPrompt's is): the paper guides only the first sampling steps, where coarse motion forms,
on Wan 2.1 and CogVideoX. The exact step count, step size and patch reduction of the paper were not
in the text available offline; ours are: steps [0, 12) of 50 on every backbone, one normalized
gradient step per sampling step (the update's RMS over the latent is ``lr`` = 0.02 of unit-variance
noise), 2 x 2 latent patches (the DiTs' patch size), all patches (``top_fraction`` = 1). All of them
are ``-o`` settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mpcore.config import ConfigError, scale_opt_range
from mpcore.motionprompt import estimate_clean_frames
from mpcore.sampling import StepCondition


@dataclass
class FlowMoConfig:
    """FlowMo's settings (``-o key=value``)."""

    opt_range: tuple[int, int] | None = None
    """Guided sampling steps [start, stop); None: ``paper_opt_range`` scaled from 50 steps to ``--steps``."""
    paper_opt_range: tuple[int, int] = (0, 12)
    """The guided steps at 50 sampling steps (the first ones, where coarse motion forms)."""
    iterations: int = 1
    """Gradient steps on x_t per guided sampling step."""
    lr: float = 0.02
    """Size of each step: the RMS of the update over the latent (normalized gradient descent)."""
    patch_size: int = 2
    """Spatial patch (latent pixels) whose temporal variance is measured."""
    top_fraction: float = 1.0
    """The loss is the mean of the largest this fraction of patch variances (1 = all patches)."""
    checkpoint_denoiser: bool = False
    """Activation checkpointing of the denoiser during the gradient pass (memory for compute)."""

    def validate(self) -> None:
        checks = [
            (self.opt_range is None or (len(self.opt_range) == 2 and 0 <= self.opt_range[0] < self.opt_range[1]),
             "opt_range", self.opt_range, "start,stop with 0 <= start < stop, or none"),
            (len(self.paper_opt_range) == 2 and 0 <= self.paper_opt_range[0] < self.paper_opt_range[1],
             "paper_opt_range", self.paper_opt_range, "start,stop with 0 <= start < stop"),
            (self.iterations >= 1, "iterations", self.iterations, "an integer >= 1"),
            (self.lr > 0, "lr", self.lr, "a number > 0"),
            (self.patch_size >= 1, "patch_size", self.patch_size, "an integer >= 1"),
            (0 < self.top_fraction <= 1, "top_fraction", self.top_fraction, "a number in (0, 1]"),
        ]
        for ok, name, value, allowed in checks:
            if not ok:
                raise ConfigError(f"invalid FlowMo config: {name}={value!r}; allowed: {allowed}")

    def resolved_opt_range(self, steps: int) -> tuple[int, int]:
        if self.opt_range is not None:
            return (min(self.opt_range[0], steps), min(self.opt_range[1], steps))
        return scale_opt_range(self.paper_opt_range, steps)


def backbone_defaults(backbone: str, model: str | None) -> dict[str, Any]:
    """Per-backbone settings that differ from :class:`FlowMoConfig`'s: none so far (the paper's two
    backbones, Wan 2.1 and CogVideoX, and the epsilon backbones all use the early range above)."""
    return {}


def temporal_variance_loss(x0: torch.Tensor, patch_size: int = 2, top_fraction: float = 1.0) -> torch.Tensor:
    """FlowMo's coherence loss of a clean-latent video ``x0`` (B, C, F, h, w), F >= 3: per batch item,
    the mean of the largest ``top_fraction`` of the patch-wise temporal variances of
    d_f = mean_c |x0[:, :, f+1] - x0[:, :, f]| (averaged over ``patch_size`` patches). Returns (B,)."""
    if x0.shape[2] < 3:
        raise ValueError(f"FlowMo needs at least 3 latent frames (2 frame differences), got {x0.shape[2]}")
    d = (x0[:, :, 1:] - x0[:, :, :-1]).abs().mean(dim=1)  # (B, F-1, h, w): appearance cancels
    d = F.avg_pool2d(d, patch_size, ceil_mode=True) if patch_size > 1 else d  # (B, F-1, h/p, w/p)
    variance = d.var(dim=1, unbiased=False).flatten(1)  # (B, patches): temporal variance per patch
    k = max(1, round(top_fraction * variance.shape[1]))
    return variance.topk(k, dim=1).values.mean(dim=1)


class FlowMo:
    """The guidance object the sampler calls at every step (see the module docstring)."""

    def __init__(self, config: FlowMoConfig):
        config.validate()
        self.config = config
        self.trace: list[dict[str, Any]] = []

    def prepare(self, backbone, prompt: str, sampler, scheduler) -> None:
        frames = backbone.latent_frames(sampler.frames)
        if frames < 3:
            raise ConfigError(f"FlowMo needs at least 3 latent frames; {sampler.frames} frames are {frames} latent "
                              f"frame(s) for backbone {backbone.name!r}: sample more frames")
        self.backbone, self.sampler, self.scheduler = backbone, sampler, scheduler
        self.schedule = backbone.noise_schedule(scheduler)
        self.opt_range = self.config.resolved_opt_range(sampler.steps)
        self.frames = frames
        self.trace = []

    def in_range(self, step: int) -> bool:
        return self.opt_range[0] <= step < self.opt_range[1]

    def loss(self, latents: torch.Tensor, step: int, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """The loss at x_t = ``latents`` (summed over the batch), differentiable w.r.t. them."""
        b = latents.shape[0]
        x0 = estimate_clean_frames(self.backbone, self.schedule, latents, step, cond, uncond, self.sampler.cfg_scale,
                                   list(range(self.frames)))  # (B * F, C, h, w), float32
        x0 = x0.reshape(b, self.frames, *x0.shape[1:]).transpose(1, 2)  # (B, C, F, h, w)
        return temporal_variance_loss(x0, self.config.patch_size, self.config.top_fraction).sum()

    def condition(self, step, t, latents, cond, uncond) -> StepCondition | None:
        """None outside the guided range; inside it, x_t after the gradient steps (the plain prompt)."""
        entry: dict[str, Any] = {"step": step, "timestep": int(t), "optimized": self.in_range(step)}
        if not self.in_range(step):
            self.trace.append(entry)
            return None
        x = latents.detach().float()
        iterations = []
        self.backbone.set_denoiser_checkpointing(self.config.checkpoint_denoiser)
        try:
            for _ in range(self.config.iterations):
                with torch.enable_grad():
                    x_var = x.clone().requires_grad_(True)
                    loss = self.loss(x_var.to(latents.dtype), step, cond, uncond)
                    (grad,) = torch.autograd.grad(loss, x_var)
                record = {"loss": float(loss.detach())}
                rms = grad.pow(2).mean().sqrt()
                if not (torch.isfinite(loss) and torch.isfinite(rms)) or float(rms) == 0.0:
                    record.update(skipped=True, skip_reason="non-finite or zero gradient")
                else:
                    x = x - self.config.lr * grad / rms  # normalized gradient descent on x_t
                    record.update(skipped=False, grad_rms=float(rms))
                iterations.append(record)
        finally:
            self.backbone.set_denoiser_checkpointing(False)
        entry["iterations"] = iterations
        entry["latent_change_rms"] = float((x - latents.float()).pow(2).mean().sqrt())
        self.trace.append(entry)
        return StepCondition(cond=cond, latents=x.to(latents.dtype), info={"loss": f"{iterations[-1]['loss']:.4g}"})

    def finish(self) -> dict[str, Any]:
        return {"opt_range": list(self.opt_range), "skipped_updates":
                sum(1 for e in self.trace for r in e.get("iterations", []) if r.get("skipped")), "trace": self.trace}
