"""AnimateDiffBackbone.encode: the VAE posterior mean of each frame, unscaled, in the frames' order."""

from __future__ import annotations

import torch

from mp_plugin_animatediff.backbone import load


def smooth_images(n: int, height: int, width: int) -> torch.Tensor:
    """``n`` different smooth images (n, 3, height, width) in [-0.8, 0.8]."""
    y = torch.linspace(-1, 1, height)[:, None]
    x = torch.linspace(-1, 1, width)[None, :]
    return torch.stack([torch.stack([0.8 * torch.sin((k + 1) * 2.0 * x + (k - 1) * y + c) for c in range(3)])
                        for k in range(n)])


def test_encode_is_the_unscaled_posterior_mean_of_each_frame_in_order():
    backbone = load("tiny", seed=0)
    images = smooth_images(3, 32, 48)  # not square: h and w must not swap
    latents = backbone.encode(images.double())  # any input dtype: the backbone's dtype comes out
    f = backbone.vae_scale_factor
    assert latents.shape == (3, backbone.latent_channels, 32 // f, 48 // f)
    assert latents.dtype == backbone.dtype and latents.device == backbone.device
    assert torch.isfinite(latents).all() and not latents.requires_grad
    assert torch.equal(backbone.encode(images), latents)  # deterministic: the mean, not a sample
    # frame i's latent is image i's: swapping frames swaps rows (and the rows differ)
    torch.testing.assert_close(backbone.encode(images[[1, 0, 2]]), latents[[1, 0, 2]])
    assert (latents[0] - latents[1]).abs().max() > 1e-2
    # the VAE's own posterior of the whole batch at once; no latent scale applied
    posterior = backbone.vae.encode(images).latent_dist
    torch.testing.assert_close(latents, posterior.mean, atol=1e-5, rtol=1e-4)
    assert backbone.latent_scale() != 1.0 and (posterior.std.mean() > 1e-2)  # so scale or sampling would show
    assert backbone.decode(latents).shape == images.shape  # the inverse direction of decode
