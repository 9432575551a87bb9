"""LaVie at the real size with random weights (benchmarks' ``--config real-random``): the UNet built on
the meta device (nothing allocated) has exactly the 830 keys and shapes of ``lavie_base.pt``
(tests/data/lavie_base_state_dict.json, built from base/models/unet.py of github.com/Vchitect/LaVie),
the VAE and text encoder are SD v1.4's; the materialized path runs at small widths."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mp_plugin_lavie import expected_keys
from mp_plugin_lavie.random_real import REAL_SAMPLER, load_random_real, random_real_components
from mp_plugin_lavie.tiny import TINY_UNET_CONFIG
from mp_plugin_lavie.unet import make_rotary
from mpcore.backbones import CLIP_VIT_L14_TEXT_CONFIG
from mpcore.config import SamplerConfig
from mpcore.sampling import sample

DATA = Path(__file__).resolve().parent / "data"


def test_the_real_random_model_has_the_checkpoints_keys_and_shapes():
    parts = random_real_components(device="meta")
    unet = parts["unet"]
    found = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    official = {k: tuple(v[0]) for k, v in json.loads((DATA / "lavie_base_state_dict.json").read_text()).items()}
    assert found == official and found == expected_keys()
    # every weight on the meta device; the rotary frequencies (a checkpoint key, not a weight) computed
    freqs = [p for n, p in unet.named_parameters() if n.endswith("rotary_emb.freqs")]
    assert len(freqs) == 1 and torch.equal(freqs[0], make_rotary().freqs)
    assert all(p.is_meta for n, p in unet.named_parameters() if not n.endswith("rotary_emb.freqs"))
    assert sum(p.numel() for p in parts["vae"].parameters()) == 83_653_863
    assert sum(p.numel() for p in parts["text_encoder"].parameters()) == 123_060_480
    assert REAL_SAMPLER == dict(frames=16, height=320, width=512)


SMALL = dict(
    unet=TINY_UNET_CONFIG,
    vae=dict(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
             up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8, layers_per_block=1),
    text_encoder={**CLIP_VIT_L14_TEXT_CONFIG, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                  "num_hidden_layers": 2, "projection_dim": 32},
)


def test_materialized_weights_are_finite_deterministic_and_sample():
    backbone = load_random_real(seed=1, arch=SMALL)
    again = load_random_real(seed=1, arch=SMALL)
    assert all(torch.isfinite(p).all() for p in backbone.unet.parameters())
    assert all(torch.equal(p, q) for p, q in zip(backbone.unet.parameters(), again.unet.parameters()))
    assert backbone.is_random_init and backbone.describe()["model"].startswith("real-random")
    result = sample(backbone, "a horse", SamplerConfig(steps=2, frames=4, height=32, width=32, seed=0), None,
                    progress=False)
    assert result.latents.shape == (1, 4, 4, 8, 8) and torch.isfinite(result.latents).all()
