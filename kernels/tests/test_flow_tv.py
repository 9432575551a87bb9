"""The flow TV reference against hand computations."""

from __future__ import annotations

import pytest
import torch

from mpcore_kernels import flow_tv_loss, flow_tv_loss_reference


def test_hand_computed_value_and_reductions():
    flow = torch.zeros(2, 2, 2, 3)
    flow[0, 0] = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]])
    # sample 0, channel 0: vertical |2-0|+|2-1|+|2-3| = 4; horizontal |1-0|+|3-1| + 0 + 0 = 3
    per_sample = flow_tv_loss(flow, reduction="none")
    assert per_sample.tolist() == [7.0, 0.0]
    assert flow_tv_loss(flow, reduction="sum").item() == 7.0
    assert flow_tv_loss(flow).item() == pytest.approx(7.0 / (2 * 2 * 3))


def test_single_row_or_column_contributes_nothing_in_that_direction():
    row = torch.tensor([[[[0.0, 2.0, 1.0]], [[1.0, 1.0, 1.0]]]])  # (1, 2, 1, 3)
    assert flow_tv_loss(row, "sum").item() == 3.0
    assert flow_tv_loss(torch.ones(1, 2, 1, 1), "sum").item() == 0.0


def test_gradient_is_sign_pattern_and_zero_at_ties():
    flow = torch.tensor([[[[0.0, 1.0]], [[5.0, 5.0]]]], requires_grad=True)
    flow_tv_loss(flow, "sum").backward()
    assert flow.grad.tolist() == [[[[-1.0, 1.0]], [[0.0, 0.0]]]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_accumulates_in_float32(dtype):
    flow = torch.randn(3, 2, 9, 7, generator=torch.Generator().manual_seed(0))
    value = flow_tv_loss(flow.to(dtype))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(flow_tv_loss_reference(flow.to(dtype).float()).item(), rel=1e-6)


def test_non_contiguous_and_bad_input():
    flow = torch.randn(2, 7, 5, 2).permute(0, 3, 1, 2)  # (2, 2, 7, 5), non-contiguous
    assert not flow.is_contiguous()
    assert torch.allclose(flow_tv_loss(flow), flow_tv_loss(flow.contiguous()))
    with pytest.raises(ValueError, match="reduction"):
        flow_tv_loss(flow, "max")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        flow_tv_loss(flow[0])


def test_package_works_without_triton():
    """Where Triton is not installed, importing the kernels must work and use the references."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, mpcore_kernels as k\n"
        "flow = torch.randn(1, 2, 5, 5, requires_grad=True)\n"
        "k.flow_tv_loss(flow).backward()\n"
        "x = torch.randn(1, 4, 3, 2, 2)\n"
        "out = k.subset_tweedie(x, x, [0, 2], 0.5)\n"
        "print(tuple(out.shape), flow.grad is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 4, 2, 2) True"
