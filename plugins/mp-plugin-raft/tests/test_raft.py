"""Tests of mp-plugin-raft on random-init tiny inputs (no weights are downloaded)."""

from __future__ import annotations

import json
import re
import urllib.error
from importlib import metadata
from pathlib import Path

import pluggy
import pytest
import torch

import mp_plugin_raft
from mp_plugin_raft import load, pad_amounts
from mpcore import hookspecs
from mpcore.plugins import PluginState, register_plugin, registry
from mpcore.io.weights import CheckpointMismatchError

torch.set_num_threads(2)
UPDATES = 2
DATA = Path(__file__).parent / "data"


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


def test_torchvision_size_is_inferred(tmp_path):
    path = tmp_path / "raft_large.pth"
    torch.save(load("random", "cpu", seed=3, size="large").raft.state_dict(), path)
    loaded = load(str(path), "cpu", num_flow_updates=1)  # no size given
    assert loaded.size == "large"
    assert loaded.describe()["format"] == "torchvision" and loaded.describe()["size"] == "large"


# --- checkpoints of the original princeton-vl/RAFT code (Teed & Deng 2020) -------------------------
# tests/data/raft_original_{large,small}.json list key -> shape of those checkpoints as the original
# module tree (core/raft.py, core/extractor.py, core/update.py) writes them from nn.DataParallel,
# including the duplicate norm3 entries of the large cnet (the same module as downsample.1).

ORIGINAL_FILES = {"large": "raft-things.pth", "small": "raft-small.pth"}

# original key -> torchvision key, spot checks across encoders, GRU, flow head and mask head
PLACEMENTS = {
    "large": {
        "module.fnet.conv1.weight": "feature_encoder.convnormrelu.0.weight",
        "module.fnet.layer2.0.downsample.0.weight": "feature_encoder.layer2.0.downsample.0.weight",
        "module.fnet.layer3.1.conv2.bias": "feature_encoder.layer3.1.convnormrelu2.0.bias",
        "module.fnet.conv2.weight": "feature_encoder.conv.weight",
        "module.cnet.norm1.running_mean": "context_encoder.convnormrelu.1.running_mean",
        "module.cnet.layer1.1.norm2.bias": "context_encoder.layer1.1.convnormrelu2.1.bias",
        "module.cnet.layer3.0.norm3.weight": "context_encoder.layer3.0.downsample.1.weight",
        "module.cnet.layer3.0.downsample.1.running_var": "context_encoder.layer3.0.downsample.1.running_var",
        "module.cnet.conv2.bias": "context_encoder.conv.bias",
        "module.update_block.encoder.convc1.weight": "update_block.motion_encoder.convcorr1.0.weight",
        "module.update_block.encoder.convc2.weight": "update_block.motion_encoder.convcorr2.0.weight",
        "module.update_block.encoder.convf2.bias": "update_block.motion_encoder.convflow2.0.bias",
        "module.update_block.encoder.conv.weight": "update_block.motion_encoder.conv.0.weight",
        "module.update_block.gru.convz1.weight": "update_block.recurrent_block.convgru1.convz.weight",
        "module.update_block.gru.convq2.weight": "update_block.recurrent_block.convgru2.convq.weight",
        "module.update_block.gru.convr2.bias": "update_block.recurrent_block.convgru2.convr.bias",
        "module.update_block.flow_head.conv1.weight": "update_block.flow_head.conv1.weight",
        "module.update_block.flow_head.conv2.bias": "update_block.flow_head.conv2.bias",
        "module.update_block.mask.0.weight": "mask_predictor.convrelu.0.weight",
        "module.update_block.mask.2.weight": "mask_predictor.conv.weight",
        "module.update_block.mask.2.bias": "mask_predictor.conv.bias",
    },
    "small": {
        "module.fnet.conv1.weight": "feature_encoder.convnormrelu.0.weight",
        "module.fnet.layer1.0.conv3.weight": "feature_encoder.layer1.0.convnormrelu3.0.weight",
        "module.fnet.layer2.0.downsample.0.bias": "feature_encoder.layer2.0.downsample.0.bias",
        "module.cnet.layer3.1.conv2.weight": "context_encoder.layer3.1.convnormrelu2.0.weight",
        "module.cnet.conv2.weight": "context_encoder.conv.weight",
        "module.update_block.encoder.convc1.weight": "update_block.motion_encoder.convcorr1.0.weight",
        "module.update_block.encoder.convf1.weight": "update_block.motion_encoder.convflow1.0.weight",
        "module.update_block.encoder.conv.bias": "update_block.motion_encoder.conv.0.bias",
        "module.update_block.gru.convz.weight": "update_block.recurrent_block.convgru1.convz.weight",
        "module.update_block.gru.convq.bias": "update_block.recurrent_block.convgru1.convq.bias",
        "module.update_block.flow_head.conv2.weight": "update_block.flow_head.conv2.weight",
    },
}


def original_checkpoint(size, seed=0):
    """A random state dict with the keys and shapes of an original RAFT checkpoint (module. prefix)."""
    manifest = json.loads((DATA / f"raft_original_{size}.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in manifest.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000 + len(state))
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    # the original blocks register one norm module as both norm3 and downsample.1: same tensors
    for key in state:
        if re.search(r"\.layer[23]\.0\.norm3\.", key) and size == "large":
            state[key] = state[key.replace(".norm3.", ".downsample.1.")]
    return state


def without_prefix(state):
    return {key[len("module."):]: value for key, value in state.items()}


@pytest.fixture(scope="module", params=["large", "small"])
def original(request, tmp_path_factory):
    """(size, checkpoint dict, path, model loaded with no size given)."""
    size = request.param
    state = original_checkpoint(size)
    path = tmp_path_factory.mktemp(size) / ORIGINAL_FILES[size]
    torch.save(state, path)
    return size, state, path, load(str(path), "cpu", num_flow_updates=1)


def test_original_manifests_have_the_expected_entries():
    large = json.loads((DATA / "raft_original_large.json").read_text())
    small = json.loads((DATA / "raft_original_small.json").read_text())
    assert all(key.startswith("module.") for key in [*large, *small])
    assert len(large) == 169 + 10  # torchvision's 169 + the 2 x 5 duplicate norm3 entries
    assert len(small) == 106  # no norm tensors at all (InstanceNorm2d without affine, 'none')
    assert "module.update_block.mask.2.weight" in large and not any(".mask." in key for key in small)


def test_original_checkpoint_loads_strictly_with_inferred_size(original):
    size, state, path, model = original
    assert model.size == size
    assert model.describe() == {
        "name": "raft",
        "size": size,
        "weights": str(path),
        "format": "original",
        "num_flow_updates": 1,
        "is_random_init": False,
    }
    loaded = model.raft.state_dict()
    for original_key, torchvision_key in PLACEMENTS[size].items():
        assert torch.equal(loaded[torchvision_key], state[original_key]), (original_key, torchvision_key)
    # nothing is left at its random init: every loaded tensor is one of the file's
    for key, value in loaded.items():
        assert any(value.shape == other.shape and torch.equal(value, other) for other in state.values()), key


def test_original_checkpoint_flow_runs(original):
    model = original[3]
    a, b = frames(1, 64, 64)
    flow = model(a, b)
    assert flow.shape == (1, 2, 64, 64)
    assert torch.isfinite(flow).all()


def test_original_checkpoint_without_module_prefix(tmp_path):
    state = without_prefix(original_checkpoint("large", seed=1))
    path = tmp_path / "raft-sintel.pth"
    torch.save(state, path)
    model = load(str(path), "cpu", num_flow_updates=1)
    assert model.size == "large" and model.describe()["format"] == "original"
    assert torch.equal(model.raft.state_dict()["update_block.recurrent_block.convgru2.convz.weight"],
                       state["update_block.gru.convz2.weight"])


def test_original_checkpoint_without_duplicates_or_batch_counters(tmp_path):
    # e.g. a de-duplicated (safetensors) copy, or a file written before BatchNorm had num_batches_tracked
    state = original_checkpoint("large", seed=2)
    reduced = {key: value for key, value in state.items()
               if ".norm3." not in key and not key.endswith("num_batches_tracked")}
    assert len(state) - len(reduced) == 10 + 15  # 10 norm3 aliases, 15 other BatchNorm counters
    path = tmp_path / "raft-kitti.pth"
    torch.save(reduced, path)
    loaded = load(str(path), "cpu", num_flow_updates=1).raft.state_dict()
    assert torch.equal(loaded["context_encoder.layer2.0.downsample.1.bias"],
                       state["module.cnet.layer2.0.norm3.bias"])
    assert loaded["context_encoder.convnormrelu.1.num_batches_tracked"].item() == 0


def test_original_checkpoint_with_inconsistent_duplicate_is_refused(tmp_path):
    state = original_checkpoint("large")
    state["module.cnet.layer2.0.norm3.weight"] = state["module.cnet.layer2.0.norm3.weight"] + 1
    path = tmp_path / "raft-chairs.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=r"module\.cnet\.layer2\.0\.norm3\.weight"):
        load(str(path), "cpu")


@pytest.mark.parametrize("size", ["large", "small"])
def test_original_checkpoint_mismatch_names_keys_in_original_naming(tmp_path, size):
    state = original_checkpoint(size)
    removed = "module.update_block.flow_head.conv1.weight"
    del state[removed]
    state["module.update_block.bogus.weight"] = torch.zeros(3)
    path = tmp_path / ORIGINAL_FILES[size]
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load(str(path), "cpu")
    message = str(info.value)
    assert str(path) in message and f"raft_{size}" in message and "original" in message
    assert "missing" in message and removed in message
    assert "unexpected" in message and "module.update_block.bogus.weight" in message


def test_original_checkpoint_with_wrong_explicit_size(tmp_path):
    path = tmp_path / "raft-things.pth"
    torch.save(original_checkpoint("large"), path)
    with pytest.raises(CheckpointMismatchError) as info:
        load(str(path), "cpu", size="small")
    message = str(info.value)
    assert "raft_small" in message and "size='large'" in message
    assert "module.cnet.conv2.weight: checkpoint (256, 128, 1, 1), model (160, 96, 1, 1)" in message


def test_unrelated_file_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointMismatchError, match="not a RAFT state dict"):
        load(str(path), "cpu")


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


def test_bad_frames_give_clear_errors(model):
    a, b = frames(height=16, width=16)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(a[:, :1], b[:, :1])  # grey frames: RAFT takes RGB
    with pytest.raises(ValueError, match="same shape"):
        model(a, b[..., :8])
    b[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(a, b)


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
