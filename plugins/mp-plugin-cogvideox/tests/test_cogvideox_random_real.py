"""CogVideoX-2b at the real size with random weights (benchmarks' ``--config real-random``), built on the
meta device: the transformer's keys are ``mpcore weights expected --variant 2b``'s, and the parameter
counts are the released components' (transformer 1.69B, causal VAE 216M, T5 v1.1 XXL encoder 4.76B)."""

from __future__ import annotations

import torch

from mp_plugin_cogvideox.loading import expected_keys
from mp_plugin_cogvideox.random_real import REAL_SAMPLER, load_random_real, random_real_components
from mpcore.config import SamplerConfig
from mpcore.sampling import sample

SMALL = dict(transformer=dict(num_attention_heads=2, attention_head_dim=16, num_layers=1, text_embed_dim=32),
             vae=dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2),
             text_encoder=dict(d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4))


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_real_random_parts_have_the_released_architecture_on_meta():
    parts = random_real_components(device="meta")
    assert {k: tuple(v.shape) for k, v in parts["transformer"].state_dict().items()} == expected_keys("2b")
    assert count(parts["transformer"]) == 1_693_783_872
    assert count(parts["vae"]) == 215_583_907
    assert count(parts["text_encoder"]) == 4_762_310_656  # google/t5-v1_1-xxl's encoder
    assert parts["text_encoder"].get_input_embeddings().weight.shape == (32128, 4096)
    assert all(p.is_meta for name in ("transformer", "vae", "text_encoder") for p in parts[name].parameters())
    assert parts["vae"].config.scaling_factor == 1.15258426 and parts["scheduler"].config.snr_shift_scale == 3.0
    assert REAL_SAMPLER == dict(frames=49, height=480, width=720)


def test_the_materialized_path_samples_and_is_deterministic_in_the_seed():
    """The same build at small widths: parameters materialized on the CPU, a 2-step sample runs."""
    config = SamplerConfig(frames=9, height=32, width=32, steps=2, cfg_scale=6.0)
    runs = [sample(load_random_real(seed=seed, arch=SMALL), "a dog", config, progress=False).latents
            for seed in (0, 0, 1)]
    assert runs[0].shape == (1, 16, 3, 4, 4) and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
