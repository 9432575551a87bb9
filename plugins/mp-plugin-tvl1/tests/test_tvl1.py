"""Tests of the weight-free TV-L1 flow estimator on analytic textures with known motion."""

from __future__ import annotations

import math

import pytest
import torch

from mp_plugin_tvl1 import TVL1Config, load, tvl1_flow
from mp_plugin_tvl1.flow import divergence, forward_gradient, median_filter, pyramid_sizes
from mpcore import plugins

torch.set_num_threads(2)


def texture(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A smooth analytic RGB texture in [-1, 1] (sum of random sinusoids), sampled at any real (x, y)."""
    generator = torch.Generator().manual_seed(seed)
    channels = []
    for _ in range(3):
        value = torch.zeros_like(x)
        for _ in range(6):
            fx, fy = (torch.rand(2, generator=generator) * 0.5 - 0.25).tolist()  # cycles per pixel < 0.25
            phase = float(torch.rand(1, generator=generator)) * 2 * math.pi
            value = value + torch.sin(2 * math.pi * (fx * x + fy * y) + phase)
        channels.append(value / 6)
    return torch.stack(channels)[None].clamp(-1, 1)


def grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(coords, coords, indexing="ij")[::-1]  # (x, y)


def translated_pair(dx: float, dy: float, size: int = 48, seed: int = 0):
    """frame_b(x) = T(x - d), so frame_a(x) = T(x) = frame_b(x + d): the flow is d everywhere."""
    x, y = grid(size)
    return texture(x, y, seed), texture(x - dx, y - dy, seed)


def rotated_pair(degrees: float, size: int = 48, seed: int = 1):
    """frame_b(x) = T(R^-1 (x - c) + c), so the flow from a to b is R (x - c) + c - x."""
    x, y = grid(size)
    c = (size - 1) / 2
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # inverse rotation of the sample point
    xs = cos * (x - c) + sin * (y - c) + c
    ys = -sin * (x - c) + cos * (y - c) + c
    flow = torch.stack([cos * (x - c) - sin * (y - c) + c - x, sin * (x - c) + cos * (y - c) + c - y])[None]
    return texture(x, y, seed), texture(xs, ys, seed), flow


def interior_epe(flow: torch.Tensor, truth: torch.Tensor, margin: int = 6) -> float:
    error = (flow - truth).square().sum(dim=1).sqrt()
    return float(error[..., margin:-margin, margin:-margin].mean())


@pytest.fixture(scope="module")
def estimator():
    return plugins.get("flow", "tvl1").spec.load(None, "cpu", seed=0)


@pytest.mark.parametrize("dx, dy, tolerance", [(0.6, -0.35, 0.05), (2.5, 1.25, 0.1)])
def test_translation_is_recovered(estimator, dx, dy, tolerance):
    a, b = translated_pair(dx, dy)
    with torch.no_grad():
        flow = estimator(a, b)
    truth = torch.tensor([dx, dy]).view(1, 2, 1, 1).expand_as(flow)
    assert interior_epe(flow, truth) < tolerance  # stated accuracy on a smooth texture, in px


def test_large_translation_needs_the_pyramid():
    a, b = translated_pair(7.0, -5.0, size=64)
    truth = torch.tensor([7.0, -5.0]).view(1, 2, 1, 1)
    with torch.no_grad():
        coarse_to_fine = tvl1_flow(a, b, TVL1Config())
        single_scale = tvl1_flow(a, b, TVL1Config(max_scales=1))
    assert interior_epe(coarse_to_fine, truth.expand_as(coarse_to_fine), margin=10) < 0.1
    assert interior_epe(single_scale, truth.expand_as(single_scale), margin=10) > 1.0


def test_small_rotation_is_recovered(estimator):
    a, b, truth = rotated_pair(3.0)
    with torch.no_grad():
        flow = estimator(a, b)
    zero_epe = interior_epe(torch.zeros_like(truth), truth)
    assert zero_epe > 0.7  # the motion is there to find
    assert interior_epe(flow, truth) < 0.15  # stated accuracy: 0.15 px for a 3 degree rotation


def test_gradients_reach_both_frames_and_are_finite():
    a, b = translated_pair(1.0, 0.5, size=32)
    a.requires_grad_(True)
    b.requires_grad_(True)
    flow = tvl1_flow(a, b, TVL1Config(warps=2, iterations=5))
    flow[:, 0].mean().backward()
    for grad in (a.grad, b.grad):
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


def test_checkpointing_changes_neither_flow_nor_gradients():
    results = []
    for checkpointing in (True, False):
        a, b = (t.clone().requires_grad_(True) for t in translated_pair(1.0, -0.5, size=24))
        flow = tvl1_flow(a, b, TVL1Config(warps=2, iterations=4, checkpointing=checkpointing))
        (flow**2).sum().backward()
        results.append((flow.detach(), a.grad, b.grad))
    for first, second in zip(*results):
        torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-6)


def test_gradient_matches_finite_differences():
    """The unrolled solver is a differentiable function: autograd agrees with central differences."""
    config = TVL1Config(warps=1, iterations=3, max_scales=1, median_size=0)
    a, b = translated_pair(0.7, 0.2, size=12)
    a, b = a.double(), b.double()
    direction = torch.randn(a.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def objective(frame_b):
        return tvl1_flow(a, frame_b, config).double().sum()

    b_var = b.clone().requires_grad_(True)
    objective(b_var).backward()
    analytic = float((b_var.grad * direction).sum())
    eps = 1e-4
    numeric = (float(objective(b + eps * direction)) - float(objective(b - eps * direction))) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-3)


def test_batch_equals_pairs_one_by_one(estimator):
    pairs = [translated_pair(0.5, 0.25, size=32, seed=0), translated_pair(-1.0, 0.75, size=32, seed=5)]
    a = torch.cat([p[0] for p in pairs])
    b = torch.cat([p[1] for p in pairs])
    with torch.no_grad():
        batched = estimator(a, b)
        single = torch.cat([estimator(pa, pb) for pa, pb in pairs])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_grey_frames_equal_replicated_rgb(estimator):
    a, b = translated_pair(0.5, 0.0, size=24)
    grey_a, grey_b = a[:, :1], b[:, :1]
    with torch.no_grad():
        grey = estimator(grey_a, grey_b)
        rgb = estimator(grey_a.expand(-1, 3, -1, -1), grey_b.expand(-1, 3, -1, -1))
    torch.testing.assert_close(grey, rgb, rtol=1e-5, atol=1e-5)


def test_half_precision_frames_give_float32_flow_and_gradients_in_their_dtype():
    a, b = (t.to(torch.bfloat16).requires_grad_(True) for t in translated_pair(0.5, 0.0, size=16))
    flow = tvl1_flow(a, b, TVL1Config(warps=1, iterations=2))
    assert flow.dtype == torch.float32
    flow.sum().backward()
    assert a.grad.dtype == torch.bfloat16 and torch.isfinite(a.grad.float()).all()


def test_identical_frames_give_zero_flow(estimator):
    a, _ = translated_pair(0, 0, size=24)
    with torch.no_grad():
        assert estimator(a, a).abs().max() < 1e-6


@pytest.mark.parametrize(
    "a_shape, b_shape, message",
    [
        ((1, 3, 16, 16), (1, 3, 16, 20), "same shape"),
        ((1, 1, 16, 16), (1, 3, 16, 16), "same channel count"),
        ((1, 2, 16, 16), (1, 2, 16, 16), r"1 \(grey\) or 3 \(RGB\) channels"),
        ((3, 16, 16), (3, 16, 16), r"\(B, C, H, W\)"),
        ((1, 3, 2, 16), (1, 3, 2, 16), "at least 4x4"),
    ],
)
def test_bad_frames_give_clear_errors(estimator, a_shape, b_shape, message):
    with pytest.raises(ValueError, match=message):
        estimator(torch.zeros(a_shape), torch.zeros(b_shape))


def test_nan_frames_give_a_clear_error(estimator):
    a = torch.zeros(1, 3, 16, 16)
    b = a.clone()
    b[0, 1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        estimator(a, b)


def test_loader_validates_weights_and_options():
    with pytest.raises(ValueError, match="no weights"):
        load("raft-things.pth")
    with pytest.raises(TypeError, match="accepted: .*iterations"):
        load(None, iteratons=3)
    with pytest.raises(ValueError, match="step=0.5 is invalid; allowed: in \\(0, 0.25\\]"):
        load(None, step=0.5)
    estimator = load("none", "cpu", iterations=7, warps=2)
    assert estimator.describe()["iterations"] == 7 and estimator.describe()["weights"] is None


def test_divergence_is_the_negative_adjoint_of_the_gradient():
    """<grad u, p> = -<u, div p>: the discretisation Chambolle's projection relies on."""
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(1, 1, 7, 9, generator=generator, dtype=torch.float64)
    p_x, p_y = torch.randn(2, 1, 1, 7, 9, generator=generator, dtype=torch.float64)
    grad_x, grad_y = forward_gradient(u)
    assert float((grad_x * p_x + grad_y * p_y).sum()) == pytest.approx(-float((u * divergence(p_x, p_y)).sum()))


def test_median_filter_and_pyramid_sizes():
    flow = torch.zeros(1, 2, 5, 5)
    flow[0, 0, 2, 2] = 100.0  # an outlier the median removes
    assert median_filter(flow, 3).abs().max() == 0
    assert pyramid_sizes(500, 741, TVL1Config()) == [(500, 741), (250, 370), (125, 185), (62, 92), (31, 46), (16, 23)]
    assert pyramid_sizes(20, 20, TVL1Config()) == [(20, 20)]


def test_registered_through_the_entry_point():
    item = plugins.get("flow", "tvl1")
    assert item.distribution == "mp-plugin-tvl1"
