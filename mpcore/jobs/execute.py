"""Sample one (prompt, seed): the baseline and/or the guided video, in memory, as a :class:`Generation`
(:func:`mpcore.generate` is this; :meth:`Generation.save` writes it, :mod:`mpcore.jobs.write`)."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpcore.config import ConfigError, FreeInitConfig, SamplerConfig, to_dict
from mpcore.interfaces import TINY_MODEL


class SamplingError(RuntimeError):
    """Sampling produced an unusable result (non-finite latents); nothing was written for it."""


class GuidanceSkippedError(RuntimeError):
    """Every update of a guided video was skipped (non-finite loss, gradient or token): the video was
    written, but it equals the plain baseline of the same seed."""


@dataclass
class Generation:
    """One sampled (prompt, seed): what :func:`mpcore.generate` returns.

    ``video`` is uint8 (F, H, W, 3): the guided video when a guidance ran, else the baseline; ``frames``
    the same as a float tensor (F, 3, H, W) in [-1, 1]; ``baseline``/``baseline_frames`` the plain video
    of the same seed when it was sampled too (``compare=True``); ``guidance_result`` what the guidance's
    ``finish()`` returned (its per-step ``trace``); ``manifest`` every setting, timing and result, as
    ``mpcore run`` writes it (``outputs`` filled in by :meth:`save`)."""

    prompt: str
    seed: int
    video: Any
    frames: Any
    latents: Any
    manifest: dict[str, Any]
    baseline: Any = None
    baseline_frames: Any = None
    guidance_result: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    """The guidance's update counts (``GuidanceSpec.health``), also the manifest's ``guidance_updates``."""
    trace_plot: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def guided(self) -> bool:
        return self.guidance_result is not None

    def save(self, path: str | Path, fps: int = 8, overwrite: bool = False,
             command: list[str] | None = None) -> dict[str, Path]:
        """Write what ``mpcore run`` writes: the video at ``path`` (.mp4, .gif or a folder of PNG frames),
        with a baseline the side-by-side ``<stem>_compare`` video, the ``<stem>_trace.png`` plot of the
        guidance's trace, and last ``<stem>.json``, the manifest; each atomically. An existing output is
        refused unless ``overwrite``. Returns the written paths by name."""
        from mpcore.jobs.write import write_generation

        return write_generation(self, Path(path), fps=fps, overwrite=overwrite, command=command)

    def check_guided(self, where: str | Path = "the video") -> None:
        """Raise :class:`GuidanceSkippedError` when every guidance update was skipped (the video is the baseline)."""
        if self.health is not None and self.health.get("all_skipped"):
            raise GuidanceSkippedError(
                f"{self.health['name']} skipped all {self.health['updates']} {self.health['unit']} "
                f"({', '.join(self.health['skip_reasons'])}): {where} equals the plain baseline of seed {self.seed}, "
                f"not a guided video. {self.health.get('advice', '')}".rstrip())


HEALTH_COUNTS = ("updates", "skipped", "skip_reasons", "all_skipped")
"""The counts of a guidance's ``health`` the manifest records (the rest, ``name``, ``unit`` and ``advice``,
words for messages)."""


def describe_health(health: dict[str, Any]) -> str:
    """One line, e.g. ``MotionPrompt: 9 token updates, 2 skipped (non-finite gradient: 2)``."""
    line = f"{health['name']}: {health['updates']} {health['unit']}, {health['skipped']} skipped"
    if health["skip_reasons"]:
        line += " (" + ", ".join(f"{reason}: {n}" for reason, n in health["skip_reasons"].items()) + ")"
    return line


def generate(backbone, prompt: str, *, guidance=None, seed: int | None = None, latents=None, compare: bool = False,
             sampler: SamplerConfig | None = None, frames: int | None = None, height: int | None = None,
             width: int | None = None, steps: int | None = None, cfg: float | None = None, eta: float | None = None,
             negative_prompt: str | None = None, scheduler: str | None = None,
             free_init: FreeInitConfig | int | None = None, progress: bool = True) -> Generation:
    """Sample one video of ``prompt`` with ``backbone`` (:func:`mpcore.load_backbone` or
    :func:`mpcore.wrap_pipeline`), guided by ``guidance`` (:func:`mpcore.build_guidance`; None: the plain
    baseline), as ``mpcore run`` does; ``result.save(path)`` writes what it writes.

    Sampler settings are the model's defaults, then ``sampler`` (a whole :class:`mpcore.SamplerConfig`) or the
    keyword flags (``steps``, ``cfg``, ...: ``mpcore run``'s). ``seed`` seeds the initial noise (and the
    frame-pair choice); ``latents`` (1, C, F, h, w) replace that noise. ``compare``: also sample the baseline
    of the same seed (``result.baseline``). ``scheduler`` 'ddim' | 'ddpm': that update rule on the backbone's
    betas; ``free_init``: FreeInit passes (an int) or a :class:`mpcore.FreeInitConfig`. Raises mpcore's errors
    (:class:`mpcore.ConfigError` and its :class:`mpcore.OptionError`, :class:`mpcore.SamplingError`) with one
    line saying what to change."""
    from mpcore.jobs.options import OptionError, check_sampler, resolve_sampler

    origin = getattr(backbone, "origin", None)
    if origin is None:
        raise OptionError("generate needs a backbone from mpcore.load_backbone or mpcore.wrap_pipeline")
    flags = {"frames": frames, "height": height, "width": width, "steps": steps, "cfg": cfg, "eta": eta,
             "negative_prompt": negative_prompt, "seed": seed}
    if sampler is None:
        sampler = resolve_sampler(origin.spec, origin.model, flags)
    else:
        given = [k for k, v in flags.items() if v is not None and k != "seed"]
        if given:
            raise OptionError(f"give either sampler= or {', '.join(given)}, not both")
        sampler = dataclasses.replace(sampler, seed=sampler.seed if seed is None else seed)
        check_sampler(origin.spec, sampler)
    if isinstance(free_init, int):
        free_init = FreeInitConfig(iterations=free_init)
    if free_init is not None:
        free_init.validate()
    return sample_generation(backbone, prompt, sampler, guidance, compare, scheduler, free_init, latents, progress)


def sample_generation(backbone, prompt: str, sampler: SamplerConfig, guidance=None, compare: bool = False,
                      scheduler: str | None = None, free_init: FreeInitConfig | None = None, latents=None,
                      progress: bool = True) -> Generation:
    """Sample ``prompt``: the baseline (without ``guidance``, or with ``compare``) and the guided video
    (a fresh guidance object from :meth:`mpcore.jobs.guidance.Guidance.new`), decode them and build the
    manifest. ``scheduler`` 'ddim' | 'ddpm' samples with that rule on the backbone's betas
    (:func:`mpcore.sampling.scheduler_factory`); ``free_init`` re-initializes the noise
    (:mod:`mpcore.free_init`); ``latents`` (1, C, F, h, w) replace the seeded initial noise.
    Raises :class:`SamplingError` if any latents are not finite."""
    from mpcore.free_init import sample_free_init
    from mpcore.io.video import to_uint8_frames
    from mpcore.sampling import decode_video, sample, scheduler_factory

    origin = backbone.origin
    free_init = free_init or FreeInitConfig()
    make_scheduler = scheduler_factory(backbone, scheduler)
    if free_init.enabled and latents is not None:
        raise ConfigError("FreeInit draws its own initial noise: pass latents or free_init, not both")
    config, resolved, warnings = (guidance.resolve(sampler, origin.spec) if guidance is not None else (None, None, []))
    runs = (["baseline"] if guidance is None or compare else []) + ([guidance.name] if guidance is not None else [])
    results, timings = {}, {"load_backbone_s": origin.load_seconds}
    for name in runs:  # baseline first: it must not see the learnable tokens
        step_guidance = guidance.new(config, origin.spec, origin.model) if name != "baseline" else None
        start = time.perf_counter()
        if free_init.enabled:
            results[name] = sample_free_init(backbone, prompt, sampler, free_init, step_guidance, progress, name,
                                             make_scheduler=make_scheduler,
                                             health=guidance.spec.health if step_guidance is not None else None)
        else:
            results[name] = sample(backbone, prompt, sampler, step_guidance, progress, name, latents=latents,
                                   make_scheduler=make_scheduler)
        timings[f"{name}_s"] = time.perf_counter() - start
        if not _finite(results[name].latents):
            raise SamplingError(f"{name} sampling gave non-finite latents (NaN/inf) for prompt {prompt!r}, seed {sampler.seed}")
    frames = {name: decode_video(backbone, result.latents) for name, result in results.items()}
    final = runs[-1]
    guidance_result = results[final].guidance if guidance is not None else None
    health = _health(guidance, results[final]) if guidance is not None and guidance.spec.health else None
    warnings = list(warnings) + list((guidance_result or {}).get("warnings", []))
    generation = Generation(
        prompt=prompt, seed=sampler.seed, video=to_uint8_frames(frames[final]), frames=frames[final],
        latents=results[final].latents, manifest={}, guidance_result=guidance_result, health=health,
        baseline=to_uint8_frames(frames["baseline"]) if guidance is not None and compare else None,
        baseline_frames=frames["baseline"] if guidance is not None and compare else None,
        trace_plot=guidance is not None and guidance.spec.trace_plot, warnings=list(warnings))
    generation.manifest = _manifest(backbone, generation, sampler, guidance, config, resolved, results, timings,
                                    scheduler, free_init)
    return generation


def _health(guidance, result) -> dict[str, Any]:
    """The guidance's update counts over the whole video: summed over FreeInit's passes (each guided)."""
    passes = [p["guidance"]["health"] for p in (result.free_init or {}).get("passes", []) if "health" in p.get("guidance", {})]
    if not passes:
        return guidance.spec.health(result.guidance)
    total = {**passes[-1], "updates": sum(p["updates"] for p in passes), "skipped": sum(p["skipped"] for p in passes),
             "skip_reasons": {}, "all_skipped": all(p["all_skipped"] for p in passes)}
    for p in passes:
        for reason, n in p["skip_reasons"].items():
            total["skip_reasons"][reason] = total["skip_reasons"].get(reason, 0) + n
    return total


def _finite(latents) -> bool:
    import torch

    return bool(torch.isfinite(latents).all())


def _manifest(backbone, generation: Generation, sampler: SamplerConfig, guidance, config, resolved, results,
              timings: dict[str, float], scheduler: str | None, free_init: FreeInitConfig) -> dict[str, Any]:
    """The video's manifest: prompt, seed, every setting, the guidance's trace and health, timings."""
    origin = backbone.origin
    spec = guidance.spec if guidance is not None else None
    section = {spec.section: resolved} if spec is not None and spec.section else {}
    tiny = origin is not None and origin.model == TINY_MODEL
    return {
        "prompt": generation.prompt,
        "seed": generation.seed,
        "guidance": guidance.name if guidance is not None else "none",
        "guidance_settings": to_dict(config) if config is not None else ({} if guidance is not None else None),
        "backbone": backbone.describe(),
        # ancestral DDPM has no eta: its noise is the posterior variance (DDIM's eta = 1 in Song et al.'s terms)
        "sampler": {**to_dict(sampler), **({"eta": None} if scheduler == "ddpm" else {})},
        **section,
        "flow": guidance.flow_info if guidance is not None else None,
        "discriminator": guidance.discriminator_info if guidance is not None else None,
        "guidance_decoder": guidance.decoder_info if guidance is not None else None,
        "device": str(backbone.device),
        "kernels": os.environ.get("MPCORE_KERNELS", "auto"),
        "dtype": str(backbone.dtype).replace("torch.", ""),
        "timings": timings,
        "warnings": ([f"--model {TINY_MODEL} is a random-init model: the video is noise"] if tiny else [])
        + generation.warnings,
        "result": generation.guidance_result,
        "guidance_updates": {k: v for k, v in generation.health.items() if k in HEALTH_COUNTS} if generation.health else None,
        **_sampling_sections(scheduler, free_init, results),
    }


def _sampling_sections(scheduler: str | None, free_init: FreeInitConfig, results: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``scheduler`` and ``free_init`` sections (settings, and each video's passes)."""
    section: dict[str, Any] = {"scheduler": scheduler or "the backbone's own"}
    if free_init.enabled:
        settings = dataclasses.asdict(free_init)
        section["free_init"] = {**settings, "videos": {  # per video: its passes (the settings once, above)
            name: {k: v for k, v in result.free_init.items() if k not in settings} for name, result in results.items()}}
    return section
