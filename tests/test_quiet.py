"""No noise (issue 29): the README's main job prints no warning, and ``--help`` shows each option once."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import click
from click.testing import CliRunner
import pytest

from mpcore.backbones import FP32_CAST_LOGGER, quiet_diffusers
from mpcore.cli.main import build_cli

NOISE = ("warning", "Warning", "should be kept in float32", "deprecated", "FutureWarning")


def _noisy_lines(text: str) -> list[str]:
    """Lines that look like a warning; mpcore's own notes ("note: ...") are allowed."""
    return [line for line in text.splitlines()
            if not line.startswith("note:") and any(word in line for word in NOISE)]


def test_the_readme_main_job_prints_no_warning(tmp_path):
    """The README's main job (``mpcore run --prompt "a red circle moving right over a striped background" --compare
    --out OUT``: no --backbone/--model, so the bundled toy model) at 4 steps instead of the toy's default, so the
    test is cheap; loading is the same. It once printed diffusers' "There are modules in UNetMotionModel that should
    be kept in float32: []" notice on every load. Run as a user runs it: a new Python process, its default warnings
    filters and logging, --no-progress so stderr holds only what mpcore and its libraries print."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "circle.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "mpcore", "run", "--prompt", "a red circle moving right over a striped background",
         "--compare", "--out", str(out), "--steps", "4", "--no-progress"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert out.exists() and (tmp_path / "circle_compare.mp4").exists()
    assert _noisy_lines(done.stderr) == [], done.stderr
    assert _noisy_lines(done.stdout) == [], done.stdout


def _record(message: str, name: str = FP32_CAST_LOGGER, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 0, message, None, None)


def test_quiet_diffusers_drops_only_its_notices_and_only_inside_the_block():
    """Precise: diffusers' "There are modules in X that should be kept in float32" message of its logger (and
    AutoencoderTiny's own "block_out_channels ... not expected"), inside the block; any other message of the same
    loggers, the same text from another logger, and the notices after the block, still pass."""
    cast = logging.getLogger(FP32_CAST_LOGGER)
    config = logging.getLogger("diffusers.configuration_utils")
    notice = _record("There are modules in UNetMotionModel that should be kept in float32: []. Casting directly "
                     "with `to()` can lead to inconsistent results; ...")
    tiny = _record("The config attributes {'block_out_channels': [8, 8]} were passed to AutoencoderTiny, but are not "
                   "expected and will be ignored. Please verify your config.json configuration file.",
                   name="diffusers.configuration_utils")
    other_config = _record("The config attributes {'sample_size': 8} were passed to AutoencoderTiny, but are not "
                           "expected and will be ignored.", name="diffusers.configuration_utils")
    before = (list(cast.filters), list(config.filters))
    with quiet_diffusers():
        assert not cast.filter(notice)
        assert not config.filter(tiny)
        assert cast.filter(_record("Some other diffusers warning"))
        assert config.filter(other_config)
        assert logging.getLogger("diffusers").filter(_record(notice.msg, name="diffusers"))
    assert (cast.filters, config.filters) == before
    assert cast.filter(notice) and config.filter(tiny)


def _help(*args: str) -> tuple[click.Command, str]:
    cli = build_cli()
    ctx = click.Context(cli, info_name="mpcore")
    command = cli.get_command(ctx, args[0])
    for name in args[1:]:
        command = command.get_command(click.Context(command, info_name=args[0]), name)
    runner = CliRunner()
    result = runner.invoke(cli, [*args, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return command, result.output


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("args", [("run",), ("generate",), ("diagnose", "steps")])
def test_help_shows_each_option_and_its_help_once(args):
    """``--config`` and ``--guidance-rescale`` (declared with the same text by videocrafter2 and dynamicrafter)
    once printed their help twice. Every flag is one parameter and one row of --help; each help text, and each
    backbone's part of a shared option's help, shows once; a shared option's help names every backbone taking it."""
    from mpcore.cli.common import backbone_options

    command, output = _help(*args)
    names = [param.name for param in command.params]
    assert len(names) == len(set(names)), names
    flags = [flag for param in command.params for flag in param.opts + param.secondary_opts]
    assert len(flags) == len(set(flags)), flags
    rows = [match.group(1) for line in output.splitlines() if (match := re.match(r"^  (-\S.*?)(?:  |$)", line))]
    shown = [flag for row in rows for flag in re.split(r"[ ,/]+", row) if flag.startswith("-")]
    for flag in flags:
        assert shown.count(flag) == 1, (flag, output)
    squashed = _squash(output)
    for param in command.params:
        if isinstance(param, click.Option) and param.help:
            assert squashed.count(_squash(param.help)) == 1, (param.name, output)
            parts = [re.sub(r"^\[[^\]]*\]\s*", "", part) for part in re.split(r";\s*(?=\[)", param.help)]
            assert len(parts) == len(set(parts)), param.help  # each backbone's text once
    for name, (option, owners) in backbone_options().items():
        if name in names:
            for owner in owners:
                assert owner in option.help, (name, option.help)


def test_an_option_declared_alike_by_two_backbones_shows_one_text_naming_both(monkeypatch):
    """The cause of the doubled help: one plugin registers two backbones with the same option text (lvdm's
    --config for videocrafter2 and dynamicrafter, each tagged '[videocrafter2, dynamicrafter]'); their texts were
    joined. Now each distinct text shows once, tagged with the backbones that declared it."""
    from mpcore.cli import common

    def spec(*options):
        return SimpleNamespace(spec=SimpleNamespace(options=list(options)))

    same = "[a, b] a model config"
    registry = {
        "a": spec(click.Option(["--config"], help=same), click.Option(["--tiling"], is_flag=True, help="[a] tiles")),
        "b": spec(click.Option(["--config"], help=same), click.Option(["--tiling"], is_flag=True, help="[b] slices")),
        "c": spec(click.Option(["--config"], help="a model config"), click.Option(["--own"], help="[c] mine")),
    }
    monkeypatch.setattr(common.plugins, "registry", lambda kind: registry)
    options = common.backbone_options()
    assert options["config"][0].help == "[a, b, c] a model config"
    assert options["config"][1] == ["a", "b", "c"]
    assert options["tiling"][0].help == "[a] tiles; [b] slices"
    assert options["own"][0].help == "[c] mine"
    assert registry["a"].spec.options[0].help == same  # the plugins' own option objects stay as declared
    command = common.with_backbone_options(
        click.Command("x", params=[click.Option(["--own"], help="the command's own")]), options)
    assert [param.name for param in command.params] == ["own", "config", "tiling"]
    assert command.params[0].help == "the command's own"
