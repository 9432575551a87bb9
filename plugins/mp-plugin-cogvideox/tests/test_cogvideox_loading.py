"""Loading CogVideoX folders, the early and clear errors, and ``mpcore weights expected/check`` on a tiny
saved folder (single file and sharded)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mp_plugin_cogvideox import check, loading
from mp_plugin_cogvideox.backbone import load
from mp_plugin_cogvideox.tiny import save_tiny
from mpcore import plugins
from mpcore.backbones import ModelNotFoundError
from mpcore.cli.main import build_cli


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("cog") / "CogVideoX-tiny", seed=0)


def invoke(args):
    plugins.load_plugins(reload=True)
    return CliRunner().invoke(build_cli(), args)


def test_missing_folder_and_component_are_clear_errors(tmp_path, folder):
    with pytest.raises(ModelNotFoundError, match="not found at .*huggingface-cli download THUDM/CogVideoX-2b"):
        check(str(tmp_path / "nothing"))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "transformer").mkdir()
    with pytest.raises(ModelNotFoundError, match="lacks the component folder.*vae, text_encoder, tokenizer, scheduler"):
        check(str(partial))
    check(str(folder))  # a complete folder passes


def test_an_unknown_scheduler_class_is_refused(tmp_path, folder):
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    other = tmp_path / "sched"
    other.mkdir()
    (other / "scheduler_config.json").write_text(json.dumps({**config, "_class_name": "UniPCMultistepScheduler"}))
    with pytest.raises(ModelNotFoundError, match="UniPCMultistepScheduler.*CogVideoXDDIMScheduler or CogVideoXDPMScheduler"):
        loading.scheduler_class(other)


def test_an_unreachable_hub_says_how_to_download(monkeypatch):
    import diffusers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(diffusers.CogVideoXDDIMScheduler, "load_config", offline)
    with pytest.raises(ModelNotFoundError, match="(?s)THUDM/CogVideoX-5b.*download it first.*--model"):
        loading.load_components("THUDM/CogVideoX-5b", torch.float32)


def test_option_errors():
    with pytest.raises(ValueError, match="sincos position embeddings for exactly 32 text tokens"):
        load("tiny", max_sequence_length=16)
    with pytest.raises(RuntimeError, match="use --attention sdpa"):
        load("tiny", attention="xformers")
    assert load("tiny", tiny_variant="5b", max_sequence_length=16).max_sequence_length == 16  # rotary: any length


def test_expected_keys_of_the_released_variants():
    keys_2b, keys_5b = loading.expected_keys("2b"), loading.expected_keys("5b")
    # 1,693,783,872 (2b) and 5,570,283,072 (5b) transformer parameters: diffusers' model at the converter's
    # settings; no position-embedding buffer is stored (sincos tables are recomputed, RoPE has none)
    assert sum(torch.Size(s).numel() for s in keys_2b.values()) == 1_693_783_872
    assert sum(torch.Size(s).numel() for s in keys_5b.values()) == 5_570_283_072
    assert keys_2b["patch_embed.text_proj.weight"] == (1920, 4096) and keys_5b["proj_out.weight"] == (64, 3072)
    assert not any("pos_embedding" in k for k in keys_2b)
    with pytest.raises(ValueError, match="known: 2b, 5b"):
        loading.expected_keys("7b")


def test_weights_check_passes_on_a_saved_folder_and_names_what_was_tampered(tmp_path, folder):
    config = str(folder / "transformer" / "config.json")
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    result = invoke(["weights", "check", "--backbone", "cogvideox", "--config", config, str(weights)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output

    state = load_file(str(weights))
    del state["proj_out.bias"]
    state["norm_final.weight"] = torch.zeros(3)
    tampered = tmp_path / "tampered.safetensors"
    save_file(state, str(tampered))
    result = invoke(["weights", "check", "--backbone", "cogvideox", "--config", config, str(tampered)])
    assert result.exit_code == 1
    assert "proj_out.bias" in result.output and "norm_final.weight" in result.output


def test_weights_check_reads_a_sharded_checkpoint(tmp_path, folder):
    from diffusers import CogVideoXTransformer3DModel

    model = CogVideoXTransformer3DModel.from_pretrained(str(folder), subfolder="transformer")
    model.save_pretrained(tmp_path / "transformer", max_shard_size="20KB")
    index = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    assert len(loading.safetensors_files(index)) > 1
    assert {k: tuple(v.shape) for k, v in loading.read_weights(tmp_path).items()} == \
        loading.expected_keys(config=str(folder))
    result = invoke(["weights", "check", "--backbone", "cogvideox", "--config", str(folder), str(index)])
    assert result.exit_code == 0, result.output
    next(iter(loading.safetensors_files(index))).unlink()  # a shard missing from the download
    with pytest.raises(FileNotFoundError, match="missing"):
        loading.read_weights(index)


def test_weights_expected_lists_the_2b_keys():
    result = invoke(["weights", "expected", "--backbone", "cogvideox", "--variant", "2b"])
    assert result.exit_code == 0, result.output
    assert "transformer_blocks.29.attn1.to_q.weight [1920, 1920]" in result.output
    assert "transformer_blocks.30." not in result.output
