"""Exit codes of `mpcore flows` and `mpcore disc` (docs/reliability.md): a bad or contradictory option exits 2
with one line naming the flag, before any work and writing nothing; a file that is not what it should be
exits 1. Every case here is refused before a model is built or a video is made (seconds in all)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from mpcore import plugins
from mpcore.cli.main import build_cli
from mpcore.flows.cache import FlowCacheWriter, VideoEntry
from mpcore.jobs.options import OptionError

TINY_ARCH = ["--arch", "preset=tiny", "--no-pretrained"]


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), [str(arg) for arg in args])


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Error")]


def assert_refused(result, flag: str, *words: str) -> None:
    """Exit 2, no traceback, one error line naming ``flag`` (and ``words``)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = error_lines(result)
    assert len(lines) == 1 and flag in lines[0] and all(word in lines[0] for word in words), result.output


def assert_failed(result, *words: str) -> None:
    """Exit 1 (an error the user fixes that is not an option's), no traceback, one error line."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = error_lines(result)
    assert len(lines) == 1 and all(word in lines[0] for word in words), result.output


def make_cache(path: Path, label: str, seed: int) -> Path:
    generator = torch.Generator().manual_seed(seed)
    with FlowCacheWriter(path, {"label": label, "size": [16, 16]}) as writer:
        for v in range(2):
            writer.add(VideoEntry(f"{label}{v}", f"/videos/{label}{v}.mp4", frames=8),
                       torch.randn(2, 2, 16, 16, generator=generator), [0, 1], [1, 2])
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("exit_codes")
    rng = np.random.default_rng(0)
    images = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / name)
        images.append(root / name)
    sequence = root / "real" / "seq0"  # one readable real "video": a folder of frames
    sequence.mkdir(parents=True)
    for t in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(sequence / f"{t:05d}.png")
    (root / "empty").mkdir()
    disc = root / "disc.safetensors"  # a file, enough for the checks that come before loading it
    disc.write_bytes(b"not read before the options are checked")
    other = root / "other" / "disc.safetensors"  # its config names a type that is not installed
    other.parent.mkdir()
    other.write_bytes(b"")
    other.with_suffix(".json").write_text(json.dumps({"type": "nope"}))
    return {"root": root, "images": images, "real_videos": root / "real", "empty": root / "empty", "disc": disc,
            "other_disc": other, "real": make_cache(root / "cache_real", "real", 0),
            "fake": make_cache(root / "cache_fake", "fake", 1)}


@pytest.fixture
def no_model(monkeypatch):
    """Building the ViT discriminator, loading a flow estimator or generating a video fails the test: these
    refusals come first."""
    import mp_plugin_vit

    from mpcore.cli import flows
    from mpcore.jobs.recipe import run_api

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built or loaded")

    monkeypatch.setattr(mp_plugin_vit.discriminator, "build_discriminator", refuse)
    monkeypatch.setattr(flows, "_load_estimator", refuse)
    monkeypatch.setattr(run_api, "generate_videos", refuse)


def written(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------------
# mpcore flows


@pytest.mark.parametrize("command, args, flag, words", [
    ("extract", ["-e", "nope"], "-e/--estimator", ["unknown flow 'nope'", "installed:"]),
    ("extract", ["-e", "tvl1", "--videos-missing"], "--videos", ["does not exist"]),
    ("extract", ["-e", "tvl1", "--option", "nope=1"], "--option", ["unknown option(s) of the tvl1 flow estimator: nope"]),
    ("eval", ["-e", "nope"], "-e/--estimator", ["unknown flow 'nope'"]),
    ("eval", ["-e", "tvl1", "--option", "nope=1"], "--option", ["nope"]),
    ("show", ["-e", "nope"], "-e/--estimator", ["unknown flow 'nope'"]),
])
def test_flows_option_errors_exit_2_naming_the_flag(command, args, flag, words, data, tmp_path, no_model):
    if command == "extract":
        videos = tmp_path / "missing" if "--videos-missing" in args else data["real_videos"]
        args = [arg for arg in args if arg != "--videos-missing"]
        full = ["flows", "extract", "--videos", videos, "--out", tmp_path / "cache", *args, "--no-progress"]
    elif command == "eval":
        full = ["flows", "eval", *args, "--out", tmp_path / "eval.json", "--no-progress"]
    else:
        full = ["flows", "show", *data["images"], *args, "--out", tmp_path / "flow.png"]
    assert_refused(invoke(full), flag, *words)
    assert written(tmp_path) == []


def test_flows_extract_input_errors_stay_exit_1(data, tmp_path):
    result = invoke(["flows", "extract", "--videos", data["empty"], "--out", tmp_path / "cache", "-e", "tvl1",
                     "--no-progress"])
    assert_failed(result, "no videos or frame folders under")
    assert written(tmp_path) == []


def test_extract_python_api_raises_an_extract_error_naming_the_flag(tmp_path):
    from mpcore.flows.extract import ExtractOptionError, find_sources

    with pytest.raises(ExtractOptionError, match="does not exist") as error:  # an ExtractError
        find_sources(tmp_path / "missing")
    assert error.value.option == "--videos"


# ---------------------------------------------------------------------------------------------------
# mpcore disc train / eval


@pytest.mark.parametrize("args, flag, words", [
    (["--epochs", "0"], "--epochs", ["epochs = 0", "an integer >= 1"]),
    (["--batch-size", "0"], "--batch-size", ["batch_size = 0"]),
    (["--val-fraction", "1"], "--val-fraction", ["val_fraction = 1"]),
    (["--num-workers", "-1"], "--num-workers", ["num_workers = -1"]),
    (["--type", "nope"], "--type", ["unknown discriminator 'nope'", "installed:"]),
    (["--arch", "preset=nope"], "--arch", ["preset='nope'", "paper, small, cpu, tiny"]),
    (["--arch", "nope=1"], "--arch", ["unknown --arch option(s) nope"]),
    (["--arch", "img_size=big"], "--arch", ["img_size"]),
    (["--out-pt"], "--out", [".safetensors"]),
])
def test_disc_train_option_errors_exit_2_naming_the_flag(args, flag, words, data, tmp_path, no_model):
    out = tmp_path / ("disc.pt" if "--out-pt" in args else "disc.safetensors")
    args = [arg for arg in args if arg != "--out-pt"]
    result = invoke(["disc", "train", "--real", data["real"], "--fake", data["fake"], "--out", out, *TINY_ARCH,
                     "--epochs", "1", "--no-progress", *args])  # a flag given twice: the last value counts
    assert_refused(result, flag, *words)
    assert written(tmp_path) == []


def test_disc_train_file_errors_stay_exit_1(data, tmp_path, no_model):
    result = invoke(["disc", "train", "--real", tmp_path / "missing", "--fake", data["fake"],
                     "--out", tmp_path / "disc.safetensors", *TINY_ARCH, "--no-progress"])
    assert_failed(result, "--real", "not a flow cache")
    assert written(tmp_path) == []


def test_disc_train_python_api_raises_disc_train_errors_naming_the_flag(data, tmp_path, no_model):
    from mpcore.disc.data import DiscOptionError
    from mpcore.disc.train import TrainConfig, train_discriminator

    with pytest.raises(DiscOptionError, match="momentum") as error:  # a DiscTrainError
        TrainConfig(momentum=1.0).validate()
    assert error.value.option == "--momentum"
    spec = plugins.get("discriminator", "vit").spec
    with pytest.raises(DiscOptionError, match="preset='nope'") as error:
        train_discriminator(spec, data["real"], data["fake"], tmp_path / "d.safetensors", TrainConfig(epochs=1),
                            {"preset": "nope"}, pretrained=False, progress=False, echo=lambda line: None)
    assert error.value.option == "--arch"
    assert written(tmp_path) == []


def test_disc_eval_unknown_type_exits_2_but_an_unknown_type_in_the_file_exits_1(data, tmp_path):
    result = invoke(["disc", "eval", "--disc", data["disc"], "--real", data["real"], "--fake", data["fake"],
                     "--type", "nope", "--no-progress"])
    assert_refused(result, "--type", "unknown discriminator 'nope'")
    from_file = invoke(["disc", "eval", "--disc", data["other_disc"], "--real", data["real"], "--fake", data["fake"],
                        "--no-progress"])
    assert_failed(from_file, "unknown discriminator 'nope'", "disc.json names its type")
    missing = invoke(["disc", "eval", "--disc", tmp_path / "none.safetensors", "--real", data["real"],
                      "--fake", data["fake"], "--no-progress"])
    assert_refused(missing, "--disc", "no such file")


# ---------------------------------------------------------------------------------------------------
# mpcore disc recipe


@pytest.mark.parametrize("args, flag, words", [
    (["--test-fraction", "1"], "--test-fraction", ["test_fraction = 1.0"]),
    (["--epochs", "0"], "--epochs", ["epochs = 0"]),
    (["-e", "nope"], "-e/--estimator", ["unknown flow 'nope'"]),
    (["--type", "nope"], "--type", ["unknown discriminator 'nope'"]),
    (["--backbone", "nope"], "--backbone", ["unknown backbone 'nope'"]),
    (["--arch", "preset=nope"], "--arch", ["preset='nope'"]),
    (["--arch", "nope=1"], "--arch", ["unknown --arch option(s) nope"]),
    (["--flow-option", "nope=1"], "--flow-option", ["unknown option(s) nope of flow 'tvl1'"]),
    (["--flow-option", "nope"], "--flow-option", ["expected KEY=VALUE"]),
    (["--backbone-option", "nope=1"], "--backbone-option", ["unknown option(s) nope of backbone 'animatediff'"]),
    (["--seeds", "-1"], "--seeds", ["is not a seed"]),
    (["--real-videos-missing"], "--real-videos", ["does not exist"]),
])
def test_disc_recipe_option_errors_exit_2_naming_the_flag(args, flag, words, data, tmp_path, no_model):
    real = tmp_path / "missing" if "--real-videos-missing" in args else data["real_videos"]
    args = [arg for arg in args if arg != "--real-videos-missing"]
    base = ["--model", "tiny", "-e", "tvl1", "--test-fraction", "0", *TINY_ARCH, "--epochs", "1", "--no-progress"]
    result = invoke(["disc", "recipe", "--real-videos", real, "--prompts", "example", "--out", tmp_path / "recipe",
                     *base, *args])
    assert_refused(result, flag, *words)
    assert written(tmp_path) == []


def test_disc_recipe_input_errors_stay_exit_1(data, tmp_path, no_model):
    result = invoke(["disc", "recipe", "--real-videos", data["empty"], "--prompts", "example", "--out",
                     tmp_path / "recipe", "--model", "tiny", "-e", "tvl1", "--test-fraction", "0", *TINY_ARCH,
                     "--no-progress"])
    assert_failed(result, "no readable video")
    assert written(tmp_path) == []


@pytest.mark.parametrize("changes, option, words", [
    ({"video_format": "webm"}, "--format", "video_format"),
    ({"arch": {"preset": "nope"}}, "--arch", "preset='nope'"),
    ({"real_videos": "missing"}, "--real-videos", "does not exist"),
])
def test_recipe_python_api_raises_recipe_errors_that_are_option_errors(changes, option, words, data, tmp_path,
                                                                         no_model):
    from mpcore.jobs.recipe import RecipeError, RecipeSettings, train_discriminator_recipe

    values = {"real_videos": data["real_videos"], "prompts": "example", "out": tmp_path / "recipe", "model": "tiny",
              "estimator": "tvl1", "test_fraction": 0, "pretrained": False, **changes}
    if values["real_videos"] == "missing":
        values["real_videos"] = tmp_path / "missing"
    with pytest.raises(RecipeError, match=words) as error:
        train_discriminator_recipe(RecipeSettings(**values), progress=False, echo=lambda line: None)
    assert isinstance(error.value, OptionError) and error.value.option == option
    assert written(tmp_path) == []
