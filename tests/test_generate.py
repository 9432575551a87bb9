"""`mpcore generate` on the tiny model: names, equality with `mpcore run`, resuming, kills, failures,
no guidance state between items; and the prompt-file formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mpcore import plugins
from mpcore.cli.main import build_cli
from mpcore.jobs.generate import GenerateError, generation_items, parse_seeds
from mpcore.io.prompts import EXAMPLE_PROMPTS, Prompt, PromptFileError, read_prompts
from mpcore.io.video import read_video

SMALL = ["--backbone", "animatediff", "--model", "tiny", "--frames", "4", "--height", "32", "--width", "32",
         "--steps", "2", "--no-progress"]
GUIDED = ["--compare", "-o", "iterations=1"]  # one token update per optimized step: fast enough for CPU tests
PROMPTS = ["a fox", "a boat"]


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


def write_prompts(folder: Path, prompts: list[str]) -> Path:
    path = folder / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    return path


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail loudly if any backbone weights are loaded or any video is sampled."""
    import mp_plugin_animatediff.backbone as backbone

    import mpcore.sampling

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded or sampled")

    monkeypatch.setattr(backbone, "load", refuse)
    monkeypatch.setattr(mpcore.sampling, "sample", refuse)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """2 prompts x 2 seeds, MotionPrompt with --compare, recording the learnable token at the start
    of every guided video."""
    from mpcore.motionprompt import MotionPrompt

    folder = tmp_path_factory.mktemp("generate")
    prompts = write_prompts(folder, PROMPTS)
    out = folder / "out"
    initial_tokens = []
    prepare = MotionPrompt.prepare

    def recording_prepare(self, *args, **kwargs):
        prepare(self, *args, **kwargs)
        initial_tokens.append(self.tokens.detach().clone())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MotionPrompt, "prepare", recording_prepare)
        result = invoke(["generate", *SMALL, "--prompts", str(prompts), "--seeds", "0,1", *GUIDED, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return {"folder": folder, "prompts": prompts, "out": out, "output": result.output, "initial_tokens": initial_tokens}


def test_one_video_and_manifest_per_prompt_and_seed(generated):
    out = generated["out"]
    names = [f"p{p:04d}_s{s:04d}" for p in range(2) for s in range(2)]
    expected = {"generate.json"} | {f"{n}{suffix}" for n in names for suffix in (".mp4", ".json", "_compare.mp4", "_trace.png")}
    assert {p.name for p in out.iterdir()} == expected
    manifest = json.loads((out / "p0001_s0000.json").read_text())
    assert manifest["prompt"] == "a boat" and manifest["seed"] == 0 and manifest["sampler"]["seed"] == 0
    assert manifest["item"]["name"] == "p0001_s0000" and manifest["item"]["prompt_index"] == 1
    assert manifest["motionprompt"]["flow_estimator"] == "tvl1" and manifest["result"]["trace"]  # everything run records
    summary = json.loads((out / "generate.json").read_text())
    assert summary["summary"]["generated"] == 4 and summary["summary"]["failed"] == 0
    assert [(i["name"], i["status"]) for i in summary["items"]] == [(n, "generated") for n in names]  # prompt-major
    assert summary["settings"]["sampler"]["steps"] == 2 and "seed" not in summary["settings"]["sampler"]
    assert "generated 4, skipped 0, failed 0" in generated["output"] and "s/video" in generated["output"]


def test_each_item_equals_mpcore_run_so_no_state_leaks_between_items(generated, tmp_path):
    """p0001_s0001 is the last of four guided videos from one loaded model; a fresh `mpcore run` of
    its prompt and seed must give the same frames, for MotionPrompt and for the baseline."""
    out = tmp_path / "run.mp4"
    result = invoke(["run", *SMALL, "--prompt", PROMPTS[1], "--seed", "1", *GUIDED, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert np.array_equal(read_video(generated["out"] / "p0001_s0001.mp4"), read_video(out))
    assert np.array_equal(read_video(generated["out"] / "p0001_s0001_compare.mp4"), read_video(tmp_path / "run_compare.mp4"))
    # and the learnable token started from its init word for every video
    first, *others = generated["initial_tokens"]
    assert len(others) == 3 and all(torch.equal(first, tokens) for tokens in others)


def test_rerun_skips_complete_items_without_loading_a_model(generated, tmp_path, no_model_loading):
    out = tmp_path / "out"
    shutil.copytree(generated["out"], out)
    result = invoke(["generate", *SMALL, "--prompts", str(generated["prompts"]), "--seeds", "0-1", *GUIDED,
                     "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "generated 0, skipped 4, failed 0" in result.output
    assert {i["status"] for i in json.loads((out / "generate.json").read_text())["items"]} == {"skipped"}


def test_other_settings_in_the_same_folder_are_refused(generated, tmp_path, no_model_loading):
    out = tmp_path / "out"
    shutil.copytree(generated["out"], out)
    args = ["generate", *SMALL, "--prompts", str(generated["prompts"]), *GUIDED, "--out", str(out)]
    result = invoke(args + ["--steps", "3"])
    assert result.exit_code != 0 and "sampler.steps: 2 -> 3" in result.output
    # the prompt list changed under the same folder: item p0000 would be another prompt
    other = write_prompts(tmp_path, ["a cat", "a boat"])
    result = invoke(["generate", *SMALL, "--prompts", str(other), *GUIDED, "--out", str(out)])
    assert result.exit_code != 0 and "the prompt list changed" in result.output


def test_killed_run_leaves_only_complete_items_and_resumes(tmp_path, monkeypatch):
    """A kill (KeyboardInterrupt) while the 3rd video is being written, then the same command again."""
    import mpcore.io.video

    prompts = write_prompts(tmp_path, PROMPTS)
    out = tmp_path / "out"
    args = ["generate", *SMALL, "--guidance", "none", "--prompts", str(prompts), "--seeds", "0,1", "--out", str(out)]
    write_mp4 = mpcore.io.video._write_mp4
    calls = []

    def killed_on_third(frames, path, fps):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"half a video")
            raise KeyboardInterrupt
        write_mp4(frames, path, fps)

    monkeypatch.setattr(mpcore.io.video, "_write_mp4", killed_on_third)
    result = invoke(args)
    assert result.exit_code != 0
    assert sorted(p.name for p in out.iterdir()) == ["generate.json", "p0000_s0000.json", "p0000_s0000.mp4",
                                                     "p0000_s0001.json", "p0000_s0001.mp4"]
    assert not temp_files(out)
    statuses = [i["status"] for i in json.loads((out / "generate.json").read_text())["items"]]
    assert statuses == ["generated", "generated", "pending", "pending"]

    monkeypatch.setattr(mpcore.io.video, "_write_mp4", write_mp4)
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert "generated 2, skipped 2, failed 0" in result.output
    assert len(list(out.glob("p*.mp4"))) == 4 and len(list(out.glob("p*.json"))) == 4 and not temp_files(out)


@pytest.mark.parametrize("fail_fast", [False, True])
def test_a_failing_item_is_reported_and_the_others_are_kept(tmp_path, monkeypatch, fail_fast):
    import mpcore.sampling

    sample = mpcore.sampling.sample

    def nan_for_seed_1(backbone, prompt, config, *args, **kwargs):
        result = sample(backbone, prompt, config, *args, **kwargs)
        if config.seed == 1:
            result.latents = torch.full_like(result.latents, float("nan"))
        return result

    monkeypatch.setattr(mpcore.sampling, "sample", nan_for_seed_1)
    prompts = write_prompts(tmp_path, PROMPTS[:1])
    out = tmp_path / "out"
    result = invoke(["generate", *SMALL, "--guidance", "none", "--prompts", str(prompts), "--seeds", "0-2",
                     "--out", str(out)] + (["--fail-fast"] if fail_fast else []))
    assert result.exit_code != 0
    assert "failed p0000_s0001" in result.output and "non-finite" in result.output
    items = json.loads((out / "generate.json").read_text())["items"]
    if fail_fast:
        assert [i["status"] for i in items] == ["generated", "failed", "pending"]
    else:
        assert [i["status"] for i in items] == ["generated", "failed", "generated"]
        assert "generated 2, skipped 0, failed 1" in result.output
    assert not (out / "p0000_s0001.mp4").exists() and not (out / "p0000_s0001.json").exists()


def test_cli_errors_come_before_any_model_loads(tmp_path, no_model_loading):
    base = ["generate", *SMALL, "--out", str(tmp_path / "out")]
    result = invoke(base + ["--prompts", str(tmp_path / "missing.txt")])
    assert result.exit_code != 0 and "prompt file not found" in result.output
    prompts = write_prompts(tmp_path, PROMPTS)
    result = invoke(base + ["--prompts", str(prompts), "--seeds", "3-1"])
    assert result.exit_code != 0 and "'3-1' is not a seed" in result.output
    result = invoke(base + ["--prompts", str(prompts), "-o", "lr=0"])
    assert result.exit_code != 0 and "lr=0.0" in result.output
    (tmp_path / "file").write_text("x")
    result = invoke(["generate", *SMALL, "--prompts", str(prompts), "--out", str(tmp_path / "file")])
    assert result.exit_code != 0 and "is not a folder" in result.output


# ---------------------------------------------------------------------------------------------------
# items, seeds, prompt files


def test_items_are_prompt_major_then_seed_and_named_from_index_and_seed():
    prompts = [Prompt("a", None, 0), Prompt("b", None, 1)]
    items = generation_items(prompts, [3, 1])
    assert [(i.prompt.text, i.seed, i.name) for i in items] == [
        ("a", 3, "p0000_s0003"), ("a", 1, "p0000_s0001"), ("b", 3, "p0001_s0003"), ("b", 1, "p0001_s0001")]


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5, 0-1") == [5, 0, 1]
    for bad, message in [("a", "'a' is not a seed"), ("2-1", "'2-1'"), ("1,0-2", "1 given more than once"), ("", "''")]:
        with pytest.raises(GenerateError, match=message):
            parse_seeds(bad)


def test_txt_prompts_skip_comments_and_blank_lines_and_keep_duplicates(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# a header\n\n  a fox  \n# category: animal\na fox\n#another comment\n\na cat # not a comment\n")
    prompts = read_prompts(path)
    assert prompts == [Prompt("a fox", None, 0), Prompt("a fox", "animal", 1), Prompt("a cat # not a comment", "animal", 2)]


def test_vbench_json_prompts(tmp_path):
    path = tmp_path / "VBench_full_info.json"
    path.write_text(json.dumps([
        {"prompt_en": "a dog running", "dimension": ["subject_consistency", "dynamic_degree"]},
        {"prompt_en": "a cat and a dog", "dimension": ["multiple_objects"], "auxiliary_info": {"multiple_objects": {}}},
        {"prompt_en": "a plain one"},
    ]))
    assert read_prompts(path) == [Prompt("a dog running", "subject_consistency,dynamic_degree", 0),
                                  Prompt("a cat and a dog", "multiple_objects", 1), Prompt("a plain one", None, 2)]


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("p.txt", "# only a comment\n\n", "no prompts in"),
        ("p.json", "[]", "no prompts in"),
        ("p.json", '[{"prompt_en": "x"},', "is not valid JSON (line 1"),
        ("p.json", '{"prompt_en": "x"}', "expected a JSON list"),
        ("p.json", '[{"prompt_en": "x"}, {"prompt": "y"}]', "entry 1: 'prompt_en' must be a non-empty string"),
        ("p.json", '[{"prompt_en": "x", "dimension": "color"}]', "entry 0 ('x'): 'dimension' must be a list"),
        ("p.csv", "x\n", "use .txt"),
    ],
)
def test_prompt_file_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PromptFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_prompts(path)
    with pytest.raises(PromptFileError, match="prompt file not found"):
        read_prompts(tmp_path / "missing.txt")


def test_example_prompt_list_covers_the_eight_vbench_categories():
    prompts = read_prompts(EXAMPLE_PROMPTS)
    categories = {"animal", "architecture", "food", "human", "lifestyle", "plant", "scenery", "vehicles"}
    assert {p.category for p in prompts} == categories
    assert all(2 <= sum(p.category == c for p in prompts) <= 3 for c in categories)
    assert [p.index for p in prompts] == list(range(len(prompts)))


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    from mpcore.io.files import remove_stale_temporaries

    for name in (".p0001_s0000.tmp-123.mp4", ".p0001_s0000.tmp-123.json", ".p0002_s0000.tmp-9.mp4", "p0001_s0000.mp4"):
        (tmp_path / name).write_text("x")
    assert remove_stale_temporaries(tmp_path, ["p0001_s0000"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".p0002_s0000.tmp-9.mp4", "p0001_s0000.mp4"]
