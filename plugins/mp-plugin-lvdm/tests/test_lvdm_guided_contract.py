"""The guided-sampling contract (:func:`mpcore.testing.run_guided_contract`) on tiny VideoCrafter2 and
DynamiCrafter 256 / 512: the rollout and clean estimate against lvdm's own DDIM with its scale schedule
(``x0 * s_prev / s_t``; DynamiCrafter 512 also zero terminal SNR, v-prediction, trailing timesteps), and
the diffusion against lvdm's training ``q_sample``: ``sqrt(a_t) scale_arr[t] x0 + sqrt(1 - a_t) eps``
(``lvdm/models/ddpm3d.py`` of VideoCrafter2 and DynamiCrafter), written here from the model's buffers."""

import pytest
import torch

from mp_plugin_lvdm.backbone import load
from mpcore.config import SamplerConfig
from mpcore.testing import run_guided_contract


def q_sample(model):
    """lvdm's training-time noising from the checkpoint's buffers; the sampler's final latents are in
    ``scale_arr[0]``'s space."""
    scale = getattr(model, "scale_arr", None)

    def noising(clean, noise, t):
        s = 1.0 if scale is None else float(scale[t]) / float(scale[0])
        return float(model.sqrt_alphas_cumprod[t]) * s * clean + float(model.sqrt_one_minus_alphas_cumprod[t]) * noise

    return noising


@pytest.mark.parametrize("name,variant", [("videocrafter2", None), ("dynamicrafter", "256"), ("dynamicrafter", "512")])
def test_guided_contract_on_tiny_lvdm(name, variant):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    backbone = load("tiny", seed=0, backbone=name, variant=variant, image=image if variant else None)
    assert (backbone.scale_arr is None) == (variant == "256")
    # 6 steps: DynamiCrafter 512's trailing timesteps are then not 1000 / steps apart (999 -> 832), lvdm's own rule
    config = SamplerConfig(steps=6, frames=4, height=32, width=32, seed=3, cfg_scale=7.5)
    run_guided_contract(backbone, config, q_sample(backbone.model))


def test_free_init_diffuses_videocrafter2_with_its_scale_schedule():
    """The signal FreeInit keeps at t = 999 is sqrt(a_999) * scale_arr[999] / scale_arr[0] (0.7 x diffusers'
    add_noise, which ignores the scale schedule)."""
    backbone = load("tiny", seed=0, backbone="videocrafter2")
    scheduler = backbone.make_scheduler()
    scheduler.set_timesteps(5)
    schedule = backbone.noise_schedule(scheduler)
    expected = float(backbone.model.sqrt_alphas_cumprod[999]) * float(backbone.scale_arr[999]) / float(backbone.scale_arr[0])
    assert schedule.signal_scale(schedule.start_timestep()) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.7 * float(scheduler.alphas_cumprod[999]) ** 0.5, rel=1e-5)
