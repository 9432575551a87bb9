"""mpcore.backbones' random weights at the real size: modules built with their parameters on the meta
device (buffers real), then materialized deterministically on a device and dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpcore.backbones import materialize, parameters_on_meta


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(64, 32)
        self.norm = nn.LayerNorm(32)
        self.scale = nn.Parameter(torch.ones([]))
        self.tied = nn.Linear(32, 32, bias=False)
        self.other = nn.Linear(32, 32, bias=False)
        self.other.weight = self.tied.weight
        self.register_buffer("table", torch.arange(4.0))


def test_parameters_on_meta_keeps_buffers_and_restores_the_hook():
    with parameters_on_meta():
        net = Net()
    assert all(p.is_meta for p in net.parameters()) and torch.equal(net.table, torch.arange(4.0))
    assert not nn.Linear(2, 2).weight.is_meta  # the patch is gone after the block
    assert materialize(net, "meta") is net and net.proj.weight.is_meta


def test_materialize_is_deterministic_per_name_and_keeps_ties():
    def build(seed, dtype=torch.float32):
        with parameters_on_meta():
            net = Net()
        return materialize(net, "cpu", dtype, seed)

    a, b, c = build(0), build(0), build(1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.proj.weight, c.proj.weight)
    assert a.other.weight is a.tied.weight
    assert torch.equal(a.proj.bias, torch.zeros(32)) and torch.equal(a.norm.weight, torch.ones(32))
    assert a.proj.weight.std().item() == pytest.approx(64**-0.5, rel=0.15)  # N(0, 1/fan_in)
    assert torch.isfinite(a.scale) and torch.equal(a.table, torch.arange(4.0))
    half = build(0, torch.float16)
    assert half.proj.weight.dtype == torch.float16 and half.table.dtype == torch.float32


def test_a_buffer_left_on_meta_is_an_error():
    with parameters_on_meta():
        net = nn.Linear(4, 4)
    net.register_buffer("lost", torch.empty(3, device="meta"))
    with pytest.raises(RuntimeError, match="lost"):
        materialize(net, "cpu")
