"""``mpcore weights expected/check --backbone wan``: the transformer checkpoint's keys and shapes, built on
the meta device from the released variants' configs or a config.json, checked against (sharded)
safetensors read as headers only."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mp_plugin_wan import loading
from mp_plugin_wan.tiny import save_tiny
from mpcore import plugins
from mpcore.cli.main import build_cli


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("wan") / "tiny", seed=0)


def test_expected_keys_of_the_released_variants():
    """Shapes that follow from the configs by hand: inner dim heads x 128, the 2x2 patch of 16 channels,
    UMT5-XXL's 4096-wide text, 6 modulation vectors per block, ffn width."""
    small, large = loading.expected_keys("1.3B"), loading.expected_keys("14B")
    assert small == loading.expected_keys()  # 1.3B is the default
    assert small["patch_embedding.weight"] == (1536, 16, 1, 2, 2)
    assert small["condition_embedder.text_embedder.linear_1.weight"] == (1536, 4096)
    assert small["condition_embedder.time_proj.weight"] == (6 * 1536, 1536)
    assert small["blocks.29.ffn.net.0.proj.weight"] == (8960, 1536)
    assert small["blocks.0.attn1.norm_q.weight"] == (1536,)  # rms_norm_across_heads: one norm over all heads
    assert small["proj_out.weight"] == (16 * 4, 1536)
    assert "blocks.30.attn1.to_q.weight" not in small
    assert large["blocks.39.ffn.net.2.weight"] == (5120, 13824) and "blocks.40.attn1.to_q.weight" not in large
    assert large["blocks.0.attn2.to_k.weight"] == (5120, 5120)
    assert sum(torch.Size(s).numel() for s in small.values()) < sum(torch.Size(s).numel() for s in large.values())


def test_bad_variant_and_config_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="known: 1.3B, 14B"):
        loading.expected_keys("7B")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="not a WanTransformer3DModel"):
        loading.expected_keys(config=str(config))
    result = invoke(["weights", "expected", "--backbone", "wan", "--variant", "7B"])
    assert result.exit_code == 1 and "known: 1.3B, 14B" in result.output


def test_check_passes_on_a_saved_folder_and_names_tampered_keys(folder, tmp_path):
    transformer = folder / "transformer"
    config = ["--backbone", "wan", "--config", str(transformer / "config.json")]
    weights = transformer / "diffusion_pytorch_model.safetensors"
    result = invoke(["weights", "check", *config, str(weights)])
    assert result.exit_code == 0 and "OK" in result.output, result.output

    state = load_file(str(weights))
    dropped, reshaped = "blocks.1.attn2.to_v.weight", "proj_out.bias"
    del state[dropped]
    state[reshaped] = torch.zeros(7)
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken))
    result = invoke(["weights", "check", *config, str(broken)])
    assert result.exit_code == 1, result.output
    assert dropped in result.output and reshaped in result.output and "missing" in result.output
    # the tiny file is not the released 1.3B
    result = invoke(["weights", "check", "--backbone", "wan", str(weights)])
    assert result.exit_code == 1 and "shape mismatch" in result.output


def test_sharded_checkpoints_are_read_through_their_index_as_shapes_only(folder, tmp_path):
    from diffusers import WanTransformer3DModel

    sharded = tmp_path / "sharded"
    WanTransformer3DModel.from_pretrained(folder / "transformer").save_pretrained(sharded, max_shard_size="20KB")
    index = sharded / loading.SAFETENSORS_INDEX
    assert index.is_file() and len(loading.safetensors_files(index)) > 1
    tensors = loading.read_weights(index)
    assert all(t.is_meta for t in tensors.values())
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        k: tuple(v.shape) for k, v in load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors")).items()}
    assert loading.read_weights(sharded).keys() == tensors.keys()  # the folder itself
    assert loading.read_weights(folder).keys() == tensors.keys()  # a model folder: its transformer/
    result = invoke(["weights", "check", "--backbone", "wan", "--config", str(folder / "transformer" / "config.json"),
                     str(index)])
    assert result.exit_code == 0, result.output
    # a missing shard is named
    first = loading.safetensors_files(index)[0]
    first.unlink()
    result = invoke(["weights", "check", "--backbone", "wan", "--config", str(sharded / "config.json"), str(index)])
    assert result.exit_code == 1 and first.name in result.output
