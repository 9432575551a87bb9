"""Subset decode with per-block gradient checkpointing equals the plain decode, value and gradient."""

from __future__ import annotations

import torch


def test_checkpointed_subset_decode_matches_plain(tiny_backbone):
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    weight = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def value_and_grad(checkpoint: bool):
        x = latents.clone().requires_grad_(True)
        images = tiny_backbone.decode(x, checkpoint=checkpoint)
        (images * weight).sum().backward()
        return images.detach(), x.grad

    plain_images, plain_grad = value_and_grad(False)
    ckpt_images, ckpt_grad = value_and_grad(True)
    assert plain_images.shape == (3, 3, 32, 32)
    assert (plain_images - ckpt_images).abs().max() <= 1e-5
    assert (plain_grad - ckpt_grad).abs().max() <= 1e-5
    assert plain_grad.abs().sum() > 0
    assert not tiny_backbone.vae.is_gradient_checkpointing, "checkpointing must be switched back off"


def test_frame_by_frame_equals_batched_decode(tiny_backbone):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = tiny_backbone.vae.decode(latents).sample
        per_frame = tiny_backbone.decode(latents)
    assert (batched - per_frame).abs().max() <= 1e-5
