"""Tweedie clean-video estimate of a few selected frames (the frames MotionPrompt decodes).

For x_t and the model output of shape (B, C, F, H, W), a = alphas_cumprod[t] and frame indices
k_0 .. k_{K-1} (duplicates allowed):

    epsilon:        x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a)
    v_prediction:   x0 = sqrt(a) * x_t - sqrt(1 - a) * v
    flow_matching:  x0 = x_t - sigma * v    (rectified flow, x_t = (1 - sigma) x0 + sigma * noise and
                                            v = noise - x0, as Wan's and SD3's schedulers define it;
                                            sigma from the scheduler's ``sigmas``, not alphas_cumprod)

and the result is ``x0 / latent_scale`` at the selected frames only, as a contiguous
(B * K, C, H, W) tensor ordered b-major then k (row b * K + k is frame k_k of video b), in the
accumulation dtype (float32; float64 for float64 model output). The full-video x0 is never built.

The Triton forward reads the selected frames straight from x_t / model output through their
strides; the backward scatters the incoming gradient into zero-initialised full-size gradient
buffers (accumulation dtype) with atomic adds, so a frame selected twice gets both contributions.
The two coefficients are folded on the host in float64 (s = latent_scale):

    out = c_x * x_t - c_m * model_out
    epsilon:       c_x = 1 / (sqrt(a) * s),  c_m = sqrt(1 - a) / (sqrt(a) * s)
    v_prediction:  c_x = sqrt(a) / s,        c_m = sqrt(1 - a) / s
    flow_matching: c_x = 1 / s,              c_m = sigma / s

and reach the kernels as a 2-element tensor in the accumulation dtype rather than as float
arguments, which Triton types as fp32 (that would round them on the float64 path). The folded
form differs from the reference's operation order by a few ulp in float32.

``alpha_bar``, ``sigma`` and ``latent_scale`` are constants here: no gradient flows to them. v-prediction
accepts a = 0 (zero terminal SNR, e.g. DynamiCrafter's first trailing step: x0 = -v there); epsilon
needs a > 0.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

from mpcore_kernels._dispatch import accumulation_dtype, triton_available, use_triton

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow_matching")

_MAX_BLOCK = 1024


# --------------------------------------------------------------------------------------- kernels
if triton_available():  # without Triton only the reference exists (and is used)
    import triton
    import triton.language as tl

    @triton.jit
    def _fwd_kernel(
        x_ptr,
        m_ptr,
        idx_ptr,
        out_ptr,
        coef_ptr,
        K,
        C,
        H,
        W,
        stride_b,
        stride_c,
        stride_f,
        stride_h,
        stride_w,
        mstride_b,
        mstride_c,
        mstride_f,
        mstride_h,
        mstride_w,
        ACC_DTYPE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # axis 0: one output row (b, k, c) = one selected (H, W) plane; axis 1: a block of its pixels
        row = tl.program_id(0).to(tl.int64)
        b = row // (K * C)
        k = (row // C) % K
        c = row % C
        f = tl.load(idx_ptr + k).to(tl.int64)

        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < H * W
        h = (offs // W).to(tl.int64)
        w = (offs % W).to(tl.int64)

        coef_x = tl.load(coef_ptr)
        coef_m = tl.load(coef_ptr + 1)
        x_off = b * stride_b + c * stride_c + f * stride_f + h * stride_h + w * stride_w
        m_off = b * mstride_b + c * mstride_c + f * mstride_f + h * mstride_h + w * mstride_w
        x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(ACC_DTYPE)
        m = tl.load(m_ptr + m_off, mask=mask, other=0.0).to(ACC_DTYPE)
        out = x * coef_x - m * coef_m
        tl.store(out_ptr + row * H * W + offs, out, mask=mask)


    @triton.jit
    def _bwd_kernel(
        grad_out_ptr,
        idx_ptr,
        grad_x_ptr,
        grad_m_ptr,
        coef_ptr,
        K,
        C,
        F,
        H,
        W,
        gstride_n,
        gstride_c,
        gstride_h,
        gstride_w,
        ACC_DTYPE: tl.constexpr,
        NEED_GRAD_X: tl.constexpr,
        NEED_GRAD_M: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        b = row // (K * C)
        k = (row // C) % K
        c = row % C
        n = b * K + k
        f = tl.load(idx_ptr + k).to(tl.int64)

        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < H * W
        h = (offs // W).to(tl.int64)
        w = (offs % W).to(tl.int64)

        g = tl.load(
            grad_out_ptr + n * gstride_n + c * gstride_c + h * gstride_h + w * gstride_w, mask=mask, other=0.0
        ).to(ACC_DTYPE)
        # grad buffers are contiguous (B, C, F, H, W); atomics make duplicate frame indices accumulate
        dst = ((b * C + c) * F + f) * H * W + offs
        if NEED_GRAD_M:
            coef_m = tl.load(coef_ptr + 1)
            tl.atomic_add(grad_m_ptr + dst, -(g * coef_m), mask=mask)
        if NEED_GRAD_X:
            coef_x = tl.load(coef_ptr)
            tl.atomic_add(grad_x_ptr + dst, g * coef_x, mask=mask)


    _TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def _block_and_grid(rows: int, plane: int) -> tuple[int, tuple[int, int]]:
    block = min(_MAX_BLOCK, triton.next_power_of_2(max(plane, 1)))
    return block, (rows, triton.cdiv(plane, block))


# --------------------------------------------------------------------------------------- launchers
def _forward_triton(
    x_t: torch.Tensor, model_out: torch.Tensor, index: torch.Tensor, coefs: torch.Tensor
) -> torch.Tensor:
    """(B * K, C, H, W) contiguous output in ``coefs.dtype`` (the accumulation dtype)."""
    b, c, _, h, w = x_t.shape
    k = index.numel()
    out = torch.empty((b * k, c, h, w), dtype=coefs.dtype, device=x_t.device)
    if out.numel() == 0:
        return out
    block, grid = _block_and_grid(b * k * c, h * w)
    _fwd_kernel[grid](
        x_t,
        model_out,
        index,
        out,
        coefs,
        k,
        c,
        h,
        w,
        *x_t.stride(),
        *model_out.stride(),
        ACC_DTYPE=_TL_DTYPES[coefs.dtype],
        BLOCK=block,
        num_warps=4,
    )
    return out


def _backward_triton(
    grad_out: torch.Tensor,
    index: torch.Tensor,
    shape: torch.Size,
    coefs: torch.Tensor,
    need_grad_x: bool,
    need_grad_m: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Full-size (B, C, F, H, W) gradients in the accumulation dtype, zero outside the selected frames."""
    b, c, f, h, w = shape
    k = index.numel()
    grad_x = torch.zeros(shape, dtype=coefs.dtype, device=grad_out.device) if need_grad_x else None
    grad_m = torch.zeros(shape, dtype=coefs.dtype, device=grad_out.device) if need_grad_m else None
    if grad_out.numel() == 0 or not (need_grad_x or need_grad_m):
        return grad_x, grad_m
    block, grid = _block_and_grid(b * k * c, h * w)
    placeholder = grad_x if grad_x is not None else grad_m  # pointer for a gradient not asked for; never written
    _bwd_kernel[grid](
        grad_out,
        index,
        grad_x if need_grad_x else placeholder,
        grad_m if need_grad_m else placeholder,
        coefs,
        k,
        c,
        f,
        h,
        w,
        *grad_out.stride(),
        ACC_DTYPE=_TL_DTYPES[coefs.dtype],
        NEED_GRAD_X=need_grad_x,
        NEED_GRAD_M=need_grad_m,
        BLOCK=block,
        num_warps=4,
    )
    return grad_x, grad_m


class _SubsetTweedie(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_t, model_out, index, coefs):
        ctx.save_for_backward(index, coefs)
        ctx.shape = x_t.shape
        ctx.dtypes = (x_t.dtype, model_out.dtype)
        return _forward_triton(x_t, model_out, index, coefs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        index, coefs = ctx.saved_tensors
        need_x, need_m = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x, grad_m = _backward_triton(grad_out, index, ctx.shape, coefs, need_x, need_m)
        x_dtype, m_dtype = ctx.dtypes
        grad_x = grad_x.to(x_dtype) if grad_x is not None else None
        grad_m = grad_m.to(m_dtype) if grad_m is not None else None
        return grad_x, grad_m, None, None


# --------------------------------------------------------------------------------------- shared checks
def _as_float(value: float | torch.Tensor, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a python float or a 0-d tensor, got shape {tuple(value.shape)}")
        return float(value.detach().reshape(()).double().item())
    return float(value)


def _check_inputs(
    x_t: torch.Tensor,
    model_out: torch.Tensor,
    frame_index: Sequence[int] | torch.Tensor,
    alpha_bar: float | torch.Tensor | None,
    prediction_type: str,
    latent_scale: float | torch.Tensor,
    sigma: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, float]:
    """Validate; return the frame indices as an int64 tensor on x_t's device, the noise level (a, or
    sigma for flow matching) and the scale."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}")
    if x_t.dim() != 5:
        raise ValueError(f"x_t must be (B, C, F, H, W), got shape {tuple(x_t.shape)}")
    if model_out.shape != x_t.shape:
        raise ValueError(f"model_out shape {tuple(model_out.shape)} != x_t shape {tuple(x_t.shape)}")
    if x_t.device != model_out.device:
        raise ValueError(f"x_t on {x_t.device} but model_out on {model_out.device}")
    for name, t in (("x_t", x_t), ("model_out", model_out)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if isinstance(frame_index, torch.Tensor):
        is_int = not (frame_index.is_floating_point() or frame_index.is_complex() or frame_index.dtype == torch.bool)
        if frame_index.dim() != 1 or not is_int:
            raise ValueError(
                f"frame_index must be a 1-D integer tensor, got {frame_index.dtype} of shape {tuple(frame_index.shape)}"
            )
        index = frame_index.to(device=x_t.device, dtype=torch.int64).contiguous()
    else:
        try:
            values = [operator.index(v) for v in frame_index if not isinstance(v, bool)]
        except TypeError:
            values = None
        if values is None or len(values) != len(frame_index):
            raise ValueError(f"frame_index must be a sequence of ints, got {frame_index!r}")
        num_frames = x_t.shape[2]
        # range check on the host list: no device round trip (a sync on CUDA) for the common case
        if any(v < 0 or v >= num_frames for v in values):
            raise ValueError(f"frame_index {values} out of range for {num_frames} frames")
        index = torch.tensor(values, dtype=torch.int64, device=x_t.device)
        return _finish_check(index, alpha_bar, sigma, prediction_type, latent_scale)
    num_frames = x_t.shape[2]
    # a tensor of indices: checked on its own device (costs a sync on CUDA; pass a list to avoid it)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_frames):
        raise ValueError(f"frame_index {index.tolist()} out of range for {num_frames} frames")
    return _finish_check(index, alpha_bar, sigma, prediction_type, latent_scale)


def _finish_check(index: torch.Tensor, alpha_bar, sigma, prediction_type: str,
                  latent_scale) -> tuple[torch.Tensor, float, float]:
    if prediction_type == "flow_matching":
        if sigma is None or alpha_bar is not None:
            raise ValueError("flow_matching takes sigma= (the scheduler's sigma_t) and alpha_bar=None")
        level = _as_float(sigma, "sigma")
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"sigma must be in [0, 1], got {level}")
    else:
        if sigma is not None or alpha_bar is None:
            raise ValueError(f"{prediction_type} takes alpha_bar (alphas_cumprod[t]) and no sigma")
        level = _as_float(alpha_bar, "alpha_bar")
        low_ok = level > 0.0 if prediction_type == "epsilon" else level >= 0.0
        if not (low_ok and level <= 1.0):
            allowed = "(0, 1]" if prediction_type == "epsilon" else "[0, 1]"
            raise ValueError(f"alpha_bar must be in {allowed} for {prediction_type}, got {level}")
    scale = _as_float(latent_scale, "latent_scale")
    if scale == 0.0 or not math.isfinite(scale):
        raise ValueError(f"latent_scale must be finite and non-zero, got {scale}")
    return index, level, scale


def _coefficients(level: float, scale: float, prediction_type: str) -> tuple[float, float]:
    """(c_x, c_m) with out = c_x * x_t - c_m * model_out, in float64; ``level`` is a (epsilon,
    v-prediction) or sigma (flow matching)."""
    if prediction_type == "flow_matching":
        return 1.0 / scale, level / scale
    sqrt_a, sqrt_1ma = math.sqrt(level), math.sqrt(1.0 - level)
    if prediction_type == "epsilon":
        return 1.0 / (sqrt_a * scale), sqrt_1ma / (sqrt_a * scale)
    return sqrt_a / scale, sqrt_1ma / scale


# --------------------------------------------------------------------------------------- public API
def subset_tweedie_reference(
    x_t: torch.Tensor,
    model_out: torch.Tensor,
    frame_index: Sequence[int] | torch.Tensor,
    alpha_bar: float | torch.Tensor | None,
    *,
    prediction_type: str = "epsilon",
    latent_scale: float | torch.Tensor = 1.0,
    sigma: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-torch definition: gather the frames, apply the Tweedie formula, undo the latent scale."""
    index, level, scale = _check_inputs(x_t, model_out, frame_index, alpha_bar, prediction_type, latent_scale, sigma)
    acc = accumulation_dtype(model_out.dtype)
    b, c, _, h, w = x_t.shape
    k = index.numel()

    def gather(t: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W) -> (B * K, C, H, W)
        return t.index_select(2, index).permute(0, 2, 1, 3, 4).reshape(b * k, c, h, w).to(acc)

    x, m = gather(x_t), gather(model_out)
    if prediction_type == "flow_matching":
        x0 = x - level * m  # sigma_t * v
    elif prediction_type == "epsilon":
        x0 = (x - math.sqrt(1.0 - level) * m) / math.sqrt(level)
    else:
        x0 = math.sqrt(level) * x - math.sqrt(1.0 - level) * m
    return (x0 / scale).contiguous()


def subset_tweedie(
    x_t: torch.Tensor,
    model_out: torch.Tensor,
    frame_index: Sequence[int] | torch.Tensor,
    alpha_bar: float | torch.Tensor | None,
    *,
    prediction_type: str = "epsilon",
    latent_scale: float | torch.Tensor = 1.0,
    sigma: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Tweedie x0 / latent_scale at the selected frames, (B * K, C, H, W); see the module docstring.

    Runs the Triton kernels when :func:`mpcore_kernels._dispatch.use_triton` says so (CUDA tensors,
    or ``MPCORE_KERNELS=triton``), else :func:`subset_tweedie_reference`.
    """
    if not use_triton(x_t, model_out):
        return subset_tweedie_reference(
            x_t, model_out, frame_index, alpha_bar, prediction_type=prediction_type, latent_scale=latent_scale,
            sigma=sigma,
        )
    index, level, scale = _check_inputs(x_t, model_out, frame_index, alpha_bar, prediction_type, latent_scale, sigma)
    # the two coefficients go in as a 2-element tensor in the accumulation dtype: Triton types a python
    # float kernel argument as fp32, which would round them for the float64 path
    acc = accumulation_dtype(model_out.dtype)
    coefs = torch.tensor(_coefficients(level, scale, prediction_type), dtype=acc, device=x_t.device)
    return _SubsetTweedie.apply(x_t, model_out, index, coefs)
