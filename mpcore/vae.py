"""Frame-by-frame decoding with a diffusers VAE, shared by the backbones built on diffusers' AutoencoderKL."""

from __future__ import annotations

import contextlib

import torch


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
