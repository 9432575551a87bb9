"""The checks of :mod:`mpcore.jobs.recipe` before any work (:func:`plan`): the plugins and their options,
the prompt file, a readable real video, the held-out split, the device, the outputs already in the
recipe folder against the settings (another estimator's flow cache, another training config, ...), and
the discriminator's architecture options (built once). A bad setting is a :class:`RecipeOptionError`
naming its ``mpcore disc recipe`` flag."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mpcore import plugins
from mpcore.flows.cache import INDEX
from mpcore.jobs.recipe import run_api
from mpcore.jobs.recipe.settings import Layout, RecipeError, RecipeOptionError, RecipeSettings, differences

CACHE_LABELS = {"real": "real", "generated": "fake", "real_test": "real", "generated_test": "fake"}


@dataclass
class Plan:
    """What the checks found, which the stages share."""

    settings: RecipeSettings
    layout: Layout
    progress: bool
    echo: Callable[[str], None]
    items: list[Any]  # mpcore.jobs.generate.Item, prompt-major
    test_prompts: set[str]  # indices (as text) of the held-out prompts
    real_train: list[Any]  # mpcore.flows.extract.Source
    real_test: list[Any]
    device: Any
    flow_spec: Any
    disc_spec: Any
    loaded: dict[str, Any] = field(default_factory=dict)

    def estimator(self):
        """The flow estimator, loaded once (only when a flow cache is to be made)."""
        settings = self.settings
        if "estimator" not in self.loaded:
            try:
                self.loaded["estimator"] = self.flow_spec.load(settings.flow_weights, self.device, seed=settings.seed,
                                                               **settings.flow_options)
            except (TypeError, ValueError, RuntimeError, OSError, ImportError) as error:
                raise RecipeError(f"could not load flow estimator {settings.estimator!r} (weights "
                                  f"{settings.flow_weights!r}): {error}") from None
        return self.loaded["estimator"]


def held_out(keys: list[str], fraction: float, seed: int, what: str) -> set[str]:
    """About ``fraction`` of ``keys`` (at least one, never all) by a seeded hash order; none for 0."""
    if fraction == 0:
        return set()
    if len(keys) < 2:
        raise RecipeError(f"test_fraction {fraction} holds out {what} for the evaluation, which needs at least 2 "
                          f"{what}; found {len(keys)}. Give more, or test_fraction 0 (evaluate on the training caches)")
    count = min(len(keys) - 1, max(1, int(math.floor(fraction * len(keys) + 0.5))))
    order = sorted(keys, key=lambda key: hashlib.sha256(f"{seed}:test:{key}".encode()).hexdigest())
    return set(order[:count])


def _real_sources(settings: RecipeSettings) -> tuple[list[Any], list[Any]]:
    """The real videos split into (train, test), after proving one of them readable."""
    from mpcore.flows.extract import ExtractOptionError, find_sources, read_frames

    folder = Path(settings.real_videos).expanduser()
    try:
        sources = find_sources(folder, "--real-videos")
    except ExtractOptionError as error:  # a folder that does not exist
        raise RecipeOptionError(str(error), error.option) from None
    usable = [source for source in sources if source.kind != "invalid"]
    problems = [f"{source.rel}: {source.problem}" for source in sources if source.kind == "invalid"]
    for source in usable:
        try:
            if 0 in read_frames(source, [0])[0]:
                break
            problems.append(f"{source.rel}: no frames")
        except Exception as error:  # any decoder's error: the video is not readable
            problems.append(f"{source.rel}: {type(error).__name__}: {error}")
    else:
        found = "; ".join(problems[:3]) or "no video files (.mp4 .avi .webm .mov .mkv .gif) or frame folders"
        raise RecipeError(f"real_videos {folder}: no readable video ({found})")
    test = held_out([source.id for source in usable], settings.test_fraction, settings.seed, "real videos")
    return [s for s in sources if s.id not in test], [s for s in usable if s.id in test]


def _spec(kind: str, name: str, option: str):
    """A plugin's spec; an unknown name is a bad option (naming ``option``) listing the installed ones."""
    try:
        return plugins.get(kind, name).spec
    except plugins.UnknownPluginError as error:
        raise RecipeOptionError(str(error), option) from None


def _specs(settings: RecipeSettings) -> tuple[Any, Any]:
    """The flow estimator's and the discriminator's specs; the backbone's and the options' names checked."""
    backbone = _spec("backbone", settings.backbone, "--backbone")
    flow = _spec("flow", settings.estimator, "-e/--estimator")
    disc = _spec("discriminator", settings.disc_type, "--type")
    declared = {"backbone": {option.name for option in backbone.options},
                "flow": set(settings.flow_options if flow.options is None else flow.options)}  # None: not declared
    for kind, given, name, option in (("backbone", settings.backbone_options, backbone.name, "--backbone-option"),
                                      ("flow", settings.flow_options, flow.name, "--flow-option")):
        unknown = sorted(set(given) - declared[kind])
        if unknown:
            known = ", ".join(sorted(declared[kind])) or "none"
            raise RecipeOptionError(f"unknown option(s) {', '.join(unknown)} of {kind} {name!r}; known: {known}",
                                    option)
    if disc.build is None or disc.save is None:
        raise RecipeOptionError(f"the discriminator plugin {disc.name!r} cannot be trained: its spec has no build/save",
                                "--type")
    return flow, disc


def _check_arch(settings: RecipeSettings, disc_spec: Any, layout: Layout) -> None:
    """Build the discriminator once, as the disc stage will, so that the architecture options its plugin refuses
    (``--arch preset=nope``) and pretrained weights it cannot get (a ``DiscTrainError``) are refused before any
    work, not after the videos and flows are made. Skipped once the recipe has weights."""
    if layout.weights.is_file():
        return
    import torch

    from mpcore.disc.data import DiscOptionError
    from mpcore.disc.train import build_model

    try:
        with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left as it was
            build_model(disc_spec, settings.arch, settings.pretrained, settings.seed)
    except DiscOptionError as error:
        raise RecipeOptionError(str(error), error.option) from None


def plan(settings: RecipeSettings, layout: Layout, progress: bool, echo: Callable[[str], None]) -> Plan:
    """Every check before any work: plugins and their options, the prompt file, a readable real video, the
    held-out split, the device, the outputs already in the folder against the settings, and last the
    discriminator's architecture (built once, no backbone or flow model is loaded)."""
    from mpcore.io.prompts import read_prompts
    from mpcore.jobs.generate import generation_items

    flow_spec, disc_spec = _specs(settings)
    prompts = read_prompts(settings.prompts)  # PromptFileError for a missing or empty file
    test_prompts = held_out([str(p.index) for p in prompts], settings.test_fraction, settings.seed, "prompts")
    real_train, real_test = _real_sources(settings)
    result = Plan(settings, layout, progress, echo, generation_items(prompts, list(settings.seeds)), test_prompts,
                  real_train, real_test, run_api.resolve_device(settings.device), flow_spec, disc_spec)
    _check_outputs(result)
    _check_arch(settings, disc_spec, layout)  # the one check that builds something: last
    return result


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _refuse_changes(actual: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    from mpcore.io.manifest import json_safe

    changes = differences(json_safe(actual), json_safe(expected))
    if changes:
        raise RecipeError(f"{what}: made with other settings than the recipe's (made -> recipe: {'; '.join(changes)}); "
                          "remove it (the recipe makes it again) or use a new out folder")


def _check_outputs(plan: Plan) -> None:
    """Refuse outputs in the folder that the settings would not have made (each names what differs)."""
    from mpcore.disc.checkpoint import Outputs
    from mpcore.jobs.generate import SUMMARY_FILE, is_complete, item_video_path

    s, layout = plan.settings, plan.layout
    summary = read_json(layout.videos / SUMMARY_FILE)
    if isinstance(summary, dict) and any(layout.videos.glob("p*_s*.json")):
        made = summary.get("settings") or {}
        sampler = {"frames": s.frames, "height": s.height, "width": s.width, "steps": s.steps, "cfg_scale": s.cfg,
                   "negative_prompt": s.negative_prompt}
        sampler = {key: value for key, value in sampler.items() if value is not None}  # None: the backbone's default
        expected = {"backbone": {"name": s.backbone, "model": s.model, "options": s.backbone_options},
                    "guidance": "none", "format": s.video_format, "sampler": sampler}
        actual = {**{key: made.get(key) for key in ("backbone", "guidance", "format")},
                  "sampler": {key: (made.get("sampler") or {}).get(key) for key in sampler}}
        _refuse_changes(actual, expected, f"the videos in {layout.videos}")
    for item in plan.items:  # GenerateError for a finished item of another prompt (the prompt list changed)
        is_complete(item, item_video_path(layout.videos, item, s.video_format))
    for name in CACHE_LABELS:
        index = read_json(layout.flows(name) / INDEX)
        if isinstance(index, dict):
            expected = cache_settings(s, name)
            _refuse_changes({key: index.get(key) for key in expected}, expected, f"flow cache {layout.flows(name)}")
    log = read_json(Outputs.for_weights(layout.weights).log)
    if isinstance(log, dict):
        made = {"type": log.get("discriminator", {}).get("type"), "arch": log.get("discriminator", {}).get("arch_options"),
                "pretrained": log.get("discriminator", {}).get("pretrained"),
                "config": {key: value for key, value in (log.get("config") or {}).items() if key != "num_workers"}}
        _refuse_changes(made, _disc_settings(s), f"the discriminator in {layout.weights.parent}")


def cache_settings(settings: RecipeSettings, name: str) -> dict[str, Any]:
    """What a flow cache's index records of the settings (as ``mpcore flows extract`` writes it)."""
    return {"estimator": {"name": settings.estimator, "weights": settings.flow_weights, "options": settings.flow_options},
            "size": list(settings.flow_size), "gap": list(settings.gap), "pairs_per_video": settings.pairs_per_video,
            "seed": settings.seed, "label": CACHE_LABELS[name]}


def _disc_settings(settings: RecipeSettings) -> dict[str, Any]:
    """What the training log records of the settings (the workers may change)."""
    import dataclasses

    config = {key: value for key, value in dataclasses.asdict(settings.train_config()).items() if key != "num_workers"}
    return {"type": settings.disc_type, "arch": settings.arch, "pretrained": settings.pretrained, "config": config}
