"""subset_tweedie: the Triton kernels (Triton's interpreter on CPU) against the torch reference,
hand-computed values, gradcheck and the dispatch rule."""

from __future__ import annotations

import importlib

import pytest
import torch

from mpcore_kernels import subset_tweedie, subset_tweedie_reference

# the package re-exports the function under the module's own name, so fetch the module explicitly
st = importlib.import_module("mpcore_kernels.subset_tweedie")

PREDICTION_TYPES = ("epsilon", "v_prediction")
# (atol, rtol); atol is relative to the largest magnitude of the compared tensor (at least 1): the
# kernels apply host-folded coefficients c_x * x - c_m * m, the reference the formula step by step,
# so float32 results differ by a few ulp of the values, i.e. ~1e-6 of |x0| / latent_scale ~ 30 here,
# and by more than rtol where x and m nearly cancel. Forward values are float32 for every input dtype.
TOLERANCES = {torch.float32: (1e-6, 1e-6), torch.float16: (1e-6, 1e-6), torch.bfloat16: (1e-6, 1e-6)}
# low-precision gradients are rounded to the input dtype: compare up to that dtype's resolution
# (and the reference sums a duplicated frame's two contributions in the input dtype)
GRAD_TOLERANCES = {torch.float32: (1e-6, 1e-6), torch.float16: (1e-3, 2e-3), torch.bfloat16: (1e-2, 1.6e-2)}


def _assert_close(actual, expected, atol, rtol):
    magnitude = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, atol=atol * magnitude, rtol=rtol)


@pytest.fixture
def force_triton(monkeypatch):
    monkeypatch.setenv("MPCORE_KERNELS", "triton")


@pytest.fixture
def force_torch(monkeypatch):
    monkeypatch.setenv("MPCORE_KERNELS", "torch")


def _video(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _run(fn, x_t, model_out, frame_index, alpha_bar, x_grad=True, **kwargs):
    """Output and the gradients of a fixed non-uniform weighting of it."""
    # fresh leaves sharing the inputs' storage and strides (non-contiguous layouts stay so)
    x = x_t.detach().requires_grad_(x_grad)
    m = model_out.detach().requires_grad_(True)
    out = fn(x, m, frame_index, alpha_bar, **kwargs)
    weights = torch.linspace(-1.5, 2.0, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    grads = (x.grad, m.grad)
    x.grad, m.grad = None, None
    return out, grads


def _compare(x_t, model_out, frame_index, alpha_bar, x_grad=True, **kwargs):
    dtype = model_out.dtype
    out_t, (gx_t, gm_t) = _run(subset_tweedie, x_t, model_out, frame_index, alpha_bar, x_grad, **kwargs)
    out_r, (gx_r, gm_r) = _run(subset_tweedie_reference, x_t, model_out, frame_index, alpha_bar, x_grad, **kwargs)
    b, c, _, h, w = x_t.shape
    assert out_t.shape == out_r.shape == (b * len(frame_index), c, h, w)
    assert out_t.dtype == out_r.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out_t.is_contiguous() and out_r.is_contiguous()
    atol, rtol = TOLERANCES[dtype]
    _assert_close(out_t, out_r, atol, rtol)
    atol, rtol = GRAD_TOLERANCES[dtype]
    assert gm_t.dtype == dtype and gm_t.shape == model_out.shape
    _assert_close(gm_t.float(), gm_r.float(), atol, rtol)
    if x_grad:
        assert gx_t.dtype == x_t.dtype
        _assert_close(gx_t.float(), gx_r.float(), atol, rtol)
    else:
        assert gx_t is None and gx_r is None
    return out_t, gm_t


# ------------------------------------------------------------------------------ Triton vs reference
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize(
    "b,c,h,w,x_grad", [(1, 4, 1, 1, True), (3, 3, 7, 37, False), (1, 4, 37, 7, True), (3, 4, 37, 37, True)]
)
def test_matches_reference(force_triton, b, c, h, w, x_grad, prediction_type, dtype):
    seed = b * 1000 + h * 10 + w
    x_t, model_out = _video((b, c, 5, h, w), seed, dtype), _video((b, c, 5, h, w), seed + 1, dtype)
    _compare(
        x_t, model_out, [4, 0, 2, 2], 0.37, x_grad, prediction_type=prediction_type, latent_scale=0.18215
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_non_contiguous_inputs(force_triton, prediction_type, dtype):
    # x_t stored channels/frames-last, model_out a strided slice of a bigger video
    x_t = _video((2, 37, 7, 5, 3), 0, dtype).permute(0, 4, 3, 1, 2)  # (2, 3, 5, 37, 7)
    model_out = _video((2, 6, 10, 74, 15), 1, dtype)[:, ::2, 1::2, ::2, 1::2]  # (2, 3, 5, 37, 7)
    assert x_t.shape == model_out.shape == (2, 3, 5, 37, 7)
    assert not x_t.is_contiguous() and not model_out.is_contiguous()
    _compare(x_t, model_out, [1, 3, 1], 0.81, prediction_type=prediction_type, latent_scale=0.5)


def test_transposed_spatial_storage(force_triton):
    x_t = _video((1, 4, 5, 7, 37), 2).transpose(3, 4)  # (1, 4, 5, 37, 7) with W-major storage
    model_out = _video((1, 4, 5, 7, 37), 3).transpose(3, 4)
    _compare(x_t, model_out, [0, 4], 0.2, prediction_type="v_prediction")


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_scalar_and_zero_dim_tensor_coefficients_agree(monkeypatch, impl):
    monkeypatch.setenv("MPCORE_KERNELS", impl)
    x_t, model_out = _video((3, 4, 5, 7, 7), 4), _video((3, 4, 5, 7, 7), 5)
    alphas_cumprod = torch.linspace(0.99, 0.01, 1000, dtype=torch.float64)
    scale_arr = torch.linspace(0.5, 0.1, 1000, requires_grad=True)  # a parameter-like 0-d element
    for prediction_type in PREDICTION_TYPES:
        from_scalars = subset_tweedie(
            x_t,
            model_out,
            [2, 3],
            float(alphas_cumprod[700]),
            prediction_type=prediction_type,
            latent_scale=float(scale_arr[700].detach()),
        )
        from_tensors = subset_tweedie(
            x_t, model_out, torch.tensor([2, 3]), alphas_cumprod[700], prediction_type=prediction_type,
            latent_scale=scale_arr[700],
        )
        torch.testing.assert_close(from_tensors, from_scalars, atol=0, rtol=0)
        assert not from_tensors.requires_grad  # no gradient to alpha_bar / latent_scale


def test_zero_dim_tensor_coefficients_match_reference(force_triton):
    x_t, model_out = _video((1, 4, 5, 7, 1), 6), _video((1, 4, 5, 7, 1), 7)
    _compare(x_t, model_out, [3, 1], torch.tensor(0.5), latent_scale=torch.tensor(0.18215, dtype=torch.float64))


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_duplicate_frames_accumulate_gradient(monkeypatch, impl):
    monkeypatch.setenv("MPCORE_KERNELS", impl)
    a, scale = 0.64, 0.5
    x_t = _video((3, 4, 5, 7, 7), 8).requires_grad_(True)
    model_out = _video((3, 4, 5, 7, 7), 9).requires_grad_(True)
    out = subset_tweedie(x_t, model_out, [2, 0, 2], a, prediction_type="epsilon", latent_scale=scale)
    out.sum().backward()
    coef_x, coef_m = 1 / (0.8 * scale), 0.6 / (0.8 * scale)
    expected_count = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0]).view(1, 1, 5, 1, 1).expand(3, 4, 5, 7, 7)
    torch.testing.assert_close(x_t.grad, coef_x * expected_count, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model_out.grad, -coef_m * expected_count, atol=1e-6, rtol=1e-6)
    # both copies of frame 2 are in the output, in order
    rows = out.view(3, 3, 4, 7, 7)
    torch.testing.assert_close(rows[:, 0], rows[:, 2], atol=0, rtol=0)


def test_only_model_out_requires_grad_and_only_x_t(force_triton):
    x_t, model_out = _video((1, 3, 5, 7, 7), 10), _video((1, 3, 5, 7, 7), 11)
    x = x_t.clone().requires_grad_(True)
    subset_tweedie(x, model_out, [1], 0.5).sum().backward()
    assert x.grad is not None and model_out.grad is None
    assert x.grad[:, :, 1].eq(1 / 0.5**0.5).all() and x.grad[:, :, [0, 2, 3, 4]].eq(0).all()
    with torch.no_grad():
        out = subset_tweedie(x_t, model_out, [1], 0.5)
    assert not out.requires_grad


def test_float64_output_and_ordering(force_triton):
    x_t, model_out = _video((3, 2, 5, 3, 4), 12, torch.float64), _video((3, 2, 5, 3, 4), 13, torch.float64)
    frame_index = [4, 1, 1, 0]
    out = subset_tweedie(x_t, model_out, frame_index, 0.3, prediction_type="v_prediction", latent_scale=0.7)
    assert out.dtype == torch.float64
    full = (0.3**0.5 * x_t - 0.7**0.5 * model_out) / 0.7  # the whole-video x0 / scale
    for b in range(3):
        for k, f in enumerate(frame_index):
            torch.testing.assert_close(out[b * len(frame_index) + k], full[b, :, f], atol=1e-12, rtol=1e-12)


def test_empty_frame_index(force_triton):
    x_t = _video((2, 3, 5, 4, 4), 14).requires_grad_(True)
    out = subset_tweedie(x_t, x_t.detach(), [], 0.5)
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert x_t.grad.eq(0).all()


# ------------------------------------------------------------------------------ hand-computed values
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_hand_computed_values(monkeypatch, impl):
    monkeypatch.setenv("MPCORE_KERNELS", impl)
    # a = 0.64: sqrt(a) = 0.8, sqrt(1 - a) = 0.6
    x_t = torch.zeros(1, 1, 3, 1, 2)
    model_out = torch.zeros(1, 1, 3, 1, 2)
    x_t[0, 0, 1] = torch.tensor([[1.0, 2.0]])
    model_out[0, 0, 1] = torch.tensor([[0.5, -1.0]])
    eps = subset_tweedie(x_t, model_out, [1], 0.64, prediction_type="epsilon")
    # (1 - 0.6 * 0.5) / 0.8 = 0.875, (2 + 0.6) / 0.8 = 3.25
    torch.testing.assert_close(eps, torch.tensor([[[[0.875, 3.25]]]]), atol=1e-6, rtol=1e-6)
    v = subset_tweedie(x_t, model_out, [1], torch.tensor(0.64), prediction_type="v_prediction", latent_scale=0.5)
    # (0.8 * 1 - 0.6 * 0.5) / 0.5 = 1.0, (0.8 * 2 + 0.6) / 0.5 = 4.4
    torch.testing.assert_close(v, torch.tensor([[[[1.0, 4.4]]]]), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_gradcheck(monkeypatch, impl, prediction_type):
    monkeypatch.setenv("MPCORE_KERNELS", impl)
    x_t = _video((2, 1, 3, 1, 2), 15, torch.float64).requires_grad_(True)
    model_out = _video((2, 1, 3, 1, 2), 16, torch.float64).requires_grad_(True)

    def fn(x, m):
        return subset_tweedie(x, m, [2, 0, 2], 0.42, prediction_type=prediction_type, latent_scale=0.3)

    assert torch.autograd.gradcheck(fn, (x_t, model_out), eps=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_invalid_arguments(monkeypatch, impl):
    monkeypatch.setenv("MPCORE_KERNELS", impl)
    x_t = torch.zeros(1, 2, 5, 3, 3)
    with pytest.raises(ValueError, match="out of range"):
        subset_tweedie(x_t, x_t, [0, -1], 0.5)
    with pytest.raises(ValueError, match="out of range"):
        subset_tweedie(x_t, x_t, torch.tensor([5]), 0.5)
    with pytest.raises(ValueError, match="epsilon, v_prediction, flow_matching"):
        subset_tweedie(x_t, x_t, [0], 0.5, prediction_type="sample")
    with pytest.raises(ValueError, match="integer"):
        subset_tweedie(x_t, x_t, torch.tensor([0.0]), 0.5)
    with pytest.raises(ValueError, match="ints"):
        subset_tweedie(x_t, x_t, [0, 1.0], 0.5)
    with pytest.raises(ValueError, match="shape"):
        subset_tweedie(x_t, x_t[:, :, :4], [0], 0.5)
    with pytest.raises(ValueError, match="alpha_bar"):
        subset_tweedie(x_t, x_t, [0], 0.0)  # epsilon needs a > 0


# ------------------------------------------------------------------------------ dispatch
def _inputs():
    return _video((1, 2, 3, 4, 4), 17), _video((1, 2, 3, 4, 4), 18)


def test_default_on_cpu_runs_the_reference(monkeypatch):
    monkeypatch.delenv("MPCORE_KERNELS", raising=False)

    def boom(*args, **kwargs):
        raise AssertionError("the Triton launcher must not run for CPU tensors by default")

    monkeypatch.setattr(st, "_forward_triton", boom)
    x_t, model_out = _inputs()
    out = subset_tweedie(x_t, model_out, [0, 2], 0.5)
    torch.testing.assert_close(out, subset_tweedie_reference(x_t, model_out, [0, 2], 0.5), atol=0, rtol=0)


def test_forced_triton_runs_the_kernels(force_triton, monkeypatch):
    calls = []
    forward, backward = st._forward_triton, st._backward_triton

    def spy_forward(*args, **kwargs):
        calls.append("forward")
        return forward(*args, **kwargs)

    def spy_backward(*args, **kwargs):
        calls.append("backward")
        return backward(*args, **kwargs)

    monkeypatch.setattr(st, "_forward_triton", spy_forward)
    monkeypatch.setattr(st, "_backward_triton", spy_backward)
    x_t, model_out = _inputs()
    subset_tweedie(x_t, model_out.requires_grad_(True), [1], 0.5).sum().backward()
    assert calls == ["forward", "backward"]


def test_forced_torch_runs_the_reference(force_torch, monkeypatch):
    monkeypatch.setattr(st, "_forward_triton", lambda *a, **k: pytest.fail("Triton ran under MPCORE_KERNELS=torch"))
    x_t, model_out = _inputs()
    subset_tweedie(x_t, model_out, [1], 0.5)


def test_forced_triton_on_cpu_without_interpreter_raises(force_triton, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(st, "_forward_triton", lambda *a, **k: pytest.fail("must raise before launching"))
    x_t, model_out = _inputs()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        subset_tweedie(x_t, model_out, [1], 0.5)


# ------------------------------------------------------------------------------ flow matching (Wan)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_grad", [True, False])
def test_flow_matching_matches_reference(force_triton, x_grad, dtype):
    x_t, model_out = _video((2, 3, 5, 4, 6), 21, dtype), _video((2, 3, 5, 4, 6), 22, dtype)
    _compare(x_t, model_out, [4, 0, 2, 2], None, x_grad, prediction_type="flow_matching", sigma=0.83,
             latent_scale=0.7)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_flow_matching_hand_computed_values(monkeypatch, impl):
    # x0 = x_t - sigma * v: with sigma = 0.25, x = (1, 2), v = (0.5, -1) -> (0.875, 2.25); / s = 0.5
    monkeypatch.setenv("MPCORE_KERNELS", impl)
    x_t = torch.zeros(1, 1, 3, 1, 2)
    model_out = torch.zeros(1, 1, 3, 1, 2)
    x_t[0, 0, 2] = torch.tensor([[1.0, 2.0]])
    model_out[0, 0, 2] = torch.tensor([[0.5, -1.0]])
    x0 = subset_tweedie(x_t, model_out, [2], None, prediction_type="flow_matching", sigma=torch.tensor(0.25),
                        latent_scale=0.5)
    torch.testing.assert_close(x0, torch.tensor([[[[1.75, 4.5]]]]), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_flow_matching_gradcheck(monkeypatch, impl):
    monkeypatch.setenv("MPCORE_KERNELS", impl)
    x_t = _video((2, 1, 3, 1, 2), 23, torch.float64).requires_grad_(True)
    model_out = _video((2, 1, 3, 1, 2), 24, torch.float64).requires_grad_(True)

    def fn(x, m):
        return subset_tweedie(x, m, [2, 0, 2], None, prediction_type="flow_matching", sigma=0.6, latent_scale=0.3)

    assert torch.autograd.gradcheck(fn, (x_t, model_out), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_noise_level_arguments(monkeypatch, impl):
    monkeypatch.setenv("MPCORE_KERNELS", impl)
    x_t, v = _video((1, 2, 3, 2, 2), 25), _video((1, 2, 3, 2, 2), 26)
    with pytest.raises(ValueError, match="sigma="):
        subset_tweedie(x_t, v, [0], 0.5, prediction_type="flow_matching")
    with pytest.raises(ValueError, match="sigma must be in"):
        subset_tweedie(x_t, v, [0], None, prediction_type="flow_matching", sigma=1.5)
    with pytest.raises(ValueError, match="no sigma"):
        subset_tweedie(x_t, v, [0], 0.5, prediction_type="v_prediction", sigma=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\] for epsilon"):
        subset_tweedie(x_t, v, [0], 0.0, prediction_type="epsilon")
    # zero terminal SNR: a v-prediction model's clean estimate at a = 0 is -v
    x0 = subset_tweedie(x_t, v, [1, 2], 0.0, prediction_type="v_prediction")
    expected = -v[:, :, [1, 2]].permute(0, 2, 1, 3, 4).reshape(2, 2, 2, 2)
    torch.testing.assert_close(x0, expected, atol=1e-7, rtol=0)
