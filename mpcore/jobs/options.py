"""The options of one run, typed: :class:`RunOptions` holds what ``mpcore run`` takes on the command
line (its fields are the flags, its defaults the CLI's), and the small resolvers the other steps
share (device, dtype, a plugin option's value). Loads nothing and imports no torch at module level."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mpcore.config import ConfigError, FreeInitConfig, SamplerConfig, apply_overrides

RANDOM_INIT_SEED = 0
"""Seed of every random-init component (``--model tiny``, ``--flow-weights random``,
``--discriminator random``). It is fixed, not the sampling seed: one loaded model serves every seed,
so ``generate`` reproduces ``run`` item by item."""

SAMPLER_FLAGS = {  # RunOptions field (the CLI flag) -> SamplerConfig field
    "frames": "frames",
    "height": "height",
    "width": "width",
    "steps": "steps",
    "cfg": "cfg_scale",
    "seed": "seed",
    "eta": "eta",
    "negative_prompt": "negative_prompt",
}

FREE_INIT_FLAGS = {"free_init": "iterations", "free_init_method": "method", "free_init_order": "order",
                   "free_init_spatial_stop": "spatial_stop_frequency", "free_init_temporal_stop": "temporal_stop_frequency"}
"""``--free-init*`` option (RunOptions' keyword) -> :class:`mpcore.config.FreeInitConfig` field."""

GUIDANCE_ONLY_OPTIONS = {"overrides": "-o/--set", "compare": "--compare"}
"""Options every guidance may use and the plain baseline uses none of (refused with ``--guidance none``)."""
FLOW_OPTIONS = {"flow": "--flow", "flow_weights": "--flow-weights", "flow_options": "--flow-option"}
"""Options of a guidance that ``needs`` a flow estimator."""
DISCRIMINATOR_OPTIONS = {"discriminator": "--discriminator", "discriminator_type": "--discriminator-type"}
"""Options of a guidance that ``needs`` a discriminator."""


class OptionError(ConfigError):
    """An option is invalid or contradicts another (the CLI exits 2, naming ``option``)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


@dataclass
class RunOptions:
    """Everything ``mpcore run`` takes but the prompt and the output: one field per flag (``cfg`` is
    ``--cfg``, ``overrides`` is ``-o``), the CLI's defaults. None means "the backbone's default"
    (sampler fields) or "not given". ``backbone_options`` are the options a backbone plugin adds
    (e.g. ``motion_adapter`` of AnimateDiff)."""

    backbone: str | None = None
    model: str | None = None
    backbone_options: dict[str, Any] = field(default_factory=dict)
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    eta: float | None = None
    negative_prompt: str | None = None
    scheduler: str | None = None
    free_init: FreeInitConfig = field(default_factory=FreeInitConfig)
    guidance: str | None = None
    """A registered guidance name, or "none" for the plain baseline; None: the built-in default."""
    overrides: tuple[str, ...] = ()
    flow: str | None = None
    flow_weights: str | None = None
    flow_options: tuple[str, ...] = ()
    discriminator: str | None = None
    discriminator_type: str | None = None
    compare: bool = False
    fps: int = 8
    device: str | None = None
    dtype: str = "auto"
    offload: bool = False
    attention: str = "auto"
    progress: bool = True

    @classmethod
    def from_flags(cls, flags: dict[str, Any], free_init: dict[str, Any] | None = None) -> RunOptions:
        """From a command's keyword arguments: known fields by name, the rest are backbone options
        (those not given, None, are left out); ``free_init`` holds the given FreeInit fields."""
        names = {f.name for f in dataclasses.fields(cls)} - {"backbone_options", "free_init"}
        known = {k: v for k, v in flags.items() if k in names}
        for key in ("overrides", "flow_options"):
            known[key] = tuple(known.get(key) or ())
        backbone_options = {k: v for k, v in flags.items() if k not in names and v is not None}
        given = {k: v for k, v in (free_init or {}).items() if v is not None}
        return cls(**known, backbone_options=backbone_options, free_init=FreeInitConfig(**given))


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


DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_dtype(name: str, device, cuda_dtype: str = "float16"):
    """``--dtype`` -> torch dtype; ``auto`` is the backbone's ``cuda_dtype`` on CUDA (float16 for the
    paper's backbones, bfloat16 for Wan and CogVideoX), float32 elsewhere."""
    import torch

    if name not in DTYPES:
        raise OptionError(f"dtype {name!r}; allowed: {', '.join(DTYPES)}", "--dtype")
    if name == "auto":
        return getattr(torch, cuda_dtype) if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def parse_scalar(raw: Any) -> Any:
    """A plugin option's value from the command line: int, else float, else the string (non-strings as given)."""
    if not isinstance(raw, str):
        return raw
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def default_guidance() -> str:
    """The guidance ``--guidance`` defaults to: the one mpcore registers itself (its built-in plugin)."""
    from mpcore.builtin import DEFAULT_GUIDANCE

    return DEFAULT_GUIDANCE


def resolve_sampler(spec, model: str | None, flags: dict[str, Any]) -> SamplerConfig:
    """SamplerConfig: the backbone's defaults for ``model``, then the given flags (``RunOptions``' names:
    ``cfg``, ``steps``, ...; None = not given), checked against the backbone."""
    defaults, _ = spec.defaults_for(model)
    unknown = sorted(set(flags) - set(SAMPLER_FLAGS))
    if unknown:
        raise OptionError(f"unknown sampler setting(s) {', '.join(unknown)}; known: {', '.join(SAMPLER_FLAGS)}")
    sampler = apply_overrides(SamplerConfig(**defaults), {SAMPLER_FLAGS[k]: str(v) for k, v in flags.items()
                                                         if v is not None})
    check_sampler(spec, sampler)
    return sampler


def check_sampler(spec, sampler: SamplerConfig) -> None:
    """``sampler`` against what the backbone takes: sizes and frames, and at most its training timesteps."""
    sampler.validate(spec.spatial_multiple, spec.temporal_compression)
    if sampler.steps > spec.num_train_timesteps:  # --steps, or a backbone default
        raise OptionError(f"{sampler.steps} DDIM steps; at most {spec.num_train_timesteps} (the {spec.name} "
                          "scheduler's training timesteps; the paper uses 50)", "--steps")
