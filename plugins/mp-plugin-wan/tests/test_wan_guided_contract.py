"""The guided-sampling contract (:func:`mpcore.testing.run_guided_contract`) on the tiny Wan, with the
model folder's UniPC and with flow-matching Euler. UniPC is multistep: the rollout's moves are held against
Euler on the same shifted sigmas (the deterministic single-step scheduler of that schedule); a guidance's
change of x_t must survive UniPC's corrector (it kept 12% of it before the sampler told the scheduler)."""

import pytest
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from mp_plugin_wan.backbone import load
from mp_plugin_wan.tiny import TINY_SAMPLER_DEFAULTS
from mpcore.config import SamplerConfig
from mpcore.testing import run_guided_contract


def flow_training_noising(clean, noise, t):
    """Rectified flow's training noising at timestep t: sigma = t / 1000."""
    sigma = t / 1000
    return (1 - sigma) * clean + sigma * noise


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_guided_contract_on_tiny_wan(scheduler):
    backbone = load("tiny", seed=0)
    assert backbone.scheduler_class is UniPCMultistepScheduler  # the folder's own
    config = dict(backbone.scheduler_config)
    if scheduler == "euler":
        backbone.scheduler_class, backbone.scheduler_config = FlowMatchEulerDiscreteScheduler, {"shift": 3.0}
    euler = FlowMatchEulerDiscreteScheduler.from_config({"shift": config.get("flow_shift", 3.0)})
    sampler = SamplerConfig(**{**TINY_SAMPLER_DEFAULTS, "steps": 6, "seed": 2})
    result = run_guided_contract(backbone, sampler, flow_training_noising,
                                 scheduler_factory=lambda: FlowMatchEulerDiscreteScheduler.from_config(euler.config))
    assert result["clean_estimate_error"] is None  # neither scheduler exposes pred_original_sample


def test_free_init_is_refused_on_wan():
    """Wan's x at the first step is pure noise (sigma 1, which UniPC calls timestep 999): FreeInit would keep
    nothing of the sample, and says so before sampling."""
    from mpcore.config import ConfigError
    from mpcore.free_init import check_free_init

    backbone = load("tiny", seed=0)
    with pytest.raises(ConfigError, match="keeps .* of a sample at the start of sampling"):
        check_free_init(backbone, backbone.make_scheduler())


def test_flow_shift_5_gives_flowmos_published_timesteps():
    """``--flow-shift 5`` samples on the schedule of Wan's own scripts: its first 12 of 50 timesteps are the
    list FlowMo's published code guides at (text2video.py l.274-276); the folder's 3.0 gives others."""
    published = [999, 995, 991, 987, 982, 978, 973, 968, 963, 957, 952, 946]
    for shift, equal in ((5.0, True), (None, False)):
        scheduler = load("tiny", seed=0, flow_shift=shift).make_scheduler()
        scheduler.set_timesteps(50)
        assert (scheduler.timesteps[:12].tolist() == published) is equal
    with pytest.raises(ValueError, match="--flow-shift must be a number > 0"):
        load("tiny", flow_shift=0.0)


def test_flow_shift_is_refused_before_loading():
    from click.testing import CliRunner

    from mpcore.cli.main import build_cli

    result = CliRunner().invoke(build_cli(), ["run", "--backbone", "wan", "--model", "/nonexistent/folder",
                                              "--flow-shift", "-1", "--guidance", "none", "--prompt", "a",
                                              "--out", "/tmp/x.mp4"])
    assert result.exit_code == 2 and "--flow-shift must be a number > 0" in result.output
