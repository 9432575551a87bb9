"""FlowMo: variance-based motion guidance on the latent, as its authors' code does it.

Shaulov, Hazan, Wolf, Chefer, "FlowMo: Variance-Based Flow Guidance for Coherent Motion in Video
Generation" (2025, arXiv:2506.01144). Training-free: no flow estimator, no discriminator. Followed here is
the authors' released Wan 2.1 code (github.com/arielshaulov/FlowMo, commit 5bf0c14, read for its
semantics; no code taken): ``wan/text2video.py`` ``WanT2V.generate`` l.255-347 (the loop, guidance at
l.272-328) and ``motion_optimizer.py`` ``MotionVarianceOptimizer`` (``calculate_motion_variance``
l.95-160, ``optimize_noise_prediction`` l.177-296). At each guided sampling step:

1. the model's CFG-combined output at x_t (text2video.py l.256: uncond + s (cond - uncond), the sampling
   guidance scale), computed WITH gradient w.r.t. x_t through both CFG branches (motion_optimizer.py
   l.213-256); on Wan this is the flow velocity v (:meth:`mpcore.schedules.NoiseSchedule.velocity`);
2. the loss (l.133-158): the absolute difference of consecutive latent frames per channel and position,
   its population variance over the F - 1 differences (``unbiased=False``), the mean over channels, and
   the MAXIMUM over all latent positions (no patches) -- :func:`flowmo_loss`;
3. one step of a freshly created ``torch.optim.Adam`` (lr 1e-3, default betas) on a copy of x_t
   (l.214-274): its first step is about ``-lr * sign(grad)``; a None or all-zero gradient keeps x_t;
4. the scheduler then steps with the model output predicted BEFORE the update, applied to the updated
   x_t (text2video.py l.318-328): the model is not run again, and the multistep UniPC keeps its state --
   its corrector rebuilds x_t from the previous step from step 1 on, so after step 0 about 1% of the
   update survives (measured on the tiny Wan: README "A second guidance: FlowMo").

Guided: the first 12 of 50 steps (their timestep list 999..946 at 50 UniPC steps, shift 5), one iteration.
The variants we had before reading the code stay as named settings, off by default: ``loss_on``
('clean_estimate'), ``channel_mean`` ('before_variance'), ``patch_size`` > 1, ``reduction`` ('mean',
'top'), ``step_rule`` ('normalized'), ``step_output`` ('recompute'), ``keep_scheduler_state`` (False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from mpcore.config import ConfigError, scale_opt_range
from mpcore.sampling import StepCondition, cfg_output

LossOn = Literal["velocity", "clean_estimate"]
ChannelMean = Literal["after_variance", "before_variance"]
Reduction = Literal["max", "mean", "top"]
StepRule = Literal["adam", "normalized"]
StepOutput = Literal["pre_update", "recompute"]
# the allowed values: -o refuses others (mpcore.config.parse_typed), `mpcore settings flowmo` lists them
LOSS_TENSORS, CHANNEL_MEANS, REDUCTIONS, STEP_RULES, STEP_OUTPUTS = (
    get_args(t) for t in (LossOn, ChannelMean, Reduction, StepRule, StepOutput))


@dataclass
class FlowMoConfig:
    """FlowMo's settings (``-o key=value``); the defaults are the authors' Wan 2.1 run's."""

    opt_range: tuple[int, int] | None = None
    """Guided sampling steps [start, stop); None: ``paper_opt_range`` scaled from 50 steps to ``--steps``."""
    paper_opt_range: tuple[int, int] = (0, 12)
    """The guided steps at 50 sampling steps: the first 12 (text2video.py l.274-276)."""
    iterations: int = 1
    """Optimizer steps on x_t per guided sampling step (generate.py: 1)."""
    lr: float = 1e-3
    """Adam's learning rate (``--lr`` default 0.001); with ``step_rule=normalized`` the update's RMS."""
    loss_on: LossOn = "velocity"
    """'velocity': the CFG model output as a flow velocity eps_hat - x0_hat (Wan: the output itself, as
    published); 'clean_estimate': the clean estimate x0_hat (our earlier variant)."""
    channel_mean: ChannelMean = "after_variance"
    """'after_variance': variance per channel, then the mean over channels (published); 'before_variance':
    the mean over channels of the frame differences first."""
    patch_size: int = 1
    """Spatial average pooling of the frame differences before the variance (1 = each latent position,
    published)."""
    reduction: Reduction = "max"
    """Over positions: 'max' (published), 'mean', or 'top' (the mean of the largest ``top_fraction``)."""
    top_fraction: float = 1.0
    """With ``reduction=top``: the fraction of positions averaged."""
    step_rule: StepRule = "adam"
    """'adam': one step of a fresh ``torch.optim.Adam`` per sampling step (published); 'normalized':
    x -= lr * grad / rms(grad)."""
    step_output: StepOutput = "pre_update"
    """'pre_update': the scheduler steps with the output predicted before the update (published);
    'recompute': the model runs again at the updated x_t."""
    keep_scheduler_state: bool = True
    """True: a multistep scheduler keeps its state (published: UniPC's corrector discards most of the
    update after step 0); False: the scheduler continues from the updated x_t."""
    checkpoint_denoiser: bool = False
    """Activation checkpointing of the denoiser during the gradient pass (memory for compute; the authors'
    code checkpoints it)."""

    def validate(self) -> None:
        checks = [
            (self.opt_range is None or (len(self.opt_range) == 2 and 0 <= self.opt_range[0] < self.opt_range[1]),
             "opt_range", self.opt_range, "start,stop with 0 <= start < stop, or none"),
            (len(self.paper_opt_range) == 2 and 0 <= self.paper_opt_range[0] < self.paper_opt_range[1],
             "paper_opt_range", self.paper_opt_range, "start,stop with 0 <= start < stop"),
            (self.iterations >= 1, "iterations", self.iterations, "an integer >= 1"),
            (self.lr > 0, "lr", self.lr, "a number > 0"),
            (self.loss_on in LOSS_TENSORS, "loss_on", self.loss_on, " | ".join(LOSS_TENSORS)),
            (self.channel_mean in CHANNEL_MEANS, "channel_mean", self.channel_mean, " | ".join(CHANNEL_MEANS)),
            (self.patch_size >= 1, "patch_size", self.patch_size, "an integer >= 1"),
            (self.reduction in REDUCTIONS, "reduction", self.reduction, " | ".join(REDUCTIONS)),
            (0 < self.top_fraction <= 1, "top_fraction", self.top_fraction, "a number in (0, 1]"),
            (self.step_rule in STEP_RULES, "step_rule", self.step_rule, " | ".join(STEP_RULES)),
            (self.step_output in STEP_OUTPUTS, "step_output", self.step_output, " | ".join(STEP_OUTPUTS)),
        ]
        for ok, name, value, allowed in checks:
            if not ok:
                raise ConfigError(f"invalid FlowMo config: {name}={value!r}; allowed: {allowed}")

    def resolved_opt_range(self, steps: int) -> tuple[int, int]:
        if self.opt_range is not None:
            return (min(self.opt_range[0], steps), min(self.opt_range[1], steps))
        return scale_opt_range(self.paper_opt_range, steps)


def backbone_defaults(backbone_spec: Any, model: str | None) -> dict[str, Any]:
    """Per-backbone settings that differ from :class:`FlowMoConfig`'s: none (the published loop's settings
    apply to every backbone; README "A second guidance: FlowMo" says what they mean off Wan)."""
    return {}


def flowmo_loss(video: torch.Tensor, channel_mean: str = "after_variance", patch_size: int = 1,
                reduction: str = "max", top_fraction: float = 1.0) -> torch.Tensor:
    """FlowMo's coherence loss of a latent video ``video`` (B, C, F, h, w), F >= 3; returns (B,).

    Published (motion_optimizer.py l.133-158): d = |video[:, :, f] - video[:, :, f-1]| per channel and
    position (F - 1 differences); the population variance of d over them; the mean over channels; the
    maximum over positions. Variants: the channel mean before the variance, p x p average pooling of d,
    the mean (or mean of the top fraction) over positions."""
    if video.shape[2] < 3:
        raise ValueError(f"FlowMo needs at least 3 latent frames (2 frame differences), got {video.shape[2]}")
    d = (video[:, :, 1:] - video[:, :, :-1]).abs()  # (B, C, F-1, h, w): appearance cancels
    if channel_mean == "before_variance":
        d = d.mean(dim=1, keepdim=True)
    if patch_size > 1:
        b, c, f, h, w = d.shape
        pooled = F.avg_pool2d(d.reshape(b * c, f, h, w), patch_size, ceil_mode=True)
        d = pooled.reshape(b, c, f, *pooled.shape[-2:])
    variance = d.var(dim=2, unbiased=False).mean(dim=1).flatten(1)  # (B, positions): temporal variance
    if reduction == "max":
        return variance.max(dim=1).values
    if reduction == "mean":
        return variance.mean(dim=1)
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
        self.trace = []

    def in_range(self, step: int) -> bool:
        return self.opt_range[0] <= step < self.opt_range[1]

    def loss_and_output(self, latents: torch.Tensor, step: int, cond: torch.Tensor,
                        uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss at x_t = ``latents`` summed over the batch, differentiable w.r.t. them; the CFG model
        output there). The loss tensor is the velocity or the clean estimate of that output."""
        output = cfg_output(self.backbone, latents, self.schedule.timesteps[step], cond, uncond,
                            self.sampler.cfg_scale)
        if self.config.loss_on == "velocity":
            video = self.schedule.velocity(latents, output, step)
        else:
            video = self.schedule.clean_estimate(latents, output, step)
        cfg = self.config
        loss = flowmo_loss(video, cfg.channel_mean, cfg.patch_size, cfg.reduction, cfg.top_fraction).sum()
        return loss, output

    def update(self, x: torch.Tensor, step: int, cond, uncond) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
        """``iterations`` optimizer steps on a copy of x_t (float32): (updated x, the model output at the
        ORIGINAL x_t, the per-iteration records)."""
        cfg = self.config
        x_var = x.detach().float().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x_var], lr=cfg.lr) if cfg.step_rule == "adam" else None  # fresh every step
        records, first_output = [], None
        for _ in range(cfg.iterations):
            with torch.enable_grad():
                loss, output = self.loss_and_output(x_var.to(x.dtype), step, cond, uncond)
                (grad,) = torch.autograd.grad(loss, x_var)
            first_output = output.detach() if first_output is None else first_output
            record = {"loss": float(loss.detach())}
            if not torch.isfinite(loss) or not torch.isfinite(grad).all() or not bool(grad.abs().sum() > 0):
                record.update(skipped=True, skip_reason="non-finite or zero gradient")  # x_t kept, as published
            elif optimizer is not None:
                x_var.grad = grad
                optimizer.step()
                record.update(skipped=False, grad_rms=float(grad.pow(2).mean().sqrt()))
            else:
                rms = grad.pow(2).mean().sqrt()
                with torch.no_grad():
                    x_var -= cfg.lr * grad / rms  # normalized gradient descent on x_t
                record.update(skipped=False, grad_rms=float(rms))
            records.append(record)
        return x_var.detach(), first_output, records

    def condition(self, step, t, latents, cond, uncond) -> StepCondition | None:
        """None outside the guided range; inside it, x_t after the update, the model output the scheduler
        steps with (published: the one predicted before the update) and whether it keeps its state."""
        entry: dict[str, Any] = {"step": step, "timestep": int(t), "optimized": self.in_range(step)}
        if not self.in_range(step):
            self.trace.append(entry)
            return None
        self.backbone.set_denoiser_checkpointing(self.config.checkpoint_denoiser)
        try:
            x, output, iterations = self.update(latents, step, cond, uncond)
        finally:
            self.backbone.set_denoiser_checkpointing(False)
        entry["iterations"] = iterations
        entry["latent_change_rms"] = float((x - latents.float()).pow(2).mean().sqrt())
        self.trace.append(entry)
        return StepCondition(cond=cond, latents=x.to(latents.dtype),
                             model_output=output if self.config.step_output == "pre_update" else None,
                             keep_scheduler_state=self.config.keep_scheduler_state,
                             info={"loss": f"{iterations[-1]['loss']:.4g}"})

    def finish(self) -> dict[str, Any]:
        """The guided range, the updates skipped, the per-step trace and the loss terms of its iteration
        records (``loss``; what :func:`mpcore.analysis.trace_plot.plot_trace` plots per iteration)."""
        return {"opt_range": list(self.opt_range), "skipped_updates":
                sum(1 for e in self.trace for r in e.get("iterations", []) if r.get("skipped")),
                "loss_terms": ["loss"], "trace": self.trace}


def latent_update_health(result: dict[str, Any]) -> dict[str, Any]:
    """FlowMo's updates of x_t from its result (``GuidanceSpec.health``): one per iteration record of the
    guided steps. An update is skipped, x_t kept as published, when the loss or its gradient is non-finite
    or the gradient is zero (:meth:`FlowMo.update`); ``skip_reason`` says which."""
    from mpcore.sampling import count_trace_updates

    return count_trace_updates(result, "FlowMo", "latent updates", "A zero gradient means the loss does not depend "
                               "on x_t at these steps (e.g. a constant video); a non-finite one, lower the learning "
                               "rate (-o lr=...) and run again.")
