"""Configuration of the sampler and of MotionPrompt guidance.

Dataclasses hold every knob: :class:`SamplerConfig` (the DDIM loop), :class:`MotionPromptConfig` (the
learnable-token guidance) and :class:`FreeInitConfig` (FreeInit's noise re-initialization), with generic
defaults; :data:`SCHEDULERS` names the update rules ``--scheduler`` may pick. No torch here: the
command line validates settings before loading any model. The core knows
no backbone: each backbone plugin declares the paper's MotionPrompt settings for its backbone
(``BackboneSpec.motionprompt_defaults``; ``spec.defaults_for(model)`` gives them).

Sampling-step indices ``i`` count from 0 at the first (noisiest) DDIM step. The paper writes its
optimization ranges as ``a < i < b`` for 50 steps; we store them as the half-open interval
``[a + 1, b)``. When the user does not set ``opt_range`` explicitly and samples with a different
number of steps, the range is rescaled to the same fraction of the trajectory
(:func:`scale_opt_range`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

PAPER_STEPS = 50
"""The number of DDIM steps the paper's optimization ranges refer to."""


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and the allowed range (``field``: the
    config field, when one is to blame, so a command can name the flag that set it)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass
class SamplerConfig:
    """The DDIM loop: classifier-free guidance on a latent video model."""

    steps: int = PAPER_STEPS
    cfg_scale: float = 7.5
    frames: int = 16
    height: int = 512
    width: int = 512
    seed: int = 0
    eta: float = 0.0
    negative_prompt: str = ""

    def validate(self, spatial_multiple: int = 8, temporal_compression: int = 1) -> None:
        """``spatial_multiple``: what height and width must be multiples of (the VAE's down-sampling
        factor, times a DiT's patch size); ``temporal_compression``: pixel frames per latent frame of
        a causal video VAE (4 for Wan and CogVideoX), whose videos have 1 + r * k frames."""
        _require(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        _require(self.cfg_scale >= 0, "cfg_scale", self.cfg_scale, ">= 0 (1 disables CFG mixing)")
        _require(self.frames >= 1, "frames", self.frames, "an integer >= 1")
        r = temporal_compression
        _require(r == 1 or (self.frames - 1) % r == 0, "frames", self.frames,
                 f"1 + {r} * k (the VAE compresses time {r}x after the first frame: e.g. {r + 1}, {4 * r + 1}, {20 * r + 1})")
        for name in ("height", "width"):
            value = getattr(self, name)
            _require(
                value >= spatial_multiple and value % spatial_multiple == 0,
                name,
                value,
                f"a positive multiple of {spatial_multiple} (the VAE's down-sampling factor)",
            )
        _require(0.0 <= self.eta <= 1.0, "eta", self.eta, "[0, 1] (0 = deterministic DDIM)")
        _require(self.seed >= 0, "seed", self.seed, "an integer >= 0")


SCHEDULERS = ("ddim", "ddpm")
"""``--scheduler``: the update rules an SD-family backbone (DDIM with ``alphas_cumprod``, epsilon or v)
can sample with on its own betas (:func:`mpcore.sampling.scheduler_factory`)."""

FREE_INIT_METHODS = ("butterworth", "gaussian", "ideal")
"""FreeInit's low-pass filters (:func:`mpcore.free_init.low_pass_filter`)."""


MAX_FREE_INIT_ITERATIONS = 10
"""FreeInit passes at most: each is a whole sampling run (the paper's results use 3-5; diffusers' default is 3)."""


@dataclass
class FreeInitConfig:
    """FreeInit's settings (:func:`mpcore.free_init.sample_free_init`); the defaults are diffusers'
    ``enable_free_init`` (the official repo's).

    ``iterations`` counts sampling passes: 1 is plain sampling, N > 1 re-initializes N - 1 times."""

    iterations: int = 1
    method: str = "butterworth"
    order: int = 4
    spatial_stop_frequency: float = 0.25
    temporal_stop_frequency: float = 0.25

    def validate(self) -> None:
        _require(1 <= self.iterations <= MAX_FREE_INIT_ITERATIONS, "free_init iterations", self.iterations,
                 f"an integer in [1, {MAX_FREE_INIT_ITERATIONS}] (1 = off; each pass costs a whole sampling run; the "
                 "paper uses 3-5)")
        _require(self.method in FREE_INIT_METHODS, "free_init method", self.method, " | ".join(FREE_INIT_METHODS))
        _require(self.order >= 1, "free_init order", self.order, "an integer >= 1")
        for name in ("spatial_stop_frequency", "temporal_stop_frequency"):
            value = getattr(self, name)
            _require(0 < value <= 1, f"free_init {name}", value, "in (0, 1]")

    @property
    def enabled(self) -> bool:
        return self.iterations > 1


Optimizer = Literal["adam", "adamw", "sgd"]
OPTIMIZERS = typing.get_args(Optimizer)
PLACEMENTS = ("start", "end")
PLACEMENT_ALIASES = {"front": "start"}
"""Former names of placements, still accepted; the config (and so the manifest) keeps the canonical one."""
RANDOM_INIT = "random"
"""``init_words`` entry meaning: no word, a random row (:func:`mpcore.motionprompt.random_token_embedding`)."""
Estimate = Literal["tweedie", "rollout"]
ESTIMATES = typing.get_args(Estimate)
RolloutPrompt = Literal["guided", "as_sampled"]
ROLLOUT_PROMPTS = typing.get_args(RolloutPrompt)
RolloutGradient = Literal["every_call", "last_call"]
ROLLOUT_GRADIENTS = typing.get_args(RolloutGradient)
StepOutput = Literal["fresh", "last_iteration"]
STEP_OUTPUTS = typing.get_args(StepOutput)
GuidanceDecoder = Literal["full", "tiny"]
GUIDANCE_DECODERS = typing.get_args(GuidanceDecoder)


@dataclass
class MotionPromptConfig:
    """MotionPrompt guidance: learnable prompt tokens optimized against a flow discriminator.

    Loss at an optimized step (docs/design.md "The method", step 2)::

        L = l_disc * mean_pairs softplus(-D(flow)) + l_tv * TV(flow) + l_reg * ||e_S - e_S_init||^2
    """

    RENAMED: ClassVar[dict[str, str]] = {"paper_opt_range": "reference_opt_range"}
    """Former setting names -> current ones (``-o`` and folders recorded by an older mpcore still read)."""

    num_tokens: int = 1
    """Learnable tokens S added to the prompt (the paper: 1)."""
    init_words: tuple[str, ...] = ("authentic", "real", "clear")
    """Init word of token k: ``init_words[k % len]`` (the mean of its pieces); ``random`` = a random row
    (the paper's appendix B.1 ablation, :func:`mpcore.motionprompt.random_token_embedding`)."""
    placement: str = "end"
    """Where the tokens go: ``end`` (P + S, the paper's; right before EOS / ``</s>``) or ``start`` (S + P;
    right after CLIP's BOS, first for T5). ``front`` is accepted as an alias of ``start``."""
    iterations: int = 3
    """Token updates K at each optimized step (the paper: 3)."""
    opt_range: tuple[int, int] | None = None
    """Half-open [start, stop) of sampling-step indices; None = the backbone default scaled to steps."""
    decoded_frames: int = 2
    """Frames of the clean estimate decoded per update, as frame pairs (decoded_frames / 2 flows)."""
    l_disc: float = 1.0
    """Weight of the discriminator term, mean over pairs of softplus(-D(flow))."""
    l_tv: float = 5.0
    """Weight of the flow's anisotropic total variation (mean over pixels)."""
    l_reg: float = 10.0
    """Weight of ||e_S - e_S_init||^2, which keeps the token near its init embedding."""
    lr: float = 0.005
    """Learning rate of the token update."""
    optimizer: Optimizer = "adam"
    """The optimizer of the token rows (the only parameters optimized)."""
    checkpoint_denoiser: bool = False
    """Gradient checkpointing of the denoiser during optimization ("lean" mode: less memory, more time)."""
    checkpoint_vae: bool = True
    """Per-block gradient checkpointing of the VAE decoder while decoding the selected frames."""
    flow_estimator: str = "raft"
    """Flow estimator plugin by name (`mpcore plugins`): 'raft' is the paper's choice (weights are a
    download); 'tvl1' needs no weights."""
    flow_size: int | None = None
    """Resize decoded frames to this side length before the flow estimator (None = decoded size)."""
    reference_opt_range: tuple[int, int] = (4, 15)
    """The backbone's range at PAPER_STEPS (50) steps, scaled to the run's step count when ``opt_range`` is
    not given: the paper's for AnimateDiff, LaVie and VideoCrafter2, a chosen one for the others (e.g. the
    toy model's, chosen on its development seeds). Formerly ``paper_opt_range`` (still accepted)."""
    estimate: Estimate = "tweedie"
    """How the clean video the discriminator judges is estimated from x_t: 'tweedie' is the paper's
    one-step estimate; 'rollout' takes ``rollout_steps`` differentiable DDIM steps over the rest of
    the trajectory first (:func:`mpcore.motionprompt.estimate_clean_frames`)."""
    rollout_steps: int = 3
    """Model calls (CFG) of the 'rollout' estimate, N >= 1: N - 1 deterministic DDIM moves, each after a
    model call, then the Tweedie estimate from the last call (N = 1 is the one-step Tweedie estimate).
    N is capped at the steps left, so N >= them (e.g. ``rollout_steps`` = ``steps``) is every remaining step: with
    ``rollout_prompt='as_sampled'`` the discriminator then judges exactly the video the current token
    would produce (the upper bound of the estimate; memory grows with N: ``checkpoint_denoiser=true``)."""
    rollout_prompt: RolloutPrompt = "guided"
    """The condition of the rollout's calls at sampling steps past the optimization range: 'guided'
    (the guided prompt P + S with the current token, every call) or 'as_sampled' (the plain prompt P
    there, as the sampler will use it; calls inside the range keep P + S). Measured on the toy model
    (64 pairs; docs/toy-world.md): no measure differs between the two, so the
    existing behaviour stays the default."""
    rollout_gradient: RolloutGradient = "every_call"
    """Which of the rollout's calls the token's gradient goes through: 'every_call' (exact: the calls run
    with gradient at every iteration) or 'last_call' (a cheaper variant: the calls before the last run once
    per sampling step without gradient, with the token as it stood before the step's updates, and each
    update differentiates the last call's conditional branch alone; no denoiser checkpointing needed).
    Not kept on the toy model (docs: Benchmarks, "Cheaper variants"): it optimizes about 10% less and
    worsens the flow warping error."""
    step_output: StepOutput = "fresh"
    """The model output the sampling step takes after the K updates: 'fresh' (the method as published: one
    more conditional forward with the updated token) or 'last_iteration' (a cheaper variant: the CFG output
    at x_t that the K-th update computed, i.e. the token one update stale; one forward less per optimized
    step). Kept on the toy model's development seeds (docs: Benchmarks, "Cheaper variants"); its
    confirmation is registered, not yet run."""
    probe_pairs: int = 0
    """The gate's probe: at every optimized step, the discriminator term on this many held-out frame
    pairs before the step's K updates and after them (same x_t, same pairs, no gradient; the pairs come
    from their own generator, so the video does not change). 0 = off; each probe costs two estimates."""

    guidance_decoder: GuidanceDecoder = "full"
    """What decodes the guided frames for the loss: 'full' is the backbone's own VAE (the paper's);
    'tiny' a diffusers ``AutoencoderTiny`` of the same latent space (TAESD for SD-family latents) at
    ``guidance_decoder_path``, much cheaper with backward. The final video always goes through the
    backbone's VAE."""
    guidance_decoder_path: str | None = None
    """With ``guidance_decoder='tiny'``: a local diffusers AutoencoderTiny folder or a hub id; None =
    the backbone's default for the model (``BackboneSpec.default_guidance_decoder``)."""

    def __post_init__(self) -> None:
        self.placement = PLACEMENT_ALIASES.get(self.placement, self.placement)  # 'front' -> 'start'

    def ineffective(self, given: set[str]) -> dict[str, str]:
        """Of the settings the user ``given``, those that do nothing under the others, and why (a run refuses
        them rather than ignoring them silently)."""
        reasons = {}
        if self.estimate != "rollout":
            for name in ("rollout_steps", "rollout_prompt", "rollout_gradient"):
                reasons[name] = f"acts only with estimate=rollout (this run: estimate={self.estimate})"
        if self.guidance_decoder != "tiny":
            reasons["guidance_decoder_path"] = "acts only with guidance_decoder=tiny"
        if self.opt_range is not None:
            reasons["reference_opt_range"] = f"is only scaled when opt_range is not given (this run: opt_range={self.opt_range})"
        return {name: why for name, why in reasons.items() if name in given}

    def resolved_opt_range(self, steps: int) -> tuple[int, int]:
        if self.opt_range is not None:
            return tuple(self.opt_range)  # type: ignore[return-value]
        return scale_opt_range(self.reference_opt_range, steps)

    def validate(self, sampler: SamplerConfig, latent_frames: int | None = None) -> None:
        """``latent_frames``: the latent frames of ``sampler.frames`` frames, if the VAE compresses time
        (frames are then picked and decoded as latent frames); default ``sampler.frames``."""
        frames = sampler.frames if latent_frames is None else latent_frames
        unit = "frames" if latent_frames is None else "latent frames"
        _require(self.num_tokens >= 1, "num_tokens", self.num_tokens, "an integer >= 1")
        _require(len(self.init_words) >= 1, "init_words", self.init_words, "at least one word")
        _require(self.placement in PLACEMENTS, "placement", self.placement,
                 " | ".join([*PLACEMENTS, *PLACEMENT_ALIASES]) + " (an alias of start)")
        _require(self.iterations >= 1, "iterations", self.iterations, "an integer >= 1")
        start, stop = self.resolved_opt_range(sampler.steps)
        _require(
            0 <= start < stop <= sampler.steps,
            "opt_range",
            (start, stop),
            f"start < stop inside [0, steps={sampler.steps}] (half-open step indices)",
        )
        _require(
            self.decoded_frames >= 2 and self.decoded_frames % 2 == 0 and self.decoded_frames <= frames,
            "decoded_frames",
            self.decoded_frames,
            f"an even number in [2, {unit}={frames}] (frames are decoded in adjacent pairs)",
        )
        for name in ("l_disc", "l_tv", "l_reg"):
            value = getattr(self, name)
            _require(value >= 0 and math.isfinite(value), name, value, "a finite number >= 0")
        _require(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a finite number > 0")
        _require(self.estimate in ESTIMATES, "estimate", self.estimate, " | ".join(ESTIMATES))
        _require(
            self.rollout_steps >= 1,
            "rollout_steps",
            self.rollout_steps,
            "an integer >= 1 (model calls with gradient per estimate, at most the steps left: more means every "
            "remaining step, the exact video of the current token)",
        )
        _require(self.rollout_prompt in ROLLOUT_PROMPTS, "rollout_prompt", self.rollout_prompt,
                 " | ".join(ROLLOUT_PROMPTS))
        _require(self.rollout_gradient in ROLLOUT_GRADIENTS, "rollout_gradient", self.rollout_gradient,
                 " | ".join(ROLLOUT_GRADIENTS))
        _require(self.step_output in STEP_OUTPUTS, "step_output", self.step_output, " | ".join(STEP_OUTPUTS))
        last_call = self.rollout_gradient == "last_call" and self.estimate_calls() > 1
        _require(not (last_call and self.rollout_prompt == "as_sampled"), "rollout_gradient", self.rollout_gradient,
                 "every_call with rollout_prompt=as_sampled (the last call, past the range, conditions on the plain "
                 "prompt there: the token would get no gradient); or set rollout_prompt=guided")
        _require(not (last_call and self.step_output == "last_iteration"), "step_output", self.step_output,
                 "fresh with rollout_gradient=last_call (its first call runs once per step, before the updates: no "
                 "output with an updated token exists to reuse); or set rollout_gradient=every_call")
        _require(
            0 <= self.probe_pairs and 2 * self.probe_pairs <= frames,
            "probe_pairs",
            self.probe_pairs,
            f"an integer in [0, {unit}/2 = {frames // 2}] (0 = no gate probe)",
        )
        _require(self.guidance_decoder in GUIDANCE_DECODERS, "guidance_decoder", self.guidance_decoder,
                 " | ".join(GUIDANCE_DECODERS) + " (full: the backbone's VAE; tiny: an AutoencoderTiny)")
        _require(
            self.guidance_decoder_path is None
            or (self.guidance_decoder == "tiny" and isinstance(self.guidance_decoder_path, str)
                and self.guidance_decoder_path.strip() != ""),
            "guidance_decoder_path",
            self.guidance_decoder_path,
            "None, or with guidance_decoder=tiny a diffusers AutoencoderTiny folder or hub id",
        )
        _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, " | ".join(OPTIMIZERS))
        _require(
            isinstance(self.flow_estimator, str) and self.flow_estimator.strip() != "",
            "flow_estimator",
            self.flow_estimator,
            "an installed flow estimator's name (see `mpcore plugins`)",
        )
        _require(
            self.flow_size is None or self.flow_size >= 8,
            "flow_size",
            self.flow_size,
            "None or an integer >= 8",
        )

    def estimate_calls(self) -> int:
        """Model calls per clean-video estimate: 1 for 'tweedie', ``rollout_steps`` for 'rollout'."""
        return self.rollout_steps if self.estimate == "rollout" else 1

    def token_init_words(self) -> list[str]:
        """The init word of each learnable token, cycling through ``init_words``."""
        return [self.init_words[k % len(self.init_words)] for k in range(self.num_tokens)]


def scale_opt_range(paper_range: tuple[int, int], steps: int) -> tuple[int, int]:
    """Map a range given for PAPER_STEPS steps to the same fraction of ``steps`` steps (non-empty)."""
    start = round(paper_range[0] * steps / PAPER_STEPS)
    stop = round(paper_range[1] * steps / PAPER_STEPS)
    start = min(max(start, 0), steps - 1)
    stop = min(max(stop, start + 1), steps)
    return start, stop


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"invalid config: {name}={value!r}; allowed: {allowed}", field=name.split()[-1])


# ----------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[str, str]:
    """Split one ``key=value`` CLI override."""
    if "=" not in text:
        raise ConfigError(f"invalid override {text!r}: expected key=value, e.g. -o lr=0.001")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def apply_overrides(config: Any, overrides: list[str] | dict[str, str]) -> Any:
    """Return a copy of a config dataclass with ``key=value`` strings applied, each parsed by its
    field's type annotation (:func:`parse_typed`), for any config dataclass (MotionPrompt's, FlowMo's,
    a third-party guidance's)."""
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    names = {f.name for f in fields(config)}
    hints = typing.get_type_hints(type(config))
    changes: dict[str, Any] = {}
    renamed = getattr(type(config), "RENAMED", {})
    for key, raw in items:
        key = renamed.get(key, key)
        if key not in names:
            raise ConfigError(
                f"unknown setting {key!r} for {type(config).__name__}; known: {', '.join(sorted(names))}"
            )
        changes[key] = parse_typed(key, raw, hints[key])
    return dataclasses.replace(config, **changes)


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_typed(key: str, raw: str, annotation: Any) -> Any:
    """The value of ``-o key=raw`` for a field annotated ``annotation``: bool (true|false|1|0|yes|no|on|off),
    int, float, str, ``Literal[...]``, ``X | None`` (``none`` gives None), ``tuple[X, ...]`` and fixed
    ``tuple[X, Y]`` (items separated by ``,`` or ``:``, e.g. ``opt_range=4,15``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and raw.strip().lower() == "none":
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return parse_typed(key, raw, option)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"invalid config: {key}={raw!r}; expected one of "
                          f"{', '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        if raw not in [str(a) for a in args]:
            raise ConfigError(f"invalid config: {key}={raw!r}; allowed: {' | '.join(map(str, args))}")
        return next(a for a in args if str(a) == raw)
    if origin is tuple:
        parts = [p.strip() for p in raw.replace(":", ",").split(",") if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_typed(key, p, args[0]) for p in parts)
        if len(parts) != len(args):
            raise ConfigError(f"invalid config: {key}={raw!r}; expected {len(args)} values separated by ',' "
                              f"({_type_name(annotation)}), e.g. {key}={','.join('1' for _ in args)}")
        return tuple(parse_typed(key, p, a) for p, a in zip(parts, args))
    if annotation is bool:
        if raw.lower() in TRUE_WORDS:
            return True
        if raw.lower() in FALSE_WORDS:
            return False
        raise ConfigError(f"invalid config: {key}={raw!r}; expected true|false")
    if annotation in (int, float, str):
        try:
            return annotation(raw)
        except ValueError:
            raise ConfigError(f"invalid config: {key}={raw!r}; expected {annotation.__name__}") from None
    raise ConfigError(f"invalid config: {key}: its type {_type_name(annotation)} cannot be set with -o")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


__all__ = [
    "ConfigError",
    "FREE_INIT_METHODS",
    "FreeInitConfig",
    "MotionPromptConfig",
    "PAPER_STEPS",
    "SCHEDULERS",
    "SamplerConfig",
    "apply_overrides",
    "scale_opt_range",
    "to_dict",
]

