"""Anisotropic total variation of a flow field (the smoothness term of MotionPrompt's objective).

    TV(f)_n = sum_c sum_{i,j} |f[n, c, i+1, j] - f[n, c, i, j]| + |f[n, c, i, j+1] - f[n, c, i, j]|

for f of shape (N, C, H, W) (C = 2 for flow). ``reduction="mean"`` divides the total by N * H * W
(mean over samples and pixel positions, summed over channels); ``"sum"`` sums everything;
``"none"`` returns the per-sample sums (N,). A direction of extent 1 contributes 0. Accumulation is
in float32 (float64 inputs stay float64). The subgradient of |x| at 0 is taken as 0 (``torch.abs``'s
choice), so equal neighbours contribute no gradient.

Implementations: :func:`flow_tv_loss_reference` (pure torch, the definition) and a Triton pair of
kernels, one pass each: the forward reads every element with its lower and right neighbours and
adds each tile's partial sum to its sample's accumulator; the backward writes
d TV / d f[i, j] = sign(f[i,j] - f[i-1,j]) - sign(f[i+1,j] - f[i,j]) + sign(f[i,j] - f[i,j-1])
- sign(f[i,j+1] - f[i,j]) (terms outside the field dropped), times the per-sample output gradient.
:func:`flow_tv_loss` dispatches (see :mod:`mpcore_kernels._dispatch`).
"""

from __future__ import annotations

import torch

from mpcore_kernels._dispatch import accumulation_dtype, triton_available, use_triton

REDUCTIONS = ("mean", "sum", "none")
TILE_ELEMENTS = 2048  # elements per program (BLOCK_H * BLOCK_W)

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _fwd_kernel(
        flow_ptr, out_ptr, C, H, W,
        stride_n, stride_c, stride_h, stride_w,
        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    ):
        pid_nc = tl.program_id(0)
        n = pid_nc // C
        c = pid_nc % C
        rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
        base = flow_ptr + n * stride_n + c * stride_c
        acc_dtype = out_ptr.dtype.element_ty
        inside = (rows < H) & (cols < W)
        has_down = inside & (rows + 1 < H)
        has_right = inside & (cols + 1 < W)
        center = tl.load(base + rows * stride_h + cols * stride_w, mask=inside, other=0.0).to(acc_dtype)
        down = tl.load(base + (rows + 1) * stride_h + cols * stride_w, mask=has_down, other=0.0).to(acc_dtype)
        right = tl.load(base + rows * stride_h + (cols + 1) * stride_w, mask=has_right, other=0.0).to(acc_dtype)
        # |f[i+1, j] - f[i, j]| + |f[i, j+1] - f[i, j]| where the neighbour exists
        tv = tl.where(has_down, tl.abs(down - center), 0.0) + tl.where(has_right, tl.abs(right - center), 0.0)
        tl.atomic_add(out_ptr + n, tl.sum(tl.sum(tv, axis=1), axis=0).to(acc_dtype))

    @triton.jit
    def _sign(x):
        return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))

    @triton.jit
    def _bwd_kernel(
        flow_ptr, scale_ptr, grad_ptr, C, H, W,
        stride_n, stride_c, stride_h, stride_w,
        grad_stride_n, grad_stride_c, grad_stride_h, grad_stride_w,
        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    ):
        pid_nc = tl.program_id(0)
        n = pid_nc // C
        c = pid_nc % C
        rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        cols = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
        base = flow_ptr + n * stride_n + c * stride_c
        acc_dtype = scale_ptr.dtype.element_ty
        inside = (rows < H) & (cols < W)
        has_up = inside & (rows > 0)
        has_down = inside & (rows + 1 < H)
        has_left = inside & (cols > 0)
        has_right = inside & (cols + 1 < W)
        center = tl.load(base + rows * stride_h + cols * stride_w, mask=inside, other=0.0).to(acc_dtype)
        up = tl.load(base + (rows - 1) * stride_h + cols * stride_w, mask=has_up, other=0.0).to(acc_dtype)
        down = tl.load(base + (rows + 1) * stride_h + cols * stride_w, mask=has_down, other=0.0).to(acc_dtype)
        left = tl.load(base + rows * stride_h + (cols - 1) * stride_w, mask=has_left, other=0.0).to(acc_dtype)
        right = tl.load(base + rows * stride_h + (cols + 1) * stride_w, mask=has_right, other=0.0).to(acc_dtype)
        # each element appears in up to four |differences|: as the later term (+sign) of the pair
        # with its upper/left neighbour and as the earlier term (-sign) of the pair with its lower/right one
        slope = (
            tl.where(has_up, _sign(center - up), 0.0)
            - tl.where(has_down, _sign(down - center), 0.0)
            + tl.where(has_left, _sign(center - left), 0.0)
            - tl.where(has_right, _sign(right - center), 0.0)
        )
        scale = tl.load(scale_ptr + n)
        grad = (slope * scale).to(grad_ptr.dtype.element_ty)
        offsets = n * grad_stride_n + c * grad_stride_c + rows * grad_stride_h + cols * grad_stride_w
        tl.store(grad_ptr + offsets, grad, mask=inside)


def _blocks(height: int, width: int) -> tuple[int, int]:
    block_w = min(triton.next_power_of_2(width), 128)
    block_h = min(triton.next_power_of_2(height), max(1, TILE_ELEMENTS // block_w))
    return block_h, block_w


def _grid(flow: torch.Tensor, block_h: int, block_w: int) -> tuple[int, int, int]:
    n, c, h, w = flow.shape
    return (n * c, triton.cdiv(h, block_h), triton.cdiv(w, block_w))


def flow_tv_forward_triton(flow: torch.Tensor) -> torch.Tensor:
    """Per-sample TV (N,) in the accumulation dtype (one Triton pass over ``flow``)."""
    n, c, h, w = flow.shape
    per_sample = torch.zeros(n, device=flow.device, dtype=accumulation_dtype(flow.dtype))
    block_h, block_w = _blocks(h, w)
    _fwd_kernel[_grid(flow, block_h, block_w)](
        flow, per_sample, c, h, w, *flow.stride(), BLOCK_H=block_h, BLOCK_W=block_w
    )
    return per_sample


def flow_tv_backward_triton(flow: torch.Tensor, grad_per_sample: torch.Tensor) -> torch.Tensor:
    """d(sum_n g_n TV_n) / d flow, written in one Triton pass, in ``flow``'s dtype."""
    n, c, h, w = flow.shape
    scale = grad_per_sample.to(accumulation_dtype(flow.dtype)).contiguous()
    grad = torch.empty((n, c, h, w), device=flow.device, dtype=flow.dtype)
    block_h, block_w = _blocks(h, w)
    _bwd_kernel[_grid(flow, block_h, block_w)](
        flow, scale, grad, c, h, w, *flow.stride(), *grad.stride(), BLOCK_H=block_h, BLOCK_W=block_w
    )
    return grad


class FlowTVTriton(torch.autograd.Function):
    """Per-sample anisotropic TV with Triton forward and backward kernels."""

    @staticmethod
    def forward(ctx, flow: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flow)
        return flow_tv_forward_triton(flow)

    @staticmethod
    def backward(ctx, grad_per_sample: torch.Tensor) -> torch.Tensor:
        (flow,) = ctx.saved_tensors
        return flow_tv_backward_triton(flow, grad_per_sample)


def _check(flow: torch.Tensor, reduction: str) -> None:
    if flow.dim() != 4:
        raise ValueError(f"flow must be (N, C, H, W), got shape {tuple(flow.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(per_sample: torch.Tensor, flow: torch.Tensor, reduction: str) -> torch.Tensor:
    n, _, h, w = flow.shape
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / (n * h * w)


def flow_tv_loss_reference(flow: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Pure-torch anisotropic TV; the definition every other implementation is tested against."""
    _check(flow, reduction)
    f = flow.to(accumulation_dtype(flow.dtype))
    per_sample = (f[:, :, 1:, :] - f[:, :, :-1, :]).abs().sum(dim=(1, 2, 3)) + (
        f[:, :, :, 1:] - f[:, :, :, :-1]
    ).abs().sum(dim=(1, 2, 3))
    return _reduce(per_sample, flow, reduction)


def flow_tv_loss(flow: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Anisotropic TV of a flow field (module docstring); Triton on CUDA, the reference otherwise."""
    _check(flow, reduction)
    if flow.numel() == 0 or not use_triton(flow):
        return flow_tv_loss_reference(flow, reduction)
    return _reduce(FlowTVTriton.apply(flow), flow, reduction)
