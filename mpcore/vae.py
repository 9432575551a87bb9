"""Decoding latent frames with diffusers VAEs.

* :class:`FrameByFrameVAE`: a backbone's own decode/encode through its diffusers ``AutoencoderKL``,
  one frame at a time (shared by the backbones built on it);
* :class:`TinyDecoder`: MotionPrompt's cheaper guidance decode (``-o guidance_decoder=tiny``) through a
  diffusers ``AutoencoderTiny`` of the same latent space (TAESD, Bohan 2023, for SD-family latents),
  with :func:`check_tiny_decoder` (before anything loads) and :func:`load_tiny_decoder`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

TINY_DECODER_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
"""The weight files a diffusers model folder may hold (``save_pretrained``: safetensors)."""


@contextlib.contextmanager
def vae_checkpointing(vae, enabled: bool):
    """diffusers' per-block gradient checkpointing of ``vae`` switched to ``enabled`` for the block,
    then restored (it is active only while autograd records)."""
    previous = vae.is_gradient_checkpointing
    if enabled:
        vae.enable_gradient_checkpointing()
    else:
        vae.disable_gradient_checkpointing()
    try:
        yield
    finally:
        if previous:
            vae.enable_gradient_checkpointing()
        else:
            vae.disable_gradient_checkpointing()


def decode_frames(vae, latents: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
    """Decode unscaled latent frames (N, C, h, w) one at a time to images (N, 3, H, W) in [-1, 1]."""
    with vae_checkpointing(vae, checkpoint):
        frames = [vae.decode(latents[i : i + 1].to(vae.dtype)).sample for i in range(latents.shape[0])]
    return torch.cat(frames)


@torch.no_grad()
def encode_frames(vae, images: torch.Tensor) -> torch.Tensor:
    """Encode images (N, 3, H, W) in [-1, 1] one at a time to unscaled latent frames (N, C, h, w): the
    posterior mean ``vae.encode(x).latent_dist.mean`` (deterministic), in the VAE's dtype and device."""
    images = images.to(vae.device, vae.dtype)
    return torch.cat([vae.encode(images[i : i + 1]).latent_dist.mean for i in range(images.shape[0])])


class FrameByFrameVAE:
    """Backbone mixin: :meth:`~mpcore.interfaces.Backbone.decode` and ``encode`` through ``self.vae``
    (a diffusers ``AutoencoderKL``), one frame at a time; the backbone sets ``vae`` and ``dtype``."""

    vae: torch.nn.Module
    dtype: torch.dtype

    def decode(self, latents: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """Frame-by-frame VAE decode; with ``checkpoint`` the decoder's blocks are gradient-checkpointed."""
        return decode_frames(self.vae, latents, checkpoint)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> unscaled latent frames (N, C, H/f, W/f): the posterior
        mean, one frame at a time (as :meth:`decode`)."""
        return encode_frames(self.vae, images).to(self.dtype)


# ----------------------------------------------------------------------------- tiny guidance decoder


def check_tiny_decoder(source: str, how: str) -> None:
    """Cheap check of a tiny decoder's ``source`` before anything loads: a local path must be a
    diffusers ``AutoencoderTiny`` folder (``config.json`` naming that class, and its weights); a hub
    id is checked when it loads (:func:`load_tiny_decoder`). Raises
    :class:`~mpcore.backbones.ModelNotFoundError` saying where it looked, then ``how`` to pass one."""
    from mpcore.backbones import ModelNotFoundError, looks_local

    if not looks_local(source):
        return
    folder = Path(source).expanduser()
    config = folder / "config.json"
    if not config.is_file() or not any((folder / name).is_file() for name in TINY_DECODER_FILES):
        raise ModelNotFoundError(f"tiny guidance decoder not found: looked for {config} and "
                                 f"{folder / TINY_DECODER_FILES[0]}. {how}")
    try:
        class_name = json.loads(config.read_text()).get("_class_name")
    except (ValueError, AttributeError):
        class_name = None
    if class_name != "AutoencoderTiny":
        raise ModelNotFoundError(f"{config} is not a diffusers AutoencoderTiny config (_class_name {class_name!r}). {how}")


def load_tiny_decoder(source: str, device: Any, dtype: torch.dtype):
    """A diffusers ``AutoencoderTiny`` from a local folder or a hub id, frozen, in eval mode, on
    ``device`` in ``dtype``; a failed hub load is a :class:`~mpcore.backbones.ModelNotFoundError`
    that says how to pass a downloaded folder."""
    from diffusers import AutoencoderTiny

    from mpcore.backbones import freeze, hub_error, looks_local, quiet_diffusers

    name = str(Path(source).expanduser()) if looks_local(source) else source
    try:
        with quiet_diffusers():
            model = AutoencoderTiny.from_pretrained(name)
    except OSError as error:
        raise hub_error(source, "the tiny guidance decoder", error, "-o guidance_decoder_path=FOLDER") from None
    with quiet_diffusers():
        model = model.to(device=device, dtype=dtype)
    freeze(model)
    return model


class TinyDecoder:
    """MotionPrompt's guidance decode through a diffusers ``AutoencoderTiny``: ``images = f(latents,
    checkpoint)``, the same contract as :meth:`~mpcore.interfaces.Backbone.decode` (latents (N, C, h, w)
    with the latent scale undone, images (N, 3, H, W) in [-1, 1]), all frames in one batch.

    Latent scale: the input is the full VAE's (its raw latents). diffusers decodes with an
    AutoencoderTiny as with any VAE, ``tiny.decode(latents / tiny.config.scaling_factor)``, where
    ``latents`` are in the latent space's usual convention, i.e. the full VAE's raw latents times its
    own scaling factor (TAESD: scaling factor 1, it decodes SD's scaled latents, raw x 0.18215). So
    the input is multiplied by ``vae_scaling_factor / tiny.config.scaling_factor`` (``latent_magnitude``
    and ``latent_shift`` only map latents to [0, 1] for 8-bit storage; decode does not use them).
    Image range: diffusers' ``DecoderTiny`` itself maps TAESD's [0, 1] output to [-1, 1] (``2x - 1``),
    so the output is on the full decode's scale as it comes (unclamped, like the full decode's).
    ``checkpoint``: diffusers' gradient checkpointing of the decoder (one segment), as for the VAE.
    """

    def __init__(self, model, vae_scaling_factor: float, source: str | None = None):
        self.model = model
        self.source = source
        self.vae_scaling_factor = float(vae_scaling_factor)
        self.latent_multiplier = self.vae_scaling_factor / float(model.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.model.config.latent_channels)

    @property
    def upsampling(self) -> int:
        """Latent -> image size factor: one up-sampling between consecutive decoder stages."""
        config = self.model.config
        return int(config.upsampling_scaling_factor) ** (len(config.num_decoder_blocks) - 1)

    def __call__(self, latents: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        x = (latents.float() * self.latent_multiplier).to(self.model.dtype)
        with vae_checkpointing(self.model, checkpoint):
            return self.model.decode(x).sample

    def check_fits(self, latent_channels: int, vae_scale_factor: int) -> None:
        """The decoder reads the backbone's latents (channels) and decodes them to its frame size (the
        VAE's down-sampling factor); else a :class:`~mpcore.config.ConfigError` before sampling."""
        from mpcore.config import ConfigError

        if (self.latent_channels, self.upsampling) != (int(latent_channels), int(vae_scale_factor)):
            raise ConfigError(
                f"the tiny guidance decoder {self.source} decodes {self.latent_channels}-channel latents "
                f"{self.upsampling}x up, but the backbone's VAE has {latent_channels} latent channels and "
                f"{vae_scale_factor}x down-sampling: it is not a decoder of this model's latent space. Pass "
                "-o guidance_decoder_path=FOLDER with one that is (scripts/distill_tiny_decoder.py distills one "
                "from a VAE), or -o guidance_decoder=full."
            )

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "class": type(self.model).__name__,
            "path": self.source,
            "latent_multiplier": self.latent_multiplier,
            "vae_scaling_factor": self.vae_scaling_factor,
            "tiny_scaling_factor": float(config.scaling_factor),
            "decoder_block_out_channels": list(config.decoder_block_out_channels),
            "num_decoder_blocks": list(config.num_decoder_blocks),
            "decoder_parameters": sum(p.numel() for p in self.model.decoder.parameters()),
        }
