"""Tests of mp-plugin-raft on random-init tiny inputs (no weights are downloaded)."""

from __future__ import annotations

import urllib.error
from importlib import metadata

import pluggy
import pytest
import torch

import mp_plugin_raft
from mp_plugin_raft import load, pad_amounts
from mpcore import hookspecs
from mpcore.plugins import PluginState, register_plugin, registry
from mpcore.weights import CheckpointMismatchError

torch.set_num_threads(2)
UPDATES = 2


def frames(batch=1, height=32, width=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
    b = torch.roll(a, shifts=(1, 2), dims=(2, 3))  # a shifted copy: some flow to find
    return a, b


@pytest.fixture(scope="module")
def model():
    return load("random", "cpu", seed=0, size="small", num_flow_updates=UPDATES)


def test_output_shape_at_sizes_not_multiple_of_8(model):
    for height, width in [(36, 44), (8, 8), (33, 17)]:
        a, b = frames(2, height, width)
        flow = model(a, b)
        assert flow.shape == (2, 2, height, width)
        assert flow.dtype == torch.float32
        assert torch.isfinite(flow).all()


def test_pad_amounts():
    assert pad_amounts(36, 44, 8, 0) == (2, 2, 2, 2)  # 44 -> 48, 36 -> 40
    assert pad_amounts(128, 136, 8, 128) == (0, 0, 0, 0)
    left, right, top, bottom = pad_amounts(33, 17, 8, 128)
    assert (17 + left + right, 33 + top + bottom) == (128, 128)
    assert (right - left, bottom - top) == (1, 1)


def test_gradient_reaches_both_frames_and_no_parameter(model):
    a, b = frames(1, 32, 32)
    a.requires_grad_(True)
    b.requires_grad_(True)
    flow = model(a, b)
    (flow ** 2).mean().backward()
    for grad in (a.grad, b.grad):
        assert grad is not None
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert not model.training and not model.raft.training


def test_stays_in_eval_mode(model):
    model.train()
    assert not model.training and not model.raft.training


def test_random_is_deterministic_per_seed_and_keeps_global_rng():
    a, b = frames(1, 32, 32)
    state = torch.random.get_rng_state()
    first = load("random", "cpu", seed=1, num_flow_updates=UPDATES)
    assert torch.equal(state, torch.random.get_rng_state())
    second = load("random", "cpu", seed=1, num_flow_updates=UPDATES)
    other = load("random", "cpu", seed=2, num_flow_updates=UPDATES)
    assert torch.equal(first(a, b), second(a, b))
    assert not torch.equal(first(a, b), other(a, b))
    assert first.is_random_init and first.describe()["weights"] == "random (seed 1)"


def test_state_dict_roundtrip(tmp_path, model):
    a, b = frames(1, 32, 32)
    path = tmp_path / "raft_small.pth"
    torch.save(model.raft.state_dict(), path)
    loaded = load(str(path), "cpu", seed=5, size="raft_small", num_flow_updates=UPDATES)
    assert torch.equal(model(a, b), loaded(a, b))
    assert not loaded.is_random_init and loaded.describe()["weights"] == str(path)


def test_bad_state_dict_is_readable(tmp_path, model):
    state = dict(model.raft.state_dict())
    del state["feature_encoder.convnormrelu.0.weight"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load(str(path), "cpu", num_flow_updates=UPDATES)
    message = str(info.value)
    assert "raft_small" in message and str(path) in message
    assert "missing" in message and "feature_encoder.convnormrelu.0.weight" in message
    assert "unexpected" in message and "extra.weight" in message


def test_wrong_size_state_dict_is_readable(tmp_path, model):
    path = tmp_path / "small.pth"
    torch.save(model.raft.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="raft_large"):
        load(str(path), "cpu", size="large", num_flow_updates=UPDATES)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load(str(path), "cpu")


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        load("random", "cpu", size="medium")
    with pytest.raises(ValueError, match="C_T_V2"):
        load("NOT_A_WEIGHT", "cpu")
    with pytest.raises(TypeError, match="bogus"):
        load("random", "cpu", bogus=1)
    with pytest.raises(ValueError, match="num_flow_updates"):
        load("random", "cpu", num_flow_updates=0)


def test_download_failure_says_what_to_do(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as info:
        load(None, "cpu")
    message = str(info.value)
    assert "Raft_Small_Weights.C_T_V2" in message  # DEFAULT of raft_small
    assert ".pth" in message and "'random'" in message


def test_plugin_registers_raft():
    manager = pluggy.PluginManager("mpcore")
    manager.add_hookspecs(hookspecs)
    state = PluginState(manager)
    assert register_plugin(state, mp_plugin_raft, "raft")
    found = registry("flow", state)
    assert found["raft"].spec.load is load


def test_entry_point_installed():
    names = {ep.name: ep.value for ep in metadata.entry_points(group="mpcore")}
    if "raft" not in names:
        pytest.skip("mp-plugin-raft is not installed (pip install -e plugins/mp-plugin-raft)")
    assert names["raft"] == "mp_plugin_raft"
