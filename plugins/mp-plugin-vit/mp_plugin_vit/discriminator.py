"""The MotionPrompt flow discriminator: a timm ViT on optical flow.

MotionPrompt (Nam et al., "Optical-Flow Guided Prompt Optimization for Coherent Video Generation",
CVPR 2025) trains a discriminator to tell the optical flow of real videos from that of generated ones,
then optimizes a learnable prompt token so that the flow of the generated frames looks real to it.
The discriminator is a ViT image encoder applied to the 2-channel flow through an added projection
layer (here a 1x1 conv 2 -> 3 channels, so an RGB-pretrained ViT can be fine-tuned) followed by a
3-layer MLP head (Linear-GELU-Linear-GELU-Linear) giving one logit; higher = more real.

Input flow (B, 2, H, W) is in pixels. It is resized to the ViT's ``img_size`` (bilinear) with the
vectors scaled by the resize ratio (x by the width ratio, y by the height ratio), so it stays in
pixels of the resized grid, then divided by ``flow_scale``: see :func:`prepare_flow`.

Files: ``NAME.safetensors`` (weights) and ``NAME.json`` beside it (:class:`ViTDiscriminatorConfig`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mpcore.io.files import atomic_path, write_text_atomic
from mpcore.io.weights import CheckpointMismatchError, shapes, state_dict_diff

FORMAT_VERSION = 1
TYPE = "vit"
REQUIRED_FIELDS = ("type", "version", "timm_model", "img_size", "head_hidden", "flow_scale")
HOW_TO_GET_ONE = (
    "train one with `mpcore disc train`, or pass `--discriminator random` for a smoke run "
    "(a random discriminator: the guidance is meaningless)"
)


class DiscriminatorConfigError(ValueError):
    """A discriminator config JSON is missing a field or has an invalid value."""


class PretrainedWeightsError(RuntimeError):
    """timm's pretrained ViT weights could not be downloaded or loaded (the message says what to do)."""


@dataclass
class ViTDiscriminatorConfig:
    """Architecture of a ViT flow discriminator, saved as JSON next to its weights."""

    timm_model: str = "vit_small_patch16_224"
    """timm model name, built with ``timm.create_model(timm_model, num_classes=0, img_size=..., **timm_kwargs)``."""
    img_size: int = 224
    """Side length the flow is resized to before the ViT."""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    """Overrides of the timm model's arguments, e.g. patch_size, embed_dim, depth, num_heads."""
    head_hidden: int = 256
    """Width of the two hidden layers of the MLP head."""
    flow_scale: float = 20.0
    """Flow (in pixels at ``img_size``) is divided by this before the projection layer."""
    type: str = TYPE
    version: int = FORMAT_VERSION
    trained_on: dict[str, Any] | None = None
    """What the discriminator was trained on (``mpcore disc train`` writes it from its flow caches):
    ``flow_estimator``, ``frame_size`` [H, W] the flows were computed at, ``caches``. None when
    unknown (configs written before this field, :func:`random`). ``mpcore run`` checks it."""

    def validate(self, source: str = "discriminator config") -> None:
        def fail(name: str, expected: str) -> None:
            raise DiscriminatorConfigError(f"{source}: field {name!r} = {getattr(self, name)!r}; expected {expected}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if self.type != TYPE:
            fail("type", f"{TYPE!r} (this file is not a ViT discriminator config)")
        if not is_int(self.version) or self.version < 1:
            fail("version", f"an integer format version (this plugin reads version {FORMAT_VERSION})")
        if self.version > FORMAT_VERSION:
            fail("version", f"<= {FORMAT_VERSION}; the file was written by a newer mp-plugin-vit: upgrade it")
        if not isinstance(self.timm_model, str) or not self.timm_model:
            fail("timm_model", "a timm model name such as 'vit_small_patch16_224'")
        if not is_int(self.img_size) or self.img_size < 1:
            fail("img_size", "an integer >= 1")
        if not isinstance(self.timm_kwargs, dict) or not all(isinstance(k, str) for k in self.timm_kwargs):
            fail("timm_kwargs", "an object of timm.create_model keyword arguments")
        if not is_int(self.head_hidden) or self.head_hidden < 1:
            fail("head_hidden", "an integer >= 1")
        number = isinstance(self.flow_scale, (int, float)) and not isinstance(self.flow_scale, bool)
        if not number or not math.isfinite(self.flow_scale) or self.flow_scale <= 0:
            fail("flow_scale", "a finite number > 0 (pixels at img_size)")
        if self.trained_on is not None and not isinstance(self.trained_on, dict):
            fail("trained_on", "an object (flow_estimator, frame_size, caches) or null")

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields; ``trained_on`` only when known (so such files read as before)."""
        data = asdict(self)
        if data["trained_on"] is None:
            del data["trained_on"]
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "discriminator config") -> "ViTDiscriminatorConfig":
        if not isinstance(data, dict):
            raise DiscriminatorConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        if missing:
            raise DiscriminatorConfigError(
                f"{source}: missing field(s) {', '.join(missing)} (a ViT discriminator config has: "
                f"{', '.join(REQUIRED_FIELDS)}, timm_kwargs)"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DiscriminatorConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        config = cls(**data)
        config.validate(source)
        return config


def tiny_config() -> ViTDiscriminatorConfig:
    """The tiny architecture of :func:`random` (offline smoke runs and tests)."""
    return ViTDiscriminatorConfig(
        timm_model="vit_small_patch16_224",
        img_size=32,
        timm_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        head_hidden=32,
        flow_scale=20.0,
    )


PRESETS = {
    "paper": lambda: ViTDiscriminatorConfig(timm_model="vit_base_patch16_224", img_size=224),
    "small": lambda: ViTDiscriminatorConfig(timm_model="vit_small_patch16_224", img_size=224),
    "cpu": lambda: ViTDiscriminatorConfig(timm_model="vit_tiny_patch16_224", img_size=112, head_hidden=128),
    "tiny": tiny_config,
}
"""Architectures for ``--arch preset=NAME`` (then other ``--arch`` options override fields):

* ``paper`` (default): ViT-B/16 at 224 x 224, the encoder size of MotionPrompt (Nam et al., CVPR 2025);
* ``small``: ViT-S/16 at 224 (about a quarter of ViT-B's compute);
* ``cpu``: ViT-Ti/16 at 112 (49 patches; trainable on a CPU, timm has pretrained weights for it);
* ``tiny``: :func:`tiny_config`, a 2-block 32-wide ViT for tests and smoke runs (random init only).
"""

BUILD_OPTIONS = ("preset", "pretrained_file", "timm_model", "img_size", "timm_kwargs", "head_hidden", "flow_scale")
"""Options of :func:`build`: a preset, a local pretrained-weights file, and the config fields."""

SHAPE_KWARGS = ("embed_dim", "depth", "num_heads", "mlp_ratio")
"""timm_kwargs that change the ViT's weight shapes: timm's pretrained weights cannot load into it.
(``patch_size`` and ``img_size`` are fine: timm resamples the patch and position embeddings.)"""

OFFLINE_HINT = "pass --no-pretrained, or point to a local file with --arch pretrained_file=PATH"


def _parse_option(name: str, value: Any) -> Any:
    """One ``--arch`` value (a string from the command line, or already typed) -> the field's type."""
    try:
        if name in ("img_size", "head_hidden"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if name == "flow_scale":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if name == "timm_kwargs":
            parsed = json.loads(value) if isinstance(value, str) else value
            if not isinstance(parsed, dict):
                raise ValueError(value)
            return parsed
        return str(value)
    except (TypeError, ValueError):
        expected = {"img_size": "an integer", "head_hidden": "an integer", "flow_scale": "a number",
                    "timm_kwargs": 'a JSON object, e.g. timm_kwargs=\'{"depth": 6}\''}[name]
        raise DiscriminatorConfigError(f"--arch {name}={value!r}: expected {expected}") from None


def config_from_options(options: dict[str, Any] | None) -> tuple[ViTDiscriminatorConfig, str | None]:
    """(config, pretrained_file) from build options: the ``preset`` (default ``paper``, see
    :data:`PRESETS`), then each given field of :class:`ViTDiscriminatorConfig` replaces the preset's.
    Errors name the option and what is allowed."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(BUILD_OPTIONS))
    if unknown:
        raise DiscriminatorConfigError(
            f"unknown --arch option(s) {', '.join(unknown)} for the vit discriminator; known: {', '.join(BUILD_OPTIONS)}"
        )
    preset = str(options.pop("preset", "paper"))
    if preset not in PRESETS:
        raise DiscriminatorConfigError(f"--arch preset={preset!r}: expected one of {', '.join(PRESETS)}")
    pretrained_file = options.pop("pretrained_file", None)
    if pretrained_file is not None:
        pretrained_file = str(Path(str(pretrained_file)).expanduser())
        if not Path(pretrained_file).is_file():
            raise DiscriminatorConfigError(f"--arch pretrained_file={pretrained_file}: no such file")
    changes = {name: _parse_option(name, value) for name, value in options.items()}
    config = replace(PRESETS[preset](), **changes)
    config.validate("--arch options")
    if not timm.is_model(config.timm_model):
        raise DiscriminatorConfigError(
            f"--arch timm_model={config.timm_model!r} is not a timm model "
            f"(e.g. vit_tiny_patch16_224, vit_small_patch16_224, vit_base_patch16_224)"
        )
    return config, pretrained_file


def build(options: dict[str, Any] | None = None, pretrained: bool = True, seed: int = 0) -> ViTDiscriminator:
    """A trainable discriminator from ``--arch`` options (:func:`config_from_options`), in train mode.

    MotionPrompt (Nam et al., CVPR 2025) fine-tunes a pretrained ViT image encoder on flow, so
    ``pretrained`` (timm's weights for ``timm_model``, or the ``pretrained_file`` option) is the
    default of ``mpcore disc train``; without a network it fails with what to do instead.
    """
    config, pretrained_file = config_from_options(options)
    if pretrained_file is not None and not pretrained:
        raise DiscriminatorConfigError(
            "--arch pretrained_file is set but pretrained weights are off (--no-pretrained); drop one of the two"
        )
    if pretrained:
        reshaped = [name for name in SHAPE_KWARGS if name in config.timm_kwargs]
        if reshaped:
            raise DiscriminatorConfigError(
                f"timm_kwargs {', '.join(reshaped)} change the shape of {config.timm_model}, so its pretrained "
                "weights cannot load (the 'tiny' preset is one such): pass --no-pretrained"
            )
        if pretrained_file is None and not timm.is_model_pretrained(config.timm_model):
            raise DiscriminatorConfigError(f"timm has no pretrained weights for {config.timm_model}: {OFFLINE_HINT}")
    try:
        return build_discriminator(config, pretrained=pretrained, seed=seed, pretrained_file=pretrained_file)
    except OSError as error:  # no network / no cached weights (huggingface_hub, urllib and requests errors)
        if not pretrained or pretrained_file is not None:
            raise
        raise PretrainedWeightsError(
            f"could not get timm's pretrained weights for {config.timm_model} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Offline? {OFFLINE_HINT} "
            "(HF_HUB_OFFLINE=1 skips the download retries)."
        ) from error
    except RuntimeError as error:  # weights that do not fit the architecture
        if not pretrained:
            raise
        source = f"pretrained_file={pretrained_file}" if pretrained_file else "timm's pretrained weights"
        raise PretrainedWeightsError(
            f"could not load {source} into {config.timm_model} (img_size {config.img_size}, timm_kwargs "
            f"{config.timm_kwargs}): {str(error).splitlines()[0]}; pass --no-pretrained or a matching file"
        ) from error


def resize_flow(flow: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize flow (B, 2, H, W) to ``size`` and scale its vectors by the resize ratio
    (x by out_W / W, y by out_H / H), so the result is in pixels of the new grid."""
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be (B, 2, H, W); got {tuple(flow.shape)}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    height, width = flow.shape[-2:]
    if (height, width) == (out_h, out_w):
        return flow
    resized = F.interpolate(flow, size=(out_h, out_w), mode="bilinear", align_corners=False)
    ratio = torch.tensor([out_w / width, out_h / height], dtype=resized.dtype, device=resized.device)
    return resized * ratio.view(1, 2, 1, 1)


def prepare_flow(flow: torch.Tensor, img_size: int, flow_scale: float) -> torch.Tensor:
    """What the ViT sees: flow resized to ``img_size`` (vectors rescaled), divided by ``flow_scale``."""
    return resize_flow(flow, img_size) / flow_scale


class ViTDiscriminator(nn.Module):
    """``logit = D(flow)``: 1x1 conv 2 -> 3 channels, timm ViT (pooled features), 3-layer MLP head."""

    is_random_init: bool = False
    source: str = "built"

    def __init__(self, config: ViTDiscriminatorConfig, pretrained: bool = False, pretrained_file: str | None = None):
        super().__init__()
        config.validate()
        self.config = config
        self.proj = nn.Conv2d(2, 3, kernel_size=1)
        extra: dict[str, Any] = {}
        if pretrained_file is not None:  # timm reads the weights from this file instead of the hub
            extra["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
        self.encoder = timm.create_model(
            config.timm_model, pretrained=pretrained, num_classes=0, img_size=config.img_size,
            **config.timm_kwargs, **extra,
        )
        width = self.encoder.num_features
        self.head = nn.Sequential(
            nn.Linear(width, config.head_hidden),
            nn.GELU(),
            nn.Linear(config.head_hidden, config.head_hidden),
            nn.GELU(),
            nn.Linear(config.head_hidden, 1),
        )

    def prepare(self, flow: torch.Tensor) -> torch.Tensor:
        return prepare_flow(flow, self.config.img_size, self.config.flow_scale)

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        dtype = self.proj.weight.dtype
        features = self.encoder(self.proj(self.prepare(flow.to(dtype))))
        return self.head(features).squeeze(-1).float()

    @property
    def trained_on(self) -> dict[str, Any] | None:
        """What the discriminator was trained on (its config's ``trained_on``; None when unknown).
        ``mpcore disc train`` sets it before saving; :func:`save` writes it into the config JSON."""
        return self.config.trained_on

    @trained_on.setter
    def trained_on(self, value: dict[str, Any] | None) -> None:
        config = replace(self.config, trained_on=None if value is None else dict(value))
        config.validate("trained_on")
        self.config = config

    def describe(self) -> dict[str, Any]:
        """What was loaded, for the run manifest."""
        return {"name": TYPE, "source": self.source, "is_random_init": self.is_random_init, **self.config.to_dict()}


def build_discriminator(
    config: ViTDiscriminatorConfig, pretrained: bool = False, seed: int = 0, pretrained_file: str | None = None
) -> ViTDiscriminator:
    """A trainable discriminator (train mode). ``pretrained`` is passed to ``timm.create_model``
    (the ViT's pretrained RGB weights, from the hub or from ``pretrained_file``; the projection and
    head are always fresh). Random init is seeded by ``seed`` in a forked RNG, so the caller's global
    RNG state is left unchanged."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return ViTDiscriminator(config, pretrained=pretrained, pretrained_file=pretrained_file)


def freeze(model: ViTDiscriminator) -> ViTDiscriminator:
    """Eval mode and ``requires_grad=False``: gradients flow only to the input flow (guidance)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def save(model: ViTDiscriminator, path: str | os.PathLike) -> None:
    """Write ``path`` (.safetensors weights) and ``path.with_suffix('.json')`` (config), each through
    :func:`mpcore.io.files.atomic_path` so a reader never sees a half-written file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"discriminator weights are saved as .safetensors; got {path}")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"type": TYPE, "version": str(FORMAT_VERSION)})
    write_text_atomic(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n", path.with_suffix(".json"))


def read_config(config_path: str | os.PathLike) -> ViTDiscriminatorConfig:
    """Read and validate a discriminator config JSON (errors name the file and the field)."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise FileNotFoundError(
            f"discriminator config not found: {config_path} (the JSON written next to the .safetensors "
            f"weights; it describes the architecture). To get a discriminator: {HOW_TO_GET_ONE}"
        )
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise DiscriminatorConfigError(f"{config_path}: not valid JSON ({error})") from error
    return ViTDiscriminatorConfig.from_dict(data, source=str(config_path))


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> ViTDiscriminator:
    """Load a frozen discriminator from ``path`` (.safetensors) and its config JSON (strict)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"discriminator weights not found: {path}. To get one: {HOW_TO_GET_ONE}")
    if path.suffix != ".safetensors":
        raise ValueError(f"discriminator weights must be a .safetensors file (with its .json beside it); got {path}")
    config_path = path.with_suffix(".json")
    config = read_config(config_path)
    try:
        model = build_discriminator(config)
    except Exception as error:
        raise DiscriminatorConfigError(
            f"{config_path}: could not build timm model {config.timm_model!r} with timm_kwargs "
            f"{config.timm_kwargs} ({type(error).__name__}: {error})"
        ) from error
    try:
        state = load_file(str(path))
    except Exception as error:
        raise ValueError(f"could not read {path} as safetensors ({type(error).__name__}: {error})") from error
    diff = state_dict_diff(shapes(model.state_dict()), shapes(state))
    if diff:
        raise CheckpointMismatchError(
            f"{path} does not match the discriminator described by {config_path} (strict load):\n{diff}"
        )
    model.load_state_dict(state, strict=True)
    model.source = str(path)
    return freeze(model.to(torch.device(device)))


def random(seed: int = 0, device: str | torch.device = "cpu") -> ViTDiscriminator:
    """A tiny random-init discriminator (:func:`tiny_config`), deterministic per ``seed``, for
    offline smoke runs: its judgments are meaningless. The global RNG state is left unchanged."""
    model = build_discriminator(tiny_config(), seed=seed)
    model.is_random_init = True
    model.source = f"random (seed {int(seed)})"
    return freeze(model.to(torch.device(device)))
