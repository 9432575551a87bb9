"""`mpcore run --guidance flowmo` end to end on the tiny model: its summary line, trace plot, manifest and
report, and its early errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mpcore import plugins
from mpcore.cli.main import build_cli
from mpcore.io.video import read_video
from mpcore.jobs import setup as run_setup

TINY = ["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox", "--frames", "4",
        "--height", "32", "--width", "32", "--steps", "4", "--no-progress", "--guidance", "flowmo"]


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


def test_run_flowmo_writes_video_compare_and_a_manifest_recording_it(tmp_path):
    out = tmp_path / "fox.mp4"
    result = invoke(TINY + ["--compare", "-o", "lr=0.05", "-o", "opt_range=0,2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_video(out).shape == (4, 32, 32, 3)
    assert read_video(tmp_path / "fox_compare.mp4").shape[2] > 2 * 32  # baseline | flowmo
    assert "FlowMo: 2 latent updates, 0 skipped" in result.output  # the summary line (GuidanceSpec.health)
    manifest = json.loads((tmp_path / "fox.json").read_text())
    assert manifest["outputs"]["trace_plot"] == str(tmp_path / "fox_trace.png")  # its loss per step
    assert (tmp_path / "fox_trace.png").stat().st_size > 0
    assert manifest["guidance_updates"] == {"updates": 2, "skipped": 0, "skip_reasons": {}, "all_skipped": False}
    assert manifest["guidance"] == "flowmo" and manifest.get("motionprompt") is None
    assert manifest["guidance_settings"]["lr"] == 0.05 and manifest["guidance_settings"]["opt_range"] == [0, 2]
    trace = manifest["result"]["trace"]
    assert [entry["optimized"] for entry in trace] == [True, True, False, False]
    assert trace[0]["iterations"][0]["loss"] > 0
    assert manifest["flow"] is None and manifest["discriminator"] is None
    assert manifest["timings"]["flowmo_s"] > 0 and manifest["timings"]["baseline_s"] > 0

    # the report of the folder labels the side-by-side and the trace with FlowMo's name, shows its trace plot
    report = invoke(["report", str(tmp_path)])
    assert report.exit_code == 0, report.output
    page = (tmp_path / "report.html").read_text()
    assert "baseline | flowmo (same seed)" in page and 'src="fox_trace.png"' in page
    assert "MotionPrompt" not in page and "no trace plot" not in page


def test_unknown_guidance_lists_the_installed_ones_before_loading(monkeypatch):
    monkeypatch.setattr(run_setup, "load", lambda setup: pytest.fail("loaded a model for an unknown guidance"))
    result = invoke(TINY[:-1] + ["nosuch"])
    assert result.exit_code == 2
    assert "unknown guidance 'nosuch'" in result.output
    assert "flowmo" in result.output and "motionprompt" in result.output and "--guidance none" in result.output


def test_unknown_setting_is_named_with_the_allowed_ones(monkeypatch):
    monkeypatch.setattr(run_setup, "load", lambda setup: pytest.fail("loaded a model for a bad setting"))
    result = invoke(TINY + ["-o", "l_disc=1"])
    assert result.exit_code == 2
    assert "'l_disc'" in result.output and "FlowMoConfig" in result.output and "top_fraction" in result.output
    result = invoke(TINY + ["-o", "lr=-1"])
    assert result.exit_code == 2 and "lr=-1" in result.output


def test_motionprompt_options_are_refused_with_flowmo():
    result = invoke(TINY + ["--discriminator", "random"])
    assert result.exit_code == 2 and "--discriminator" in result.output and "flowmo guidance uses no discriminator" \
        in result.output
