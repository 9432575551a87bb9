"""Evaluate videos with the installed metric plugins (``mpcore eval``).

A metric whose weights are missing or cannot be loaded is listed under ``"unavailable"`` with the
reason and its values are null: never silently skipped or faked. The mean of a metric is the mean of
its per-video values (VBench's own aggregate for the consistency metrics weights videos by their
frame count; the two agree when all videos have the same number of frames).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from mpcore import plugins
from mpcore.interfaces import MetricUnavailable

VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".avi")
COMPARE_TAG = "_compare"
"""Stem suffix of the side-by-side videos ``mpcore run/generate --compare`` write: not evaluated."""


class EvalError(ValueError):
    """Bad input to ``mpcore eval`` (unknown metric, missing video, no videos in a folder)."""


def _is_frame_folder(path: Path) -> bool:
    from mpcore.io.video import _is_frame_folder as is_frames

    return is_frames(path) and any(path.iterdir())


def expand_videos(items: Iterable[str | Path], empty: list[Path] | None = None) -> list[Path]:
    """Files as given; a folder -> its video files (``.mp4 .gif .webm .avi``) and PNG-frame folders,
    sorted, skipping ``*_compare.*`` side-by-side videos; a PNG-frame folder itself is one video.
    A folder without videos is an :class:`EvalError`, or, given a list ``empty``, appended to it."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            found.append(path)
        elif path.is_dir() and _is_frame_folder(path):
            found.append(path)
        elif path.is_dir():
            inside = [
                child for child in sorted(path.iterdir())
                if not child.stem.endswith(COMPARE_TAG)
                and ((child.is_file() and child.suffix.lower() in VIDEO_EXTENSIONS) or _is_frame_folder(child))
            ]
            if not inside and empty is None:
                raise EvalError(no_videos_message(path))
            if not inside:
                empty.append(path)
            found.extend(inside)
        else:
            raise EvalError(f"no such video or folder: {str(path)!r}")
    return list(dict.fromkeys(found))


def no_videos_message(folder: str | Path) -> str:
    return f"no videos ({', '.join(VIDEO_EXTENSIONS)} or PNG-frame folders) in {str(folder)!r}"


def read_clip(path: str | Path) -> tuple[np.ndarray, float | None]:
    """uint8 RGB frames (F, H, W, 3) and the frame rate (None for PNG-frame folders)."""
    path = Path(path)
    if path.is_dir():
        from mpcore.io.video import read_video

        return read_video(path), None
    if path.suffix.lower() == ".gif":
        from PIL import Image

        from mpcore.io.video import read_video

        with Image.open(path) as image:
            duration = image.info.get("duration")
        return read_video(path), (1000.0 / duration if duration else None)
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        fps = reader.get_meta_data().get("fps")
        frames = [np.asarray(frame)[..., :3] for frame in reader]
    finally:
        reader.close()
    if not frames:
        raise EvalError(f"no frames in {str(path)!r}")
    return np.stack(frames).astype(np.uint8, copy=False), (float(fps) if fps else None)


def _error_text(error: BaseException) -> str:
    """One line: a decoder's multi-line message (ffmpeg's banner and log) shortened to its first and last lines."""
    from mpcore.flows.extract import _error_text as one_line

    return one_line(error)


def scored_count(result: dict[str, Any]) -> int:
    """How many (video, metric) values an :func:`evaluate_videos` result holds."""
    return sum(value is not None for row in result["videos"].values() for value in row.values())


def resolve_metrics(names: str | Iterable[str] | None) -> list[str]:
    """``"all"``/None -> every installed metric; otherwise the names, checked against the registry."""
    installed = plugins.registry("metric")
    if names is None or names == "all" or list(names) == ["all"]:
        return list(installed)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in installed]
    if unknown:
        raise EvalError(
            f"unknown metric(s): {', '.join(unknown)}; installed: {', '.join(installed) or 'none'} "
            "(metrics come from plugins, e.g. pip install mp-plugin-vbench)"
        )
    return names


WARNING_WIDTH = 119
"""Longest warning line ``mpcore eval`` prints; the JSON keeps the whole reason."""


def fit_line(text: str, width: int = WARNING_WIDTH) -> str:
    """``text`` on one line of at most ``width`` characters (cut with ``...``)."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _load_metrics(names: list[str], registry, weights: dict[str, str], options: dict[str, dict[str, Any]], device: Any,
                  warn: Callable[[str], None] | None) -> tuple[dict[str, Callable], dict[str, str]]:
    """The metrics that load, and why each other one cannot (said once each through ``warn``)."""
    loaded: dict[str, Callable] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            loaded[name] = registry[name].spec.load(weights.get(name), device, **options.get(name, {}))
        except MetricUnavailable as error:
            unavailable[name] = error.reason
            if warn:
                warn(fit_line(f"warning: metric {name} is unavailable: {error.reason}"))
    if unavailable and warn:
        warn("note: unavailable metrics are null; give a metric's weights as a file with --weights METRIC=PATH")
    return loaded, unavailable


def evaluate_videos(
    paths: Iterable[str | Path],
    metric_names: Iterable[str] | str | None,
    device: Any = "cpu",
    weights: dict[str, str] | None = None,
    progress: bool = False,
    options: dict[str, dict[str, Any]] | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every metric on every video (no metric is loaded when there is no video).

    Returns ``{"videos": {PATH: {METRIC: value | None}}, "mean": {METRIC: value | None},
    "unavailable": {METRIC: reason}, "errors": {PATH: {METRIC: message}}, "unreadable": {PATH:
    message}, "metrics": {METRIC: {"vbench": bool, "description": str}}}``. A metric that cannot load
    (``MetricUnavailable``) is null everywhere and listed under ``unavailable``; a metric that cannot
    score one video (e.g. too few frames) is null for that video and the message is under
    ``errors``; a video that cannot be decoded (empty, corrupt) is null for every metric and its
    one-line reason is under ``unreadable``: the other videos are still scored.
    """
    weights, options = dict(weights or {}), dict(options or {})
    names = resolve_metrics(metric_names)
    for given in list(weights) + list(options):
        if given not in names:
            raise EvalError(f"weights/options given for {given!r}, which is not among the evaluated metrics: {', '.join(names)}")
    registry = plugins.registry("metric")
    paths = [Path(p) for p in paths]
    loaded, unavailable = _load_metrics(names if paths else [], registry, weights, options, device, warn)

    videos: dict[str, dict[str, float | None]] = {}
    errors: dict[str, dict[str, str]] = {}
    unreadable: dict[str, str] = {}
    iterator: Iterable[Path] = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc="eval", unit="video")
    for path in iterator:
        row: dict[str, float | None] = {name: None for name in names}
        if loaded:
            try:
                if path.is_file() and path.stat().st_size == 0:
                    raise EvalError("empty file (0 bytes)")
                frames, fps = read_clip(path)
            except Exception as error:  # any decoder failure (empty, truncated, not a video): this video only
                unreadable[str(path)] = str(error) if isinstance(error, EvalError) else _error_text(error)
                videos[str(path)] = row
                continue
            for name, metric in loaded.items():
                try:
                    value = float(metric(frames, fps=fps))
                except ValueError as error:
                    errors.setdefault(str(path), {})[name] = str(error)
                    continue
                if math.isfinite(value):
                    row[name] = value
                else:
                    errors.setdefault(str(path), {})[name] = f"not a finite value ({value})"
        videos[str(path)] = row
    return {
        "videos": videos,
        "mean": {name: _mean([row[name] for row in videos.values()]) for name in names},
        "unavailable": unavailable,
        "errors": errors,
        "unreadable": unreadable,
        "metrics": {
            name: {"vbench": bool(getattr(registry[name].spec, "vbench", False)),
                   "description": getattr(registry[name].spec, "description", "")}
            for name in names
        },
    }
