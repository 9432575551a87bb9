"""An option the user can fix is an :class:`mpcore.OptionError` in Python (never a click exception: a notebook
must not get ``click.UsageError``), raised by the plugin's ``check`` before anything loads; the CLI still
turns it into a usage error, exit code 2, with the same words."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

import mpcore
from mpcore.cli.main import build_cli

MESSAGE = "--model tiny builds its own tiny random model and motion adapter: drop --motion-adapter/--base-config"


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load the AnimateDiff backbone fails the test (``BackboneSpec.load`` looks this up per call)."""

    def load(**_):
        raise AssertionError("the backbone was loaded although its options were refused")

    monkeypatch.setattr("mp_plugin_animatediff.backbone.load", load)


def test_load_backbone_refuses_the_option_with_an_option_error(no_loading):
    with pytest.raises(mpcore.OptionError) as caught:
        mpcore.load_backbone("animatediff", model="tiny", motion_adapter="x")
    error = caught.value
    assert not isinstance(error, click.ClickException)
    assert isinstance(error, mpcore.ConfigError) and isinstance(error, ValueError)
    assert str(error) == MESSAGE and error.option == "--motion-adapter"


def test_cli_still_exits_2_with_the_same_message(no_loading, tmp_path):
    out = tmp_path / "x.mp4"
    result = CliRunner().invoke(build_cli(), ["run", "--model", "tiny", "--motion-adapter", "x", "--guidance", "none",
                                              "--prompt", "a", "--no-progress", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert MESSAGE in result.output and "--motion-adapter" in result.output
    assert "Traceback" not in result.output and not out.exists()
