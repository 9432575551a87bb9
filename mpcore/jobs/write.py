"""Write a :class:`mpcore.jobs.execute.Generation`: the video, the baseline | guided side by side, the
trace plot and, last, the manifest, each atomically, so an existing manifest marks a complete video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpcore.io.files import remove_stale_temporaries
from mpcore.io.video import OutputError, check_output_writable, derived_path
from mpcore.jobs.options import OptionError


def output_paths(out: Path, compare: bool = True, trace_plot: bool = True) -> dict[str, Path | None]:
    """The files of one video at ``out``: the manifest is written last. A companion not written is None."""
    return {
        "video": out,
        "manifest": derived_path(out, "", ".json"),
        "compare": derived_path(out, "_compare") if compare else None,
        "trace_plot": derived_path(out, "_trace", ".png") if trace_plot else None,
    }


def existing_outputs(out: Path) -> list[Path]:
    """The files of a video at ``out`` that exist already (this or an earlier run's companions)."""
    return [path for path in output_paths(out).values() if path is not None and path.exists()]


def check_output(out: str | Path, overwrite: bool) -> Path:
    """``out`` checked writable (nothing created yet) and, unless ``overwrite``, free of an earlier run's files."""
    out = check_output_writable(Path(out), create=False)
    existing = existing_outputs(out)
    if existing and not overwrite:
        raise OptionError(f"{existing[0]} already exists (an earlier run's output): pass --overwrite (from Python: "
                          "overwrite=True) to replace it and its companions, or choose another --out", "--out")
    return out


def write_generation(generation, out: Path, fps: int = 8, overwrite: bool = False,
                     command: list[str] | None = None) -> dict[str, Path]:
    """Write ``generation`` at ``out`` (see :meth:`mpcore.jobs.execute.Generation.save`); returns the paths."""
    from mpcore.io import video
    from mpcore.io.manifest import build_manifest, write_json_atomic

    if fps < 1:
        raise OutputError(f"{fps} frames per second; give an integer >= 1 (e.g. 8)")
    out = check_output(out, overwrite)
    paths = output_paths(out, compare=generation.baseline is not None, trace_plot=generation.trace_plot)
    video.write_video(generation.video, paths["video"], fps=fps)
    if paths["compare"] is not None:
        video.write_video(video.side_by_side(generation.baseline, generation.video), paths["compare"], fps=fps)
    if paths["trace_plot"] is not None:
        from mpcore.analysis.trace_plot import plot_trace

        plot_trace(generation.guidance_result, paths["trace_plot"],
                   title=f"{generation.manifest['guidance']}: {generation.prompt}")
    written = {name: path for name, path in paths.items() if path is not None}
    manifest: dict[str, Any] = {"command": command, **generation.manifest, "fps": fps,
                                "outputs": {name: str(path) for name, path in written.items()}}
    write_json_atomic(build_manifest(**manifest), paths["manifest"])
    _remove_leftovers(out, paths)
    return written


def _remove_leftovers(out: Path, paths: dict[str, Path | None]) -> None:
    """What an earlier or killed run left under these names: companions this run did not write, temporaries."""
    every_path = output_paths(out)
    for name, path in every_path.items():
        if paths[name] is None and path is not None and path.is_file():
            path.unlink()
    remove_stale_temporaries(out.parent, [p.stem for p in every_path.values() if p is not None])
