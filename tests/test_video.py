"""Tests of mpcore.io.video: output validation, frame conversion, atomic writers and readers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mpcore.io import video
from mpcore.io.video import (
    OutputError,
    check_output_writable,
    derived_path,
    read_video,
    side_by_side,
    to_uint8_frames,
    write_video,
)


def make_frames(num_frames: int = 6, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth moving gradients (compress well, every frame differs from the previous one)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for f in range(num_frames):
        r = 128 + 100 * np.sin((xx + 3 * f) / max(width, 1) * 2 * np.pi)
        g = 128 + 100 * np.cos((yy + 2 * f) / max(height, 1) * 2 * np.pi)
        b = np.full_like(xx, 40 + 30 * f % 200)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).round().astype(np.uint8)


def leftovers(directory: Path) -> list[str]:
    """Hidden temporaries left in ``directory``."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ check_output_writable


@pytest.mark.parametrize("name", ["fox.mp4", "fox.gif", "fox.MP4", "frames_out"])
def test_check_output_writable_accepts_and_creates_parent(tmp_path, name):
    out = tmp_path / "new" / "dir" / name
    resolved = check_output_writable(out)
    assert resolved == out.resolve()
    assert out.parent.is_dir()
    assert list(out.parent.iterdir()) == []  # the probe file is gone


@pytest.mark.parametrize("name", ["fox.avi", "fox.png", "fox.webm", "fox.tar.gz"])
def test_check_output_writable_bad_suffix(tmp_path, name):
    with pytest.raises(OutputError, match=r"\.mp4 or \.gif, or a folder"):
        check_output_writable(tmp_path / name)
    assert isinstance(OutputError("x"), ValueError)


def test_check_output_writable_parent_is_a_file(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not_a_dir"):
        check_output_writable(blocker / "fox.mp4")
    with pytest.raises(OutputError, match="not_a_dir"):
        check_output_writable(blocker / "sub" / "fox.mp4")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root bypasses permissions")
def test_check_output_writable_readonly_dir(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output_writable(locked / "fox.mp4")
    finally:
        locked.chmod(0o700)


def test_check_output_writable_unwritable_simulated(tmp_path, monkeypatch):
    """Works as root too: the probe file cannot be created."""

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(video.tempfile, "mkstemp", denied)
    with pytest.raises(OutputError, match=r"not writable: Permission denied") as info:
        check_output_writable(tmp_path / "fox.mp4")
    assert str(tmp_path) in str(info.value)


def test_check_output_writable_refuses_foreign_folder(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="refusing"):
        check_output_writable(folder)
    # a previous frame output may be replaced
    write_video(make_frames(2, 8, 8), tmp_path / "frames")
    assert check_output_writable(tmp_path / "frames") == (tmp_path / "frames").resolve()


# ------------------------------------------------------------------ conversion helpers


def test_to_uint8_frames():
    video_tensor = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, -3.0]).view(1, 1, 1, 7).expand(2, 3, 1, 7)
    frames = to_uint8_frames(video_tensor)
    assert frames.shape == (2, 1, 7, 3) and frames.dtype == np.uint8
    assert frames[0, 0, :, 0].tolist() == [0, 64, 128, 191, 255, 255, 0]
    with pytest.raises(ValueError, match=r"\(F, 3, H, W\)"):
        to_uint8_frames(torch.zeros(2, 4, 8, 8))


def test_side_by_side():
    left, right = make_frames(3, 10, 12), make_frames(3, 10, 7)
    combined = side_by_side(left, right, gap=4)
    assert combined.shape == (3, 10, 12 + 4 + 7, 3)
    assert (combined[:, :, 12:16] == 255).all()
    np.testing.assert_array_equal(combined[:, :, :12], left)
    np.testing.assert_array_equal(combined[:, :, 16:], right)
    assert side_by_side(left, right, gap=0).shape == (3, 10, 19, 3)
    with pytest.raises(ValueError, match="frame count and height"):
        side_by_side(left, make_frames(4, 10, 7))
    with pytest.raises(ValueError, match="frame count and height"):
        side_by_side(left, make_frames(3, 11, 7))


def test_derived_path(tmp_path):
    assert derived_path(Path("fox.mp4"), "_compare") == Path("fox_compare.mp4")
    assert derived_path(Path("fox.mp4"), "", ".json") == Path("fox.json")
    assert derived_path(Path("fox.gif"), "_trace", ".png") == Path("fox_trace.png")
    assert derived_path(Path("out/fox"), "_compare") == Path("out/fox_compare")
    assert derived_path(Path("out/fox"), "", ".json") == Path("out/fox.json")
    assert derived_path(Path("out/fox"), "", "json") == Path("out/fox.json")


# ------------------------------------------------------------------ writers / readers


@pytest.mark.parametrize("size", [(64, 64), (34, 66), (33, 65)])
def test_mp4_roundtrip(tmp_path, size):
    height, width = size
    frames = make_frames(6, height, width)
    out = write_video(frames, tmp_path / "clip.mp4", fps=8)
    assert out == tmp_path / "clip.mp4" and out.stat().st_size > 0
    back = read_video(out)
    # yuv420p needs even sizes: odd ones are padded by one pixel
    assert back.shape == (6, height + height % 2, width + width % 2, 3)
    assert back.dtype == np.uint8
    assert abs(back[:, :height, :width].mean() - frames.mean()) < 3.0
    assert np.abs(back[:, :height, :width].astype(float) - frames).mean() < 6.0
    assert leftovers(tmp_path) == []


def test_gif_roundtrip(tmp_path):
    frames = make_frames(5, 24, 30)
    out = write_video(frames, tmp_path / "clip.gif", fps=10)
    back = read_video(out)
    assert back.shape == frames.shape
    assert abs(back.mean() - frames.mean()) < 6.0
    assert leftovers(tmp_path) == []


def test_png_folder_roundtrip_is_exact(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 9, 13, 3), dtype=np.uint8)
    out = write_video(frames, tmp_path / "frames")
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png"]
    np.testing.assert_array_equal(read_video(out), frames)
    # writing again replaces the previous folder (fewer frames: no stale ones remain)
    write_video(frames[:2], out)
    np.testing.assert_array_equal(read_video(out), frames[:2])
    assert leftovers(tmp_path) == []


def test_write_replaces_existing_file(tmp_path):
    out = tmp_path / "clip.gif"
    out.write_bytes(b"old")
    write_video(make_frames(3, 16, 16), out)
    assert read_video(out).shape == (3, 16, 16, 3)


def _failing_file_writer(frames, path, fps):
    Path(path).write_bytes(b"partial")
    raise RuntimeError("encoder crashed")


def test_failed_mp4_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "_write_mp4", _failing_file_writer)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_video(make_frames(2, 8, 8), tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []


def test_failed_mp4_keeps_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"previous")
    monkeypatch.setattr(video, "_write_mp4", _failing_file_writer)
    with pytest.raises(RuntimeError):
        write_video(make_frames(2, 8, 8), out)
    assert out.read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


def test_failed_gif_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "_write_gif", _failing_file_writer)
    with pytest.raises(RuntimeError):
        write_video(make_frames(2, 8, 8), tmp_path / "clip.gif")
    assert list(tmp_path.iterdir()) == []


def test_failed_png_folder_leaves_nothing(tmp_path, monkeypatch):
    def failing(frames, folder):
        (Path(folder) / "00000.png").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(video, "_write_png_folder", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_video(make_frames(2, 8, 8), tmp_path / "frames")
    assert list(tmp_path.iterdir()) == []


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(make_frames(2, 8, 8).astype(np.float32), tmp_path / "a.mp4")
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        write_video(np.zeros((2, 8, 8), np.uint8), tmp_path / "a.mp4")
    with pytest.raises(OutputError):
        write_video(make_frames(2, 8, 8), tmp_path / "a.avi")
    assert list(tmp_path.iterdir()) == []
