"""The one path behind ``mpcore run`` and ``mpcore generate``, in three steps:

1. :func:`prepare` -> :class:`RunSetup`: every cheap check (plugin names, configs, discriminator
   file, the backbone's own checks, device) before any model loads;
2. :func:`load` -> :class:`Models`: the backbone, flow estimator and discriminator, loaded once;
3. :func:`generate_one`: sample one (prompt, seed) -- the baseline and/or MotionPrompt -- and write
   the video(s), the trace plot and, last, the manifest.

``run`` is one ``generate_one``; ``generate`` is one per item of a prompt list, with the same
models. Guidance state never carries over from one video to the next: each guided video gets a
fresh :class:`~mpcore.motionprompt.MotionPrompt`, whose ``prepare`` puts the learnable token rows
back to their init words.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from mpcore import plugins
from mpcore.config import (PAPER_STEPS, ConfigError, MotionPromptConfig, SamplerConfig, apply_overrides, parse_override,
                           to_dict)
from mpcore.io.files import remove_stale_temporaries
from mpcore.interfaces import DEFAULT_BACKBONE, DEFAULT_MODEL, TINY_MODEL, latent_frames
from mpcore.io.console import echo

"""Upper bound of ``--steps``: the training timesteps of the supported schedulers (DDPM's 1000). DDIM
picks its steps among them, so more sampling steps than that cannot be distinct."""
GUIDANCE_ONLY_OPTIONS = {"overrides": "-o/--set", "compare": "--compare", "flow": "--flow", "flow_weights": "--flow-weights",
                         "flow_options": "--flow-option", "discriminator": "--discriminator",
                         "discriminator_type": "--discriminator-type"}
"""Options that only a guidance uses: refused with ``--guidance none`` instead of silently ignored."""
MOTIONPROMPT_ONLY_OPTIONS = {k: v for k, v in GUIDANCE_ONLY_OPTIONS.items() if k not in ("overrides", "compare")}
"""Options only MotionPrompt uses (its flow estimator and discriminator): refused with another guidance."""

RANDOM_INIT_SEED = 0
"""Seed of every random-init component (``--model tiny``, ``--flow-weights random``,
``--discriminator random``). It is fixed, not the sampling seed: one loaded model serves every seed,
so ``generate`` reproduces ``run`` item by item."""


class OptionError(ConfigError):
    """A command-line option is invalid or contradicts another (the CLI exits 2, naming ``option``)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


SAMPLER_FLAGS = {  # CLI flag name -> SamplerConfig field
    "frames": "frames",
    "height": "height",
    "width": "width",
    "steps": "steps",
    "cfg": "cfg_scale",
    "seed": "seed",
    "eta": "eta",
    "negative_prompt": "negative_prompt",
}


def resolve_configs(spec, model: str | None, sampler_flags: dict[str, Any], overrides: list[str]):
    """SamplerConfig and MotionPromptConfig: backbone defaults, then CLI flags, then ``-o`` overrides.

    The tiny random model defaults to the weight-free ``tvl1`` flow estimator, so it runs offline.
    """
    defaults, motion_defaults = spec.defaults_for(model)
    sampler = SamplerConfig(**defaults)
    sampler = apply_overrides(sampler, {SAMPLER_FLAGS[k]: str(v) for k, v in sampler_flags.items() if v is not None})
    if model == TINY_MODEL:
        motion_defaults["flow_estimator"] = "tvl1"
    motion = MotionPromptConfig(**motion_defaults)
    motion = apply_overrides(motion, overrides)
    return sampler, motion


def resolve_device(device: str | None):
    """``--device`` -> torch device; None: cuda if available, else cpu."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise OptionError(str(error), "--device") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("CUDA is not available on this machine; use --device cpu", "--device")
    return resolved


def resolve_dtype(name: str, device, cuda_dtype: str = "float16"):
    """``--dtype`` -> torch dtype; ``auto`` is the backbone's ``cuda_dtype`` on CUDA (float16 for the
    paper's backbones, bfloat16 for Wan and CogVideoX), float32 elsewhere."""
    import torch

    if name == "auto":
        return getattr(torch, cuda_dtype) if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def parse_scalar(raw: str) -> Any:
    """A plugin option's value from the command line: int, else float, else the string."""
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


class SamplingError(RuntimeError):
    """Sampling produced an unusable result (non-finite latents); nothing was written for it."""


class GuidanceSkippedError(RuntimeError):
    """Every MotionPrompt update of a video was skipped (non-finite loss, gradient or token): the
    video was written, but it equals the plain baseline of the same seed."""


def guidance_health(result: dict[str, Any]) -> dict[str, Any]:
    """How many token updates MotionPrompt attempted in its range, how many it skipped and why, from
    its result (``skipped_updates`` and the per-iteration ``skipped``/``skip_reason`` of the trace)."""
    records = [record for entry in result.get("trace", []) for record in entry.get("iterations", [])]
    reasons: dict[str, int] = {}
    for record in records:
        if record.get("skipped"):
            reason = record.get("skip_reason", "unknown")
            reasons[reason] = reasons.get(reason, 0) + 1
    skipped = int(result.get("skipped_updates", sum(reasons.values())))
    return {"updates": len(records), "skipped": skipped, "skip_reasons": reasons,
            "all_skipped": bool(records) and skipped >= len(records)}


def describe_health(health: dict[str, Any]) -> str:
    """One line, e.g. ``MotionPrompt: 9 token updates, 2 skipped (non-finite gradient: 2)``."""
    line = f"MotionPrompt: {health['updates']} token updates, {health['skipped']} skipped"
    if health["skip_reasons"]:
        line += " (" + ", ".join(f"{reason}: {n}" for reason, n in health["skip_reasons"].items()) + ")"
    return line


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions that are the user's to fix: the CLI prints their message, without a traceback."""
    from mpcore.io.prompts import PromptFileError
    from mpcore.io.video import OutputError
    from mpcore.io.weights import CheckpointMismatchError

    return (ConfigError, OutputError, CheckpointMismatchError, plugins.UnknownPluginError, FileNotFoundError,
            PromptFileError, GuidanceSkippedError)


@dataclass
class RunSetup:
    """Everything decided before any model loads. ``sampler.seed`` is the default seed; each video
    may use another (:func:`generate_one`)."""

    backbone: Any  # BackboneSpec
    model: str | None
    backbone_options: dict[str, Any]
    sampler: SamplerConfig
    motion: MotionPromptConfig
    guidance: str  # a registered guidance name ("motionprompt", "flowmo", ...) or "none"
    compare: bool
    flow: Any  # FlowEstimatorSpec, None without guidance
    flow_weights: str | None
    flow_options: dict[str, str]
    discriminator: Any  # DiscriminatorSpec, None without guidance
    discriminator_path: str | None  # a .safetensors path or "random"
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    offload: bool
    attention: str
    fps: int
    progress: bool
    trained_on: dict[str, Any] | None = None
    """The discriminator's ``trained_on`` (estimator, frame size, caches), None when it records none."""
    flow_size_source: str | None = None
    """Where MotionPrompt's ``flow_size`` comes from (see :func:`check_trained_on`); None without guidance."""
    guidance_decoder_path: str | None = None
    """With ``-o guidance_decoder=tiny``: the tiny decoder's folder or hub id (checked, not loaded)."""
    guidance_decoder_source: str | None = None
    """Where that path comes from: the ``-o guidance_decoder_path`` option or the backbone's default."""
    warnings: list[str] = field(default_factory=list)
    """Problems that do not stop the run; printed once and recorded in every manifest."""
    free_init: Any = None
    """FreeInit's settings (:class:`mpcore.free_init.FreeInitConfig`; ``iterations`` 1 = off)."""
    scheduler: str | None = None
    """``--scheduler``: 'ddim' | 'ddpm' instead of the backbone's own (:func:`mpcore.sampling.use_scheduler`)."""

    guidance_spec: Any = None
    """The chosen guidance's :class:`mpcore.interfaces.GuidanceSpec`; None with ``--guidance none``."""
    guidance_config: Any = None
    """The settings of a guidance other than MotionPrompt (its ``config_class`` with ``-o`` applied)."""

    @property
    def guided(self) -> bool:
        """MotionPrompt is the guidance (its flow estimator, discriminator, token health, trace plot)."""
        return self.guidance == "motionprompt"

    @property
    def guiding(self) -> bool:
        """Any guidance at all (a guided video besides, or instead of, the baseline)."""
        return self.guidance != "none"

    def guidance_settings(self) -> dict[str, Any] | None:
        """The chosen guidance's settings, JSON-ready (the same place in every manifest); None without one."""
        if self.guided:
            return to_dict(self.motion)
        return to_dict(self.guidance_config) if self.guidance_config is not None else ({} if self.guiding else None)

    @property
    def tiny(self) -> bool:
        return self.model == TINY_MODEL

    def output_paths(self, out: Path, every: bool = False) -> dict[str, Path | None]:
        """The files of one video written to ``out``: the manifest is written last. ``every``: also
        the companions this run does not write (those an earlier run may have left there)."""
        from mpcore.io import video

        return {
            "video": out,
            "manifest": video.derived_path(out, "", ".json"),
            "compare": video.derived_path(out, "_compare") if every or (self.compare and self.guiding) else None,
            "trace_plot": video.derived_path(out, "_trace", ".png") if every or self.guided else None,
        }

    def settings(self) -> dict[str, Any]:
        """The settings every video shares (all but prompt and seed), JSON-ready."""
        return {
            "backbone": {"name": self.backbone.name, "model": self.model, "options": self.backbone_options},
            "guidance": self.guidance,
            "compare": self.compare and self.guiding,
            "sampler": {k: v for k, v in to_dict(self.sampler).items() if k != "seed"},
            "motionprompt": to_dict(self.motion) if self.guided else None,
            "flow": {"name": self.flow.name, "weights": self.flow_weights, "options": self.flow_options} if self.guided else None,
            "discriminator": {"name": self.discriminator.name, "path": self.discriminator_path} if self.guided else None,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "fps": self.fps,
            # another guidance's settings (MotionPrompt's are "motionprompt": older folders resume unchanged)
            **({"guidance_settings": self.guidance_settings()} if self.guiding and not self.guided else {}),
            # sampling options only when used: folders written before them resume unchanged
            **({"free_init": dataclasses.asdict(self.free_init)} if self.free_init is not None and self.free_init.enabled
               else {}),
            **({"scheduler": self.scheduler} if self.scheduler is not None else {}),
        }


def read_trained_on(value: Any, source: str) -> dict[str, Any] | None:
    """A discriminator's ``trained_on`` (:class:`mpcore.interfaces.Discriminator`), checked:
    None, or a dict whose ``flow_estimator`` is a name or None and ``frame_size`` [H, W] or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: trained_on = {value!r}; expected an object (flow_estimator, frame_size) or null")
    estimator, size = value.get("flow_estimator"), value.get("frame_size")
    if estimator is not None and not (isinstance(estimator, str) and estimator):
        raise ConfigError(f"{source}: trained_on.flow_estimator = {estimator!r}; expected a flow estimator name or null")
    if size is not None and not (isinstance(size, list) and len(size) == 2
                                 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in size)):
        raise ConfigError(f"{source}: trained_on.frame_size = {size!r}; expected [H, W] (positive integers) or null")
    return dict(value)


def check_trained_on(trained_on: dict[str, Any] | None, motion: MotionPromptConfig, sampler: SamplerConfig,
                     source: str) -> tuple[str, list[str]]:
    """Check a run's flows against what its discriminator (``source``) was trained on; return where
    ``motion.flow_size`` comes from and the warnings. Changes ``motion.flow_size`` in place.

    * another flow estimator than the discriminator's is a :class:`ConfigError`: a discriminator
      judges only flows of the estimator it was trained on;
    * with no ``flow_size`` set (-o flow_size) and a square training frame size S other than the
      decoded frame size, flows are computed at S x S (``flow_size = S``), as in training;
    * a non-square training frame size other than the decoded size, or an explicit ``flow_size``
      other than a square training size, is a warning (flows are computed at a size D never saw).
    """
    explicit = motion.flow_size is not None
    if not trained_on:
        return ("explicit" if explicit else "decoded frame size"), []
    estimator, size = trained_on.get("flow_estimator"), trained_on.get("frame_size")
    if estimator is not None and estimator != motion.flow_estimator:
        raise ConfigError(
            f"the discriminator {source} was trained on flows of the {estimator!r} estimator (its trained_on), but "
            f"this run computes flows with {motion.flow_estimator!r}: a discriminator judges only flows of the "
            f"estimator it was trained on. Pass --flow {estimator}, or train a discriminator on {motion.flow_estimator} "
            f"flows (`mpcore flows extract --estimator {motion.flow_estimator}`, then `mpcore disc train`)."
        )
    decoded = [sampler.height, sampler.width]
    square = size is not None and size[0] == size[1]
    if explicit:
        if square and motion.flow_size != size[0]:
            return "explicit", [f"flows are computed at -o flow_size={motion.flow_size}, but the discriminator {source} "
                                f"was trained on flows of {size[0]}x{size[1]} frames"]
        return "explicit", []
    if size is None or size == decoded:
        return "decoded frame size", []
    if square:
        motion.flow_size = size[0]
        return "discriminator trained_on", []
    return "decoded frame size", [
        f"the discriminator {source} was trained on flows of {size[0]}x{size[1]} (HxW) frames, but the decoded frames are "
        f"{decoded[0]}x{decoded[1]}: flows are computed at the decoded size (-o flow_size resizes only to a square)"]


def prepare(options: dict[str, Any], backbone_option_owners: dict[str, list[str]]) -> RunSetup:
    """Check the command's options (``run``'s, without prompt and output) and resolve the configs.

    ``backbone_option_owners`` maps each plugin-added option to the backbones that own it. Raises
    :class:`OptionError` or one of :func:`user_errors` on the first problem; loads nothing.
    """
    backbone_name, model = _backbone_and_model(options)
    spec = plugins.get("backbone", backbone_name).spec
    backbone_options = _backbone_options(options, backbone_name, backbone_option_owners)
    _check_run_options(options)
    sampler_flags = {k: options.get(k) for k in SAMPLER_FLAGS}
    flow_flag = [f"flow_estimator={options['flow']}"] if options["flow"] else []  # --flow NAME = -o flow_estimator=NAME
    overrides = list(options["overrides"]) if options["guidance"] in ("motionprompt", "none") else []  # others: their own
    sampler, motion = resolve_configs(spec, model, sampler_flags, flow_flag + overrides)
    sampler.validate(spec.spatial_multiple, spec.temporal_compression)
    free_init = _free_init_config(options)
    guidance_spec, guidance_config = _guidance_choice(options["guidance"], spec, model, list(options["overrides"]))
    guided = options["guidance"] == "motionprompt"
    if guided:
        compressed = spec.temporal_compression > 1
        motion.validate(sampler, latent_frames(sampler.frames, spec.temporal_compression) if compressed else None)
    flow_options = dict(parse_override(o) for o in options["flow_options"])
    if sampler.steps > spec.num_train_timesteps:  # --steps, or a backbone default
        raise OptionError(f"{sampler.steps} DDIM steps; at most {spec.num_train_timesteps} (the {spec.name} "
                          "scheduler's training timesteps; the paper uses 50)", "--steps")

    tiny = model == TINY_MODEL
    # the tiny model's flow: the weight-free estimator, or RAFT at random init when asked for by name
    flow_weights = options["flow_weights"] or ("random" if tiny and motion.flow_estimator == "raft" else None)
    bundled = spec.default_discriminator(model) if spec.default_discriminator is not None else None
    discriminator = options["discriminator"] or bundled or ("random" if tiny else None)
    parts = _GuidanceParts()
    if guided:
        parts = _guidance_parts(motion, sampler, flow_options, discriminator, options["discriminator_type"])
    decoder_path, decoder_source = _tiny_decoder_source(spec, model, motion) if guided else (None, None)
    if spec.check is not None:
        spec.check(model=model, **backbone_options)
    device = resolve_device(options["device"])
    return RunSetup(
        backbone=spec,
        model=model,
        backbone_options=backbone_options,
        sampler=sampler,
        motion=motion,
        guidance=options["guidance"],
        compare=options["compare"],
        flow=parts.flow_spec,
        flow_weights=flow_weights,
        flow_options=flow_options,
        discriminator=parts.disc_spec,
        discriminator_path=discriminator if guided else None,
        device=device,
        dtype=resolve_dtype(options["dtype"], device, spec.cuda_dtype),
        offload=options["offload"],
        attention=options["attention"],
        fps=options["fps"],
        progress=options["progress"],
        trained_on=parts.trained_on,
        flow_size_source=parts.flow_size_source,
        guidance_decoder_path=decoder_path,
        guidance_decoder_source=decoder_source,
        warnings=parts.warnings,
        guidance_spec=guidance_spec,
        guidance_config=guidance_config,
        free_init=free_init,
        scheduler=options.get("scheduler"),
    )


def _free_init_config(options: dict[str, Any]):
    """FreeInit's settings from ``--free-init*`` (absent in commands without them: off), checked."""
    from mpcore.free_init import FreeInitConfig

    given = {"iterations": options.get("free_init"), "method": options.get("free_init_method"),
             "order": options.get("free_init_order"), "spatial_stop_frequency": options.get("free_init_spatial_stop"),
             "temporal_stop_frequency": options.get("free_init_temporal_stop")}
    config = FreeInitConfig(**{k: v for k, v in given.items() if v is not None})  # the rest at its defaults
    try:
        config.validate()
    except ConfigError as error:
        raise OptionError(str(error), "--free-init") from None
    return config


def _backbone_and_model(options: dict[str, Any]) -> tuple[str, str | None]:
    """``--backbone`` and ``--model``; neither given: the bundled toy model (said in a note)."""
    backbone_name = options["backbone"]
    model = options["model"]
    if backbone_name is None:
        backbone_name = DEFAULT_BACKBONE
        if model is None:
            model = DEFAULT_MODEL
            echo(f"note: no --backbone/--model given: using the bundled '{DEFAULT_MODEL}' model ({DEFAULT_BACKBONE} "
                 "architecture, 32x32 px, trained offline on procedural clips). For the real AnimateDiff pass "
                 f"--backbone {DEFAULT_BACKBONE}.")
    return backbone_name, model


def _backbone_options(options: dict[str, Any], backbone_name: str,
                      backbone_option_owners: dict[str, list[str]]) -> dict[str, Any]:
    """The plugin-added options given, each checked to belong to the chosen backbone."""
    backbone_options = {}
    for name, allowed in backbone_option_owners.items():
        value = options.get(name)
        if value is None:
            continue
        if backbone_name not in allowed:
            flag = "--" + name.replace("_", "-")
            raise OptionError(f"{flag} is an option of backbone(s) {', '.join(allowed)}, not {backbone_name}")
        backbone_options[name] = value
    return backbone_options


def _guidance_choice(name: str, spec, model: str | None, overrides: list[str]) -> tuple[Any, Any]:
    """``--guidance NAME``: its registered spec (an unknown name lists the installed ones) and, for a
    guidance other than MotionPrompt, its config: the class defaults, the backbone's defaults
    (``defaults_for``), then ``-o`` (unknown keys named with the allowed ones). Loads nothing."""
    if name == "none":
        return None, None
    try:
        guidance_spec = plugins.get("guidance", name).spec
    except plugins.UnknownPluginError as error:
        raise OptionError(f"{error} (or --guidance none for the plain baseline)", "--guidance") from None
    if name == "motionprompt" or guidance_spec.config_class is None:
        if overrides and name != "motionprompt":
            raise OptionError(f"the {name} guidance takes no settings; drop -o {' -o '.join(overrides)}", "-o/--set")
        return guidance_spec, None
    config = guidance_spec.config_class()
    if guidance_spec.defaults_for is not None:
        config = apply_overrides(config, {k: _as_override(v) for k, v in guidance_spec.defaults_for(spec.name, model).items()})
    try:
        config = apply_overrides(config, overrides)
        if hasattr(config, "validate"):
            config.validate()
    except ConfigError as error:
        raise OptionError(f"--guidance {name}: {error}", "-o/--set") from None
    return guidance_spec, config


def _as_override(value: Any) -> str:
    """A default value as the ``-o`` string :func:`mpcore.config.apply_overrides` parses."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _check_run_options(options: dict[str, Any]) -> None:
    """Options that contradict ``--guidance none`` or the chosen guidance, and ``--fps``."""
    if options["guidance"] not in ("motionprompt", "none"):
        given = [flag for name, flag in MOTIONPROMPT_ONLY_OPTIONS.items() if options.get(name)]
        if given:
            raise OptionError(f"{', '.join(given)} are MotionPrompt's (its flow estimator and discriminator); the "
                              f"{options['guidance']} guidance uses none of them: drop them", given[0])
    if options["guidance"] == "none":
        given = [flag for name, flag in GUIDANCE_ONLY_OPTIONS.items() if options.get(name)]
        if given:
            raise OptionError(f"--guidance none samples the plain baseline, which uses none of {', '.join(given)}: "
                              "drop them, or leave out --guidance none")
    if options["fps"] is not None and options["fps"] < 1:
        raise OptionError(f"{options['fps']} frames per second; give an integer >= 1 (e.g. 8)", "--fps")


TINY_DECODER_HOW = ("Pass -o guidance_decoder_path=FOLDER (a diffusers AutoencoderTiny folder of the model's latent "
                    "space, e.g. TAESD for SD-family models: `hf download madebyollin/taesd --local-dir taesd`) or a hub "
                    "id, or use -o guidance_decoder=full (the backbone's VAE).")


def _tiny_decoder_source(spec, model: str | None, motion: MotionPromptConfig) -> tuple[str | None, str | None]:
    """With ``-o guidance_decoder=tiny``: the tiny decoder's folder or hub id and where it comes from
    (``-o guidance_decoder_path``, else the backbone's default for the model), a local folder checked
    without loading it. (None, None) with ``guidance_decoder=full``."""
    from mpcore.vae import check_tiny_decoder

    if motion.guidance_decoder != "tiny":
        return None, None
    if motion.guidance_decoder_path is not None:
        path, source = motion.guidance_decoder_path, "-o guidance_decoder_path"
    else:
        path = spec.default_guidance_decoder(model) if spec.default_guidance_decoder is not None else None
        source = f"the {spec.name} backbone's default for model {model!r}"
        if path is None:
            raise OptionError(f"-o guidance_decoder=tiny: the {spec.name} backbone has no default tiny decoder for "
                              f"model {model!r}. {TINY_DECODER_HOW}", "-o guidance_decoder_path")
    check_tiny_decoder(path, TINY_DECODER_HOW)
    return path, source


@dataclass
class _GuidanceParts:
    """What :func:`prepare` decides for MotionPrompt: the flow and discriminator plugins, what the
    discriminator was trained on, where the flow size comes from, warnings. Empty without guidance."""

    flow_spec: Any = None
    disc_spec: Any = None
    trained_on: dict[str, Any] | None = None
    flow_size_source: str | None = None
    warnings: list[str] = field(default_factory=list)


def _guidance_parts(motion: MotionPromptConfig, sampler: SamplerConfig, flow_options: dict[str, str],
                    discriminator: str | None, disc_type: str | None) -> _GuidanceParts:
    """MotionPrompt's flow estimator and discriminator, checked without loading them: the flow options
    against the estimator's declared ones, the discriminator file and its config's ``trained_on``."""
    parts = _GuidanceParts(flow_spec=plugins.get("flow", motion.flow_estimator).spec)
    declared = parts.flow_spec.options
    unknown = sorted(set(flow_options) - set(declared)) if declared is not None else []
    if unknown:
        raise OptionError(f"unknown option(s) of the {parts.flow_spec.name} flow estimator: {', '.join(unknown)}; "
                          f"it takes: {', '.join(declared) or 'none'}", "--flow-option")
    if discriminator is None:
        raise OptionError(
            "MotionPrompt needs a trained flow discriminator: pass --discriminator PATH.safetensors "
            "(its config JSON beside it), or --guidance none for the plain baseline "
            f"(--discriminator random only makes sense with --model {TINY_MODEL})."
        )
    if discriminator != "random":
        disc_path = Path(discriminator).expanduser()
        if not disc_path.is_file():
            raise OptionError(f"discriminator file not found: {disc_path}")
        config_path = disc_path.with_suffix(".json")
        if config_path.is_file():  # read here, cheaply: what it was trained on is checked before any load
            config = json.loads(config_path.read_text())
            if isinstance(config, dict):
                disc_type = disc_type or config.get("type")
                parts.trained_on = read_trained_on(config.get("trained_on"), str(config_path))
    parts.disc_spec = plugins.get("discriminator", disc_type or "vit").spec
    if discriminator == "random" and parts.disc_spec.random is None:
        raise OptionError(f"discriminator plugin {parts.disc_spec.name!r} cannot build a random discriminator")
    parts.flow_size_source, parts.warnings = check_trained_on(parts.trained_on, motion, sampler, discriminator)
    for warning in parts.warnings:
        echo(f"warning: {warning}")
    if parts.flow_size_source == "discriminator trained_on":
        echo(f"note: flows are computed at {motion.flow_size}x{motion.flow_size}, the frame size the discriminator "
             f"was trained on (decoded frames: {sampler.height}x{sampler.width}); -o flow_size=N overrides it")
    return parts


@dataclass
class Models:
    """What :func:`load` loaded: shared by every video of a run."""

    backbone: Any  # Backbone
    flow_estimator: Any = None  # FlowEstimator, None without guidance
    discriminator: Any = None  # Discriminator, None without guidance
    flow_info: dict[str, Any] | None = None
    discriminator_info: dict[str, Any] | None = None
    guidance_decoder: Any = None
    """The guided frames' decoder with ``-o guidance_decoder=tiny`` (a :class:`mpcore.vae.TinyDecoder`);
    None: the backbone's VAE (and without guidance)."""
    guidance_decoder_info: dict[str, Any] | None = None
    load_backbone_s: float = 0.0


def load(setup: RunSetup) -> Models:
    """Load the backbone and, for MotionPrompt, the flow estimator and the discriminator."""
    if not setup.progress:  # --no-progress also hides the loaders' own bars (diffusers, transformers)
        import diffusers.utils.logging
        import transformers.utils.logging

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    if setup.tiny:
        echo(f"note: --model {TINY_MODEL} is a tiny RANDOM-INIT model: its output is noise. It exists so the "
             "whole path runs offline; use real weights for real videos.")
    flow_estimator = None
    if setup.guided:  # first: it is small, and its loader checks --flow-option before the backbone loads
        flow_options = {k: parse_scalar(v) for k, v in setup.flow_options.items()}
        try:
            flow_estimator = setup.flow.load(setup.flow_weights, setup.device, seed=RANDOM_INIT_SEED, **flow_options)
        except TypeError as error:  # the loaders' way to say: unknown option
            raise ConfigError(f"--flow-option: {error}") from None
    tiny_decoder = None
    if setup.guided and setup.guidance_decoder_path is not None:  # small too: a hub failure shows before the backbone loads
        from mpcore.vae import load_tiny_decoder

        tiny_decoder = load_tiny_decoder(setup.guidance_decoder_path, setup.device, setup.dtype)
    start = time.perf_counter()
    backbone = setup.backbone.load(model=setup.model, device=setup.device, dtype=setup.dtype, seed=RANDOM_INIT_SEED,
                                   offload=setup.offload, attention=setup.attention, **setup.backbone_options)
    models = Models(backbone=backbone, load_backbone_s=time.perf_counter() - start)
    _check_sampling_options(setup, backbone)
    if setup.guided:
        if setup.discriminator_path == "random":
            disc = setup.discriminator.random(seed=RANDOM_INIT_SEED, device=setup.device)
        else:
            disc = setup.discriminator.load(setup.discriminator_path, setup.device)
        loaded_trained_on = read_trained_on(getattr(disc, "trained_on", None), setup.discriminator_path)
        if setup.trained_on is None and loaded_trained_on is not None:  # a plugin whose config prepare could not read
            setup.trained_on = loaded_trained_on
            setup.flow_size_source, warnings = check_trained_on(loaded_trained_on, setup.motion, setup.sampler,
                                                                setup.discriminator_path)
            setup.warnings.extend(warnings)
            for warning in warnings:
                echo(f"warning: {warning}")
        models.flow_estimator = flow_estimator
        models.discriminator = disc
        models.guidance_decoder, models.guidance_decoder_info = _guidance_decoder(setup, backbone, tiny_decoder)
        # the plugin's own description first: the names the user chose (e.g. a preset) win
        models.flow_info = {**(flow_estimator.describe() if hasattr(flow_estimator, "describe") else {}),
                            "name": setup.flow.name, "weights": setup.flow_weights, "options": setup.flow_options}
        models.discriminator_info = {**(disc.describe() if hasattr(disc, "describe") else {}),
                                     "name": setup.discriminator.name, "path": setup.discriminator_path,
                                     "trained_on": setup.trained_on}
    return models


def _check_sampling_options(setup: RunSetup, backbone) -> None:
    """``--scheduler`` and ``--free-init`` against the loaded backbone's scheduler, before any sampling."""
    if setup.scheduler is not None:
        from mpcore.sampling import use_scheduler

        use_scheduler(backbone, setup.scheduler)
    if setup.free_init is not None and setup.free_init.enabled:
        from mpcore.free_init import check_free_init

        check_free_init(backbone, backbone.make_scheduler())


def _guidance_decoder(setup: RunSetup, backbone, tiny_decoder) -> tuple[Any, dict[str, Any]]:
    """The decoder of the guided frames and its manifest entry: the backbone's VAE (None), or the tiny
    decoder wrapped to take the backbone's latents, checked to fit its latent space before sampling."""
    if tiny_decoder is None:
        return None, {"name": "full", "path": None, "source": "the backbone's VAE"}
    from mpcore.vae import TinyDecoder

    decoder = TinyDecoder(tiny_decoder, backbone.vae_scaling_factor(), setup.guidance_decoder_path)
    decoder.check_fits(backbone.latent_channels, backbone.vae_scale_factor)
    return decoder, {"name": "tiny", "source": setup.guidance_decoder_source, **decoder.describe()}


def generate_one(
    setup: RunSetup,
    models: Models,
    prompt: str,
    seed: int,
    out: Path,
    manifest_extra: dict[str, Any] | None = None,
    report: Any = echo,
) -> dict[str, Path]:
    """Sample ``prompt`` with ``seed`` and write the video ``out`` and its companions.

    Writes (each atomically) the video, with ``--compare`` the baseline | MotionPrompt video, the
    trace plot, and last the manifest, so an existing manifest marks a complete video.
    ``manifest_extra`` adds top-level manifest sections. Returns the written paths by name.
    Raises :class:`SamplingError`, before writing anything, if the latents are not finite.

    With guidance, ``report`` (None: silent) gets one line: how many token updates were made and how
    many skipped, and why (also in the manifest's ``guidance_updates``). If every update was skipped,
    :class:`GuidanceSkippedError` is raised after everything is written: the video equals the baseline.
    """
    from mpcore.io.manifest import write_json_atomic

    sampler = dataclasses.replace(setup.sampler, seed=seed)
    paths = setup.output_paths(out)
    results, timings = _sample_videos(setup, models, prompt, sampler)

    # ---- write: videos, trace plot, then the manifest
    _write_videos(setup, models.backbone, results, paths)
    guidance_result = results[setup.guidance].guidance if setup.guiding else None
    health = guidance_health(guidance_result) if setup.guided else None
    if health is not None and report is not None:
        report(describe_health(health))
    if paths["trace_plot"] is not None:
        from mpcore.analysis.trace_plot import plot_trace

        plot_trace(guidance_result, paths["trace_plot"], title=f"MotionPrompt: {prompt}")
    manifest_extra = {**(manifest_extra or {}), **_sampling_manifest(setup, results)}
    manifest = _run_manifest(setup, models, prompt, sampler, paths, timings, guidance_result, health, manifest_extra)
    write_json_atomic(manifest, paths["manifest"])
    _remove_leftovers(setup, out, paths)
    if health is not None and health["all_skipped"]:
        raise GuidanceSkippedError(
            f"MotionPrompt skipped all {health['updates']} token updates ({', '.join(health['skip_reasons'])}): "
            f"{paths['video']} equals the plain baseline of seed {seed}, not a guided video. Lower the learning "
            "rate (-o lr=...) or the loss weights (-o l_disc/l_tv/l_reg=...) and run again."
        )
    return {name: path for name, path in paths.items() if path is not None}


def _sampling_manifest(setup: RunSetup, results: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``scheduler`` and ``free_init`` sections (settings, and each video's passes)."""
    section: dict[str, Any] = {"scheduler": setup.scheduler or "the backbone's own"}
    if setup.free_init is not None and setup.free_init.enabled:
        settings = dataclasses.asdict(setup.free_init)
        section["free_init"] = {**settings, "videos": {  # per video: its passes (the settings once, above)
            name: {k: v for k, v in result.free_init.items() if k not in settings} for name, result in results.items()}}
    return section


def _sample_videos(setup: RunSetup, models: Models, prompt: str, sampler: SamplerConfig) -> tuple[dict[str, Any], dict[str, float]]:
    """The baseline (without guidance, or with ``--compare``) and the MotionPrompt sample, and their times;
    :class:`SamplingError` if any latents are not finite."""
    import torch

    from mpcore.free_init import FreeInitConfig, sample_free_init

    def sample(backbone, prompt, config, guidance, progress, description):  # FreeInit is plain sampling with 1 pass
        return sample_free_init(backbone, prompt, config, setup.free_init or FreeInitConfig(), guidance, progress,
                                description)

    timings: dict[str, float] = {"load_backbone_s": models.load_backbone_s}
    # ---- sample: baseline first (it must not see the learnable tokens), then guided
    results = {}
    if not setup.guiding or setup.compare:
        start = time.perf_counter()
        results["baseline"] = sample(models.backbone, prompt, sampler, None, setup.progress, "baseline")
        timings["baseline_s"] = time.perf_counter() - start
    if setup.guiding:
        # a fresh guidance object per video: MotionPrompt's token starts from its init word, every trace is empty
        if setup.guided:
            guidance = setup.guidance_spec.build(setup.motion, models.flow_estimator, models.discriminator,
                                                 models.guidance_decoder)
        else:
            guidance = setup.guidance_spec.build(setup.guidance_config, setup.backbone, setup.model)
        start = time.perf_counter()
        results[setup.guidance] = sample(models.backbone, prompt, sampler, guidance, setup.progress, setup.guidance)
        timings[f"{setup.guidance}_s"] = time.perf_counter() - start
    for name, result in results.items():
        if not torch.isfinite(result.latents).all():
            raise SamplingError(f"{name} sampling gave non-finite latents (NaN/inf) for prompt {prompt!r}, "
                                f"seed {sampler.seed}")
    return results, timings


def _write_videos(setup: RunSetup, backbone, results: dict[str, Any], paths: dict[str, Path | None]) -> None:
    """The video (guided, else the baseline) and, with ``--compare``, baseline | MotionPrompt side by side."""
    from mpcore.io import video
    from mpcore.sampling import decode_video

    frames = {name: video.to_uint8_frames(decode_video(backbone, r.latents)) for name, r in results.items()}
    video.write_video(frames[setup.guidance if setup.guiding else "baseline"], paths["video"], fps=setup.fps)
    if paths["compare"] is not None:
        video.write_video(video.side_by_side(frames["baseline"], frames[setup.guidance]), paths["compare"], fps=setup.fps)


def _run_manifest(setup: RunSetup, models: Models, prompt: str, sampler: SamplerConfig, paths: dict[str, Path | None],
                  timings: dict[str, float], guidance_result: dict[str, Any] | None, health: dict[str, Any] | None,
                  manifest_extra: dict[str, Any] | None) -> dict[str, Any]:
    """The video's manifest: command, prompt, seed, every setting, the guidance trace and its health, timings."""
    from mpcore.io.manifest import build_manifest

    motion = setup.motion
    return build_manifest(
        command=["mpcore", *sys.argv[1:]],
        prompt=prompt,
        seed=sampler.seed,
        guidance=setup.guidance,
        # every guidance's settings in one place (MotionPrompt's also under "motionprompt", resolved below)
        guidance_settings=setup.guidance_settings(),
        backbone=models.backbone.describe(),
        sampler=to_dict(sampler),
        motionprompt={**to_dict(motion), "opt_range": list(motion.resolved_opt_range(sampler.steps)),
                      "opt_range_source": "explicit" if motion.opt_range is not None else
                      f"paper range {list(motion.paper_opt_range)} at {PAPER_STEPS} steps, scaled to {sampler.steps}",
                      "flow_size_source": setup.flow_size_source}
        if setup.guided else None,
        flow=models.flow_info,
        discriminator=models.discriminator_info,
        guidance_decoder=models.guidance_decoder_info,
        device=str(setup.device),
        kernels=os.environ.get("MPCORE_KERNELS", "auto"),
        dtype=str(setup.dtype).replace("torch.", ""),
        outputs={k: str(v) for k, v in paths.items() if v is not None},
        timings=timings,
        warnings=([f"--model {TINY_MODEL} is a random-init model: the video is noise"] if setup.tiny else [])
        + list(setup.warnings),
        result=guidance_result,
        guidance_updates=health,
        **(manifest_extra or {}),
    )


def _remove_leftovers(setup: RunSetup, out: Path, paths: dict[str, Path | None]) -> None:
    """What an earlier or killed run left under these names: companions this run did not write, temporaries."""
    every_path = setup.output_paths(out, every=True)
    for name, path in every_path.items():
        if paths[name] is None and path is not None and path.is_file():
            path.unlink()
    remove_stale_temporaries(out.parent, [p.stem for p in every_path.values() if p is not None])
