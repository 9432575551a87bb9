"""A minimal mpcore plugin: the weight-free "normal flow" estimator.

Brightness constancy says I_x u + I_y v + I_t = 0 at every pixel; its least-norm solution is the
flow along the image gradient, (u, v) = -I_t (I_x, I_y) / (I_x^2 + I_y^2 + eps) (Horn & Schunck
1981, the "normal flow"). It is crude, but differentiable, batched and needs no weights.
"""

import torch
import torch.nn.functional as F

from mpcore import hookimpl
from mpcore.interfaces import FlowEstimatorSpec


class NormalFlow(torch.nn.Module):
    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        central = torch.tensor([-0.5, 0.0, 0.5])
        self.register_buffer("kernel_x", central.view(1, 1, 1, 3))
        self.register_buffer("kernel_y", central.view(1, 1, 3, 1))

    def forward(self, frame_a: torch.Tensor, frame_b: torch.Tensor) -> torch.Tensor:
        # frames (B, 3, H, W) in [-1, 1] -> brightness in [0, 1]
        gray_a = (frame_a.mean(1, keepdim=True) + 1) / 2
        gray_b = (frame_b.mean(1, keepdim=True) + 1) / 2
        mean = (gray_a + gray_b) / 2
        grad_x = F.conv2d(F.pad(mean, (1, 1, 0, 0), mode="replicate"), self.kernel_x.to(mean))
        grad_y = F.conv2d(F.pad(mean, (0, 0, 1, 1), mode="replicate"), self.kernel_y.to(mean))
        grad_t = gray_b - gray_a
        scale = -grad_t / (grad_x**2 + grad_y**2 + self.eps)
        return torch.cat([scale * grad_x, scale * grad_y], dim=1)  # (B, 2, H, W), pixels


def load(weights=None, device="cpu", seed=0, **options):
    if weights not in (None, "random"):
        raise ValueError("normal-flow has no weights; leave --flow-weights unset")
    return NormalFlow(**options).to(device)


@hookimpl
def register_flow_estimators(register):
    register(FlowEstimatorSpec(name="normal-flow", load=load, description="weight-free normal flow (template plugin)",
                               options=("eps",)))  # what --flow-option may set, checked before any model loads
