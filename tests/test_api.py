"""The public Python API (issue 28): the README's example runs as written, `mpcore run` goes through
`mpcore.generate`, and bad input gives mpcore's one-line errors, never a bare KeyError."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import mpcore
from mpcore.cli.main import build_cli
from mpcore.io.video import read_video
from mpcore.jobs import execute

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(frames=4, height=32, width=32, steps=3)


def readme_example() -> str:
    """The Python block of the README's "From Python" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_import_mpcore_is_light_and_lists_its_api():
    """`import mpcore` (what the CLI's start pays) imports no torch; every public name resolves."""
    code = "import sys, mpcore; assert 'torch' not in sys.modules, 'torch imported'; print(sorted(mpcore.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for name in mpcore.__all__:
        assert getattr(mpcore, name) is not None, name
    assert (ROOT / "mpcore" / "py.typed").is_file()
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        mpcore.nosuch  # noqa: B018


@pytest.mark.parametrize("model", ["toy", "tiny"])
def test_the_readme_example_runs_as_written(model, tmp_path, monkeypatch):
    """The documented example (guided + baseline, save) on the toy model as written and on --model tiny
    (same code, model swapped; tiny takes a random discriminator by default)."""
    code = readme_example()
    assert 'model="toy"' in code and "compare=True" in code and ".save(" in code
    if model == "tiny":
        code = code.replace('model="toy"', 'model="tiny"').replace("seed=0,", "seed=0, steps=3, frames=4,")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own code
    manifest = json.loads((tmp_path / "out" / "circle.json").read_text())
    assert manifest["guidance"] == "motionprompt" and manifest["guidance_updates"]["updates"] > 0
    assert manifest["backbone"]["model"] == model
    video, compare = read_video(tmp_path / "out" / "circle.mp4"), read_video(tmp_path / "out" / "circle_compare.mp4")
    assert compare.shape[2] > 2 * video.shape[2] and (tmp_path / "out" / "circle_trace.png").is_file()


def test_mpcore_run_is_generate_then_save(tmp_path, monkeypatch):
    """`mpcore run` calls mpcore.generate (the public function itself), and its video equals the API's."""
    calls = []
    original = execute.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(execute, "generate", spy)
    cli_out = tmp_path / "cli"
    args = ["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox", "--frames", "4", "--height",
            "32", "--width", "32", "--steps", "3", "--seed", "5", "-o", "opt_range=0,2", "-o", "iterations=1",
            "--compare", "--no-progress", "--out", str(cli_out)]
    result = CliRunner().invoke(build_cli(), args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0]["compare"] is True and calls[0]["sampler"].seed == 5
    monkeypatch.undo()

    assert mpcore.generate is execute.generate
    backbone = mpcore.load_backbone("animatediff", model="tiny", progress=False)
    guidance = mpcore.build_guidance("motionprompt", backbone, opt_range=(0, 2), iterations=1)
    generation = mpcore.generate(backbone, "a fox", guidance=guidance, seed=5, compare=True, progress=False, **TINY)
    api_out = tmp_path / "api"
    generation.save(api_out)
    assert np.array_equal(read_video(api_out), read_video(cli_out))
    assert np.array_equal(read_video(tmp_path / "api_compare"), read_video(tmp_path / "cli_compare"))
    assert np.array_equal(generation.video, read_video(cli_out))
    cli_manifest = json.loads((tmp_path / "cli.json").read_text())
    api_manifest = json.loads((tmp_path / "api.json").read_text())
    for key in ("sampler", "guidance_settings", "motionprompt", "flow", "discriminator"):
        assert api_manifest[key] == cli_manifest[key], key
    assert cli_manifest["command"][:2] == ["mpcore", *cli_manifest["command"][1:2]] and api_manifest["command"] is None


def test_baseline_from_latents_and_reuse_of_one_guidance(tmp_path):
    """latents replace the seeded noise (same latents, same video); one guidance serves many videos, each
    starting from the init token (a second video of the same seed is identical to the first)."""
    backbone = mpcore.load_backbone("animatediff", model="tiny", progress=False)
    plain = mpcore.generate(backbone, "a fox", seed=1, progress=False, **TINY)
    again = mpcore.generate(backbone, "a fox", latents=_initial_noise(backbone, 1), progress=False, **TINY)
    assert np.array_equal(plain.video, again.video) and plain.baseline is None and plain.guidance_result is None
    guidance = mpcore.build_guidance("motionprompt", backbone, opt_range=(0, 1), iterations=1)
    first = mpcore.generate(backbone, "a fox", guidance=guidance, seed=1, progress=False, **TINY)
    second = mpcore.generate(backbone, "a fox", guidance=guidance, seed=1, progress=False, **TINY)
    assert np.array_equal(first.video, second.video)
    assert not np.array_equal(first.video, plain.video)  # the guidance changed the video


def _initial_noise(backbone, seed: int):
    import torch

    from mpcore.config import SamplerConfig
    from mpcore.sampling import initial_latents

    config = SamplerConfig(seed=seed, **{k: v for k, v in TINY.items()})
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(config.steps)
    return initial_latents(backbone, config, scheduler, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("call, error, words", [
    (lambda: mpcore.load_backbone("nosuch"), mpcore.OptionError, ["unknown backbone 'nosuch'", "animatediff"]),
    (lambda: mpcore.load_backbone("animatediff", model="tiny", motion_adpter="x"), mpcore.OptionError,
     ["--motion-adpter", "--motion-adapter"]),
    (lambda: mpcore.load_backbone("animatediff", model="tiny", dtype="float8"), mpcore.OptionError, ["float8"]),
])
def test_loading_errors_are_mpcores_and_come_before_any_load(call, error, words):
    with pytest.raises(error) as raised:
        call()
    assert all(word in str(raised.value) for word in words), str(raised.value)


def test_guidance_and_generate_errors_name_the_setting():
    backbone = mpcore.load_backbone("animatediff", model="tiny", progress=False)
    cases = [
        (lambda: mpcore.build_guidance("nosuch", backbone), ["unknown guidance 'nosuch'", "motionprompt", "flowmo"]),
        (lambda: mpcore.build_guidance("motionprompt", backbone, lr=-1.0), ["lr=-1.0"]),
        (lambda: mpcore.build_guidance("motionprompt", backbone, nosuch=1), ["unknown setting 'nosuch'", "lr"]),
        (lambda: mpcore.build_guidance("motionprompt", backbone, opt_range="4"), ["opt_range='4'", "2 values"]),
        (lambda: mpcore.build_guidance("flowmo", backbone, discriminator="random"), ["flowmo", "--discriminator"]),
        (lambda: mpcore.build_guidance("motionprompt", backbone, discriminator="/nonexistent.safetensors"),
         ["discriminator file not found"]),
        (lambda: mpcore.generate(backbone, "x", steps=0), ["steps"]),
        (lambda: mpcore.generate(backbone, "x", cfg="high"), ["cfg_scale='high'"]),
        (lambda: mpcore.generate(backbone, "x", scheduler="euler"), ["euler", "ddim"]),
        (lambda: mpcore.generate(object(), "x"), ["mpcore.load_backbone"]),
    ]
    for call, words in cases:
        with pytest.raises(mpcore.ConfigError) as raised:
            call()
        message = str(raised.value)
        assert "\n" not in message and all(word in message for word in words), message
    guided = mpcore.build_guidance("motionprompt", backbone, opt_range=(0, 9))
    with pytest.raises(mpcore.OptionError, match="opt_range"):  # checked against the sampler's 3 steps
        mpcore.generate(backbone, "x", guidance=guided, **TINY)
