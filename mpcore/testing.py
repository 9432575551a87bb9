"""Stand-ins for tests of mpcore and its plugins (like diffusers' ``testing_utils``): a differentiable
flow estimator and a fixed discriminator that cost nothing, so guidance tests exercise the real
sampler and MotionPrompt without RAFT/TV-L1 or a trained ViT."""

from __future__ import annotations

import torch


class DifferenceFlow(torch.nn.Module):
    """A differentiable stand-in flow: the colour difference of the frames scaled to pixels."""

    def forward(self, frame_a, frame_b):
        return (frame_b - frame_a)[:, :2] * 8.0


class LinearDiscriminator(torch.nn.Module):
    """A fixed random linear discriminator on flow (deterministic per seed)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(2, generator=generator), requires_grad=False)

    def forward(self, flow):
        return (flow * self.weight[None, :, None, None]).mean(dim=(1, 2, 3)) - flow.abs().mean(dim=(1, 2, 3))


def smooth_images(n: int, height: int, width: int) -> torch.Tensor:
    """``n`` different smooth images (n, 3, height, width) in [-0.8, 0.8]."""
    y = torch.linspace(-1, 1, height)[:, None]
    x = torch.linspace(-1, 1, width)[None, :]
    return torch.stack([torch.stack([0.8 * torch.sin((k + 1) * 2.0 * x + (k - 1) * y + c) for c in range(3)])
                        for k in range(n)])


def check_encode_contract(backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """The parts of ``Backbone.encode``'s contract every backbone shares: the shape (non-square, so h and
    w cannot swap), the backbone's dtype and device for any input dtype, finite, no gradient,
    deterministic, frame i from image i, and decodable. Returns (images, latents) for the backbone's
    own check that the latents are the unscaled posterior mean."""
    images = smooth_images(3, 32, 48)
    latents = backbone.encode(images.double())
    f = backbone.vae_scale_factor
    assert latents.shape == (3, backbone.latent_channels, 32 // f, 48 // f)
    assert latents.dtype == backbone.dtype and latents.device == backbone.device
    assert torch.isfinite(latents).all() and not latents.requires_grad
    assert torch.equal(backbone.encode(images), latents)  # deterministic: the mean, not a sample
    # frame i's latent is image i's: swapping frames swaps rows (and the rows differ)
    torch.testing.assert_close(backbone.encode(images[[1, 0, 2]]), latents[[1, 0, 2]])
    assert (latents[0] - latents[1]).abs().max() > 1e-2
    assert backbone.decode(latents).shape == images.shape  # the inverse direction of decode
    return images, latents
