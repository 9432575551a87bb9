"""Anisotropic total variation of a flow field (the smoothness term of MotionPrompt's objective).

    TV(f) = sum_c sum_{i,j} |f[c, i+1, j] - f[c, i, j]| + |f[c, i, j+1] - f[c, i, j]|

for f of shape (N, C, H, W) (C = 2 for flow). ``reduction="mean"`` divides by N * H * W (mean over
samples and pixel positions, summed over channels); ``"sum"`` sums everything; ``"none"`` returns
the per-sample sums (N,). A direction of extent 1 contributes 0. Accumulation is in float32.
The subgradient of |x| at 0 is taken as 0 (``torch.abs``'s choice).
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def flow_tv_loss_reference(flow: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Pure-torch anisotropic TV; the definition every other implementation is tested against."""
    if flow.dim() != 4:
        raise ValueError(f"flow must be (N, C, H, W), got shape {tuple(flow.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    f = flow.float()
    n, _, h, w = f.shape
    per_sample = (f[:, :, 1:, :] - f[:, :, :-1, :]).abs().sum(dim=(1, 2, 3)) + (
        f[:, :, :, 1:] - f[:, :, :, :-1]
    ).abs().sum(dim=(1, 2, 3))
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / (n * h * w)


def flow_tv_loss(flow: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Anisotropic TV of a flow field; see the module docstring for the exact definition."""
    return flow_tv_loss_reference(flow, reduction)
