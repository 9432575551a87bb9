"""``mpcore eval``: JSON shape, unavailable metrics, folder expansion, ``--compare``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mpcore.cli.main import build_cli
from mpcore.analysis.evaluate import expand_videos
from mpcore.io.video import write_video

pytest.importorskip("mp_plugin_vbench")


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory) -> Path:
    """A random-init small timm ViT saved as a local state dict (the DINO path with an arch override)."""
    import timm

    path = tmp_path_factory.mktemp("weights") / "dino_tiny.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).state_dict(), path)
    return path


def _clip(seed: int, frames: int = 4, size: int = 32, still: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    if still:
        return np.repeat(first, frames, 0)
    return np.concatenate([first, rng.integers(0, 256, (frames - 1, size, size, 3), dtype=np.uint8)])


def _invoke(args: list[str]):
    return CliRunner().invoke(build_cli(), ["eval", "--no-progress", *args])


def test_json_shape_and_identical_frames(tmp_path, tiny_dino):
    still = write_video(_clip(0, still=True), tmp_path / "still")  # PNG-frame folder (lossless)
    moving = write_video(_clip(1), tmp_path / "moving.gif")
    out = tmp_path / "eval.json"
    result = _invoke([str(still), str(moving), "--metrics", "temporal_flickering,subject_consistency",
                      "--weights", f"subject_consistency={tiny_dino}",
                      "--metric-option", "subject_consistency.arch=vit_tiny_patch16_224",
                      "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data["videos"]) == {str(still), str(moving)}
    assert set(data["mean"]) == {"temporal_flickering", "subject_consistency"}
    assert data["unavailable"] == {}
    assert data["metrics"]["temporal_flickering"]["vbench"] is True
    assert data["videos"][str(still)]["temporal_flickering"] == 1.0
    assert data["videos"][str(still)]["subject_consistency"] == pytest.approx(1.0, abs=1e-6)
    assert data["videos"][str(moving)]["temporal_flickering"] < 1.0
    values = [row["temporal_flickering"] for row in data["videos"].values()]
    assert data["mean"]["temporal_flickering"] == pytest.approx(sum(values) / 2)
    assert "MEAN" in result.stdout and "temporal_flickering" in result.stdout


def test_missing_weights_are_reported_as_unavailable(tmp_path):
    video = write_video(_clip(2), tmp_path / "a.mp4")
    out = tmp_path / "eval.json"
    result = _invoke([str(video), "--metrics", "temporal_flickering,subject_consistency,dynamic_degree",
                      "--weights", f"subject_consistency={tmp_path / 'missing.pth'}",
                      "--weights", f"dynamic_degree={tmp_path / 'raft-things.pth'}", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning: metric subject_consistency is unavailable" in result.stderr
    data = json.loads(out.read_text())
    assert set(data["unavailable"]) == {"subject_consistency", "dynamic_degree"}
    assert data["videos"][str(video)]["subject_consistency"] is None
    assert data["mean"]["dynamic_degree"] is None
    assert data["videos"][str(video)]["temporal_flickering"] is not None


def test_folders_expand_and_skip_compare_videos(tmp_path):
    folder = tmp_path / "outputs"
    write_video(_clip(3), folder / "p0000_s0000.mp4")
    write_video(_clip(3), folder / "p0000_s0000_compare.mp4")
    write_video(_clip(4), folder / "p0001_s0000.gif")
    write_video(_clip(5), folder / "p0002_s0000")
    (folder / "p0000_s0000.json").write_text("{}")
    expected = [folder / "p0000_s0000.mp4", folder / "p0001_s0000.gif", folder / "p0002_s0000"]
    assert expand_videos([folder]) == expected
    out = tmp_path / "eval.json"
    result = _invoke([str(folder), "--metrics", "temporal_flickering", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert list(json.loads(out.read_text())["videos"]) == [str(p) for p in expected]


def test_bad_input_is_a_clear_error(tmp_path):
    video = write_video(_clip(6), tmp_path / "a.gif")
    result = _invoke([str(video), "--metrics", "motion_smoothness"])
    assert result.exit_code != 0 and "unknown metric(s): motion_smoothness" in result.output
    result = _invoke([str(tmp_path / "nope.mp4")])
    assert result.exit_code != 0 and "no such video or folder" in result.output
    result = _invoke([str(video), "--metrics", "temporal_flickering", "--weights", "temporal_flickering=x.pth"])
    assert result.exit_code != 0 and "no weights" in result.output


def test_compare_matches_files_by_name(tmp_path):
    pytest.importorskip("mpcore.analysis.compare", reason="mpcore.analysis.compare (paired comparison) is not installed")
    baseline, guided = tmp_path / "baseline", tmp_path / "guided"
    for index in range(3):
        name = f"p{index:04d}_s0000.mp4"
        write_video(_clip(10 + index), baseline / name)
        write_video(_clip(10 + index, still=True), guided / name)  # guided: no flicker at all
    write_video(_clip(20), baseline / "p0009_s0000.mp4")  # no partner: ignored with a warning
    out = tmp_path / "cmp.json"
    result = _invoke(["--compare", str(baseline), str(guided), "--metrics", "temporal_flickering",
                      "--resamples", "200", "--seed", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "without a partner" in result.stderr
    assert (tmp_path / "comparison" / "comparison.md").is_file()
    assert (tmp_path / "comparison" / "comparison.png").is_file()
    data = json.loads(out.read_text())
    assert [Path(b).name for b, _ in data["pairs"]] == [f"p{i:04d}_s0000.mp4" for i in range(3)]
    assert data["guided"]["mean"]["temporal_flickering"] > data["baseline"]["mean"]["temporal_flickering"]
    assert "comparison" in data


def test_unreadable_videos_are_listed_and_the_others_scored(tmp_path):
    """An empty and a truncated mp4 beside a good one: the good one is scored, the two are listed with a
    one-line reason (no ffmpeg banner), the JSON is written; exit 1 only when nothing could be scored."""
    good = write_video(_clip(5), tmp_path / "good.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "truncated.mp4").write_bytes(good.read_bytes()[:300])
    out = tmp_path / "eval.json"
    result = _invoke([str(tmp_path), "--metrics", "temporal_flickering", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["videos"][str(good)]["temporal_flickering"] is not None
    assert set(data["unreadable"]) == {str(tmp_path / "empty.mp4"), str(tmp_path / "truncated.mp4")}
    assert data["unreadable"][str(tmp_path / "empty.mp4")] == "empty file (0 bytes)"
    assert "\n" not in data["unreadable"][str(tmp_path / "truncated.mp4")]
    assert f"warning: could not read {tmp_path / 'truncated.mp4'}" in result.stderr
    assert "ffmpeg version" not in result.output and "configuration:" not in result.output

    out.unlink()
    nothing = _invoke([str(tmp_path / "empty.mp4"), str(tmp_path / "truncated.mp4"),
                       "--metrics", "temporal_flickering", "--json", str(out)])
    assert nothing.exit_code == 1 and "nothing was scored: none of the 2 video(s) could be read" in nothing.output
    assert set(json.loads(out.read_text())["unreadable"]) == {str(tmp_path / "empty.mp4"), str(tmp_path / "truncated.mp4")}
