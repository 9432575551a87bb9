"""Guidance as a plugin kind: MotionPrompt registered by mpcore itself through the hook, a third-party
guidance chosen with --guidance and configured with -o, and StepCondition.latents (a guidance that
moves x_t)."""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass

import pytest
import torch
from click.testing import CliRunner

from mpcore import plugins
from mpcore.cli.main import build_cli
from mpcore.config import SamplerConfig
from mpcore.hookspecs import hookimpl
from mpcore.interfaces import GuidanceSpec
from mpcore.sampling import StepCondition, sample


@dataclass
class ShiftConfig:
    amount: float = 0.1
    at_step: int = 1


class Shift:
    """Adds ``amount`` to x_t at one step (0: returns x_t unchanged, as a new tensor)."""

    def __init__(self, config: ShiftConfig):
        self.config, self.trace = config, []

    def prepare(self, backbone, prompt, sampler, scheduler):
        self.trace = []

    def condition(self, step, t, latents, cond, uncond):
        self.trace.append({"step": step, "optimized": step == self.config.at_step})
        if step != self.config.at_step:
            return None
        return StepCondition(cond=cond, latents=latents.clone() + self.config.amount)

    def finish(self):
        return {"trace": self.trace}


@hookimpl
def register_guidances(register):
    register(GuidanceSpec(name="test-shift", build=lambda config, context: Shift(config),
                          description="test: shifts x_t", config_class=ShiftConfig))


shift_plugin = types.SimpleNamespace(register_guidances=register_guidances)


def test_motionprompt_is_registered_by_mpcore_itself_even_with_no_plugins_allowed(monkeypatch):
    monkeypatch.setenv(plugins.ALLOW_ENV, "")
    try:
        state = plugins.load_plugins(reload=True)
        found = plugins.registry("guidance", state)
        assert set(found) == {"motionprompt"} and found["motionprompt"].plugin == plugins.BUILTIN_PLUGIN
        assert found["motionprompt"].distribution == "mpcore" and found["motionprompt"].version
        assert not plugins.registry("backbone", state)  # the allow-list still holds for the rest
    finally:
        monkeypatch.delenv(plugins.ALLOW_ENV)
        plugins.load_plugins(reload=True)


def test_mpcore_plugins_lists_guidances():
    plugins.load_plugins(reload=True)
    result = CliRunner().invoke(build_cli(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {(row["name"], row["kind"]): row for row in json.loads(result.output)["plugins"]}
    assert rows[("motionprompt", "guidance")]["distribution"] == "mpcore"


@pytest.fixture(scope="module")
def tiny():
    spec = plugins.get("backbone", "animatediff").spec
    backbone = spec.load(model="tiny", device=torch.device("cpu"), dtype=torch.float32, seed=0, offload=False,
                         attention="auto")
    config = dataclasses.replace(SamplerConfig(**spec.defaults_for("tiny")[0]), frames=4, height=32, width=32,
                                 steps=4, seed=1)
    return backbone, config


def test_step_condition_latents_are_what_the_step_uses(tiny):
    backbone, config = tiny
    base = sample(backbone, "a fox", config, None, progress=False)
    same = sample(backbone, "a fox", config, Shift(ShiftConfig(amount=0.0)), progress=False)
    assert torch.equal(same.latents, base.latents)  # returning x_t itself changes nothing, bitwise
    moved = sample(backbone, "a fox", config, Shift(ShiftConfig(amount=0.5)), progress=False)
    assert not torch.allclose(moved.latents, base.latents)
    assert moved.guidance["trace"][1] == {"step": 1, "optimized": True}


def test_a_third_party_guidance_runs_from_the_cli_with_its_own_settings(tmp_path):
    state = plugins.load_plugins(reload=True)
    assert plugins.register_plugin(state, shift_plugin, "test-shift")
    try:
        args = ["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox", "--frames", "4",
                "--height", "32", "--width", "32", "--steps", "4", "--no-progress", "--guidance", "test-shift"]
        result = CliRunner().invoke(build_cli(), args + ["-o", "amount=0.25", "--out", str(tmp_path / "a.mp4")])
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp_path / "a.json").read_text())
        assert manifest["guidance"] == "test-shift" and manifest["guidance_settings"] == {"amount": 0.25, "at_step": 1}
        assert [entry["optimized"] for entry in manifest["result"]["trace"]] == [False, True, False, False]
        bad = CliRunner().invoke(build_cli(), args + ["-o", "lr=1", "--out", str(tmp_path / "b.mp4")])
        assert bad.exit_code == 2 and "'lr'" in bad.output and "amount, at_step" in bad.output
        assert not (tmp_path / "b.mp4").exists()
    finally:
        state.manager.unregister(name="test-shift")
