"""FlowMo inside the sampler on the tiny random backbones (through the public plugin hooks): it moves
x_t inside its step range only, on epsilon (animatediff), flow-matching (wan) and v-prediction
(cogvideox) backbones, the sampler steps with the output FlowMo hands it, and its trace says what it did."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mp_plugin_flowmo import FlowMo, FlowMoConfig
from mpcore import plugins
from mpcore.config import ConfigError, SamplerConfig
from mpcore.sampling import sample

BACKBONES = {  # name -> (frames, prediction type it exercises)
    "animatediff": (8, "epsilon"),
    "wan": (9, "flow_matching"),
    "cogvideox": (9, "v_prediction"),
}


@pytest.fixture(scope="module", params=list(BACKBONES))
def backbone(request):
    spec = plugins.get("backbone", request.param).spec
    return spec.load(model="tiny", device=torch.device("cpu"), dtype=torch.float32, seed=0, offload=False,
                     attention="auto")


def _config(backbone) -> SamplerConfig:
    frames = BACKBONES[backbone.name][0]
    spec = plugins.get("backbone", backbone.name).spec
    defaults = spec.defaults_for("tiny")[0]
    return dataclasses.replace(SamplerConfig(**defaults), frames=frames, height=32, width=32, steps=5, seed=3)


class Recorder:
    """A guidance that changes nothing and records the x_t every step starts from."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def prepare(self, backbone, prompt, config, scheduler):
        pass

    def condition(self, step, t, latents, cond, uncond):
        self.seen.append(latents.clone())
        return None

    def finish(self):
        return {}


class RecordingFlowMo(FlowMo):
    def __init__(self, config):
        super().__init__(config)
        self.seen: list[torch.Tensor] = []

    def condition(self, step, t, latents, cond, uncond):
        self.seen.append(latents.clone())
        return super().condition(step, t, latents, cond, uncond)


def test_flowmo_moves_the_latent_only_inside_its_range(backbone):
    assert backbone.prediction_type == BACKBONES[backbone.name][1]
    config = _config(backbone)
    plain = Recorder()
    base = sample(backbone, "a red ball", config, plain, progress=False)
    guided = RecordingFlowMo(FlowMoConfig(opt_range=(1, 3), lr=0.05))
    result = sample(backbone, "a red ball", config, guided, progress=False)
    # steps 0 and 1 start from the same x_t (step 0 is outside the range; step 1 starts before its own update)
    assert torch.equal(guided.seen[0], plain.seen[0]) and torch.equal(guided.seen[1], plain.seen[1])
    # from step 2 on, the update of step 1 has moved the path
    assert not torch.allclose(guided.seen[2], plain.seen[2])
    assert not torch.allclose(result.latents, base.latents)
    trace = result.guidance["trace"]
    assert [entry["optimized"] for entry in trace] == [False, True, True, False, False]
    assert all("iterations" not in entry for entry in trace if not entry["optimized"])
    for entry in trace:
        if entry["optimized"]:  # one fresh-Adam step: about lr * sign(grad) per element
            assert 0.5 * 0.05 < entry["latent_change_rms"] <= 0.05 * (1 + 1e-5)
            assert entry["iterations"][0]["loss"] > 0 and not entry["iterations"][0]["skipped"]
    assert result.guidance["opt_range"] == [1, 3] and result.guidance["skipped_updates"] == 0


def test_flowmo_lowers_its_own_loss_at_the_step(backbone):
    """Two iterations at one step: the second sees the first's update and a lower loss."""
    config = _config(backbone)
    guided = FlowMo(FlowMoConfig(opt_range=(0, 1), iterations=2, lr=0.01))
    result = sample(backbone, "a red ball", config, guided, progress=False)
    first, second = result.guidance["trace"][0]["iterations"]
    assert second["loss"] < first["loss"]


def test_too_few_latent_frames_is_a_clear_error(backbone):
    frames = 2 if backbone.temporal_compression == 1 else 5  # 2 latent frames either way
    config = dataclasses.replace(_config(backbone), frames=frames)
    with pytest.raises(ConfigError, match="at least 3 latent frames"):
        sample(backbone, "a red ball", config, FlowMo(FlowMoConfig()), progress=False)


def test_the_sampler_steps_with_the_pre_update_output(backbone):
    """Published: the model is not run again after the update; 'recompute' runs it at the updated x_t."""
    config = _config(backbone)
    calls = {"n": 0}
    predict = backbone.predict

    def counting(*args, **kwargs):
        calls["n"] += 1
        return predict(*args, **kwargs)

    counts = {}
    for step_output in ("pre_update", "recompute"):
        calls["n"] = 0
        backbone.predict = counting
        try:
            sample(backbone, "a red ball", config, FlowMo(FlowMoConfig(opt_range=(0, 1), step_output=step_output)),
                   progress=False)
        finally:
            backbone.predict = predict
        counts[step_output] = calls["n"]
    per_step = 2 if config.cfg_scale > 1 and backbone.separate_cfg_passes else 1
    assert counts["recompute"] - counts["pre_update"] == per_step
