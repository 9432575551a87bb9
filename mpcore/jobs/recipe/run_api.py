"""The recipe's one contact with the run job's API (:mod:`mpcore.jobs.run`, :mod:`mpcore.jobs.generate`), which
is being reworked (the option dict of ``mpcore generate`` becomes a typed options object): switch it here."""

from __future__ import annotations

from pathlib import Path

from mpcore import plugins
from mpcore.jobs.recipe.settings import RecipeSettings


def resolve_device(device: str | None):
    """``device`` (None: cuda if available, else cpu) as a torch device, as ``--device`` is checked."""
    from mpcore.jobs.run import resolve_device as resolve

    return resolve(device)


def generate_videos(settings: RecipeSettings, out: Path, progress: bool) -> None:
    """The videos stage: ``mpcore generate --guidance none`` through its job API, resumable item by item.
    The one place that speaks that API (the command's option dict)."""
    from mpcore.jobs.generate import generate

    owners: dict[str, list[str]] = {}
    for name, registered in plugins.registry("backbone").items():
        for option in registered.spec.options:
            owners.setdefault(option.name, []).append(name)
    options = {
        "backbone": settings.backbone, "model": settings.model, "frames": settings.frames, "height": settings.height,
        "width": settings.width, "steps": settings.steps, "cfg": settings.cfg, "negative_prompt": settings.negative_prompt,
        "seed": None, "guidance": "none", "flow": None, "flow_weights": None, "flow_options": (), "discriminator": None,
        "discriminator_type": None, "overrides": (), "compare": False, "fps": 8, "device": settings.device,
        "dtype": settings.dtype, "offload": settings.offload, "attention": settings.attention, "progress": progress,
        "prompts": str(settings.prompts), "seeds": ",".join(map(str, settings.seeds)), "out": str(out),
        "fmt": settings.video_format, "fail_fast": False, **settings.backbone_options,
    }
    generate(options, owners)
