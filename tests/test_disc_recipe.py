"""`mpcore disc recipe` / :func:`mpcore.jobs.recipe.train_discriminator_recipe` end to end on tiny inputs:
the tiny random AnimateDiff (3 prompts, 1 seed, 2 steps, 4 frames of 32x32), real clips written here (mp4
files and DAVIS-layout JPEG folders), the weight-free tvl1 flow at 32x32, the tiny ViT for 2 epochs.
A second run skips every stage; killed runs resume only what is missing; other settings and mismatched
stages are refused before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mpcore import plugins
from mpcore.cli.main import build_cli
from mpcore.jobs.recipe import RecipeError, RecipeSettings, train_discriminator_recipe

PROMPTS = ["a fox in the snow", "a boat on a lake", "a red car"]
STAGES = ["videos", "flows/real", "flows/generated", "flows/real_test", "flows/generated_test", "disc", "eval"]
CLI = ["--backbone", "animatediff", "--model", "tiny", "--seeds", "0", "--frames", "4", "--height", "32", "--width", "32",
       "--steps", "2", "-e", "tvl1", "--size", "32", "--pairs-per-video", "2", "--test-fraction", "0.34", "--arch",
       "preset=tiny", "--arch", "flow_scale=1", "--no-pretrained", "--epochs", "2", "--batch-size", "4", "--lr", "0.01",
       "--val-fraction", "0.5", "--no-progress"]
SETTINGS = dict(backbone="animatediff", model="tiny", seeds=(0,), frames=4, height=32, width=32, steps=2, estimator="tvl1",
                flow_size=(32, 32), pairs_per_video=2, test_fraction=0.34, arch={"preset": "tiny", "flow_scale": "1"},
                pretrained=False, epochs=2, batch_size=4, lr=0.01, val_fraction=0.5)
"""The same recipe as CLI, for the Python call."""


def write_real_clips(folder: Path) -> Path:
    """Two mp4 clips and two DAVIS-layout JPEG sequences of a moving random texture (8 frames, 48x48)."""
    rng = np.random.default_rng(0)
    for k in range(4):
        texture = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        frames = np.stack([np.roll(texture, (t * (k + 1), t), axis=(0, 1)) for t in range(8)])
        if k < 2:
            (folder / "clips").mkdir(parents=True, exist_ok=True)
            iio.imwrite(folder / "clips" / f"clip{k}.mp4", frames, plugin="FFMPEG", fps=8, codec="libx264")
        else:
            sequence = folder / "DAVIS" / "JPEGImages" / "480p" / f"seq{k}"
            sequence.mkdir(parents=True)
            for t, frame in enumerate(frames):
                Image.fromarray(frame).save(sequence / f"{t:05d}.jpg", quality=95)
            masks = folder / "DAVIS" / "Annotations" / "480p" / f"seq{k}"  # DAVIS masks: not read
            masks.mkdir(parents=True)
            Image.fromarray(frames[0, :, :, 0]).save(masks / "00000.png")
    return folder


def settings(inputs: dict[str, Path], out: Path, **changes) -> RecipeSettings:
    return RecipeSettings(**{"real_videos": inputs["real"], "prompts": inputs["prompts"], "out": out, **SETTINGS, **changes})


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def read(path: Path):
    return json.loads(path.read_text())


def statuses(result) -> dict[str, str]:
    return {name: row["status"] for name, row in result["stages"].items()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe_inputs")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return {"real": write_real_clips(root / "real"), "prompts": root / "prompts.txt"}


@pytest.fixture(scope="module")
def first(inputs, tmp_path_factory):
    """The first run, through the command line."""
    out = tmp_path_factory.mktemp("recipe") / "out"
    result = invoke(["disc", "recipe", "--real-videos", str(inputs["real"]), "--prompts", str(inputs["prompts"]),
                     "--out", str(out), *CLI])
    assert result.exit_code == 0, result.output
    return {"out": out, "output": result.output, "mtimes": mtimes(out)}


def copy_of(first, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(first["out"], out)
    return out


def test_first_run_makes_every_stage_into_one_folder(first):
    out, output = first["out"], first["output"]
    for number, name in enumerate(STAGES, 1):
        assert f"[{number}/7] {name}: running" in output
    assert read(out / "recipe.json")["settings"]["estimator"] == "tvl1"
    assert read(out / "videos" / "generate.json")["summary"]["generated"] == 3
    names = ("real", "generated", "real_test", "generated_test")
    caches = {name: read(out / "flows" / name / "index.json") for name in names}
    for index in caches.values():  # both classes: one estimator, frame size, gap
        assert (index["estimator"]["name"], index["size"], index["gap"]) == ("tvl1", [32, 32], [1, 1])
    ids = {name: {video["id"] for video in index["videos"]} for name, index in caches.items()}
    assert len(ids["generated_test"]) == 1 and len(ids["generated"]) == 2  # 1 of 3 prompts held out
    assert len(ids["real_test"]) == 1 and len(ids["real"]) == 3 and not ids["real"] & ids["real_test"]
    assert not any("Annotations" in video for video in ids["real"] | ids["real_test"])
    trained_on = read(out / "disc" / "discriminator.json")["trained_on"]
    assert (trained_on["flow_estimator"], trained_on["frame_size"]) == ("tvl1", [32, 32])
    evaluation = read(out / "eval.json")
    assert evaluation["held_out"] and evaluation["count"] == 4 and 0 <= evaluation["auc"] <= 1
    last = output.strip().splitlines()[-1]
    assert str(out / "disc" / "discriminator.safetensors") in last and f"ROC-AUC {evaluation['auc']:.4f}" in last


def test_second_run_skips_every_stage_and_changes_no_file(first, inputs):
    """The same recipe as one Python call: every stage skipped, no file rewritten (recipe.json included)."""
    result = train_discriminator_recipe(settings(inputs, first["out"]), progress=False, echo=lambda line: None)
    assert statuses(result) == {name: "skipped" for name in STAGES}
    assert result["discriminator"] == str(first["out"] / "disc" / "discriminator.safetensors")
    assert result["metrics"]["auc"] == read(first["out"] / "eval.json")["auc"]
    assert mtimes(first["out"]) == first["mtimes"]


def test_a_run_killed_in_training_resumes_from_its_checkpoint(first, inputs, tmp_path, monkeypatch):
    import mpcore.disc.train as disc_train

    out = copy_of(first, tmp_path)
    for path in [*(out / "disc").iterdir(), out / "eval.json"]:
        path.unlink()
    before = mtimes(out)
    calls = []
    epoch = disc_train.train_epoch

    def killed_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the kill, after epoch 1's files are written
        return epoch(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(disc_train, "train_epoch", killed_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            train_discriminator_recipe(settings(inputs, out), progress=False, echo=lambda line: None)
    assert not (out / "eval.json").exists()
    lines = []
    result = train_discriminator_recipe(settings(inputs, out), progress=False, echo=lines.append)
    assert statuses(result) == {**{name: "skipped" for name in STAGES[:5]}, "disc": "ran", "eval": "ran"}
    assert "[6/7] disc: running (resuming after epoch 1 of 2)" in lines
    log = read(out / "disc" / "discriminator_log.json")
    assert [s["start_epoch"] for s in log["sessions"]] == [0, 1] and len(log["epochs"]) == 2
    assert {k: v for k, v in mtimes(out).items() if k in before} == before  # videos, flows untouched


def test_a_run_killed_in_generation_generates_only_the_missing_videos(first, inputs, tmp_path):
    out = copy_of(first, tmp_path)
    for path in [out / "videos" / "p0001_s0000.mp4", out / "videos" / "p0001_s0000.json", out / "eval.json"]:
        path.unlink()
    shutil.rmtree(out / "flows")
    shutil.rmtree(out / "disc")  # a run killed in generation got no further
    kept = {k: v for k, v in mtimes(out).items() if k.startswith("videos/p0000") or k.startswith("videos/p0002")}
    result = train_discriminator_recipe(settings(inputs, out), progress=False, echo=lambda line: None)
    assert statuses(result) == {name: "ran" for name in STAGES}
    summary = read(out / "videos" / "generate.json")["summary"]
    assert (summary["generated"], summary["skipped"]) == (1, 2)
    assert {k: v for k, v in mtimes(out).items() if k in kept} == kept


def test_a_lost_evaluation_is_the_only_stage_run_again(first, inputs, tmp_path):
    out = copy_of(first, tmp_path)
    (out / "eval.json").unlink()
    before = mtimes(out)
    result = train_discriminator_recipe(settings(inputs, out), progress=False, echo=lambda line: None)
    assert statuses(result) == {**{name: "skipped" for name in STAGES[:-1]}, "eval": "ran"}
    assert {k: v for k, v in mtimes(out).items() if k in before} == before
    assert read(out / "eval.json")["auc"] == read(first["out"] / "eval.json")["auc"]


def test_changed_real_videos_are_extracted_again_and_what_follows_runs_again(first, inputs, tmp_path):
    """Same settings, but a clip was added to the real-videos folder: the real caches whose videos changed are
    made again, then what depends on them; the generated side is kept."""
    out = copy_of(first, tmp_path)
    added = inputs["real"] / "clips" / "clip9.mp4"
    shutil.copy(inputs["real"] / "clips" / "clip1.mp4", added)
    try:
        result = train_discriminator_recipe(settings(inputs, out), progress=False, echo=lambda line: None)
    finally:
        added.unlink()
    ran = statuses(result)
    assert {name: ran[name] for name in ("videos", "flows/generated", "flows/generated_test")} == dict.fromkeys(
        ("videos", "flows/generated", "flows/generated_test"), "skipped")
    assert ran["flows/real_test"] == ran["eval"] == "ran"  # clip9 joins the held-out real videos (2 of 5)
    assert ran["disc"] == ran["flows/real"]  # trained again only if its own caches changed
    videos = [read(out / "flows" / name / "index.json")["videos"] for name in ("real", "real_test")]
    assert sum(len(v) for v in videos) == 5


def test_other_settings_on_an_existing_folder_are_refused_before_any_work(first, inputs):
    result = invoke(["disc", "recipe", "--real-videos", str(inputs["real"]), "--prompts", str(inputs["prompts"]),
                     "--out", str(first["out"]), *CLI, "--size", "16", "--epochs", "3"])
    assert result.exit_code == 1
    assert "other settings" in result.output and "flow_size: [32, 32] -> [16, 16]" in result.output
    assert "epochs: 2 -> 3" in result.output and "[1/7]" not in result.output
    assert mtimes(first["out"]) == first["mtimes"]


@pytest.mark.parametrize("field,value,message", [
    ("size", [16, 16], "size: [16, 16] -> [32, 32]"),
    ("estimator", {"name": "raft", "weights": None, "options": {}}, 'estimator.name: "raft" -> "tvl1"'),
])
def test_a_stage_made_with_other_settings_is_refused_before_any_work(first, inputs, tmp_path, field, value, message):
    out = copy_of(first, tmp_path)
    index = read(out / "flows" / "real" / "index.json")
    (out / "flows" / "real" / "index.json").write_text(json.dumps({**index, field: value}))
    (out / "eval.json").unlink()
    before = mtimes(out)
    with pytest.raises(RecipeError, match="flow cache .*flows/real: made with other settings") as error:
        train_discriminator_recipe(settings(inputs, out), progress=False, echo=lambda line: None)
    assert message in str(error.value)
    assert mtimes(out) == before


def test_unusable_inputs_are_refused_before_any_work(inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Exception, match="prompt file not found"):
        train_discriminator_recipe(settings(inputs, out, prompts=tmp_path / "missing.txt"), progress=False)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "broken.mp4").write_bytes(b"not a video")
    (unreadable / "notes.txt").write_text("no videos here")
    with pytest.raises(RecipeError, match="no readable video.*broken.mp4"):
        train_discriminator_recipe(settings(inputs, out, real_videos=unreadable), progress=False)
    with pytest.raises(RecipeError, match="needs at least 2 real videos; found 1"):
        train_discriminator_recipe(settings(inputs, out, real_videos=_one_clip(inputs, tmp_path)), progress=False)
    with pytest.raises(RecipeError, match="unknown flow 'nope'"):
        train_discriminator_recipe(settings(inputs, out, estimator="nope"), progress=False)
    with pytest.raises(RecipeError, match="epochs"):
        train_discriminator_recipe(settings(inputs, out, epochs=0), progress=False)
    assert not out.exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("not a recipe folder")
    with pytest.raises(RecipeError, match="not a recipe folder"):
        train_discriminator_recipe(settings(inputs, tmp_path / "other"), progress=False)


def _one_clip(inputs, tmp_path) -> Path:
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(inputs["real"] / "clips" / "clip0.mp4", folder)
    return folder
