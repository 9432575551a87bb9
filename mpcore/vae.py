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
