"""VideoCrafter2 and DynamiCrafter at the real size with random weights (benchmarks' ``--config
real-random``): the whole model built on the meta device (nothing allocated) has exactly the keys and
shapes of the official ``model.ckpt`` (tests/data/*_state_dict.json, built from the official configs and
code), with the schedule buffers computed; the materialized path runs at the tiny widths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mp_plugin_lvdm import tiny
from mp_plugin_lvdm.model import LatentDiffusion
from mp_plugin_lvdm.random_real import load_random_real, random_real_model, real_sampler
from mpcore.config import SamplerConfig
from mpcore.sampling import sample

DATA = Path(__file__).resolve().parent / "data"
CASES = [("videocrafter2", None, "videocrafter2"), ("dynamicrafter", "512", "dynamicrafter_512"),
         ("dynamicrafter", "256", "dynamicrafter_256"), ("dynamicrafter", "1024", "dynamicrafter_1024")]


@pytest.mark.parametrize("backbone,variant,name", CASES, ids=[c[2] for c in CASES])
def test_the_real_random_model_has_the_checkpoints_keys_and_shapes(backbone, variant, name):
    from mpcore import plugins

    model, config = random_real_model(backbone, variant, device="meta")
    found = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: tuple(v[0]) for k, v in json.loads((DATA / f"{name}_state_dict.json").read_text()).items()}
    assert found == official
    assert found == plugins.get("backbone", backbone).spec.expected_keys(variant=variant, config=None)
    assert all(p.is_meta for p in model.parameters())  # nothing allocated
    assert not model.alphas_cumprod.is_meta and model.alphas_cumprod[-1] < model.alphas_cumprod[0]


def test_the_sampled_sizes_are_the_official_scripts():
    assert real_sampler("videocrafter2") == dict(frames=16, height=320, width=512)
    assert real_sampler("dynamicrafter") == real_sampler("dynamicrafter", "512") == dict(frames=16, height=320, width=512)


@pytest.mark.parametrize("backbone", ["videocrafter2", "dynamicrafter"])
def test_materialized_weights_are_finite_deterministic_and_sample(backbone):
    config = tiny.tiny_config(backbone)
    image = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(0)) * 2 - 1
    model = load_random_real(backbone, seed=2, config=config, image=image)
    again = load_random_real(backbone, seed=2, config=config, image=image)
    assert all(torch.isfinite(p).all() for p in model.model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.model.parameters(), again.model.parameters()))
    # buffers (schedule, masks, CLIP mean/std) are what the module computes, not random
    reference = dict(LatentDiffusion(config).named_buffers())
    assert all(torch.equal(b, reference[n]) for n, b in model.model.named_buffers())
    assert model.is_random_init and model.describe()["model"].startswith("real-random")
    result = sample(model, "a horse", SamplerConfig(steps=2, frames=8, height=64, width=64, seed=0), None,
                    progress=False)
    assert result.latents.shape == (1, 4, 8, 16, 16) and torch.isfinite(result.latents).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_a_model_in_a_reduced_dtype_samples(dtype):
    """The benchmarks' GPU dtypes: GroupNorm32 normalizes in float32 with float32 parameters (torch
    refuses a float32 input with float16/bfloat16 parameters)."""
    config = tiny.tiny_config("videocrafter2")
    model = load_random_real("videocrafter2", dtype=dtype, config=config)
    assert model.unet.out[0].weight.dtype == dtype and model.model.alphas_cumprod.dtype == torch.float32
    result = sample(model, "a horse", SamplerConfig(steps=2, frames=8, height=64, width=64, seed=0), None,
                    progress=False)
    assert result.latents.dtype == dtype and torch.isfinite(result.latents).all()
