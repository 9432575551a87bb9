"""Tests of mp-plugin-vit on tiny random-init discriminators (no weights are downloaded)."""

from __future__ import annotations

import json
from importlib import metadata

import pluggy
import pytest
import torch
from safetensors.torch import load_file, save_file

import mp_plugin_vit
from mp_plugin_vit import (
    PRESETS,
    DiscriminatorConfigError,
    PretrainedWeightsError,
    ViTDiscriminatorConfig,
    build_discriminator,
    config_from_options,
    load,
    prepare_flow,
    random,
    resize_flow,
    save,
    tiny_config,
)
from mpcore import hookspecs
from mpcore.plugins import PluginState, register_plugin, registry
from mpcore.io.weights import CheckpointMismatchError

torch.set_num_threads(2)


def flows(batch=3, height=40, width=56, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, height, width, generator=generator) * 5


def test_logits_shape_and_frozen():
    model = random(0, "cpu")
    logits = model(flows())
    assert logits.shape == (3,) and logits.dtype == torch.float32
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    assert model.is_random_init


def test_gradient_reaches_flow():
    model = random(0, "cpu")
    flow = flows().requires_grad_(True)
    model(flow).sum().backward()
    assert flow.grad is not None
    assert torch.isfinite(flow.grad).all() and flow.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_random_is_deterministic_per_seed_and_keeps_global_rng():
    flow = flows()
    state = torch.random.get_rng_state()
    first = random(1, "cpu")
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(first(flow), random(1, "cpu")(flow))
    assert not torch.equal(first(flow), random(2, "cpu")(flow))


def test_resize_flow_scales_vectors():
    flow = torch.full((1, 2, 64, 64), 4.0)
    resized = resize_flow(flow, 32)
    assert resized.shape == (1, 2, 32, 32)
    assert torch.allclose(resized, torch.full_like(resized, 2.0))
    # x follows the width ratio, y the height ratio
    flow = torch.ones(1, 2, 20, 40)
    resized = resize_flow(flow, (40, 10))  # H 20 -> 40 (x2), W 40 -> 10 (/4)
    assert torch.allclose(resized[:, 0], torch.full_like(resized[:, 0], 0.25))
    assert torch.allclose(resized[:, 1], torch.full_like(resized[:, 1], 2.0))
    # normalization: pixels at img_size divided by flow_scale
    prepared = prepare_flow(torch.full((1, 2, 64, 64), 4.0), 32, 20.0)
    assert torch.allclose(prepared, torch.full_like(prepared, 0.1))
    assert resize_flow(flow, (20, 40)) is flow


def test_save_load_roundtrip(tmp_path):
    model = random(3, "cpu")
    path = tmp_path / "disc" / "d.safetensors"
    save(model, path)
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert not list(path.parent.glob("*.tmp"))
    config = json.loads(path.with_suffix(".json").read_text())
    assert config["type"] == "vit" and config["version"] == 1 and config["img_size"] == 32
    loaded = load(path, "cpu")
    flow = flows()
    assert torch.equal(model(flow), loaded(flow))
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    assert not loaded.is_random_init and loaded.describe()["source"] == str(path)


def test_trainable_build_and_save_roundtrip(tmp_path):
    config = ViTDiscriminatorConfig(
        img_size=16, timm_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}, head_hidden=8
    )
    model = build_discriminator(config, pretrained=False, seed=0)
    assert model.training and all(p.requires_grad for p in model.parameters())
    path = tmp_path / "small.safetensors"
    save(model, path)
    flow = flows(2, 24, 24)
    assert torch.equal(model.eval()(flow), load(path)(flow))


def test_missing_weights_says_how_to_get_one(tmp_path):
    path = tmp_path / "none.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        load(path, "cpu")
    message = str(info.value)
    assert str(path) in message and "mpcore disc train" in message and "--discriminator random" in message


def test_missing_json(tmp_path):
    path = tmp_path / "d.safetensors"
    save(random(0), path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="d.json"):
        load(path, "cpu")


def test_invalid_json(tmp_path):
    path = tmp_path / "d.safetensors"
    save(random(0), path)
    config_path = path.with_suffix(".json")
    data = json.loads(config_path.read_text())
    del data["img_size"]
    config_path.write_text(json.dumps(data))
    with pytest.raises(DiscriminatorConfigError) as info:
        load(path, "cpu")
    assert str(config_path) in str(info.value) and "img_size" in str(info.value)
    config_path.write_text("{not json")
    with pytest.raises(DiscriminatorConfigError, match="not valid JSON"):
        load(path, "cpu")
    config_path.write_text(json.dumps({**data, "img_size": 32, "flow_scale": -1}))
    with pytest.raises(DiscriminatorConfigError, match="flow_scale"):
        load(path, "cpu")
    config_path.write_text(json.dumps({**data, "img_size": 32, "type": "cnn"}))
    with pytest.raises(DiscriminatorConfigError, match="type"):
        load(path, "cpu")


def test_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "d.safetensors"
    save(random(0), path)
    state = load_file(str(path))
    del state["head.4.weight"]
    state["head.9.weight"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(CheckpointMismatchError) as info:
        load(path, "cpu")
    message = str(info.value)
    assert "missing" in message and "head.4.weight" in message
    assert "unexpected" in message and "head.9.weight" in message
    assert "d.json" in message


def test_shape_mismatch(tmp_path):
    path = tmp_path / "d.safetensors"
    save(random(0), path)
    config_path = path.with_suffix(".json")
    data = json.loads(config_path.read_text())
    data["head_hidden"] = 16  # the file was saved with 32
    config_path.write_text(json.dumps(data))
    with pytest.raises(CheckpointMismatchError) as info:
        load(path, "cpu")
    message = str(info.value)
    assert "shape mismatch" in message and "head.0.weight" in message and "(32, 32)" in message


def test_tiny_config_validates_and_roundtrips():
    config = tiny_config()
    config.validate()
    assert ViTDiscriminatorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(DiscriminatorConfigError, match="bogus"):
        ViTDiscriminatorConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_plugin_registers_vit():
    manager = pluggy.PluginManager("mpcore")
    manager.add_hookspecs(hookspecs)
    state = PluginState(manager)
    assert register_plugin(state, mp_plugin_vit, "vit")
    spec = registry("discriminator", state)["vit"].spec
    assert spec.load is load and spec.random is random
    assert spec.build is mp_plugin_vit.build and spec.save is save


def test_entry_point_installed():
    names = {ep.name: ep.value for ep in metadata.entry_points(group="mpcore")}
    if "vit" not in names:
        pytest.skip("mp-plugin-vit is not installed (pip install -e plugins/mp-plugin-vit)")
    assert names["vit"] == "mp_plugin_vit"


# ---------------------------------------------------------------------------------------------------
# build(options, pretrained, seed): the trainable discriminator of `mpcore disc train`


def test_presets_and_options():
    assert config_from_options({})[0].timm_model == "vit_base_patch16_224"  # paper: ViT-B/16 at 224
    assert config_from_options({})[0].img_size == 224
    for name in PRESETS:
        config, pretrained_file = config_from_options({"preset": name})
        config.validate()
        assert pretrained_file is None
    assert config_from_options({"preset": "tiny"})[0] == tiny_config()
    config, _ = config_from_options({"preset": "tiny", "img_size": "48", "flow_scale": "2.5", "head_hidden": 8,
                                     "timm_kwargs": '{"patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2}'})
    assert (config.img_size, config.flow_scale, config.head_hidden, config.timm_kwargs["depth"]) == (48, 2.5, 8, 1)


@pytest.mark.parametrize("options, match", [
    ({"bogus": "1"}, "unknown --arch option.*bogus.*known: preset"),
    ({"preset": "huge"}, "preset='huge'.*paper, small, cpu, tiny"),
    ({"img_size": "big"}, "img_size='big': expected an integer"),
    ({"img_size": "0"}, "field 'img_size' = 0"),
    ({"flow_scale": "-1"}, "flow_scale"),
    ({"timm_kwargs": "[1]"}, "timm_kwargs.*JSON object"),
    ({"timm_model": "vit_nonexistent"}, "not a timm model"),
    ({"pretrained_file": "/no/such/file.safetensors"}, "pretrained_file=.*no such file"),
])
def test_invalid_options_name_the_option(options, match):
    with pytest.raises(DiscriminatorConfigError, match=match):
        config_from_options(options)


def test_build_is_trainable_seeded_and_saves_for_load(tmp_path):
    model = mp_plugin_vit.build({"preset": "tiny"}, pretrained=False, seed=4)
    assert model.training and all(p.requires_grad for p in model.parameters())
    again = mp_plugin_vit.build({"preset": "tiny"}, pretrained=False, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    path = tmp_path / "trained.safetensors"
    save(model, path)
    flow = flows(2, 16, 24)
    assert torch.equal(model.eval()(flow), load(path)(flow))


def test_pretrained_needs_matching_shapes():
    with pytest.raises(DiscriminatorConfigError, match="pass --no-pretrained"):
        mp_plugin_vit.build({"preset": "tiny"}, pretrained=True)


def test_pretrained_offline_error_says_what_to_do(monkeypatch):
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("Name or service not known (simulated: no network)")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(builder, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsError) as info:
        mp_plugin_vit.build({"preset": "cpu"}, pretrained=True)
    message = str(info.value)
    assert "vit_tiny_patch16_224" in message
    assert "pass --no-pretrained, or point to a local file with --arch pretrained_file=PATH" in message


def test_pretrained_file_loads_local_weights(tmp_path):
    import timm

    encoder = timm.create_model("vit_tiny_patch16_224", num_classes=1000, pretrained=False)
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path))
    model = mp_plugin_vit.build({"preset": "cpu", "pretrained_file": str(path)}, pretrained=True, seed=0)
    assert torch.equal(model.encoder.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)
    assert model.encoder.pos_embed.shape[1] == 1 + (112 // 16) ** 2  # resampled from 224 to 112 by timm
    with pytest.raises(DiscriminatorConfigError, match="drop one"):
        mp_plugin_vit.build({"preset": "cpu", "pretrained_file": str(path)}, pretrained=False)
