"""Loading LaVie as users' files look (tiny random weights), strictly, and the early checks."""

from __future__ import annotations

import pytest
import torch

from mp_plugin_lavie import check, loading
from mp_plugin_lavie.tiny import TINY_UNET_CONFIG, save_checkpoint, tiny_unet
from mp_plugin_lavie.unet import resolve_config
from mpcore import OptionError
from mpcore.config import SamplerConfig
from mpcore.sampling import sample
from mpcore.io.weights import CheckpointMismatchError


@pytest.mark.parametrize("wrap", [True, False], ids=["ema-wrapped", "bare"])
def test_checkpoint_loads_strictly_with_or_without_the_ema_wrapper(tmp_path, wrap):
    unet = tiny_unet(seed=4)
    path = save_checkpoint(tmp_path / "lavie.pt", unet, wrap=wrap)
    loaded = loading.load_unet(path, resolve_config(TINY_UNET_CONFIG))
    ours, theirs = loaded.state_dict(), unet.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not any(p.is_meta for p in loaded.parameters()) and not any(b.is_meta for b in loaded.buffers())


def test_the_released_layout_has_other_top_level_entries(tmp_path):
    """Only checkpoint["ema"] is read (LaVie's find_model); other entries are ignored."""
    unet = tiny_unet(seed=1)
    path = tmp_path / "lavie.pt"
    torch.save({"ema": unet.state_dict(), "model": {"x": torch.zeros(1)}, "args": "whatever"}, path)
    assert loading.read_checkpoint(path).keys() == unet.state_dict().keys()


def test_missing_key_and_wrong_shape_give_the_readable_diff(tmp_path):
    state = dict(tiny_unet(seed=0).state_dict())
    dropped = next(k for k in state if k.endswith("attn_temp.time_rel_pos_bias.relative_attention_bias.weight"))
    del state[dropped]
    resized = next(k for k in state if k.endswith("norm_temp.bias"))
    state[resized] = torch.zeros(7)
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pt"
    torch.save({"ema": state}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        loading.load_unet(path, resolve_config(TINY_UNET_CONFIG))
    message = str(error.value)
    assert "does not match the LaVie UNet3D" in message
    assert "1 missing key(s)" in message and dropped in message
    assert "1 unexpected key(s)" in message and "extra.weight (2,)" in message
    assert "1 shape mismatch key(s)" in message and f"{resized}: checkpoint (7,), model (32,)" in message


def test_a_checkpoint_of_another_config_is_a_mismatch(tmp_path):
    path = save_checkpoint(tmp_path / "lavie.pt", tiny_unet(seed=0))
    with pytest.raises(CheckpointMismatchError, match="missing key"):
        loading.load_unet(path, None)  # the real SD v1.4 config: nothing is allocated before the diff


def test_loaded_from_files_samples_like_the_in_memory_tiny_model(saved_tiny):
    from mp_plugin_lavie.backbone import load

    backbone = load(str(saved_tiny["checkpoint"]), base=str(saved_tiny["base"]), unet_config=str(saved_tiny["unet_config"]))
    assert not backbone.is_random_init and backbone.vae_scale_factor == 4
    reference = load("tiny", seed=0)
    config = SamplerConfig(steps=3, frames=4, height=32, width=32, seed=2)
    ours = sample(backbone, "a fox", config, progress=False).latents
    assert ours.shape == (1, 4, 4, 8, 8) and torch.isfinite(ours).all()
    assert torch.equal(ours, sample(reference, "a fox", config, progress=False).latents)
    described = backbone.describe()
    assert described["base"] == str(saved_tiny["base"]) and described["scheduler"]["beta_schedule"] == "linear"


def test_scheduler_is_lavies():
    """Linear betas 1e-4..0.02, epsilon, DDIM timesteps 981..1 for 50 steps (LaVie's
    base/configs/sample.yaml and pipeline_videogen.py on SD v1.4's scheduler config)."""
    from mp_plugin_lavie.backbone import load

    scheduler = load("tiny").make_scheduler()
    assert torch.allclose(scheduler.betas, torch.linspace(1e-4, 0.02, 1000))
    scheduler.set_timesteps(50)
    assert scheduler.timesteps[0] == 981 and scheduler.timesteps[-1] == 1
    assert scheduler.config.prediction_type == "epsilon" and not scheduler.config.set_alpha_to_one


def test_missing_inputs_fail_early_and_say_what_to_pass(tmp_path, saved_tiny):
    pt = str(saved_tiny["checkpoint"])
    with pytest.raises(OptionError, match="needs --base.*Stable Diffusion v1.4.*CompVis/stable-diffusion-v1-4"):
        check(model=pt)
    with pytest.raises(OptionError, match="needs --model PATH.*lavie_base.pt"):
        check(model=None, base=str(saved_tiny["base"]))
    with pytest.raises(FileNotFoundError, match="LaVie checkpoint not found.*--model"):
        check(model=str(tmp_path / "lavie_base.pt"), base=str(saved_tiny["base"]))
    with pytest.raises(FileNotFoundError, match="Stable Diffusion v1.4 folder not found.*--base"):
        check(model=pt, base=str(tmp_path / "sd14"))
    (tmp_path / "incomplete" / "vae").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no tokenizer, text_encoder subfolder"):
        check(model=pt, base=str(tmp_path / "incomplete"))
    with pytest.raises(FileNotFoundError, match="UNet config not found"):
        check(model=pt, base=str(saved_tiny["base"]), unet_config=str(tmp_path / "unet.json"))
    with pytest.raises(OptionError, match="drop --base"):
        check(model="tiny", base=str(saved_tiny["base"]))
    check(model=pt, base=str(saved_tiny["base"]), unet_config=str(saved_tiny["unet_config"]))
    check(model=pt, base="CompVis/stable-diffusion-v1-4")  # a hub id: resolved at load time
    check(model="tiny")


def test_offload_and_xformers_without_cuda_are_clear_errors():
    from mp_plugin_lavie.backbone import load

    with pytest.raises(RuntimeError, match="xformers needs a CUDA device"):
        load("tiny", attention="xformers")
    with pytest.raises(RuntimeError, match="--offload is not supported"):
        load("tiny", offload=True)
