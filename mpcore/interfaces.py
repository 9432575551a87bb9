"""What plugins provide: specs registered through the hooks, and the backbone adapter interface.

The sampler and MotionPrompt talk only to :class:`Backbone`, :class:`FlowEstimator` and
:class:`Discriminator` (docs/design.md, "Contracts").
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

DEFAULT_BACKBONE = "animatediff"
DEFAULT_MODEL = "toy"
"""With neither ``--backbone`` nor ``--model``, ``mpcore run``/``generate`` use the toy model bundled with
the AnimateDiff plugin: trained offline, it runs anywhere in seconds (``--backbone animatediff``
alone means the real AnimateDiff)."""

TINY_MODEL = "tiny"
"""Reserved model name: a backbone given ``--model tiny`` builds a tiny random-init model of its
architecture, offline and deterministic in the seed. Its output is noise; with it the CLI defaults
to a random flow estimator and discriminator so the whole path runs anywhere."""


class FlowEstimator(Protocol):
    """``flow = f(frame_a, frame_b)``: frames (B, 3, H, W) in [-1, 1]; flow (B, 2, H, W) in pixels."""

    def __call__(self, frame_a: torch.Tensor, frame_b: torch.Tensor) -> torch.Tensor: ...


class Discriminator(Protocol):
    """``logit = D(flow)``: flow (B, 2, H, W) in pixels; logit (B,), higher = more real.

    Optional attribute ``trained_on`` (dict or None): what it was trained on -- ``flow_estimator``
    (plugin name), ``frame_size`` [H, W] the flows were computed at, ``caches`` -- set by ``mpcore
    disc train`` before ``save`` and stored in the config JSON under the same key; ``mpcore run``
    refuses another estimator and computes flows at that size (see :mod:`mpcore.jobs.trained_on`)."""

    def __call__(self, flow: torch.Tensor) -> torch.Tensor: ...


def latent_frames(frames: int, temporal_compression: int) -> int:
    """The number of latent frames of a ``frames``-frame video: ``frames`` for a per-frame VAE,
    ``1 + (frames - 1) / r`` for a causal video VAE compressing time r-fold after the first frame."""
    r = temporal_compression
    return frames if r == 1 else (frames - 1) // r + 1


class TextTokens(abc.ABC):
    """The learnable-token side of a text encoder: add tokens, read/write rows, encode with override."""

    @abc.abstractmethod
    def add_tokens(self, tokens: list[str]) -> list[int]:
        """Add ``tokens`` to the tokenizer and grow the embedding table; return their ids."""

    @abc.abstractmethod
    def word_embedding(self, word: str) -> torch.Tensor:
        """The (D,) input embedding of ``word`` (mean over its sub-word pieces)."""

    @abc.abstractmethod
    def embedding_table(self) -> torch.Tensor:
        """The text encoder's input embedding table (V, D) (a view; do not modify)."""

    @abc.abstractmethod
    def set_rows(self, ids: list[int], values: torch.Tensor) -> None:
        """Write ``values`` (len(ids), D) into the table rows ``ids``; no other row changes."""

    def token_ids(self, prompt: str, truncate: bool = True) -> list[int] | None:
        """The token ids the encoder sees for ``prompt``, special tokens included, cut to the context
        length when ``truncate`` (as :meth:`encode` cuts it); None if this tokenizer cannot tell (then
        MotionPrompt cannot check that its learnable tokens survive truncation)."""
        return None

    @abc.abstractmethod
    def encode(self, prompts: list[str], override: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Encode prompts; rows of ``override`` (token id -> (D,) tensor) replace the table rows,
        differentiably, wherever those ids occur."""


class Backbone(abc.ABC):
    """A latent video diffusion model as the sampler sees it.

    Latents are laid out (B, C, F, h, w). ``predict`` returns the raw model output (epsilon, v or
    the flow-matching velocity, per ``prediction_type``) for a batch whose conditions are stacked
    along dim 0.
    """

    name: str = "backbone"
    is_random_init: bool = False
    """True for reserved tiny random models: their output is noise and the CLI says so."""
    latent_channels: int = 4
    vae_scale_factor: int = 8
    prediction_type: str = "epsilon"
    """``epsilon`` | ``v_prediction`` (clean estimate from ``alphas_cumprod[t]``) | ``flow_matching``
    (velocity v = noise - x0; clean estimate x0 = x_t - sigma_t v with sigma_t from the scheduler's
    ``sigmas``)."""
    temporal_compression: int = 1
    """Video frames per latent frame after the first: 1 for per-frame VAEs (SD family); 4 for the
    causal 3D VAEs of Wan and CogVideoX (latent frame 0 is video frame 0 alone, latent frame k >= 1
    holds video frames 4k-3 .. 4k)."""
    separate_cfg_passes: bool = False
    """Compute CFG's conditional and unconditional outputs in two model calls (conditional first), as
    ``WanPipeline`` does, instead of one batch [uncond, cond] as the SD-family pipelines do; the two
    agree up to float rounding, this keeps guidance-off sampling bitwise equal to the pipeline's."""
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    text: TextTokens
    origin: BackboneOrigin | None = None
    """How it was loaded (plugin spec, model, options): set by :func:`mpcore.load_backbone` and
    :func:`mpcore.wrap_pipeline`, read by :func:`mpcore.generate` for the model's defaults. None for an
    adapter built by hand (then pass ``backbone_spec`` where asked)."""

    @abc.abstractmethod
    def make_scheduler(self):
        """A fresh diffusers scheduler configured as the backbone's own pipeline samples (DDIM for the
        paper's backbones; Wan: UniPC or Euler with flow sigmas; CogVideoX: its DDIM / DPM)."""

    def noise_schedule(self, scheduler):
        """The owner of this backbone's noise-schedule math for ``scheduler`` (as :meth:`make_scheduler`
        made it, ``set_timesteps`` called): clean estimate, deterministic transition (rollouts), diffusion
        of a clean latent (FreeInit, diagnose), state after a guidance moves x_t
        (:class:`mpcore.schedules.NoiseSchedule`). Default: by :attr:`prediction_type`, on the scheduler's
        ``alphas_cumprod`` or flow ``sigmas``; a backbone with another schedule (lvdm's scale schedule)
        returns its own subclass. The core never re-derives these formulas."""
        from mpcore.schedules import default_noise_schedule

        return default_noise_schedule(self, scheduler)

    def latent_frames(self, frames: int) -> int:
        """The number of latent frames of a ``frames``-frame video (:func:`latent_frames`)."""
        return latent_frames(frames, self.temporal_compression)

    @property
    def latent_dtype(self) -> torch.dtype:
        """The dtype the sampler keeps latents in: the model's (SD-family pipelines), or float32 where
        the backbone's pipeline keeps them so (Wan)."""
        return self.dtype

    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Initial Gaussian noise of latent shape (B, C, F, h, w) from ``generator``, drawn as the
        backbone's own pipeline draws it (its layout, dtype and device decide which numbers land where).
        Default: diffusers' ``randn_tensor`` in this layout, on the backbone's device, in
        :attr:`latent_dtype`."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(shape, generator=generator, device=self.device, dtype=self.latent_dtype)

    guidance_rescale: float = 0.0
    """Rescale of the CFG output towards the conditional output's std (Lin et al. 2024, eq. 16),
    applied by :func:`mpcore.sampling.cfg_output`; 0 disables it."""

    def encode_prompt(self, prompts: list[str], override: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        return self.text.encode(prompts, override)

    def encode_negative_prompt(self, prompts: list[str]) -> torch.Tensor:
        """The unconditional branch's condition of CFG (default: the encoded negative prompt; an
        image-to-video backbone may pair it with its null image instead of the input image)."""
        return self.encode_prompt(prompts)

    def prepare_sampling(self, config) -> None:
        """Called by the sampler before encoding the prompts, with its ``SamplerConfig`` (e.g. to
        size an image condition to ``config.height`` x ``config.width``). Default: nothing."""

    @abc.abstractmethod
    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Model output for ``latents`` (N, C, F, h, w) at timestep ``t`` with conditions (N, L, D)."""

    def latent_scale(self, t: torch.Tensor | int) -> float:
        """Divide a clean latent by this before decoding (SD VAE: its scaling factor)."""
        return 1.0

    def vae_scaling_factor(self) -> float:
        """The VAE's own latent scaling factor, constant in t (SD's VAE: 0.18215): the raw latents
        :meth:`decode` takes, times this, are latents in the usual convention of that latent space,
        which another decoder of the same space (a tiny guidance decoder such as TAESD) takes
        divided by its own scaling factor (:class:`mpcore.vae.TinyDecoder`). Default
        ``latent_scale(0)``; a backbone whose ``latent_scale`` depends on t overrides it."""
        return float(self.latent_scale(0))

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """Decode already-unscaled latent frames (N, C, h, w) to images (N, 3, H, W) in [-1, 1],
        one frame at a time; ``checkpoint`` enables per-block gradient checkpointing."""

    def decode_pairs(self, latents: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """Images of adjacent latent-frame pairs, as MotionPrompt measures flow on them: ``latents``
        (2n, C, h, w) are the frames (a0, b0, a1, b1, ...) with b_i = a_i + 1, latent scale undone;
        returns one pair of adjacent video frames per latent pair, (2n, 3, H, W) nominally in [-1, 1]
        (not clamped, as :meth:`decode`), same
        order, differentiable. Default: :meth:`decode` (one latent frame is one video frame); a causal
        3D VAE decodes each pair as a two-latent-frame window instead."""
        return self.decode(latents, checkpoint=checkpoint)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """The first video of final sampler latents (B, C, F, h, w), latent scale NOT undone, as frames
        (F_video, 3, H, W) in [-1, 1], float32, no gradient. Default: undo ``latent_scale(0)`` and
        :meth:`decode` frame by frame; a causal 3D VAE decodes the whole latent video at once."""
        frames = latents[0].permute(1, 0, 2, 3) / self.latent_scale(0)
        return self.decode(frames, checkpoint=False).float().clamp(-1, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images (N, 3, H, W) in [-1, 1] to latent frames (N, C, h, w) WITHOUT the latent
        scale (the inverse of :meth:`decode`; multiply by ``latent_scale(t)`` to get the sampler's
        latents): the VAE posterior's mean, deterministic. Used by ``mpcore diagnose`` to noise real
        clips to x_t. Backbones that cannot encode raise ``NotImplementedError``."""
        raise NotImplementedError(f"backbone {self.name!r} does not implement encode(): mpcore diagnose needs it "
                                  "to put real clips on the sampler's trajectory")

    def set_denoiser_checkpointing(self, enabled: bool) -> None:
        """Gradient checkpointing of the denoiser (used only while optimizing the token)."""

    def describe(self) -> dict[str, Any]:
        """What was loaded, for the manifest."""
        return {"name": self.name}


@dataclass
class BackboneOrigin:
    """Where a loaded :class:`Backbone` comes from: its plugin's spec, the model it was loaded with
    (``--model``; a wrapped pipeline's ``name_or_path``) and the plugin's own load options."""

    spec: BackboneSpec
    model: str | None
    options: dict[str, Any] = field(default_factory=dict)
    wrapped: bool = False
    """True for a diffusers pipeline the caller already had (:func:`mpcore.wrap_pipeline`)."""
    load_seconds: float = 0.0


@dataclass
class BackboneSpec:
    name: str
    load: Callable[..., Backbone]
    """``load(model, device, dtype, seed, offload, attention, **options) -> Backbone``."""
    description: str = ""
    check: Callable[..., None] | None = None
    """``check(model, **options)``: cheap validation run before any weights load (missing paths...)."""
    motionprompt_defaults: dict[str, Any] | Callable[[str | None], dict[str, Any]] = field(default_factory=dict)
    """MotionPromptConfig defaults (the paper's for the backbone), or ``f(model) -> defaults``."""
    sampler_defaults: dict[str, Any] | Callable[[str | None], dict[str, Any]] = field(default_factory=dict)
    """SamplerConfig defaults, or ``f(model) -> defaults`` when they depend on the model."""
    options: list[Any] = field(default_factory=list)
    """Extra click options of ``mpcore run`` passed to ``load`` as keyword arguments."""
    default_discriminator: Callable[[str | None], str | None] | None = None
    """``f(model) -> path | None``: a discriminator file shipped for this model (e.g. with a bundled
    model), used when ``--discriminator`` is not given."""
    default_guidance_decoder: Callable[[str | None], str | None] | None = None
    """``f(model) -> folder | hub id | None``: the tiny decoder of this model's latent space that
    ``-o guidance_decoder=tiny`` uses when ``-o guidance_decoder_path`` is not given (a diffusers
    ``AutoencoderTiny``: TAESD for SD-family latents, or one shipped with a bundled model)."""
    expected_keys: Callable[..., dict[str, tuple[int, ...]]] | None = None
    """``expected_keys(variant=None, config=None) -> {key: shape}``: the state-dict keys and shapes the
    backbone's checkpoint file must hold (after any wrapper is removed), built without allocating
    weights (e.g. on the meta device). ``variant`` names a released variant, ``config`` is a path to a
    model config file; invalid ones raise ``ValueError``. Enables ``mpcore weights expected/check``."""
    read_weights: Callable[[str], dict[str, torch.Tensor]] | None = None
    """``read_weights(path) -> {key: tensor}``: read a checkpoint file as ``load`` does (unwrapping its
    wrapper); default :func:`mpcore.io.weights.read_state_dict`. Used by ``mpcore weights check``."""
    num_train_timesteps: int = 1000
    """The scheduler's training timesteps: the most sampling steps it can take (``--steps`` is checked
    against it before loading). 1000 for every backbone of the paper."""
    spatial_multiple: int = 8
    """Height and width must be multiples of this (VAE down-sampling, times a DiT's patch size),
    checked before loading."""
    temporal_compression: int = 1
    """As :attr:`Backbone.temporal_compression`, known before loading (frames must be 1 + r k)."""
    cuda_dtype: str = "float16"
    """The weight dtype ``--dtype auto`` picks on CUDA (the DiT backbones run in bfloat16)."""
    schedulers: tuple[str, ...] | None = None
    """What ``--scheduler`` may name for it (:data:`mpcore.config.SCHEDULERS`, e.g. ``("ddim", "ddpm")`` for
    diffusers' DDIM of the SD family), checked before loading; ``()``: only its own scheduler; None: not
    declared (checked once the model has loaded)."""
    free_init: bool | Callable[..., bool | None] | None = None
    """Whether FreeInit can re-initialize its noise (some of a sample survives diffusion to the start: not
    zero terminal SNR, not flow matching), or ``f(model, options) -> bool | None``; checked before loading;
    None: not declared (checked once the model has loaded)."""
    text_context_length: int | None = None
    """Tokens its text encoder reads by default (CLIP 77, T5 226/512): learnable tokens must fit, checked
    before loading; None: not declared (checked once the prompt is encoded)."""
    wrap: Callable[..., Backbone] | None = None
    """``wrap(pipeline, **options) -> Backbone``: an adapter around a diffusers pipeline the caller already
    has (:func:`mpcore.wrap_pipeline`), using its modules as they are (no reload, no copy); its docstring
    says what it changes on them. None: this backbone only loads by name."""
    wraps: tuple[str, ...] = ()
    """The pipeline class names ``wrap`` takes (e.g. ``AnimateDiffPipeline``), subclasses included."""
    kind: str = "backbone"

    def supports_free_init(self, model: str | None, options: dict[str, Any]) -> bool | None:
        """:attr:`free_init` for ``model`` and the plugin's ``options``; None: not declared."""
        return self.free_init(model, options) if callable(self.free_init) else self.free_init

    def defaults_for(self, model: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(sampler defaults, MotionPrompt defaults) for ``model``."""
        sampler = self.sampler_defaults(model) if callable(self.sampler_defaults) else self.sampler_defaults
        motion = self.motionprompt_defaults(model) if callable(self.motionprompt_defaults) else self.motionprompt_defaults
        return dict(sampler), dict(motion)


@dataclass
class FlowEstimatorSpec:
    name: str
    load: Callable[..., FlowEstimator]
    """``load(weights: str | None, device, seed=0, **options) -> FlowEstimator``; weights "random"
    builds a random-init model (offline smoke runs)."""
    description: str = ""
    options: tuple[str, ...] | None = None
    """The names of the options ``load`` accepts (``--flow-option KEY=VALUE``), checked before any model
    loads; None = not declared (then ``load`` rejects unknown ones when it runs)."""
    kind: str = "flow"


@dataclass
class DiscriminatorSpec:
    name: str
    load: Callable[..., Discriminator]
    """``load(path, device) -> Discriminator`` from a safetensors file + config JSON."""
    random: Callable[..., Discriminator] | None = None
    """``random(seed, device) -> Discriminator``: a tiny random-init one for offline smoke runs."""
    description: str = ""
    kind: str = "discriminator"
    build: Callable[..., torch.nn.Module] | None = None
    """``build(options: dict[str, str | int | float], pretrained: bool, seed: int) -> nn.Module``: a
    trainable discriminator in train mode, ``logit = D(flow)`` with flow (B, 2, H, W) in pixels at any
    size and logit (B,). ``options`` are the plugin's architecture options (``mpcore disc train
    --arch KEY=VALUE``; values may be strings to parse); invalid ones raise ``ValueError`` naming the
    option. Random init is seeded by ``seed``. Needed by ``mpcore disc train``."""
    save: Callable[..., None] | None = None
    """``save(model, path)``: write a model from ``build`` (trained) to ``path`` (.safetensors) and
    its config JSON beside it, so that ``load(path, device)`` returns it, including the model's
    ``trained_on`` attribute (see :class:`Discriminator`) as the config's ``trained_on`` key. Needed by
    ``mpcore disc train``."""


class MetricUnavailable(RuntimeError):
    """A metric cannot run here: its weights are missing or cannot be loaded. ``reason`` says why
    and how to provide them; ``mpcore eval`` reports the metric as unavailable (values null)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Metric(Protocol):
    """``score = f(frames, fps=None)``: frames uint8 numpy (F, H, W, 3) RGB; ``fps`` of the video
    when known (metrics that depend on it document their default)."""

    def __call__(self, frames: Any, fps: float | None = None) -> float: ...


@dataclass
class MetricSpec:
    name: str
    """snake_case id, e.g. ``temporal_flickering``; a substitute for a VBench metric must not use
    VBench's id."""
    load: Callable[..., Metric]
    """``load(weights: str | None, device, **options) -> Metric``; raises :class:`MetricUnavailable`
    when weights are missing or unloadable (None = the metric's default source, e.g. a hub name)."""
    description: str = ""
    vbench: bool = False
    """True only when the metric follows VBench's definition (Huang et al., CVPR 2024)."""
    kind: str = "metric"


GUIDANCE_NEEDS = ("flow", "discriminator")
"""What a guidance may ask the run to load for it (:attr:`GuidanceSpec.needs`)."""


@dataclass
class GuidanceContext:
    """What a guidance may use when it is built for one video (:attr:`GuidanceSpec.build`).

    Everything is already loaded and checked: ``flow_estimator`` and ``discriminator`` are None unless
    the spec ``needs`` them; ``decoder`` decodes the guided frames when the config asks for the tiny
    decoder (``guidance_decoder='tiny'``), None for the backbone's own VAE."""

    backbone: Backbone
    backbone_spec: BackboneSpec
    model: str | None
    flow_estimator: FlowEstimator | None = None
    discriminator: Discriminator | None = None
    decoder: Callable[..., torch.Tensor] | None = None


@dataclass
class GuidanceSpec:
    """A guidance method the sampler can run (``--guidance NAME``; hook ``register_guidances``).

    ``build(config, context)`` returns a fresh object with the sampler's guidance protocol
    (:class:`mpcore.sampling.Guidance`: ``prepare`` / ``condition`` / ``finish``) for ONE video;
    ``config`` is an instance of ``config_class`` with the backbone's defaults and the run's
    ``-o key=value`` settings applied (parsed by the fields' types; unknown keys are refused naming the
    allowed ones), ``context`` a :class:`GuidanceContext`. ``finish()`` returns a dict whose ``trace``
    is the per-step list the manifest records. Everything the run, its manifest and ``mpcore diagnose
    gate`` do for a guidance comes from these fields: no guidance is named anywhere else.
    """

    name: str
    build: Callable[[Any, GuidanceContext], Any]
    description: str = ""
    config_class: type | None = None
    """A dataclass of the guidance's settings (its defaults are the guidance's own); None: no settings."""
    defaults_for: Callable[[BackboneSpec, str | None], dict[str, Any]] | None = None
    """``defaults_for(backbone_spec, model)`` -> settings that differ from ``config_class``'s defaults
    for that backbone and model (e.g. a paper's per-backbone step range); None: the class defaults."""
    needs: tuple[str, ...] = ()
    """What the run loads for it, among :data:`GUIDANCE_NEEDS`: ``"flow"`` (a flow estimator: the config
    then has ``flow_estimator`` (a plugin name; ``--flow``) and ``flow_size`` (int | None) fields) and
    ``"discriminator"`` (``--discriminator``; its ``trained_on`` is checked against the flow estimator and
    size). A config with a ``guidance_decoder`` field ('full' | 'tiny') and ``guidance_decoder_path`` gets
    the tiny decoder of the guided frames as ``context.decoder``."""
    check: Callable[[Any, Any, BackboneSpec], None] | None = None
    """``check(config, sampler, backbone_spec)``: validation against the sampler settings, run before any
    model loads (raises :class:`mpcore.config.ConfigError`); None: ``config.validate()`` if it has one."""
    resolve: Callable[[Any, Any], dict[str, Any]] | None = None
    """``resolve(config, sampler) -> dict``: the settings as the run uses them, for the manifest (e.g.
    MotionPrompt's step range scaled to the step count); None: the config's fields."""
    section: str | None = None
    """The manifest section that also records the resolved settings (MotionPrompt's: ``motionprompt``,
    the key manifests have always had); every guidance's are under ``guidance_settings``."""
    trace_plot: bool = False
    """Write ``<video>_trace.png`` (:func:`mpcore.analysis.trace_plot.plot_trace`: loss terms and token
    drift per step) from the ``trace`` of ``finish()``."""
    gate: str | None = None
    """The loss term of the trace that ``mpcore diagnose gate`` checks guidance lowers (MotionPrompt:
    ``disc``, the discriminator term); None: the guidance has no gate quantity (refused there)."""
    health: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """``health(result) -> {"updates", "skipped", "skip_reasons", "all_skipped", "name", "unit", "advice"}`` from
    ``finish()``'s result: how many updates were attempted and skipped, and why (the counts are the manifest's
    ``guidance_updates``; "name: N unit, K skipped" is printed; every update skipped is an error after writing,
    ending with ``advice``); None: not counted."""
    kind: str = "guidance"
