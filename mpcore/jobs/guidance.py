"""A guidance for a run, in two steps: :func:`plan_guidance` checks everything cheaply (its name, its
settings, the flow estimator and discriminator it ``needs``, what that discriminator was trained on)
and :meth:`GuidancePlan.load` loads what it needs once, giving a :class:`Guidance` that builds a
fresh guidance object per video. Everything guidance-specific comes from its
:class:`mpcore.interfaces.GuidanceSpec`: no guidance is named here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mpcore import plugins
from mpcore.config import ConfigError, SamplerConfig, apply_overrides, parse_override, to_dict
from mpcore.interfaces import GUIDANCE_NEEDS, GuidanceContext
from mpcore.io.console import echo
from mpcore.jobs.options import RANDOM_INIT_SEED, OptionError, default_guidance, resolve_sampler
from mpcore.jobs.guidance_sources import plan_discriminator, plan_flow, tiny_decoder_source
from mpcore.jobs.trained_on import check_trained_on, read_trained_on


@dataclass
class GuidancePlan:
    """A guidance checked for one backbone and model, nothing loaded: its spec, its settings (class
    defaults, then the backbone's, then the user's), and for what it ``needs``, the flow estimator and
    discriminator plugins and sources."""

    spec: Any  # GuidanceSpec
    config: Any  # an instance of spec.config_class, or None
    flow_spec: Any = None  # FlowEstimatorSpec
    flow_weights: str | None = None
    flow_options: dict[str, Any] = field(default_factory=dict)
    disc_spec: Any = None  # DiscriminatorSpec
    discriminator: str | None = None  # a .safetensors path or "random"
    trained_on: dict[str, Any] | None = None
    decoder_path: str | None = None
    decoder_source: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def settings(self) -> dict[str, Any]:
        """The settings as given (before the sampler resolves anything), JSON-ready."""
        return to_dict(self.config) if self.config is not None else {}

    def resolve_for(self, sampler: SamplerConfig, backbone_spec) -> Any:
        """The config as a video sampled with ``sampler`` uses it (:func:`resolve_config`)."""
        return resolve_config(self, sampler, backbone_spec)[0]

    def load(self, backbone, device, dtype) -> Guidance:
        """Load the flow estimator, the discriminator and the tiny decoder this guidance needs (the
        small parts: call it before the backbone loads to fail early, with ``backbone`` None, then
        :meth:`Guidance.attach`)."""
        guidance = Guidance(plan=self)
        if "flow" in self.spec.needs:
            try:
                guidance.flow_estimator = self.flow_spec.load(self.flow_weights, device, seed=RANDOM_INIT_SEED,
                                                              **self.flow_options)
            except TypeError as error:  # the loaders' way to say: unknown option
                raise ConfigError(f"--flow-option: {error}") from None
            guidance.flow_info = {**(_describe(guidance.flow_estimator)), "name": self.flow_spec.name,
                                  "weights": self.flow_weights, "options": self.flow_options}
        if "discriminator" in self.spec.needs:
            guidance.discriminator = (self.disc_spec.random(seed=RANDOM_INIT_SEED, device=device)
                                      if self.discriminator == "random" else self.disc_spec.load(self.discriminator, device))
            loaded = read_trained_on(getattr(guidance.discriminator, "trained_on", None), self.discriminator)
            if self.trained_on is None:  # a plugin whose config the plan could not read: known now
                self.trained_on = loaded
            guidance.discriminator_info = {**_describe(guidance.discriminator), "name": self.disc_spec.name,
                                           "path": self.discriminator, "trained_on": self.trained_on}
        if self.decoder_path is not None:
            from mpcore.vae import load_tiny_decoder

            guidance.tiny_decoder = load_tiny_decoder(self.decoder_path, device, dtype)
        if backbone is not None:
            guidance.attach(backbone)
        return guidance


def _describe(part: Any) -> dict[str, Any]:
    return part.describe() if hasattr(part, "describe") else {}


@dataclass
class Guidance:
    """A loaded guidance (``mpcore.build_guidance``): :meth:`resolve` fits its settings to a sampler's and
    :meth:`new` builds the fresh per-video object the sampler calls."""

    plan: GuidancePlan
    flow_estimator: Any = None
    discriminator: Any = None
    tiny_decoder: Any = None
    decoder: Any = None
    backbone: Any = None
    flow_info: dict[str, Any] | None = None
    discriminator_info: dict[str, Any] | None = None
    decoder_info: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def spec(self):
        return self.plan.spec

    def attach(self, backbone) -> None:
        """Bind to the loaded backbone: the tiny decoder is wrapped to take its latents and checked to fit."""
        self.backbone = backbone
        if self.tiny_decoder is None:
            self.decoder_info = {"name": "full", "path": None, "source": "the backbone's VAE"} if self.uses_decoder else None
            return
        from mpcore.vae import TinyDecoder

        self.decoder = TinyDecoder(self.tiny_decoder, backbone.vae_scaling_factor(), self.plan.decoder_path)
        self.decoder.check_fits(backbone.latent_channels, backbone.vae_scale_factor)
        self.decoder_info = {"name": "tiny", "source": self.plan.decoder_source, **self.decoder.describe()}

    @property
    def uses_decoder(self) -> bool:
        return hasattr(self.plan.config, "guidance_decoder")

    def resolve(self, sampler: SamplerConfig, backbone_spec) -> tuple[Any, dict[str, Any], list[str]]:
        """(config, resolved settings for the manifest, warnings) for ``sampler``: the spec's check, and
        with a discriminator the flow size from what it was trained on (:func:`check_trained_on`)."""
        return resolve_config(self.plan, sampler, backbone_spec)

    def new(self, config: Any, backbone_spec, model: str | None):
        """A fresh guidance object for one video (MotionPrompt's token starts from its init word)."""
        context = GuidanceContext(backbone=self.backbone, backbone_spec=backbone_spec, model=model,
                                  flow_estimator=self.flow_estimator, discriminator=self.discriminator,
                                  decoder=self.decoder)
        return self.spec.build(config, context)


def resolve_config(plan: GuidancePlan, sampler: SamplerConfig, backbone_spec) -> tuple[Any, dict[str, Any], list[str]]:
    """The plan's config fitted to ``sampler`` (a copy), its manifest form and the warnings."""
    config = dataclasses.replace(plan.config) if plan.config is not None else None
    warnings: list[str] = []
    flow_size_source = None
    if "discriminator" in plan.spec.needs:
        flow_size_source, warnings = check_trained_on(plan.trained_on, config, sampler, plan.discriminator)
    try:
        if plan.spec.check is not None:
            plan.spec.check(config, sampler, backbone_spec)
        elif hasattr(config, "validate"):
            config.validate()
    except ConfigError as error:
        raise OptionError(f"--guidance {plan.name}: {error}", "-o/--set") from None
    resolved = plan.spec.resolve(config, sampler) if plan.spec.resolve is not None else plan.settings()
    if flow_size_source is not None:
        resolved["flow_size"], resolved["flow_size_source"] = config.flow_size, flow_size_source
    return config, resolved, warnings


def plan_guidance(name: str, backbone_spec, model: str | None, sampler: SamplerConfig, *,
                  settings: list[str] | dict[str, Any] = (), flow: str | None = None, flow_weights: str | None = None,
                  flow_options: dict[str, Any] | None = None, discriminator: str | None = None,
                  discriminator_type: str | None = None) -> GuidancePlan:
    """Check a guidance for ``backbone_spec`` and ``model`` without loading anything.

    ``settings``: ``-o key=value`` strings or a dict of values; ``flow`` the flow estimator (default:
    the one the discriminator was trained on, else the backbone's); ``discriminator`` a .safetensors path
    (its config JSON beside it) or "random". Raises :class:`OptionError` naming the option."""
    spec = _guidance_spec(name)
    given = {}
    for option, value in (("--flow", flow), ("--flow-weights", flow_weights), ("--flow-option", flow_options)):
        if value and "flow" not in spec.needs:
            given[option] = "flow estimator"
    for option, value in (("--discriminator", discriminator), ("--discriminator-type", discriminator_type)):
        if value and "discriminator" not in spec.needs:
            given[option] = "discriminator"
    if given:
        raise OptionError(f"the {name} guidance uses no {' and no '.join(sorted(set(given.values())))}: drop "
                          f"{', '.join(given)}", next(iter(given)))
    unknown_needs = set(spec.needs) - set(GUIDANCE_NEEDS)
    if unknown_needs:
        raise ConfigError(f"guidance plugin {name!r} needs {sorted(unknown_needs)}; mpcore provides {GUIDANCE_NEEDS}")
    plan = GuidancePlan(spec=spec, config=_config(spec, backbone_spec, model, settings))
    if "discriminator" in spec.needs:
        plan_discriminator(plan, backbone_spec, model, discriminator, discriminator_type)
    if "flow" in spec.needs:
        plan_flow(plan, model, flow, flow_weights, dict(flow_options or {}), settings)
    _, resolved, warnings = resolve_config(plan, sampler, backbone_spec)  # checked now, before anything loads
    for warning in warnings:
        echo(f"warning: {warning}")
    if resolved.get("flow_size_source") == "discriminator trained_on":
        echo(f"note: flows are computed at {resolved['flow_size']}x{resolved['flow_size']}, the frame size the "
             f"discriminator was trained on (decoded frames: {sampler.height}x{sampler.width}); -o flow_size=N "
             "overrides it")
    if getattr(plan.config, "guidance_decoder", None) == "tiny":
        plan.decoder_path, plan.decoder_source = tiny_decoder_source(backbone_spec, model, plan.config)
    return plan


def _guidance_spec(name: str):
    try:
        return plugins.get("guidance", name).spec
    except plugins.UnknownPluginError as error:
        raise OptionError(f"{error} (or --guidance none for the plain baseline)", "--guidance") from None


def _config(spec, backbone_spec, model: str | None, settings: list[str] | dict[str, Any]) -> Any:
    """The class defaults, the backbone's (``defaults_for``), then the user's settings."""
    if spec.config_class is None:
        if settings:
            raise OptionError(f"the {spec.name} guidance takes no settings; drop {_as_flags(settings)}", "-o/--set")
        return None
    try:
        config = spec.config_class()
        defaults = spec.defaults_for(backbone_spec, model) if spec.defaults_for is not None else {}
        config = dataclasses.replace(config, **{k: tuple(v) if isinstance(v, list) else v for k, v in defaults.items()})
        config = _replace_checked(config, settings) if isinstance(settings, dict) else apply_overrides(config, list(settings))
    except ConfigError as error:
        raise OptionError(f"--guidance {spec.name}: {error}", "-o/--set") from None
    given = set(settings) if isinstance(settings, dict) else {key for key, _ in map(parse_override, settings)}
    ineffective = config.ineffective(given) if hasattr(config, "ineffective") else {}
    if ineffective:
        raise OptionError(f"--guidance {spec.name}: " + "; ".join(f"{name} {why}" for name, why in ineffective.items())
                          + ": drop it or change what it depends on", "-o/--set")
    return config


def _replace_checked(config: Any, values: dict[str, Any]) -> Any:
    """``config`` with Python values (strings are parsed as ``-o`` values), unknown names refused."""
    strings = {k: v for k, v in values.items() if isinstance(v, str)}
    config = apply_overrides(config, strings)
    renamed = getattr(type(config), "RENAMED", {})
    others = {renamed.get(k, k): tuple(v) if isinstance(v, list) else v for k, v in values.items() if k not in strings}
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(others) - names)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} for {type(config).__name__}; known: {', '.join(sorted(names))}")
    return dataclasses.replace(config, **others)


def _as_flags(settings: list[str] | dict[str, Any]) -> str:
    items = settings.items() if isinstance(settings, dict) else map(parse_override, settings)
    return " ".join(f"-o {k}={v}" for k, v in items)


def build_guidance(name: str | None, backbone, *, discriminator: str | None = None, flow: str | None = None,
                   flow_weights: str | None = None, flow_options: dict[str, Any] | None = None,
                   discriminator_type: str | None = None, **settings: Any) -> Guidance:
    """A guidance by name for ``backbone`` (from :func:`mpcore.load_backbone` or :func:`mpcore.wrap_pipeline`),
    with the same defaults as ``mpcore run --guidance NAME``: the backbone's (the paper's per-backbone
    settings), then ``settings`` (``lr=0.001``, ``opt_range=(4, 15)``; strings are parsed as ``-o`` values).

    ``name`` None: the built-in default (MotionPrompt). ``discriminator``: a .safetensors file (its config
    JSON beside it) or "random" (random init: for smoke runs); default: one shipped for the model, if any.
    ``flow``: the flow estimator plugin; default: the one the discriminator was trained on. The flow
    estimator and discriminator load now, on the backbone's device; reuse the result for many videos."""
    origin = getattr(backbone, "origin", None)
    if origin is None:
        raise OptionError("build_guidance needs a backbone from mpcore.load_backbone or mpcore.wrap_pipeline (its "
                          "origin names the plugin and model whose defaults apply)")
    sampler = resolve_sampler(origin.spec, origin.model, {})
    plan = plan_guidance(name or default_guidance(), origin.spec, origin.model, sampler, settings=settings, flow=flow,
                         flow_weights=flow_weights, flow_options=flow_options, discriminator=discriminator,
                         discriminator_type=discriminator_type)
    return plan.load(backbone, backbone.device, backbone.dtype)
