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
