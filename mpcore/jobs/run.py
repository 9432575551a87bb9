"""The one path behind ``mpcore run`` and ``mpcore generate``: options -> :func:`mpcore.jobs.setup.prepare`
(every cheap check) -> :func:`mpcore.jobs.setup.load` (once) -> per video :func:`run_one`, which is
:func:`mpcore.generate` then :meth:`~mpcore.jobs.execute.Generation.save` -- the public API itself.

Guidance state never carries over from one video to the next: each guided video gets a fresh guidance
object (:meth:`mpcore.jobs.guidance.Guidance.new`; MotionPrompt's token back to its init word)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

from mpcore import plugins
from mpcore.config import ConfigError
from mpcore.io.console import echo
from mpcore.jobs import execute
from mpcore.jobs.execute import GuidanceSkippedError, describe_health


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that are the user's to fix: the CLI prints their message, without a traceback."""
    from mpcore.io.prompts import PromptFileError
    from mpcore.io.video import OutputError
    from mpcore.io.weights import CheckpointMismatchError

    return (ConfigError, OutputError, CheckpointMismatchError, plugins.UnknownPluginError, FileNotFoundError,
            PromptFileError, GuidanceSkippedError)


def run_one(setup, models, prompt: str, seed: int, out: Path, manifest_extra: dict[str, Any] | None = None,
            report: Callable[[str], Any] | None = echo) -> dict[str, Path]:
    """Sample ``prompt`` with ``seed`` through :func:`mpcore.generate` and write it at ``out``
    (:meth:`Generation.save`: video, compare video, trace plot, manifest last). ``manifest_extra`` adds
    top-level manifest sections. ``report`` (None: silent) gets the guidance's update counts; if every
    update was skipped, :class:`GuidanceSkippedError` is raised after everything is written."""
    generation = execute.generate(models.backbone, prompt, guidance=models.guidance, compare=setup.compare,
                                  sampler=dataclasses.replace(setup.sampler, seed=seed), scheduler=setup.scheduler,
                                  free_init=setup.free_init, progress=setup.progress)
    generation.manifest.update(manifest_extra or {})
    paths = generation.save(out, fps=setup.fps, overwrite=True, command=["mpcore", *sys.argv[1:]])
    if report is not None:
        for warning in (generation.guidance_result or {}).get("warnings", []):
            report(f"warning: {warning}")
        if generation.health is not None:
            report(describe_health(generation.health))
    generation.check_guided(paths["video"])
    return paths
