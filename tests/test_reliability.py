"""Fail loudly, lose nothing (issue 16): guidance health, early refusals, plugin faults, outputs.

Each test runs the real CLI on the tiny random model (seconds), or refuses before any model loads.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mpcore import plugins
from mpcore.cli.main import build_cli

TINY = ["--backbone", "animatediff", "--model", "tiny", "--frames", "4", "--height", "32", "--width", "32",
        "--steps", "4", "--no-progress"]
RUN = ["run", "--prompt", "a fox", *TINY]


def invoke(args, **kwargs):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args, **kwargs)




# ---------------------------------------------------------------------------------------------------
# guidance health: skipped updates are counted, said, and an all-skipped run is not a success


def test_run_says_how_many_updates_were_made_and_skipped(tmp_path):
    out = tmp_path / "fox.mp4"
    result = invoke(RUN + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "MotionPrompt: 3 token updates, 0 skipped" in result.stderr
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["guidance_updates"] == {"updates": 3, "skipped": 0, "skip_reasons": {}, "all_skipped": False}


def test_every_update_skipped_is_an_error_saying_the_video_is_the_baseline(tmp_path):
    out = tmp_path / "fox.mp4"
    result = invoke(RUN + ["--out", str(out), "-o", "l_disc=1e38"])  # the gradient overflows: never applied
    assert result.exit_code == 1, result.output
    assert "MotionPrompt: 3 token updates, 3 skipped (non-finite gradient: 3)" in result.stderr
    assert "MotionPrompt skipped all 3 token updates (non-finite gradient)" in result.output
    assert f"{out} equals the plain baseline of seed 0" in result.output
    manifest = json.loads(out.with_suffix(".json").read_text())  # written: the record says what happened
    assert manifest["guidance_updates"]["all_skipped"] is True
    assert manifest["guidance_updates"]["skip_reasons"] == {"non-finite gradient": 3}


def test_generate_reports_items_whose_updates_were_all_skipped(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    out = tmp_path / "gen"
    result = invoke(["generate", "--prompts", str(prompts), "--out", str(out), *TINY, "-o", "l_disc=1e38"])
    assert result.exit_code == 1, result.output
    assert "p0000_s0000: MotionPrompt: 3 token updates, 3 skipped" in result.stderr
    assert "1 of 1 videos equal their plain baseline" in result.output
    summary = json.loads((out / "generate.json").read_text())
    assert summary["items"][0]["status"] == "generated" and summary["items"][0]["all_updates_skipped"] is True


# ---------------------------------------------------------------------------------------------------
# every option checked before any model loads: one line, no traceback


@pytest.mark.parametrize(
    "args,message",
    [
        (["--fps", "0"], "Invalid value for --fps: 0 frames per second; give an integer >= 1"),
        (["--steps", "5000"], "Invalid value for --steps: 5000 DDIM steps; at most 1000"),
        (["--guidance", "none", "-o", "lr=0.1"], "--guidance none samples the plain baseline, which uses none of -o/--set"),
        (["--guidance", "none", "--compare"], "which uses none of --compare: drop them"),
        (["--motion-adapter", "guoyww/animatediff-motion-adapter-v1-5-2"], "--model tiny builds its own tiny random"),
    ],
)
def test_bad_options_are_refused_before_loading(tmp_path, no_model_loading, args, message):
    out = tmp_path / "x.mp4"
    result = invoke(RUN + ["--out", str(out)] + args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("flow", ["tvl1", "raft"])
def test_unknown_flow_option_is_refused_before_any_model_loads(tmp_path, no_model_loading, flow):
    """Checked against the options the estimator's spec declares: neither the flow estimator nor the backbone loads."""
    result = invoke(RUN + ["--out", str(tmp_path / "x.mp4"), "--flow", flow, "--flow-option", "bogus=1",
                           "--flow-option", "warps=3"])
    assert result.exit_code == 2, result.output
    unknown = "bogus" if flow == "tvl1" else "bogus, warps"  # warps is a TV-L1 option, not RAFT's
    assert f"Invalid value for --flow-option: unknown option(s) of the {flow} flow estimator: {unknown}; it takes: " \
        in result.output
    assert "Traceback" not in result.output


def test_generate_refuses_fps_0_and_a_failed_run_does_not_pin_its_settings(tmp_path, monkeypatch):
    from mpcore.jobs import generate as generate_job

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    out = tmp_path / "gen"
    base = ["generate", "--prompts", str(prompts), "--out", str(out), *TINY, "--guidance", "none"]
    refused = invoke(base + ["--fps", "0"])
    assert refused.exit_code == 2 and "--fps" in refused.output and not out.exists()

    def fail(*args, **kwargs):
        raise RuntimeError("simulated failure after sampling")

    monkeypatch.setattr(generate_job, "run_one", fail)
    failed = invoke(base + ["--cfg", "3"])
    assert failed.exit_code == 1 and "1 of 1 items failed" in failed.output
    monkeypatch.undo()
    rerun = invoke(base)  # other settings: nothing was generated with the failed ones
    assert rerun.exit_code == 0, rerun.output
    assert (out / "p0000_s0000.mp4").is_file()
    assert json.loads((out / "generate.json").read_text())["settings"]["sampler"]["cfg_scale"] != 3


def test_generate_redoes_a_finished_item_whose_video_is_empty(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    out = tmp_path / "gen"
    args = ["generate", "--prompts", str(prompts), "--out", str(out), *TINY, "--guidance", "none"]
    assert invoke(args).exit_code == 0
    video = out / "p0000_s0000.mp4"
    size = video.stat().st_size
    video.write_bytes(b"")  # e.g. a disk that filled up, or a copy cut short
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "0 already complete, 1 to generate" in result.output
    assert video.stat().st_size == size


# ---------------------------------------------------------------------------------------------------
# outputs: nothing created before the model loads, no silent overwrite, no stale leftovers


def test_a_failed_load_leaves_no_folder_behind(tmp_path, no_model_loading):
    out = tmp_path / "new" / "sub" / "fox.mp4"
    result = invoke(RUN + ["--out", str(out)])
    assert result.exit_code != 0  # the stand-in loader refuses
    assert not (tmp_path / "new").exists()


def test_existing_output_is_refused_unless_overwrite_which_removes_stale_files(tmp_path):
    out = tmp_path / "fox.mp4"
    assert invoke(RUN + ["--out", str(out)]).exit_code == 0  # guided: video, manifest, trace plot
    trace = tmp_path / "fox_trace.png"
    assert trace.is_file()
    stale_tmp = tmp_path / ".fox.tmp-999999.mp4"  # what a killed run leaves
    stale_tmp.write_bytes(b"half")
    before = out.read_bytes()
    refused = invoke(RUN + ["--out", str(out), "--guidance", "none"])
    assert refused.exit_code == 2 and f"{out} already exists" in refused.output and "--overwrite" in refused.output
    assert out.read_bytes() == before
    replaced = invoke(RUN + ["--out", str(out), "--guidance", "none", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert not trace.exists(), "a trace plot of the earlier guided run would be shown as this run's"
    assert not stale_tmp.exists()
    assert json.loads(out.with_suffix(".json").read_text())["guidance"] == "none"


# ---------------------------------------------------------------------------------------------------
# a --model that is not a model: what was found, what was expected, before anything loads


def test_a_model_path_that_is_not_a_model_says_what_was_found(tmp_path, no_model_loading):
    from safetensors.torch import save_file

    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    whole = tmp_path / "whole.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(whole))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:1000])
    folder = tmp_path / "sd15"
    (folder / "vae").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                          "unet": ["diffusers", "UNet2DConditionModel"],
                                                          "vae": ["diffusers", "AutoencoderKL"],
                                                          "safety_checker": [None, None]}))
    cases = {notes: "is a .txt file, not a model", cut: "is not a readable .safetensors file",
             folder: "lacks the component folder(s) unet that its model_index.json lists",
             tmp_path: "is not a diffusers folder: it has no model_index.json or config.json (found: "}
    for model, message in cases.items():
        out = tmp_path / "out" / "x.mp4"
        result = invoke(["run", "--backbone", "animatediff", "--model", str(model), "--prompt", "x",
                         "--guidance", "none", "--out", str(out)])
        assert result.exit_code == 1, (model, result.output)
        assert message in result.output and "Traceback" not in result.output, result.output
        assert "hf download" not in result.output
        assert not out.parent.exists()


def test_no_progress_also_hides_the_loaders_bars(tmp_path, no_model_loading):
    import diffusers.utils.logging
    import transformers.utils.logging

    try:
        result = invoke(RUN + ["--out", str(tmp_path / "x.mp4"), "--no-progress"])
        assert isinstance(result.exception, AssertionError)  # the stand-in loader: the bars were set before it
        assert not diffusers.utils.logging.is_progress_bar_enabled()
        assert not transformers.utils.logging.is_progress_bar_enabled()
    finally:
        diffusers.utils.logging.enable_progress_bar()
        transformers.utils.logging.enable_progress_bar()


def test_a_folder_of_an_older_version_resumes_unless_a_setting_really_changed(tmp_path):
    """generate.json written before ``guidance_decoder`` existed: the field's default (full) is what that
    version did, so the same command resumes; a real change is still refused, naming the field."""
    from mpcore.config import MotionPromptConfig, SamplerConfig, to_dict
    from mpcore.jobs.generate import GenerateError, check_same_settings

    motion = to_dict(MotionPromptConfig())
    sampler = {k: v for k, v in to_dict(SamplerConfig()).items() if k != "seed"}
    settings = json.loads(json.dumps({"guidance": "motionprompt", "sampler": sampler, "motionprompt": motion, "fps": 8}))
    old = json.loads(json.dumps(settings))
    del old["motionprompt"]["guidance_decoder"], old["motionprompt"]["guidance_decoder_path"]
    (tmp_path / "generate.json").write_text(json.dumps({"settings": old, "items": [{"name": "p0000_s0000"}]}))
    (tmp_path / "p0000_s0000.json").write_text("{}")
    check_same_settings(tmp_path / "generate.json", settings)  # resumes
    old["motionprompt"]["placement"] = "front"  # the old name of 'start'
    settings["motionprompt"]["placement"] = "start"
    (tmp_path / "generate.json").write_text(json.dumps({"settings": old, "items": [{"name": "p0000_s0000"}]}))
    check_same_settings(tmp_path / "generate.json", settings)  # still resumes
    tiny = json.loads(json.dumps(settings))
    tiny["motionprompt"]["guidance_decoder"] = "tiny"
    with pytest.raises(GenerateError, match="motionprompt.guidance_decoder: \"full\" -> \"tiny\""):
        check_same_settings(tmp_path / "generate.json", tiny)
