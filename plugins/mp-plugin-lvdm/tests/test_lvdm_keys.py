"""The key -> shape maps at the official configs equal the official checkpoints' manifests
(tests/data/*_state_dict.json, from VideoCrafter2's and DynamiCrafter's own code at those configs),
built on the meta device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mp_plugin_lvdm import configs, loading
from mp_plugin_lvdm.model import build_meta, schedule_buffers

DATA = Path(__file__).resolve().parent / "data"
CASES = [("videocrafter2", None, "videocrafter2"), ("dynamicrafter", "256", "dynamicrafter_256"),
         ("dynamicrafter", "512", "dynamicrafter_512"), ("dynamicrafter", "1024", "dynamicrafter_1024")]


def manifest(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v[0]) for k, v in json.loads((DATA / f"{name}_state_dict.json").read_text()).items()}


@pytest.mark.parametrize("backbone,variant,name", CASES, ids=[c[2] for c in CASES])
def test_expected_keys_at_the_official_config_equal_the_manifest(backbone, variant, name):
    from mpcore import plugins

    spec = plugins.get("backbone", backbone).spec
    expected = spec.expected_keys(variant=variant, config=None)
    assert expected == manifest(name)


def test_the_256_model_has_alpha_and_no_scale_arr_and_512_the_reverse():
    keys256, keys512 = manifest("dynamicrafter_256"), manifest("dynamicrafter_512")
    alphas = sorted(k for k in keys256 if k.endswith("attn2.alpha"))
    assert len(alphas) == 16 and all(keys256[k] == () for k in alphas)
    assert set(keys256) - set(keys512) == set(alphas) and set(keys512) - set(keys256) == {"scale_arr"}


def test_a_user_yaml_of_the_official_schema_gives_the_same_keys(tmp_path):
    path = configs.dump(configs.default_config("dynamicrafter", "1024"), tmp_path / "inference_1024_v1.0.yaml")
    assert {k: tuple(v.shape) for k, v in build_meta(configs.read_config(path)).state_dict().items()} == \
        manifest("dynamicrafter_1024")


def test_bad_configs_and_variants_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {params: {}}\n")
    with pytest.raises(ValueError, match="lvdm inference config schema"):
        configs.read_config(bad)
    with pytest.raises(ValueError, match="known: 256, 512, 1024"):
        configs.default_config("dynamicrafter", "768")


def test_schedule_buffers_match_the_fact_sheets_values():
    """Zero-terminal-SNR betas (512/1024), zeros in sqrt_recip* for v-models, scale_arr of 1400 entries."""
    b1024 = schedule_buffers(configs.default_config("dynamicrafter", "1024")["model"]["params"])
    ac = b1024["alphas_cumprod"]
    assert ac[-1].item() == 0.0 and b1024["betas"][-1].item() == pytest.approx(1.0)
    assert ac[0].item() == pytest.approx(0.9991499781608582, abs=1e-7)
    assert ac[-3:].tolist() == pytest.approx([7.907515851002245e-07, 1.9678880391893472e-07, 0.0], rel=1e-4, abs=1e-12)
    assert b1024["sqrt_recip_alphas_cumprod"].abs().sum() == 0
    assert b1024["scale_arr"].shape == (1400,) and b1024["scale_arr"].sum().item() == pytest.approx(560.0, rel=1e-6)
    vc2 = schedule_buffers(configs.default_config("videocrafter2")["model"]["params"])
    assert vc2["scale_arr"].shape == (1400,) and vc2["scale_arr"][0] == 1.0 and vc2["scale_arr"][399:].eq(
        torch.tensor(0.7)).all()
    assert vc2["alphas_cumprod"][-1].item() > 0  # no zero-SNR rescale
    assert "scale_arr" not in schedule_buffers(configs.default_config("dynamicrafter", "256")["model"]["params"])


def test_the_256_files_framestride_embed_is_read_as_fps_embedding(tmp_path):
    state = {"model.diffusion_model.framestride_embed.0.weight": torch.zeros(2), "betas": torch.zeros(3)}
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    assert set(loading.read_checkpoint(path)) == {"model.diffusion_model.fps_embedding.0.weight", "betas"}
    torch.save({"module": {"_forward_module." + k: v for k, v in state.items()}}, path)  # DeepSpeed layout
    assert set(loading.read_checkpoint(path)) == {"model.diffusion_model.fps_embedding.0.weight", "betas"}
