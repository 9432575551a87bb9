"""The sampler beyond DDIM: flow-matching schedulers (Wan), the clean-video estimate in the flow form,
scheduler-agnostic steps, and the frame rules of causal video VAEs.

A stand-in backbone predicts the *exact* model output of one known clean video x0 and noise eps, so
the right sampler and estimate must land on x0: a wrong sign in the Euler step, sigma read from
``alphas_cumprod``, or eta passed where it means nothing all move the result off x0.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from mpcore.config import ConfigError, MotionPromptConfig, SamplerConfig
from mpcore.interfaces import Backbone, TextTokens
from mpcore.jobs.options import resolve_dtype
from mpcore.motionprompt import estimate_clean_frames
from mpcore.schedules import AlphaBarSchedule, FlowMatchSchedule
from mpcore.sampling import SchedulerStep, initial_latents, sample

SHAPE = (1, 2, 5, 4, 6)  # (B, C, F, h, w)


class ZeroText(TextTokens):
    """Conditions of zeros: the stand-in backbone ignores them."""

    def add_tokens(self, tokens):
        return list(range(len(tokens)))

    def word_embedding(self, word):
        return torch.zeros(4)

    def embedding_table(self):
        return torch.zeros(8, 4)

    def set_rows(self, ids, values):
        pass

    def encode(self, prompts, override=None):
        return torch.zeros(len(prompts), 3, 4)


class ExactBackbone(Backbone):
    """Predicts the exact output for the clean video ``x0`` and noise ``eps``: the flow velocity
    eps - x0, eps itself, or v = sqrt(a) eps - sqrt(1 - a) x0."""

    name = "exact"
    latent_channels = 2
    vae_scale_factor = 8

    def __init__(self, scheduler, prediction_type: str, x0: torch.Tensor, eps: torch.Tensor, scale: float = 1.0):
        self.scheduler, self.prediction_type, self.x0, self.eps, self.scale = scheduler, prediction_type, x0, eps, scale
        self.text = ZeroText()

    def make_scheduler(self):
        return self.scheduler

    def latent_scale(self, t):
        return self.scale

    def predict(self, latents, t, cond):
        n = latents.shape[0]
        if self.prediction_type == "flow_matching":
            out = self.eps - self.x0
        elif self.prediction_type == "epsilon":
            out = self.eps
        else:
            a = self.scheduler.alphas_cumprod[int(t)]
            out = a.sqrt() * self.eps - (1 - a).sqrt() * self.x0
        return out.expand(n, *out.shape[1:]).to(latents.dtype)

    def decode(self, latents, checkpoint=False):
        raise NotImplementedError


def _x0_eps(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)


def _flow_schedulers():
    # Wan's official folder ships UniPC with flow sigmas shifted by 3.0; diffusers' Wan tests use Euler
    return {
        "euler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "unipc": UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    }


@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_flow_matching_sampling_lands_on_the_clean_video(name):
    x0, eps = _x0_eps()
    scheduler = _flow_schedulers()[name]
    backbone = ExactBackbone(scheduler, "flow_matching", x0, eps)
    config = SamplerConfig(steps=6, frames=SHAPE[2], height=32, width=48, cfg_scale=1.0)
    result = sample(backbone, "p", config, progress=False, latents=eps.clone())
    # x_1 = eps, and the exact velocity carries it to x_0 = x0 along the straight path
    torch.testing.assert_close(result.latents, x0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("calls", [1, 3])
@pytest.mark.parametrize("step", [0, 2, 4])
def test_flow_matching_clean_estimate_is_x0_at_every_step(step, calls):
    x0, eps = _x0_eps(1)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(6)
    backbone = ExactBackbone(scheduler, "flow_matching", x0, eps, scale=0.5)
    sigma = scheduler.sigmas[step]
    x_t = (1 - sigma) * x0 + sigma * eps  # rectified flow: x_t on the straight path
    frames = [3, 0, 4]
    cond = torch.zeros(1, 3, 4)
    estimate = estimate_clean_frames(backbone, backbone.noise_schedule(scheduler), x_t, step, cond, cond, 1.0, frames,
                                     calls=calls).frames
    expected = x0[0][:, frames].permute(1, 0, 2, 3) / 0.5
    torch.testing.assert_close(estimate, expected, atol=1e-5, rtol=1e-5)


def test_tweedie_level_reads_sigmas_for_flow_matching_and_alphas_cumprod_otherwise():
    x0, eps = _x0_eps()
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(10)
    schedule = ExactBackbone(flow, "flow_matching", x0, eps).noise_schedule(flow)
    assert isinstance(schedule, FlowMatchSchedule)
    assert schedule.tweedie_level(3) == {"alpha_bar": None, "sigma": flow.sigmas[3]}
    ddim = DDIMScheduler()
    ddim.set_timesteps(10)
    schedule = ExactBackbone(ddim, "epsilon", x0, eps).noise_schedule(ddim)
    assert isinstance(schedule, AlphaBarSchedule)
    assert schedule.tweedie_level(3) == {"alpha_bar": ddim.alphas_cumprod[int(ddim.timesteps[3])]}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_rollout_estimate_is_x0(prediction_type):
    """The alphas_cumprod path of the same estimate, with the same exact stand-in."""
    x0, eps = _x0_eps(2)
    scheduler = DDIMScheduler(prediction_type=prediction_type)
    scheduler.set_timesteps(8)
    backbone = ExactBackbone(scheduler, prediction_type, x0, eps)
    a = scheduler.alphas_cumprod[int(scheduler.timesteps[2])]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    cond = torch.zeros(1, 3, 4)
    estimate = estimate_clean_frames(backbone, backbone.noise_schedule(scheduler), x_t, 2, cond, cond, 1.0, [1, 2],
                                     calls=3).frames
    torch.testing.assert_close(estimate, x0[0][:, [1, 2]].permute(1, 0, 2, 3), atol=1e-4, rtol=1e-4)


def test_eta_is_refused_where_the_scheduler_has_none():
    generator = torch.Generator()
    with pytest.raises(ConfigError, match="eta=0.5.*FlowMatchEulerDiscreteScheduler"):
        SchedulerStep(FlowMatchEulerDiscreteScheduler(), SamplerConfig(eta=0.5), generator)
    step = SchedulerStep(DDIMScheduler(), SamplerConfig(eta=0.5), generator)
    assert step.kwargs == {"eta": 0.5, "generator": generator} and not step.second_order
    euler = SchedulerStep(FlowMatchEulerDiscreteScheduler(), SamplerConfig(), generator)
    assert "eta" not in euler.kwargs


class CompressedBackbone(ExactBackbone):
    temporal_compression = 4


def test_latent_frames_and_initial_noise_of_a_causal_video_vae():
    x0, eps = _x0_eps()
    backbone = CompressedBackbone(DDIMScheduler(), "epsilon", x0, eps)
    assert backbone.latent_frames(81) == 21 and backbone.latent_frames(1) == 1
    assert ExactBackbone(DDIMScheduler(), "epsilon", x0, eps).latent_frames(16) == 16
    config = SamplerConfig(frames=17, height=32, width=48)
    latents = initial_latents(backbone, config, FlowMatchEulerDiscreteScheduler(), torch.Generator().manual_seed(0))
    assert latents.shape == (1, 2, 5, 4, 6)


def test_frame_rules_of_a_causal_video_vae():
    SamplerConfig(frames=81, height=480, width=832).validate(16, 4)
    with pytest.raises(ConfigError, match=r"frames.*1 \+ 4 \* k"):
        SamplerConfig(frames=16, height=480, width=832).validate(16, 4)
    with pytest.raises(ConfigError, match="height"):
        SamplerConfig(frames=81, height=488, width=832).validate(16, 4)
    sampler = SamplerConfig(frames=9, height=32, width=32)  # 3 latent frames
    motion = MotionPromptConfig(decoded_frames=4, opt_range=(1, 3))
    motion.validate(sampler)  # 9 frames: 4 decoded frames fit
    with pytest.raises(ConfigError, match=r"decoded_frames.*latent frames=3"):
        motion.validate(sampler, latent_frames=3)


def test_auto_dtype_on_cuda_is_the_backbones():
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", cuda) == torch.float16
    assert resolve_dtype("auto", cuda, "bfloat16") == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu"), "bfloat16") == torch.float32
    assert resolve_dtype("float16", torch.device("cpu"), "bfloat16") == torch.float16
