"""The guided-sampling contract (:func:`mpcore.testing.run_guided_contract`) on the tiny CogVideoX 2b (its
DDIM) and 5b (its DPM-Solver, multistep and stochastic: the rollout is held against CogVideoX's DDIM on the
same SNR-shifted, zero-terminal-SNR table)."""

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler

from mp_plugin_cogvideox.backbone import load
from mp_plugin_cogvideox.tiny import TINY_SAMPLER_DEFAULTS
from mpcore.config import SamplerConfig
from mpcore.testing import run_guided_contract


@pytest.mark.parametrize("variant", ["2b", "5b"])
def test_guided_contract_on_tiny_cogvideox(variant):
    backbone = load("tiny", seed=0, tiny_variant=variant)
    table = backbone.make_scheduler().alphas_cumprod  # what the model was trained with (shifted, rescaled)

    def noising(clean, noise, t):
        a = float(table[t])
        return a**0.5 * clean + (1 - a) ** 0.5 * noise

    ddim = None if variant == "2b" else (lambda: CogVideoXDDIMScheduler.from_config(backbone.scheduler_config))
    config = SamplerConfig(**{**TINY_SAMPLER_DEFAULTS, "steps": 6, "seed": 2})
    # the DPM-Solver SDE step contracts its sample, (sigma_{t-1} / sigma_t) e^{-h}: 0.37 of a change at step 1
    result = run_guided_contract(backbone, config, noising, scheduler_factory=ddim,
                                 min_survival=0.5 if variant == "2b" else 0.3)
    assert torch.isfinite(torch.tensor(result["rollout_error"]))
