"""The recipe's one contact with the run job's API (:mod:`mpcore.jobs.options`, :mod:`mpcore.jobs.generate`)."""

from __future__ import annotations

from pathlib import Path

from mpcore.jobs.recipe.settings import RecipeSettings


def resolve_device(device: str | None):
    """``device`` (None: cuda if available, else cpu) as a torch device, as ``--device`` is checked."""
    from mpcore.jobs.options import resolve_device as resolve

    return resolve(device)


def generate_videos(settings: RecipeSettings, out: Path, progress: bool) -> None:
    """The videos stage: ``mpcore generate --guidance none`` through its job API, resumable item by item."""
    from mpcore.jobs.generate import generate
    from mpcore.jobs.options import RunOptions

    options = RunOptions(backbone=settings.backbone, model=settings.model, backbone_options=dict(settings.backbone_options),
                         frames=settings.frames, height=settings.height, width=settings.width, steps=settings.steps,
                         cfg=settings.cfg, negative_prompt=settings.negative_prompt, guidance="none",
                         device=settings.device, dtype=settings.dtype, offload=settings.offload,
                         attention=settings.attention, progress=progress)
    generate(options, settings.prompts, out, seeds=",".join(map(str, settings.seeds)), fmt=settings.video_format)
