"""Issue 29: `mpcore plugins` listed no guidance's -o settings. `mpcore settings [NAME]` describes each setting (type
from the annotations, default, allowed values of a Literal, the attribute docstring); `mpcore plugins` names them per
guidance. Checked on MotionPrompt, FlowMo and a third-party guidance registered here. No model loads."""

from __future__ import annotations

import dataclasses
import json
import types
from dataclasses import dataclass, field
from typing import Literal

import pytest
from click.testing import CliRunner

from mpcore import plugins
from mpcore.cli.main import build_cli
from mpcore.hookspecs import hookimpl
from mpcore.interfaces import GuidanceSpec


@dataclass
class WobbleConfig:
    amplitude: float = 0.25
    """How far x_t wobbles, in latent units."""
    mode: Literal["sine", "square"] = "sine"
    """The wobble's shape."""
    steps: tuple[int, ...] = field(default_factory=lambda: (1, 2))
    seed: int | None = None


@hookimpl
def register_guidances(register):
    register(GuidanceSpec(name="test-wobble", build=lambda config, context: None, description="test: wobbles x_t",
                          config_class=WobbleConfig))
    broken = dataclasses.make_dataclass("BrokenConfig", [("size", "NoSuchType", 1)])
    register(GuidanceSpec(name="test-broken", build=lambda config, context: None, config_class=broken))


@pytest.fixture(scope="module")
def cli():
    state = plugins.load_plugins(reload=True)
    assert plugins.register_plugin(state, types.SimpleNamespace(register_guidances=register_guidances), "test-wobble")
    yield lambda args: CliRunner().invoke(build_cli(), args)
    state.manager.unregister(name="test-wobble")
    plugins.load_plugins(reload=True)


def test_settings_lists_each_guidances_settings_with_type_default_allowed_values_and_doc(cli):
    result = cli(["settings", "motionprompt", "flowmo", "test-wobble"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "\n  lr: float = 0.005\n" in text  # MotionPrompt's class default
    assert "\n  lr: float = 0.001\n" in text and "Adam's learning rate" in text  # FlowMo's, with its docstring
    assert "\n  reduction: str = max  (allowed: max | mean | top)\n" in text
    assert "\n  opt_range: tuple[int, int] | None = none\n" in text
    assert "\n  keep_scheduler_state: bool = true\n" in text
    assert "\n  amplitude: float = 0.25\n      How far x_t wobbles, in latent units.\n" in text
    assert "\n  mode: str = sine  (allowed: sine | square)\n      The wobble's shape.\n" in text
    assert "\n  steps: tuple[int, ...] = 1,2\n" in text and "\n  seed: int | None = none\n" in text

    listed = {g["name"]: g for g in json.loads(cli(["settings", "--json"]).output)["guidances"]}
    assert {"motionprompt", "flowmo", "test-wobble"} <= set(listed)
    lr = next(s for s in listed["motionprompt"]["settings"] if s["name"] == "lr")
    assert lr["type"] == "float" and lr["default"] == 0.005 and lr["allowed"] is None
    assert listed["test-broken"]["settings"] is None and "NameError" in listed["test-broken"]["settings_error"]
    mode = next(s for s in listed["test-wobble"]["settings"] if s["name"] == "mode")
    assert mode == {"name": "mode", "type": "str", "default": "sine", "required": False,
                    "allowed": ["sine", "square"], "doc": "The wobble's shape."}


def test_settings_shows_a_backbones_defaults_and_refuses_unknown_names(cli):
    lavie = json.loads(cli(["settings", "motionprompt", "--backbone", "lavie", "--json"]).output)["guidances"][0]
    assert next(s for s in lavie["settings"] if s["name"] == "lr")["default"] == 0.0005  # the paper's LaVie lr
    for args, words in ((["settings", "nosuch"], ["unknown guidance 'nosuch'", "flowmo", "motionprompt"]),
                        (["settings", "flowmo", "--backbone", "nosuch"], ["unknown backbone 'nosuch'", "animatediff"])):
        result = cli(args)
        assert result.exit_code == 2 and all(word in result.output for word in words), result.output


def test_plugins_names_each_guidances_settings(cli):
    result = cli(["plugins"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the lists are wrapped
    assert "`mpcore settings NAME`" in text
    assert "flowmo: opt_range, paper_opt_range, iterations, lr," in text and "test-wobble: amplitude, mode, steps, seed" in text
    assert "motionprompt: num_tokens," in text and " l_reg, lr," in text
    assert "test-broken: (unreadable: NameError" in text  # a class that cannot be read does not break the listing
    rows = {(r["name"], r["kind"]): r for r in json.loads(cli(["plugins", "--json"]).output)["plugins"]}
    assert [s["name"] for s in rows[("test-wobble", "guidance")]["settings"]] == ["amplitude", "mode", "steps", "seed"]
    assert "settings" not in rows[("animatediff", "backbone")]
