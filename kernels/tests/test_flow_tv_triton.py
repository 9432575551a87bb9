"""The Triton flow TV kernels against the reference (Triton's interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch

import mpcore_kernels.flow_tv as flow_tv
from mpcore_kernels import flow_tv_loss, flow_tv_loss_reference

TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-2, 1e-2), torch.bfloat16: (5e-2, 2e-2)}


@pytest.fixture
def force_triton(monkeypatch):
    monkeypatch.setenv("MPCORE_KERNELS", "triton")


def _compare(flow: torch.Tensor, reduction: str, dtype: torch.dtype):
    atol, rtol = TOLERANCES[dtype]
    x_triton = flow.detach().clone().requires_grad_(True)
    x_reference = flow.detach().clone().requires_grad_(True)
    out_triton = flow_tv_loss(x_triton, reduction)
    out_reference = flow_tv_loss_reference(x_reference, reduction)
    assert out_triton.dtype == out_reference.dtype == torch.float32
    torch.testing.assert_close(out_triton, out_reference, atol=atol * flow[0].numel(), rtol=rtol)
    weights = torch.linspace(0.5, 1.5, out_reference.numel()).view_as(out_reference)
    (out_triton * weights).sum().backward()
    (out_reference * weights).sum().backward()
    assert x_triton.grad.dtype == dtype
    torch.testing.assert_close(x_triton.grad.float(), x_reference.grad.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (3, 1, 7), (1, 7, 1), (3, 7, 37), (1, 37, 61), (2, 61, 7)])
def test_matches_reference(force_triton, n, h, w, reduction, dtype):
    flow = (torch.randn(n, 2, h, w, generator=torch.Generator().manual_seed(h * 100 + w)) * 3).to(dtype)
    _compare(flow, reduction, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_input(force_triton, dtype):
    base = torch.randn(2, 37, 7, 2, generator=torch.Generator().manual_seed(0)).to(dtype)
    flow = base.permute(0, 3, 1, 2)  # (2, 2, 37, 7), channels-last storage
    assert not flow.is_contiguous()
    _compare(flow, "mean", dtype)
    strided = torch.randn(2, 2, 14, 22, generator=torch.Generator().manual_seed(1)).to(dtype)[:, :, ::2, 1::3]
    _compare(strided, "sum", dtype)


def test_ties_have_zero_gradient(force_triton):
    flow = torch.tensor([[[[0.0, 1.0, 1.0]], [[5.0, 5.0, 5.0]]]], requires_grad=True)
    flow_tv_loss(flow, "sum").backward()
    assert flow.grad.tolist() == [[[[-1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]]]


def test_gradcheck_float64_reference_and_triton(monkeypatch):
    flow = torch.randn(2, 2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(lambda f: flow_tv_loss_reference(f, reduction), (flow,))
    monkeypatch.setenv("MPCORE_KERNELS", "triton")
    for reduction in ("mean", "none"):
        assert flow_tv_loss(flow, reduction).dtype == torch.float64
        assert torch.autograd.gradcheck(lambda f: flow_tv_loss(f, reduction), (flow,))


def test_dispatch(monkeypatch):
    calls = []
    real = flow_tv.FlowTVTriton.apply
    monkeypatch.setattr(flow_tv.FlowTVTriton, "apply", lambda f: calls.append(1) or real(f))
    flow = torch.randn(1, 2, 4, 4)
    monkeypatch.delenv("MPCORE_KERNELS", raising=False)
    flow_tv_loss(flow)  # CPU tensors: the reference
    assert calls == []
    monkeypatch.setenv("MPCORE_KERNELS", "triton")
    flow_tv_loss(flow)
    assert calls == [1]
    monkeypatch.setenv("MPCORE_KERNELS", "torch")
    flow_tv_loss(flow)
    assert calls == [1]
    monkeypatch.setenv("MPCORE_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        flow_tv_loss(flow)
    monkeypatch.setenv("MPCORE_KERNELS", "fastest")
    with pytest.raises(ValueError, match="MPCORE_KERNELS='fastest'"):
        flow_tv_loss(flow)
