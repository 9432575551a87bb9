"""Config validation names the field and the allowed range; -o overrides are typed by field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from mpcore import plugins
from mpcore.config import ConfigError, MotionPromptConfig, SamplerConfig, apply_overrides, scale_opt_range


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("steps", 0, ">= 1"),
        ("cfg_scale", -1.0, ">= 0"),
        ("frames", 0, ">= 1"),
        ("height", 60, "multiple of 8"),
        ("width", 0, "multiple of 8"),
        ("eta", 1.5, "[0, 1]"),
        ("seed", -2, ">= 0"),
    ],
)
def test_sampler_validation(field, value, fragment):
    with pytest.raises(ConfigError) as error:
        SamplerConfig(**{field: value}).validate()
    assert f"{field}=" in str(error.value) and fragment in str(error.value)


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("num_tokens", 0, ">= 1"),
        ("init_words", (), "at least one"),
        ("placement", "middle", "end | front"),
        ("iterations", 0, ">= 1"),
        ("opt_range", (5, 5), "inside [0, steps=50]"),
        ("opt_range", (10, 60), "inside [0, steps=50]"),
        ("opt_range", (-1, 3), "inside [0, steps=50]"),
        ("decoded_frames", 3, "even number in [2, frames=16]"),
        ("decoded_frames", 18, "even number in [2, frames=16]"),
        ("decoded_frames", 0, "even number"),
        ("l_disc", -1.0, ">= 0"),
        ("l_tv", float("nan"), "finite"),
        ("l_reg", -0.1, ">= 0"),
        ("lr", 0.0, "> 0"),
        ("optimizer", "lbfgs", "adam | adamw | sgd"),
        ("flow_size", 4, ">= 8"),
        ("rollout_steps", 0, ">= 1"),
    ],
)
def test_motionprompt_validation(field, value, fragment):
    config = MotionPromptConfig(**{field: value})
    with pytest.raises(ConfigError) as error:
        config.validate(SamplerConfig())
    assert f"{field}=" in str(error.value) and fragment in str(error.value)


def test_rollout_steps_beyond_the_steps_left_mean_every_remaining_step():
    """Calls are capped at the steps left (the exact video of the current token), so any count >= 1 is valid,
    even above the step count (a tiny run of 2 steps with the toy default of 3 calls)."""
    MotionPromptConfig(estimate="rollout", rollout_steps=1000).validate(SamplerConfig(steps=2))


def test_paper_defaults_are_valid_at_50_steps():
    for name, registered in plugins.registry("backbone").items():  # each backbone plugin declares its own
        config = MotionPromptConfig(**registered.spec.defaults_for(None)[1])
        config.validate(SamplerConfig(frames=16))


def test_default_range_scales_with_steps_explicit_does_not():
    assert scale_opt_range((4, 15), 10) == (1, 3)
    assert scale_opt_range((4, 15), 2) == (0, 1)
    assert scale_opt_range((4, 15), 25) == (2, 8)
    assert scale_opt_range((4, 15), 1) == (0, 1)
    config = MotionPromptConfig(opt_range=(2, 4))
    assert config.resolved_opt_range(10) == (2, 4)
    with pytest.raises(ConfigError, match="opt_range"):
        config.validate(SamplerConfig(steps=3))


def test_overrides_are_typed():
    config = apply_overrides(
        MotionPromptConfig(),
        ["lr=0.001", "opt_range=2,9", "init_words=real, clear", "checkpoint_denoiser=true", "iterations=5", "flow_size=none"],
    )
    assert config.lr == 0.001 and config.opt_range == (2, 9) and config.init_words == ("real", "clear")
    assert config.checkpoint_denoiser is True and config.iterations == 5 and config.flow_size is None
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        apply_overrides(MotionPromptConfig(), ["learning_rate=1"])
    with pytest.raises(ConfigError, match="iterations='many'"):
        apply_overrides(MotionPromptConfig(), ["iterations=many"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(MotionPromptConfig(), ["lr"])


@dataclass
class ThirdParty:
    """A third-party guidance's settings: the field types -o must honour."""

    window: tuple[float, float] = (0.0, 1.0)
    names: tuple[str, ...] = ()
    mode: Literal["a", "b"] = "a"
    limit: int | None = None
    strength: float = 1.0
    enabled: bool = False
    label: str = "x"


def test_overrides_are_parsed_by_the_field_types_of_any_config():
    """Issue 28: -o values were parsed by MotionPrompt's field names, so a third-party guidance's tuple field
    arrived as a string. Now the annotation decides, for any config dataclass."""
    config = apply_overrides(ThirdParty(), ["window=0.25,0.5", "names=fox, cat", "mode=b", "limit=3", "strength=2",
                                            "enabled=yes", "label=none"])
    assert config == ThirdParty((0.25, 0.5), ("fox", "cat"), "b", 3, 2.0, True, "none")
    assert isinstance(config.strength, float) and apply_overrides(config, ["limit=none"]).limit is None
    for bad, words in [("window=1", "2 values"), ("mode=c", "a | b"), ("limit=x", "limit='x'"), ("enabled=2", "true|false"),
                       ("strength=fast", "float")]:
        with pytest.raises(ConfigError, match=words.replace("|", "\\|")):
            apply_overrides(ThirdParty(), [bad])


@pytest.mark.parametrize("settings,field,advice", [
    (dict(estimate="rollout", rollout_gradient="last_call", rollout_prompt="as_sampled"), "rollout_gradient",
     "rollout_prompt=guided"),
    (dict(estimate="rollout", rollout_gradient="last_call", step_output="last_iteration"), "step_output",
     "rollout_gradient=every_call"),
    (dict(step_output="stale"), "step_output", "fresh | last_iteration"),
    (dict(estimate="rollout", rollout_gradient="first_call"), "rollout_gradient", "every_call | last_call"),
])
def test_the_cheaper_variants_refuse_what_they_cannot_do(settings, field, advice):
    """Issue 31's variants: a last-call rollout whose last call would see the plain prompt (no gradient at all),
    or that would reuse an output computed before the step's updates, is refused naming the field and the fix."""
    sampler = SamplerConfig(steps=25, frames=8, height=32, width=32)
    with pytest.raises(ConfigError, match=advice) as error:
        MotionPromptConfig(**settings).validate(sampler)
    assert error.value.field == field
    # each alone, and the stale step with the one-step estimate, are valid
    for valid in (dict(estimate="rollout", rollout_gradient="last_call"), dict(step_output="last_iteration"),
                  dict(estimate="rollout", step_output="last_iteration")):
        MotionPromptConfig(**valid).validate(sampler)


def test_rollout_gradient_without_a_rollout_is_named_as_ineffective():
    assert "rollout_gradient" in MotionPromptConfig().ineffective({"rollout_gradient", "step_output"})
    assert "step_output" not in MotionPromptConfig().ineffective({"rollout_gradient", "step_output"})
    assert MotionPromptConfig(estimate="rollout").ineffective({"rollout_gradient"}) == {}
