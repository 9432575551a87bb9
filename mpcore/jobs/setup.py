"""Every cheap check of a run before any model loads: :func:`prepare` turns :class:`RunOptions` into a
:class:`RunSetup` (backbone and model, sampler settings, the guidance's plan, device), and
:func:`load` loads what it names, once for every video of the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mpcore.config import SCHEDULERS, ConfigError, SamplerConfig, parse_override, to_dict
from mpcore.interfaces import TINY_MODEL
from mpcore.jobs.guidance import GuidancePlan, plan_guidance
from mpcore.jobs import load as backbone_loading
from mpcore.jobs.load import check_backbone
from mpcore.jobs.options import (DISCRIMINATOR_OPTIONS, FLOW_OPTIONS, FREE_INIT_FLAGS, GUIDANCE_ONLY_OPTIONS, SAMPLER_FLAGS,
                                 OptionError,
                                 RunOptions, default_guidance, resolve_device, resolve_dtype, resolve_sampler)


@dataclass
class RunSetup:
    """Everything decided before any model loads. ``sampler.seed`` is the default seed; each video
    may use another."""

    backbone: Any  # BackboneSpec
    model: str | None
    backbone_options: dict[str, Any]
    sampler: SamplerConfig
    guidance: GuidancePlan | None
    """The guidance's plan (spec, settings, flow estimator and discriminator sources); None: the plain baseline."""
    compare: bool
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    offload: bool
    attention: str
    fps: int
    progress: bool
    free_init: Any  # mpcore.config.FreeInitConfig (iterations 1 = off)
    scheduler: str | None = None
    """'ddim' | 'ddpm' instead of the backbone's own (:func:`mpcore.sampling.scheduler_factory`)."""

    @property
    def tiny(self) -> bool:
        return self.model == TINY_MODEL

    def settings(self) -> dict[str, Any]:
        """The settings every video of a folder shares (all but prompt and seed), JSON-ready: a folder
        resumes only with the same (``mpcore generate``)."""
        plan = self.guidance
        needs = plan.spec.needs if plan is not None else ()
        settings: dict[str, Any] = {
            "backbone": {"name": self.backbone.name, "model": self.model, "options": self.backbone_options},
            "guidance": plan.name if plan is not None else "none",
            "compare": self.compare and plan is not None,
            "sampler": {k: v for k, v in to_dict(self.sampler).items() if k != "seed"},
            "flow": {"name": plan.flow_spec.name, "weights": plan.flow_weights, "options": plan.flow_options}
            if "flow" in needs else None,
            "discriminator": {"name": plan.disc_spec.name, "path": plan.discriminator} if "discriminator" in needs else None,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "fps": self.fps,
        }
        if plan is not None:  # the settings as the first video resolves them, under the spec's section if it has one
            config = plan.resolve_for(self.sampler, self.backbone)
            settings[plan.spec.section or "guidance_settings"] = to_dict(config) if config is not None else {}
        if self.free_init.enabled:  # sampling options only when used: folders written before them resume unchanged
            settings["free_init"] = dataclasses.asdict(self.free_init)
        if self.scheduler is not None:
            settings["scheduler"] = self.scheduler
        return settings


def prepare(options: RunOptions) -> RunSetup:
    """Check ``options`` and resolve the settings; loads nothing. Raises :class:`OptionError` or another
    :class:`mpcore.config.ConfigError` naming the problem."""
    spec, model = check_backbone(options.backbone, options.model, options.backbone_options)
    sampler = resolve_sampler(spec, model, {k: getattr(options, k) for k in SAMPLER_FLAGS})
    check_sampling_options(spec, model, options)
    if options.fps < 1:
        raise OptionError(f"{options.fps} frames per second; give an integer >= 1 (e.g. 8)", "--fps")
    guidance = options.guidance or default_guidance()
    plan = None
    if guidance == "none":
        given = [flag for name, flag in {**GUIDANCE_ONLY_OPTIONS, **FLOW_OPTIONS, **DISCRIMINATOR_OPTIONS}.items()
                 if getattr(options, name)]
        if given:
            raise OptionError(f"--guidance none samples the plain baseline, which uses none of {', '.join(given)}: "
                              "drop them, or leave out --guidance none")
    else:
        plan = plan_guidance(guidance, spec, model, sampler, settings=list(options.overrides), flow=options.flow,
                             flow_weights=options.flow_weights,
                             flow_options=dict(parse_override(o) for o in options.flow_options),
                             discriminator=options.discriminator, discriminator_type=options.discriminator_type)
    device = resolve_device(options.device)
    return RunSetup(backbone=spec, model=model, backbone_options=dict(options.backbone_options), sampler=sampler,
                    guidance=plan, compare=options.compare, device=device,
                    dtype=resolve_dtype(options.dtype, device, spec.cuda_dtype), offload=options.offload,
                    attention=options.attention, fps=options.fps, progress=options.progress,
                    free_init=options.free_init, scheduler=options.scheduler)


def check_sampling_options(spec, model: str | None, options: RunOptions) -> None:
    """``--scheduler``, ``--eta`` and ``--free-init*`` against each other and against what the backbone's spec
    declares it can do, before loading (undeclared: checked once the model has loaded)."""
    try:
        options.free_init.validate()
    except ConfigError as error:
        flags = {field: "--" + flag.replace("_", "-") for flag, field in FREE_INIT_FLAGS.items()}
        raise OptionError(str(error), flags.get(error.field, "--free-init")) from None
    scheduler = options.scheduler
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise OptionError(f"scheduler {scheduler!r}; allowed: {', '.join(SCHEDULERS)} (or none: the backbone's own)",
                          "--scheduler")
    if scheduler is not None and spec.schedulers is not None and scheduler not in spec.schedulers:
        takes = f"takes --scheduler {' or '.join(spec.schedulers)}" if spec.schedulers else "samples with its own only"
        raise OptionError(f"--scheduler {scheduler}: the {spec.name} backbone's scheduler has no DDIM betas to run "
                          f"another update rule on; it {takes}. Leave out --scheduler.", "--scheduler")
    if scheduler == "ddpm" and options.eta:
        raise OptionError(f"--eta {options.eta} sets DDIM's noise; --scheduler ddpm is ancestral sampling, whose noise "
                          "is DDPM's posterior variance: drop --eta (or use --scheduler ddim)", "--eta")
    if options.free_init.enabled and spec.supports_free_init(model, options.backbone_options) is False:
        raise OptionError(f"--free-init {options.free_init.iterations}: the {spec.name} backbone's noise schedule keeps "
                          "nothing of a sample at the start of sampling (zero terminal SNR or flow matching), so "
                          "FreeInit's re-initialized noise would carry none of its low frequencies. Leave out "
                          "--free-init.", "--free-init")


@dataclass
class Models:
    """What :func:`load` loaded: shared by every video of a run."""

    backbone: Any  # Backbone, its ``origin`` set
    guidance: Any = None  # mpcore.jobs.guidance.Guidance, None without guidance


def load(setup: RunSetup) -> Models:
    """Load the guidance's small parts first (a missing flow weight fails before the backbone loads),
    then the backbone, and bind the two."""
    guidance = setup.guidance.load(None, setup.device, setup.dtype) if setup.guidance is not None else None
    backbone = backbone_loading.load_spec(setup.backbone, setup.model, setup.device, setup.dtype, offload=setup.offload,
                             attention=setup.attention, options=setup.backbone_options, progress=setup.progress)
    if guidance is not None:
        guidance.attach(backbone)
    return Models(backbone=backbone, guidance=guidance)
