"""Video output of mpcore: validate the output path early, convert tensors to frames, write atomically.

Three output forms are supported, chosen by the output path:

* ``*.mp4`` -- H.264 (libx264, yuv420p) through imageio's ffmpeg plugin (imageio-ffmpeg), lossy;
* ``*.gif`` -- animated GIF through imageio's pillow plugin (palette-quantized, lossy);
* a folder (a path without suffix, or an existing directory) -- lossless PNG frames
  ``00000.png``, ``00001.png``, ...

Writes are atomic: everything is written under a temporary name in the destination directory and
moved into place with :func:`os.replace` / :func:`os.rename` only once complete. On any error the
temporary file or folder is removed, so a half-written video never appears under the final name.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from mpcore.io.files import atomic_path

VIDEO_SUFFIXES = (".mp4", ".gif")
"""File suffixes that select a video file output; anything without a suffix is a PNG-frame folder."""

FRAME_NAME = "{:05d}.png"
_FRAME_PATTERN = re.compile(r"^\d{5}\.png$")

ALLOWED_FORMS = "a path ending in .mp4 or .gif, or a folder (no suffix) for lossless PNG frames"


class OutputError(ValueError):
    """The output path cannot be used; the message names the path and the reason."""


# ---------------------------------------------------------------------------------------------------
# output path handling


def output_kind(out: str | Path) -> str:
    """Classify an output path: ``"mp4"``, ``"gif"`` or ``"frames"`` (a PNG-frame folder).

    An existing directory is always a frame folder. Otherwise the suffix decides; a path without a
    suffix is a frame folder. Any other suffix raises :class:`OutputError`.
    """
    path = Path(out)
    if path.is_dir():
        return "frames"
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return suffix[1:]
    if suffix == "":
        return "frames"
    raise OutputError(f"unsupported output {str(path)!r} (suffix {path.suffix!r}): use {ALLOWED_FORMS}")


def _is_frame_folder(path: Path) -> bool:
    """True if ``path`` is a directory holding only ``NNNNN.png`` files (a previous frame output) or nothing."""
    return path.is_dir() and all(entry.is_file() and _FRAME_PATTERN.match(entry.name) for entry in path.iterdir())


def check_output_writable(out: str | Path, create: bool = True) -> Path:
    """Validate the output path before any model is loaded; return it resolved.

    Checks the form (see :data:`ALLOWED_FORMS`), creates the parent directory if missing and proves
    it is writable by creating and removing a temporary file in it. An existing folder output may
    only be replaced if it looks like a previous PNG-frame output (only ``NNNNN.png`` files), so an
    unrelated directory is never deleted; an existing *file* where a folder output is requested is
    refused as well. Any failure raises :class:`OutputError` naming the directory and the reason.

    With ``create=False`` a missing parent directory is not created (the writer creates it later):
    the nearest existing ancestor is checked instead, so a command that fails before writing leaves
    no empty folder behind.
    """
    path = Path(out).expanduser().resolve()
    kind = output_kind(path)
    if kind == "frames":
        if path.exists() and not path.is_dir():
            raise OutputError(f"output folder {str(path)!r} exists and is not a directory; use {ALLOWED_FORMS}")
        if path.is_dir() and not _is_frame_folder(path):
            raise OutputError(
                f"output folder {str(path)!r} exists and contains files other than NNNNN.png frames; "
                "refusing to replace it (choose a new or empty folder)"
            )
    elif path.is_dir():  # pragma: no cover - output_kind already maps directories to "frames"
        raise OutputError(f"output {str(path)!r} is a directory")
    parent = path.parent
    if not create:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {str(parent)!r}: {exc.strerror or exc}") from exc
    if not parent.is_dir():
        raise OutputError(f"output directory {str(parent)!r} is not a directory")
    problem = _write_problem(parent)
    if problem:
        raise OutputError(f"output directory {str(parent)!r} is not writable: {problem}")
    return path


def _write_problem(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (proved by creating and removing one), or None."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".mpcore-write-test-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def check_location_writable(out: str | Path, folder: bool = False) -> Path:
    """An output location of any kind (a JSON or HTML file, or a folder with ``folder=True``) checked
    before any work: nothing is created. The folder that will receive it (the output folder itself if
    it exists, else its nearest existing ancestor) must be a folder in which a file can be created;
    an existing folder where a file is asked for, or a file where a folder is asked for, is refused.
    Raises :class:`OutputError` in one line naming the path and the reason; returns the path."""
    path = Path(out).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"cannot write the output folder {str(path)!r}: a file of that name exists")
    if not folder and path.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: it is a folder; give a file path")
    target = path if folder else path.parent
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        raise OutputError(f"cannot write {str(path)!r}: {str(target)!r} is a file, not a folder")
    problem = _write_problem(target)
    if problem:
        raise OutputError(f"cannot write {str(path)!r}: folder {str(target)!r} is not writable ({problem})")
    return path


def derived_path(out: str | Path, suffix_tag: str, ext: str | None = None) -> Path:
    """A sibling path of the output ``out`` with ``suffix_tag`` appended to its stem.

    ``ext`` replaces the extension (with or without the leading dot); ``None`` keeps the output's
    own extension (none for a folder output, so the result is a folder again).

    >>> derived_path(Path("fox.mp4"), "_compare")
    PosixPath('fox_compare.mp4')
    >>> derived_path(Path("fox.mp4"), "", ".json")
    PosixPath('fox.json')
    >>> derived_path(Path("out/fox"), "_compare")
    PosixPath('out/fox_compare')
    """
    path = Path(out)
    if path.is_dir() or path.suffix.lower() not in VIDEO_SUFFIXES:
        stem, suffix = path.name, ""  # folder output: the whole name is the stem
    else:
        stem, suffix = path.stem, path.suffix
    if ext is not None:
        suffix = ext if ext == "" or ext.startswith(".") else f".{ext}"
    return path.with_name(f"{stem}{suffix_tag}{suffix}")


# ---------------------------------------------------------------------------------------------------
# frame conversion


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """Float video ``(F, 3, H, W)`` in [-1, 1] -> uint8 frames ``(F, H, W, 3)``.

    Maps ``((x + 1) / 2).clamp(0, 1) * 255`` and rounds to the nearest integer.
    """
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[1] != 3:
        shape = tuple(video.shape) if hasattr(video, "shape") else type(video).__name__
        raise ValueError(f"expected a video tensor of shape (F, 3, H, W), got {shape}")
    x = video.detach().to(device="cpu", dtype=torch.float32)
    x = ((x + 1.0) / 2.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def _check_frames(frames: np.ndarray, name: str = "frames") -> None:
    """Raise ValueError unless ``frames`` is a non-empty uint8 array of shape (F, H, W, 3)."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", type(frames).__name__)
        raise ValueError(f"{name} must be a numpy array of shape (F, H, W, 3), got {shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {frames.dtype}")
    if min(frames.shape[:3]) == 0:
        raise ValueError(f"{name} must have at least one frame of non-zero size, got {frames.shape}")


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate two videos ``(F, H, W, 3)`` horizontally with a white gap of ``gap`` pixels.

    Both videos must have the same number of frames and the same height.
    """
    _check_frames(left, "left")
    _check_frames(right, "right")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    if left.shape[0] != right.shape[0] or left.shape[1] != right.shape[1]:
        raise ValueError(
            "side_by_side needs the same frame count and height: "
            f"left is (F={left.shape[0]}, H={left.shape[1]}), right is (F={right.shape[0]}, H={right.shape[1]})"
        )
    spacer = np.full((left.shape[0], left.shape[1], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([left, spacer, right], axis=2)


# ---------------------------------------------------------------------------------------------------
# writers (each writes to the exact path given; atomicity is handled by write_video)


def _write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """H.264 / yuv420p MP4. yuv420p needs even sizes: an odd height/width is padded by one edge pixel."""
    import imageio.v2 as imageio

    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    writer = imageio.get_writer(
        str(path),
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        quality=8,  # libx264 -crf 10: visually lossless
        macro_block_size=1,  # sizes are already even; no ffmpeg rescaling
        ffmpeg_log_level="error",
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def _write_gif(frames: np.ndarray, path: Path, fps: int) -> None:
    """Looping animated GIF via pillow (note: pillow merges identical consecutive frames)."""
    import imageio.v3 as iio

    iio.imwrite(path, frames, plugin="pillow", extension=".gif", duration=1000.0 / fps, loop=0)


def _write_png_folder(frames: np.ndarray, folder: Path) -> None:
    """Lossless PNG frames ``00000.png``, ... into the (existing, empty) ``folder``."""
    import imageio.v3 as iio

    for index, frame in enumerate(frames):
        iio.imwrite(folder / FRAME_NAME.format(index), frame, plugin="pillow", extension=".png")


def _remove(path: Path) -> None:
    """Best-effort removal of a temporary file or folder."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()
    except OSError:
        pass


def write_video(frames: np.ndarray, out: str | Path, fps: int = 8) -> Path:
    """Write uint8 frames ``(F, H, W, 3)`` to ``out`` (``.mp4``, ``.gif`` or a PNG folder), atomically.

    A file goes through :func:`mpcore.io.files.atomic_path`; a folder is written as
    ``.<name>.tmp-<pid>`` beside it and renamed into place. An existing output is replaced. If anything fails, the temporary is removed
    and the error re-raised. Returns the final path.
    """
    _check_frames(frames)
    if int(fps) != fps or fps <= 0:
        raise ValueError(f"fps must be a positive integer, got {fps}")
    fps = int(fps)
    out = Path(out)
    kind = output_kind(out)
    if kind != "frames":
        with atomic_path(out) as tmp:
            (_write_mp4 if kind == "mp4" else _write_gif)(frames, tmp, fps)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    _remove(tmp)  # a leftover from a crashed run with the same pid
    try:
        tmp.mkdir()
        _write_png_folder(frames, tmp)
        _move_folder_into_place(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    return out


def _move_folder_into_place(tmp: Path, out: Path) -> None:
    """Rename the completed folder ``tmp`` to ``out``, replacing a previous frame folder at ``out``."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if not _is_frame_folder(out):
        raise OutputError(
            f"output folder {str(out)!r} exists and is not a PNG-frame folder; refusing to replace it"
        )
    backup = out.with_name(f".{out.name}.old-{os.getpid()}")
    _remove(backup)
    os.rename(out, backup)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(backup, out)  # restore the previous output
        raise
    shutil.rmtree(backup, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# reading


def read_video(path: str | Path) -> np.ndarray:
    """Read an ``.mp4``, ``.gif`` or PNG-frame folder back as uint8 frames ``(F, H, W, 3)``."""
    import imageio.v2 as imageio
    import imageio.v3 as iio

    path = Path(path)
    kind = output_kind(path)
    if kind == "frames":
        files = sorted(p for p in path.iterdir() if _FRAME_PATTERN.match(p.name))
        if not files:
            raise ValueError(f"no NNNNN.png frames in {str(path)!r}")
        frames = [np.asarray(iio.imread(p, plugin="pillow", mode="RGB")) for p in files]
    elif kind == "gif":
        frames = list(iio.imread(path, index=None, plugin="pillow", mode="RGB"))
    else:
        reader = imageio.get_reader(str(path), format="FFMPEG")
        try:
            frames = [np.asarray(frame)[..., :3] for frame in reader]
        finally:
            reader.close()
    return np.stack(frames).astype(np.uint8, copy=False)
