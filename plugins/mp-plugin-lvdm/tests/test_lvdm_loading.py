"""Loading tiny random checkpoints saved in the official layout ({"state_dict": ...}, top-level prefixes),
strictly, and the readable diff of a mismatch."""

from __future__ import annotations

import pytest
import torch

from mp_plugin_lvdm import configs, loading
from mp_plugin_lvdm.backbone import load
from mp_plugin_lvdm.tiny import save_checkpoint, save_tiny, tiny_config, tiny_model
from mpcore.config import SamplerConfig
from mpcore.sampling import sample
from mpcore.io.weights import CheckpointMismatchError

PREFIXES = {"videocrafter2": ("model.diffusion_model.", "first_stage_model.", "cond_stage_model."),
            "dynamicrafter": ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "embedder.",
                              "image_proj_model.")}


@pytest.mark.parametrize("backbone,variant", [("videocrafter2", None), ("dynamicrafter", "256"),
                                              ("dynamicrafter", "512")])
def test_official_layout_loads_strictly_and_samples_like_the_in_memory_model(tmp_path, backbone, variant, start_image):
    files = save_tiny(tmp_path, backbone, variant, seed=2)
    raw = torch.load(files["checkpoint"], weights_only=True)
    assert set(raw) == {"state_dict"}
    keys = raw["state_dict"].keys()
    assert all(k.startswith(PREFIXES[backbone]) or "." not in k for k in keys)
    assert all(any(k.startswith(p) for k in keys) for p in PREFIXES[backbone])
    assert ("scale_arr" in keys) == (variant != "256")
    if variant == "256":
        assert any("framestride_embed" in k for k in keys) and not any("fps_embedding" in k for k in keys)

    loaded = load(str(files["checkpoint"]), backbone=backbone, variant=variant, config=str(files["config"]),
                  image=str(start_image))
    reference = tiny_model(tiny_config(backbone, variant), seed=2)
    ours, theirs = loaded.model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not any(t.is_meta for t in list(loaded.model.parameters()) + list(loaded.model.buffers()))

    in_memory = load("tiny", seed=2, backbone=backbone, variant=variant, image=str(start_image))
    config = SamplerConfig(steps=3, frames=16, height=32, width=32, seed=1, cfg_scale=7.5, eta=1.0)
    a = sample(loaded, "a fox", config, progress=False).latents
    b = sample(in_memory, "a fox", config, progress=False).latents
    assert torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("layout", ["bare", "safetensors"])
def test_other_layouts_load(tmp_path, layout):
    config = tiny_config("videocrafter2")
    model = tiny_model(config, seed=0)
    if layout == "bare":
        path = save_checkpoint(tmp_path / "model.ckpt", model, wrap=False)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = loading.load_model(path, config, "videocrafter2")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_missing_key_and_wrong_shape_give_the_readable_diff(tmp_path):
    config = tiny_config("dynamicrafter", "512")
    state = dict(tiny_model(config, seed=0).state_dict())
    dropped = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight"
    del state[dropped]
    resized = "model.diffusion_model.input_blocks.1.0.temopral_conv.conv1.0.bias"
    state[resized] = torch.zeros(7)
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        loading.load_model(path, config, "dynamicrafter-512")
    message = str(error.value)
    assert "does not match the dynamicrafter-512 model" in message
    assert "1 missing key(s)" in message and f"{dropped} (32, 32)" in message
    assert "1 unexpected key(s)" in message and "extra.weight (2,)" in message
    assert "1 shape mismatch key(s)" in message and f"{resized}: checkpoint (7,), model (32,)" in message


def test_a_tiny_checkpoint_against_the_official_config_is_a_mismatch(tmp_path):
    path = save_checkpoint(tmp_path / "model.ckpt", tiny_model(tiny_config("videocrafter2"), seed=0))
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        loading.load_model(path, configs.default_config("videocrafter2"), "videocrafter2")  # meta: nothing allocated


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(loading.ModelNotFoundError, match="VideoCrafter/VideoCrafter2"):
        loading.check_checkpoint(str(tmp_path / "model.ckpt"), "videocrafter2")
