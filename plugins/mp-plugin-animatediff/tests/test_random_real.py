"""AnimateDiff at the real size with random weights (benchmarks' ``--config real-random``).

The real architecture is built on the meta device (nothing allocated) and compared with the official
manifests: ``tests/data/diffusers_motion_adapter_v2.json`` is the diffusers
``MotionAdapter`` state dict of guoyww/animatediff-motion-adapter-v1-5-2 (567 keys), and
``tests/data/sd15_unet_state_dict.json`` is SD-1.x's ``UNet2DConditionModel`` state dict: the 686 keys of
LaVie's UNet (``plugins/mp-plugin-lavie/tests/data/lavie_base_state_dict.json``) that are not its temporal
ones, which are identical in name and shape to diffusers' SD-1.x UNet, as is the non-motion part of
AnimateDiff's UNet3D. The materialized path runs at small widths.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mp_plugin_animatediff.random_real import REAL_SAMPLER, load_random_real, random_real_components
from mpcore.backbones import CLIP_VIT_L14_TEXT_CONFIG
from mpcore.config import SamplerConfig
from mpcore.sampling import sample

DATA = Path(__file__).resolve().parent / "data"


def manifest(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v[0]) for k, v in json.loads((DATA / name).read_text()).items()}


def shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def meta_parts():
    return random_real_components(device="meta")


def test_the_real_random_unet_holds_the_official_unet_and_adapter_keys_and_shapes(meta_parts):
    unet = meta_parts["unet"]
    adapter_manifest = manifest("diffusers_motion_adapter_v2.json")
    assert {k: v for k, v in shapes(unet).items() if "motion_modules." in k} == adapter_manifest
    assert shapes(unet) == {**manifest("sd15_unet_state_dict.json"), **adapter_manifest}
    # parameter counts of the fact sheets: SD-1.5 UNet 859,520,964; v2 motion modules 453,209,280
    assert sum(p.numel() for n, p in unet.named_parameters() if "motion_modules." in n) == 453_209_280
    assert sum(p.numel() for n, p in unet.named_parameters() if "motion_modules." not in n) == 859_520_964
    assert all(p.is_meta for p in unet.parameters())  # nothing allocated
    assert meta_parts["motion_adapter"] is None  # the UNet holds the motion modules: no second copy


def test_the_real_random_vae_and_text_encoder_are_sd15s(meta_parts):
    assert count(meta_parts["vae"]) == 83_653_863  # SD-1.x AutoencoderKL
    assert count(meta_parts["text_encoder"]) == 123_060_480  # CLIP ViT-L/14 text tower
    assert meta_parts["text_encoder"].get_input_embeddings().weight.shape == (49408, 768)
    assert len(meta_parts["tokenizer"]) == 49408
    assert meta_parts["vae"].config.scaling_factor == 0.18215
    assert REAL_SAMPLER == dict(frames=16, height=512, width=512)


def test_the_motion_modules_sinusoidal_tables_are_computed_not_random(meta_parts):
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    key = "down_blocks.0.motion_modules.0.transformer_blocks.0.pos_embed.pe"
    expected = SinusoidalPositionalEmbedding(320, 32).pe
    assert torch.equal(meta_parts["unet"].state_dict()[key], expected)


SMALL = dict(
    unet=dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8),
    motion_adapter=dict(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=8,
                        motion_norm_num_groups=8, motion_max_seq_length=32, use_motion_mid_block=False),
    vae=dict(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
             up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8, layers_per_block=1),
    text_encoder={**CLIP_VIT_L14_TEXT_CONFIG, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                  "num_hidden_layers": 2, "projection_dim": 32},
)


def test_materialized_weights_are_finite_deterministic_and_sample():
    backbone = load_random_real(seed=3, arch=SMALL)
    again = load_random_real(seed=3, arch=SMALL)
    other = load_random_real(seed=4, arch=SMALL)
    params = dict(backbone.unet.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    assert all(torch.equal(p, q) for p, q in zip(params.values(), again.unet.parameters()))
    assert not torch.equal(params["conv_in.weight"], dict(other.unet.named_parameters())["conv_in.weight"])
    assert backbone.is_random_init and backbone.describe()["model"].startswith("real-random")
    result = sample(backbone, "a horse", SamplerConfig(steps=2, frames=4, height=32, width=32, seed=0), None,
                    progress=False)
    assert result.latents.shape == (1, 4, 4, 8, 8) and torch.isfinite(result.latents).all()
