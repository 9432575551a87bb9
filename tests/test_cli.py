"""`mpcore run` end to end on the tiny model, and its early, clear errors."""

from __future__ import annotations

import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from mpcore import plugins
from mpcore.cli.main import build_cli
from mpcore.io.video import read_video

TINY = ["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox", "--frames", "4",
        "--height", "32", "--width", "32", "--steps", "4", "--no-progress"]


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)



def test_run_writes_video_compare_manifest_and_trace(tmp_path):
    out = tmp_path / "clips" / "fox.mp4"
    result = invoke(TINY + ["--compare", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "RANDOM-INIT" in result.output  # says its output is noise
    video = read_video(out)
    assert video.shape == (4, 32, 32, 3)
    compare = read_video(tmp_path / "clips" / "fox_compare.mp4")
    assert compare.shape[0] == 4 and compare.shape[2] > 2 * 32
    assert (tmp_path / "clips" / "fox_trace.png").stat().st_size > 1000
    manifest = json.loads((tmp_path / "clips" / "fox.json").read_text())
    assert manifest["seed"] == 0 and manifest["sampler"]["steps"] == 4 and manifest["sampler"]["frames"] == 4
    assert manifest["motionprompt"]["lr"] == 0.005 and manifest["motionprompt"]["opt_range"] == [0, 1]
    assert manifest["versions"]["torch"] and manifest["versions"]["diffusers"]
    assert manifest["kernels"] == "auto"
    assert manifest["backbone"]["model"] == "tiny" and manifest["backbone"]["random_init"] is True
    # the tiny model's default flow estimator is the weight-free one, recorded by name
    assert manifest["motionprompt"]["flow_estimator"] == "tvl1"
    assert manifest["flow"]["name"] == "tvl1" and manifest["flow"]["weights"] is None
    trace = manifest["result"]["trace"]
    assert [entry["step"] for entry in trace] == [0, 1, 2, 3]
    assert trace[0]["optimized"] and {"total", "disc", "tv", "reg"} <= set(trace[0]["iterations"][0])
    assert not list(tmp_path.glob("clips/.*tmp*")), "temp files left behind"


def test_same_seed_twice_identical_video_and_guidance_changes_it(tmp_path):
    runs = {}
    guided = ["-o", "iterations=2"]
    for name, extra in {"a": guided, "b": guided, "plain": ["--guidance", "none"]}.items():  # none refuses -o
        result = invoke(TINY + ["--out", str(tmp_path / name)] + extra)
        assert result.exit_code == 0, result.output
        runs[name] = read_video(tmp_path / name)
    assert runs["a"].shape == (4, 32, 32, 3)
    assert np.array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["plain"])
    assert not (tmp_path / "plain_trace.png").exists()


@pytest.mark.parametrize("flag", [["--flow", "raft"], ["-o", "flow_estimator=raft"]])
def test_flow_estimator_is_chosen_by_name_in_the_config(tmp_path, flag):
    out = tmp_path / "fox.mp4"
    result = invoke(TINY + ["--steps", "2", "--out", str(out)] + flag)
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["motionprompt"]["flow_estimator"] == "raft"
    assert manifest["flow"]["name"] == "raft" and manifest["flow"]["is_random_init"] is True  # tiny: random RAFT


def test_unknown_backbone_lists_installed(tmp_path):
    result = invoke(["run", "--backbone", "sora", "--prompt", "x", "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code != 0
    assert "unknown backbone 'sora'; installed: animatediff" in result.output


def test_unwritable_output_fails_before_loading(tmp_path, no_model_loading):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke(TINY + ["--out", str(blocker / "fox.mp4")])
    assert result.exit_code != 0 and "Error:" in result.output
    assert str(blocker) in result.output
    result = invoke(TINY + ["--out", str(tmp_path / "fox.avi")])
    assert result.exit_code != 0 and ".mp4" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["-o", "lr=0"], "lr=0.0; allowed: a finite number > 0"),
        (["-o", "decoded_frames=6"], "decoded_frames=6; allowed: an even number in [2, frames=4]"),
        (["-o", "opt_range=2,9"], "opt_range=(2, 9)"),
        (["-o", "nonsense=1"], "unknown setting 'nonsense'"),
        (["--eta", "2"], "eta=2.0; allowed: [0, 1]"),
        (["--height", "30"], "height=30"),
        (["--flow", "farneback"], "unknown flow 'farneback'; installed: raft, tvl1, tvl1_fast"),
    ],
)
def test_invalid_settings_fail_before_loading(tmp_path, no_model_loading, args, message):
    result = invoke(TINY + ["--out", str(tmp_path / "x.mp4")] + args)
    assert result.exit_code != 0
    assert message in result.output


def test_real_model_needs_a_discriminator_and_existing_paths(tmp_path, no_model_loading):
    base = ["run", "--prompt", "a fox", "--out", str(tmp_path / "x.mp4")]
    result = invoke(base + ["--model", "some-user/some-sd15"])
    assert result.exit_code != 0 and "needs a trained flow discriminator" in result.output
    result = invoke(base + ["--model", "some-user/some-sd15", "--discriminator", str(tmp_path / "d.safetensors")])
    assert result.exit_code != 0 and "discriminator file not found" in result.output
    result = invoke(base + ["--model", str(tmp_path / "missing.safetensors"), "--guidance", "none"])
    assert result.exit_code != 0 and "base model not found" in result.output


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_neither_torch_nor_any_plugin(flag):
    """`mpcore --help` stays fast (issue 16): the time goes into importing torch and the plugins (timm...)."""
    import subprocess
    import sys

    code = ("import sys\nfrom mpcore.cli.main import main\nsys.argv = ['mpcore', %r]\ntry:\n    main()\nexcept SystemExit:\n"
            "    pass\nprint(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', "
            "'timm') or m.startswith('mp_plugin')}))" % flag)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
    assert ("Commands:" in result.stdout) == (flag == "--help")


def test_each_builtin_commands_listed_help_is_its_own():
    """`mpcore --help` lists built-in commands without importing them: each line must say what the command's own
    help says."""
    from click.utils import make_default_short_help

    from mpcore.cli.main import BUILTIN_COMMANDS

    cli = build_cli()
    ctx = click.Context(cli, info_name="mpcore")
    for name, (_, listed, _) in BUILTIN_COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command.name == name
        assert make_default_short_help(listed, 500) == command.get_short_help_str(500), name


def test_an_option_two_backbones_declare_is_one_option_whose_help_names_both():
    """wan and cogvideox both declare --max-sequence-length: one option, both backbones' help texts (it once
    showed only the first plugin's, tagged with that plugin alone)."""
    from mpcore.cli.common import backbone_options

    option, owners = backbone_options()["max_sequence_length"]
    assert sorted(owners) == ["cogvideox", "wan"]
    assert "[cogvideox]" in option.help and "[wan]" in option.help
    for name in owners:  # the plugins' own declarations are left as they were
        declared = [o for o in plugins.get("backbone", name).spec.options if o.name == "max_sequence_length"]
        assert declared[0].help.count("[") == 1
