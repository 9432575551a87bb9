"""Issue 20's lvdm fixes: guidance at the zero-SNR first step of DynamiCrafter, a clean early error for an
unknown OpenCLIP architecture in --config, a PIL input image, per-sample fs."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from mpcore.config import MotionPromptConfig, SamplerConfig
from mpcore.sampling import sample


def test_dynamicrafter_guided_at_zero_terminal_snr_step(start_image, flow_estimator, discriminator):
    """(a) the range starts at step 0, t = 999, where the rescaled schedule has alpha_bar = 0 (x0 = -v)."""
    from mp_plugin_lvdm import dynamicrafter_motionprompt_defaults
    from mp_plugin_lvdm.backbone import load
    from mpcore.motionprompt import MotionPrompt

    backbone = load("tiny", seed=0, backbone="dynamicrafter", variant="512", image=str(start_image))
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(3)
    assert float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])]) == 0.0  # the case under test
    motion = MotionPromptConfig(**{**dynamicrafter_motionprompt_defaults("tiny"), "opt_range": (0, 2), "iterations": 1,
                                   "decoded_frames": 2})
    config = SamplerConfig(steps=3, frames=16, height=32, width=32, seed=3, cfg_scale=7.5)
    result = sample(backbone, "a fox", config, MotionPrompt(motion, flow_estimator, discriminator), progress=False)
    assert result.guidance["skipped_updates"] == 0
    assert result.guidance["final_cosine"][0] < 1.0 and torch.isfinite(result.latents).all()


def test_unknown_openclip_arch_in_config_is_a_clean_early_error(tmp_path):
    """(b) it used to pass `run`'s checks and end in a raw ValueError while building the model."""
    from mp_plugin_lvdm import configs
    from mpcore.cli.main import build_cli

    config = configs.default_config("videocrafter2")
    config["model"]["params"]["cond_stage_config"]["params"]["arch"] = "ViT-Custom-99"
    path = configs.dump(config, tmp_path / "custom.yaml")
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not loaded")
    result = CliRunner().invoke(build_cli(), ["run", "--backbone", "videocrafter2", "--model", str(checkpoint),
                                              "--config", str(path), "--prompt", "x", "--guidance", "none",
                                              "--out", str(tmp_path / "x.mp4")])
    assert result.exit_code == 2, result.output
    assert "'ViT-Custom-99' is not an OpenCLIP architecture" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(ValueError, match="cond_stage_config.params.arch"):  # weights check reports the same
        configs.read_config(path)
    config["model"]["params"]["cond_stage_config"]["params"]["arch"] = "ViT-H-14"
    configs.read_config(configs.dump(config, tmp_path / "known.yaml"))  # a known name passes


def test_pil_image_accepted_as_input(start_image):
    """(c) set_image / load(image=) take a PIL image, giving what the same image's path gives."""
    from PIL import Image

    from mp_plugin_lvdm.backbone import load

    config = SamplerConfig(steps=2, frames=16, height=32, width=32, seed=3, cfg_scale=7.5)
    by_path = load("tiny", seed=0, backbone="dynamicrafter", variant="256", image=str(start_image))
    expected = sample(by_path, "a fox", config, progress=False).latents
    with Image.open(start_image) as image:
        pil = image.convert("L")  # not RGB: converted as a file's image is
        pil_rgb = image.convert("RGB")
    by_pil = load("tiny", seed=0, backbone="dynamicrafter", variant="256", image=pil_rgb)
    assert torch.equal(sample(by_pil, "a fox", config, progress=False).latents, expected)
    by_pil.set_image(pil)
    grey = sample(by_pil, "a fox", config, progress=False).latents
    assert torch.isfinite(grey).all() and not torch.equal(grey, expected)
    assert by_pil.describe()["image"] == "PIL image"


def test_per_sample_fs_in_a_mixed_batch():
    """(d) a tensor of B fs values conditions each sample with its own (also in the CFG-stacked 2B batch);
    a scalar still serves all."""
    from mp_plugin_lvdm.backbone import load

    backbone = load("tiny", seed=0, backbone="videocrafter2")
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 4, 4, 4, generator=generator)
    cond = backbone.encode_prompt(["a fox", "a cat"])
    t = torch.tensor(500)
    with torch.no_grad():
        single = []
        for k, fs in enumerate((8, 28)):
            backbone.fs = fs
            single.append(backbone.predict(latents[k:k + 1], t, cond[k:k + 1]))
        backbone.fs = torch.tensor([8, 28])
        mixed = backbone.predict(latents, t, cond)
        stacked = backbone.predict(torch.cat([latents, latents]), t, torch.cat([cond, cond]))
    assert torch.allclose(mixed, torch.cat(single), atol=1e-5)
    assert torch.allclose(stacked, torch.cat(single * 2), atol=1e-5)
    backbone.fs = 28
    with torch.no_grad():  # fs really conditions: sample 0 with sample 1's fs differs
        assert not torch.allclose(backbone.predict(latents[:1], t, cond[:1]), single[0], atol=1e-4)
    backbone.fs = torch.tensor([8, 28, 3])
    with pytest.raises(ValueError, match="per-sample"):
        backbone.predict(latents, t, cond)
