"""AnimateDiff loading paths on tiny random components saved as users' files look."""

from __future__ import annotations

import pytest
import torch
from diffusers import MotionAdapter

from mp_plugin_animatediff import check, loading
from mp_plugin_animatediff.tiny import original_motion_module_state, tiny_components
from mpcore.io.weights import CheckpointMismatchError, read_state_dict


@pytest.fixture(scope="module")
def adapter():
    return tiny_components(seed=0)["motion_adapter"]


def test_original_motion_module_ckpt_loads_strictly(tmp_path, adapter):
    state = original_motion_module_state(adapter)
    assert any(k.endswith("temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe") for k in state)
    path = tmp_path / "mm_tiny.ckpt"
    torch.save({"state_dict": {**state, "animatediff_config": "dummy"}}, path)  # wrapper + v3's non-tensor entry
    loaded = loading.load_motion_adapter(str(path), torch.float32)
    assert isinstance(loaded, MotionAdapter)
    assert loaded.config.use_motion_mid_block is False  # v3-style: no mid-block module
    assert tuple(loaded.config.block_out_channels) == (32, 64)
    ours, theirs = loaded.state_dict(), adapter.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # incl. the recomputed pos_embed.pe


def test_original_motion_module_mismatch_is_readable(tmp_path, adapter):
    state = original_motion_module_state(adapter)
    dropped = next(k for k in state if k.endswith("attention_blocks.0.to_q.weight"))
    del state[dropped]
    resized = next(k for k in state if k.endswith("proj_in.bias"))
    state[resized] = torch.zeros(7)
    path = tmp_path / "broken.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    with pytest.raises(CheckpointMismatchError) as error:
        loading.load_motion_adapter(str(path), torch.float32)
    message = str(error.value)
    assert "1 missing key(s)" in message and "attn1.to_q.weight" in message
    assert "shape mismatch" in message and "checkpoint (7,)" in message


def test_not_a_motion_module(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointMismatchError, match="not an AnimateDiff motion-module file"):
        loading.load_motion_adapter(str(path), torch.float32)


def test_read_state_dict_unwraps_and_drops_non_tensors(tmp_path):
    path = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {"state_dict": {"a": torch.ones(2), "meta": 3}}}, path)
    assert list(read_state_dict(path)) == ["a"]


def test_missing_local_paths_fail_before_loading(tmp_path):
    with pytest.raises(FileNotFoundError, match="base model not found"):
        check(model=str(tmp_path / "nope.safetensors"))
    base = tmp_path / "base"  # a diffusers folder as far as the cheap check sees (an empty component list)
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="motion adapter not found.*--motion-adapter"):
        check(model=str(base), motion_adapter="./missing/mm_sd_v15_v2.ckpt")
    check(model="tiny")  # reserved: nothing to look for
    check(model="some-user/some-model")  # a hub id: resolved at load time


def test_xformers_request_without_cuda_is_a_clear_error():
    from mp_plugin_animatediff.backbone import load

    with pytest.raises(RuntimeError, match="xformers needs a CUDA device"):
        load("tiny", attention="xformers")
    with pytest.raises(RuntimeError, match="--offload .* needs a CUDA"):
        load("tiny", offload=True)


def test_single_file_ldm_checkpoint_loads_like_the_folder(tmp_path, monkeypatch):
    """A community-style single-file SD-1.5 base (LDM key layout), offline with --base-config."""
    from mp_plugin_animatediff.backbone import load
    from mp_plugin_animatediff.tiny import save_tiny, save_tiny_single_file
    from mpcore.config import SamplerConfig
    from mpcore.sampling import sample

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base, adapter = save_tiny(tmp_path, seed=2)
    checkpoint = save_tiny_single_file(tmp_path / "tiny_sd15.safetensors", seed=2)
    single = load(str(checkpoint), motion_adapter=str(adapter), base_config=str(base))
    reference = load("tiny", seed=2)
    for part in ("unet", "vae"):
        ours, theirs = getattr(single, part).state_dict(), getattr(reference, part).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), part
    ours, theirs = single.pipe.text_encoder.state_dict(), reference.pipe.text_encoder.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # a single file brings no scheduler config: AnimateDiff's own DDIM settings are used
    assert single.scheduler_config["beta_schedule"] == "linear" and single.scheduler_config["steps_offset"] == 1
    config = SamplerConfig(steps=3, frames=2, height=32, width=32)
    assert torch.equal(sample(single, "x", config, progress=False).latents, sample(reference, "x", config, progress=False).latents)
