"""LVDMBackbone.encode (inherited by DynamiCrafter): the VAE posterior mean of each frame, unscaled,
in the frames' order; checked against the VAE's own sampler ``encode_sample``."""

from __future__ import annotations

import pytest
import torch

from mp_plugin_lvdm.backbone import DynamiCrafterBackbone, LVDMBackbone, load


def smooth_images(n: int, height: int, width: int) -> torch.Tensor:
    """``n`` different smooth images (n, 3, height, width) in [-0.8, 0.8]."""
    y = torch.linspace(-1, 1, height)[:, None]
    x = torch.linspace(-1, 1, width)[None, :]
    return torch.stack([torch.stack([0.8 * torch.sin((k + 1) * 2.0 * x + (k - 1) * y + c) for c in range(3)])
                        for k in range(n)])


@pytest.mark.parametrize("backbone_name,variant", [("videocrafter2", None), ("dynamicrafter", "256")],
                         ids=["videocrafter2", "dc256"])
def test_encode_is_the_unscaled_posterior_mean_of_each_frame_in_order(backbone_name, variant):
    backbone = load("tiny", seed=0, backbone=backbone_name, variant=variant)  # DC: no image needed to encode
    assert type(backbone).encode is LVDMBackbone.encode
    assert isinstance(backbone, DynamiCrafterBackbone) == (backbone_name == "dynamicrafter")
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
    # encode_sample(x, g) = mean + std * randn(g): with the true mean, (s1 - m) * n2 = (s2 - m) * n1 = std n1 n2;
    # a scaled or sampled "mean" breaks it (the std is not negligible here)
    with torch.no_grad():
        s1, s2 = (backbone.vae.encode_sample(images, torch.Generator().manual_seed(s)) for s in (1, 2))
    n1, n2 = (torch.randn(latents.shape, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    torch.testing.assert_close((s1 - latents) * n2, (s2 - latents) * n1, atol=1e-4, rtol=1e-4)
    assert (s1 - latents).abs().mean() > 1e-2 and backbone.latent_scale(0) != 1.0
    assert backbone.decode(latents).shape == images.shape  # the inverse direction of decode
