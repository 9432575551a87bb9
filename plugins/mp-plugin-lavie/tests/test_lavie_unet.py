"""The LaVie UNet3D against the fact sheet: exact key/shape map of lavie_base.pt, rotary embedding,
relative position bias, what is per frame and what is not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mp_plugin_lavie.tiny import TINY_UNET_CONFIG
from mp_plugin_lavie.unet import (
    SD14_UNET_CONFIG,
    LaVieUNet3D,
    ResnetBlock3D,
    Transformer3D,
    expected_shapes,
    make_rotary,
    relative_position_bucket,
    resolve_config,
)
from mpcore.config import ConfigError

# Every key of the official lavie_base.pt UNet state dict -> [shape, dtype], in module order (built
# from LaVie's own code, base/models/unet.py of github.com/Vchitect/LaVie, on the meta device).
REFERENCE = Path(__file__).resolve().parent / "data" / "lavie_base_state_dict.json"


def _reference():
    return {k: tuple(v[0]) for k, v in json.loads(REFERENCE.read_text()).items()}


def test_expected_map_at_the_real_config_equals_the_official_manifest():
    reference = _reference()
    ours = expected_shapes()  # SD v1.4 config + LaVie's temporal settings, on the meta device
    assert ours == reference
    assert list(ours) == list(reference)  # same module order too
    assert len(ours) == 830 and sum(math.prod(s) for s in ours.values()) == 909_124_356
    temporal = [k for k in ours if "_temp." in k]
    assert len(temporal) == 144 and sum(k.endswith("rotary_emb.freqs") for k in temporal) == 16


def test_spatial_keys_are_diffusers_sd14_unet_keys():
    """686 keys are a diffusers UNet2DConditionModel's at SD v1.4's config."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        sd = UNet2DConditionModel(**SD14_UNET_CONFIG)
    sd_keys = {k: tuple(v.shape) for k, v in sd.state_dict().items()}
    ours = expected_shapes()
    spatial = {k: v for k, v in ours.items() if "_temp." not in k}
    assert spatial == sd_keys and len(spatial) == 686


def test_sd_unet_config_json_with_2d_names_gives_the_same_model():
    config = dict(SD14_UNET_CONFIG, _class_name="UNet2DConditionModel", _diffusers_version="0.2.2",
                  mid_block_type="UNetMidBlock2DCrossAttn", num_attention_heads=None)
    assert resolve_config(config) == resolve_config(None)
    assert resolve_config(None)["down_block_types"][0] == "CrossAttnDownBlock3D"


@pytest.mark.parametrize("change,match", [
    (dict(use_linear_projection=True), "use_linear_projection"),
    (dict(down_block_types=["DownBlock2D", "SimpleCrossAttnDownBlock2D"]), "SimpleCrossAttnDownBlock2D"),
    (dict(foo=1), "foo"),
    (dict(attention_head_dim=4), "head width must be an integer >= 32"),
])
def test_unsupported_configs_are_named(change, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config({**TINY_UNET_CONFIG, **change})


def test_rotary_frequencies_and_interleaved_pairs():
    rotary = make_rotary()
    expected = 1.0 / 10000 ** (torch.arange(0, 32, 2).float() / 32)
    assert torch.allclose(rotary.freqs, expected) and not rotary.freqs.requires_grad
    assert torch.allclose(rotary.freqs[:4], torch.tensor([1.0, 0.5623, 0.3162, 0.1778]), atol=1e-4)
    # a unit vector on channel 0 at position p turns into (cos p, sin p) on channels (0, 1):
    # adjacent pairs rotate together; channels past 32 pass through
    x = torch.zeros(1, 1, 4, 40)
    x[..., 0] = 1.0
    x[..., 35] = 2.0
    out = rotary.rotate_queries_or_keys(x)
    p = torch.arange(4.0)
    assert torch.allclose(out[0, 0, :, 0], torch.cos(p), atol=1e-6)
    assert torch.allclose(out[0, 0, :, 1], torch.sin(p), atol=1e-6)
    assert torch.equal(out[..., 32:], x[..., 32:])


def test_rotary_scores_depend_only_on_relative_position():
    """The defining property of RoPE: rot(q, m) . rot(k, n) is a function of m - n."""
    rotary = make_rotary()
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 32, generator=generator)
    frames = 12
    rq = rotary.rotate_queries_or_keys(q.expand(1, 1, frames, 32))[0, 0]
    rk = rotary.rotate_queries_or_keys(k.expand(1, 1, frames, 32))[0, 0]
    scores = rq @ rk.T  # scores[m, n]
    for offset in range(-frames + 1, frames):
        diagonal = torch.diagonal(scores, offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5), offset
    assert not torch.allclose(torch.diagonal(scores, 0)[0], torch.diagonal(scores, 3)[0])


def test_relative_position_buckets_follow_the_fact_sheet():
    pos = torch.arange(16)
    buckets = relative_position_bucket(pos[:, None] - pos[None, :])  # n = i - j
    assert buckets[0].tolist() == [0, 17, 18, 19, 20, 21, 22, 23, 24, 24, 25, 25, 26, 26, 27, 27]
    assert buckets[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 9, 10, 10, 11, 11]
    assert int(relative_position_bucket(torch.tensor([-1000]))) == 31 and int(relative_position_bucket(torch.tensor([1000]))) == 15


def test_resnet_group_norm_pools_over_frames():
    """LaVie's ResNet GroupNorms see the 5-D tensor: one frame's output depends on the other frames."""
    torch.manual_seed(0)
    block = ResnetBlock3D(16, 16, 8, groups=4, eps=1e-5).eval()
    x, temb = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 8)
    x2 = x.clone()
    x2[:, :, 2] *= 5.0
    with torch.no_grad():
        assert not torch.allclose(block(x, temb)[:, :, 0], block(x2, temb)[:, :, 0], atol=1e-4)


def test_transformer_is_per_frame_until_the_temporal_branch_is_trained():
    """At LaVie's init (temporal to_out zero) the transformer is per frame; with it, frames mix."""
    torch.manual_seed(0)
    rotary = make_rotary()
    block = Transformer3D(64, 2, 8, groups=8, rotary_emb=rotary).eval()
    x, text = torch.randn(1, 64, 3, 2, 2), torch.randn(1, 5, 8)
    x2 = x.clone()
    x2[:, :, 2] = torch.randn(1, 64, 2, 2)
    with torch.no_grad():
        assert torch.allclose(block(x, text)[:, :, 0], block(x2, text)[:, :, 0], atol=1e-6)
        torch.nn.init.normal_(block.transformer_blocks[0].attn_temp.to_out[0].weight, std=0.1)
        assert not torch.allclose(block(x, text)[:, :, 0], block(x2, text)[:, :, 0], atol=1e-4)


def test_one_rotary_module_shared_by_every_temporal_attention():
    with torch.device("meta"):
        unet = LaVieUNet3D()
    rotaries = {id(m.attn_temp.rotary_emb) for m in unet.modules() if hasattr(m, "attn_temp")}
    assert len(rotaries) == 1
    assert sum(1 for k in unet.state_dict() if k.endswith("rotary_emb.freqs")) == 16


def test_tiny_unet_output_shape_and_odd_sizes():
    from mp_plugin_lavie.tiny import tiny_unet

    unet = tiny_unet(0).eval()
    with torch.no_grad():
        for h, w in ((8, 8), (6, 10)):  # 6x10 needs the forwarded up-sampling size
            out = unet(torch.randn(2, 4, 3, h, w), torch.tensor(500), torch.randn(2, 7, 32))
            assert out.shape == (2, 4, 3, h, w) and torch.isfinite(out).all()
