"""Issue 29, second reliability pass: what a backbone can do is declared by its spec and checked before any
model loads, with the flag given and the property that refuses it; one exit code per class of error whatever
the guidance; no setting silently ignored; counts and records that say what happened."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mpcore import plugins
from mpcore.cli.main import build_cli

SMALL = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "4", "--no-progress"]


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


@pytest.fixture
def no_loading(monkeypatch):
    """Any backbone load fails the test: these refusals must come first."""
    from mpcore.jobs import load

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(load, "load_spec", refuse)


@pytest.mark.parametrize("backbone, args, flag, words", [
    ("wan", ["--free-init", "2"], "--free-init", ["wan backbone's noise schedule keeps nothing"]),
    ("cogvideox", ["--free-init", "2"], "--free-init", ["zero terminal SNR"]),
    ("dynamicrafter", ["--free-init", "2", "--image", "{image}"], "--free-init", ["dynamicrafter"]),
    ("wan", ["--scheduler", "ddpm"], "--scheduler", ["wan backbone's scheduler", "samples with its own only"]),
    ("cogvideox", ["--scheduler", "ddim"], "--scheduler", ["cogvideox"]),
    ("videocrafter2", ["--scheduler", "ddpm"], "--scheduler", ["videocrafter2"]),
    ("animatediff", ["--scheduler", "ddpm", "--eta", "0.5"], "--eta", ["ancestral", "drop --eta"]),
    ("animatediff", ["--free-init", "1000"], "--free-init", ["iterations=1000", "[1, 10]"]),
    ("animatediff", ["--free-init", "2", "--free-init-spatial-stop", "5"], "--free-init-spatial-stop",
     ["spatial_stop_frequency=5"]),
    ("animatediff", ["-o", "num_tokens=100"], "-o/--set", ["num_tokens=100", "reads 77 tokens", "at most 74"]),
    ("animatediff", ["-o", "estimate=tweedie", "-o", "rollout_steps=3"], "-o/--set",
     ["rollout_steps acts only with estimate=rollout"]),
])
def test_refused_before_loading_naming_the_flag_and_the_property(backbone, args, flag, words, tmp_path, no_loading):
    image = tmp_path / "start.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 80, 40)).save(image)
    args = [a.format(image=image) for a in args]
    result = invoke(["run", "--backbone", backbone, "--model", "tiny", "--prompt", "a fox", *SMALL, *args,
                     "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code == 2, result.output
    assert flag in result.output and all(word in result.output for word in words), result.output
    assert "a model was loaded" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("guidance", ["motionprompt", "flowmo"])
@pytest.mark.parametrize("bad, code", [
    (["-o", "lr=fast"], 2),  # a value of the wrong type
    (["-o", "nosuch=1"], 2),  # an unknown setting
    (["-o", "lr=-1"], 2),  # out of range
    (["-o", "opt_range=0,99"], 2),  # against the sampler's steps
    (["--fps", "0"], 2),
    (["--steps", "5000"], 2),
])
def test_one_exit_code_per_class_of_error_whatever_the_guidance(guidance, bad, code, tmp_path, no_loading):
    """A bad -o exited 1 under MotionPrompt and 2 under FlowMo; the README's table says 2 for a bad option."""
    result = invoke(["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox", *SMALL,
                     "--guidance", guidance, *bad, "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") <= 3


def test_free_init_counts_every_pass_and_ddpm_records_no_eta(tmp_path):
    """--free-init 2 said "18 token updates" where 36 were made (the last pass only); --scheduler ddpm recorded
    eta 0.0, an eta DDPM does not have."""
    out = tmp_path / "fox.mp4"
    result = invoke(["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox", "--frames", "4",
                     "--height", "32", "--width", "32", "--steps", "3", "--no-progress", "-o", "opt_range=0,2",
                     "-o", "iterations=1", "--free-init", "2", "--scheduler", "ddpm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    passes = manifest["free_init"]["videos"]["motionprompt"]["passes"]
    per_pass = [p["guidance"]["health"]["updates"] for p in passes]
    assert per_pass == [2, 2] and manifest["guidance_updates"]["updates"] == 4
    assert "MotionPrompt: 4 token updates, 0 skipped" in result.output
    assert manifest["sampler"]["eta"] is None and manifest["scheduler"] == "ddpm"


def test_init_words_that_split_are_warned_and_recorded(tmp_path):
    out = tmp_path / "fox.mp4"
    result = invoke(["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox", "--frames", "4",
                     "--height", "32", "--width", "32", "--steps", "3", "--no-progress", "-o", "opt_range=0,1",
                     "-o", "iterations=1", "-o", "init_words=zzqxjvbnm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    pieces = manifest["result"]["init_pieces"][0]
    assert len(pieces) > 1
    warning = f"init word 'zzqxjvbnm' is {len(pieces)} pieces {pieces}"
    assert f"warning: {warning}" in result.output and any(warning in w for w in manifest["warnings"])
    plain = invoke(["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox", "--frames", "4",
                    "--height", "32", "--width", "32", "--steps", "3", "--no-progress", "-o", "opt_range=0,1",
                    "-o", "iterations=1", "--out", str(tmp_path / "plain.mp4")])
    assert plain.exit_code == 0 and "init word" not in plain.output


def test_the_toy_range_is_not_called_the_papers_and_the_old_name_still_reads():
    """The toy manifest said paper_opt_range: [28, 40], a range the paper never used; the field is the reference
    range at 50 steps (the paper's only for its backbones). -o and folders of the old name still work."""
    from mpcore.config import MotionPromptConfig, apply_overrides, to_dict
    from mpcore.jobs.items import with_added_fields

    assert apply_overrides(MotionPromptConfig(), ["paper_opt_range=28,40"]).reference_opt_range == (28, 40)
    old = {k: list(v) if isinstance(v, tuple) else v for k, v in to_dict(MotionPromptConfig()).items()}
    old["paper_opt_range"] = old.pop("reference_opt_range")
    upgraded = with_added_fields({"guidance": "motionprompt", "motionprompt": {**old, "paper_opt_range": [28, 40]}})
    assert upgraded["motionprompt"]["reference_opt_range"] == [28, 40] and "paper_opt_range" not in upgraded["motionprompt"]
    toy = plugins.get("backbone", "animatediff").spec.defaults_for("toy")[1]
    assert "paper_opt_range" not in toy and toy["reference_opt_range"] == (28, 40)


@pytest.mark.parametrize("args, words", [
    (["--metrics", "nosuch", "{video}"], ["--metrics", "unknown metric(s): nosuch"]),
    (["--resamples", "0", "{video}"], ["--resamples"]),
    ([], ["no videos given"]),
    (["--compare", "{folder}", "{folder}", "{video}"], ["not both"]),
    (["--metrics", "temporal_flickering", "--weights", "motion_smoothness=x.pt", "{video}"], ["motion_smoothness"]),
])
def test_eval_bad_options_exit_2_like_every_command(args, words, tmp_path):
    """mpcore eval's bad or contradictory options exited 1; the README's table says 2 for them."""
    from mpcore.io.video import write_video
    import numpy as np

    video = write_video(np.zeros((3, 16, 16, 3), np.uint8), tmp_path / "v.mp4")
    args = [a.format(video=video, folder=tmp_path) for a in args]
    result = invoke(["eval", *args])
    assert result.exit_code == 2, result.output
    assert all(word in result.output for word in words), result.output


def test_an_init_word_the_tokenizer_does_not_know_is_warned():
    """On wan, init_words=🦊 became ['▁', '<unk>'] without a word: the token started from the unknown row."""
    from mpcore.motionprompt import split_init_words

    assert split_init_words(["🦊"], [["▁", "<unk>"]], "<unk>") == [
        "init word '🦊' is unknown to the tokenizer ['▁', '<unk>']: its token starts from their mean"]
    assert split_init_words(["authentic", "zz"], [["authentic</w>"], ["z", "z</w>"]], "<|endoftext|>") == [
        "init word 'zz' is 2 pieces ['z', 'z</w>']: its token starts from their mean"]
    assert split_init_words(["random"], [None], None) == []  # a random init has no pieces


@pytest.mark.parametrize("args, flag", [(["--flow", "nope"], "--flow"), (["--discriminator-type", "nope"],
                                                                        "--discriminator-type")])
def test_an_unknown_plugin_is_a_bad_option_like_an_unknown_backbone(args, flag, tmp_path, no_loading):
    """--backbone nope exited 2 but --flow nope exited 1: both are a bad option naming the installed ones."""
    result = invoke(["run", "--backbone", "animatediff", "--model", "tiny", "--prompt", "a fox", *SMALL, *args,
                     "--discriminator", "random", "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code == 2 and flag in result.output and "installed:" in result.output, result.output
