"""The LaVie base UNet3D: Stable Diffusion v1.4's UNet inflated with temporal attention.

Written from the official LaVie code (github.com/Vchitect/LaVie, ``base/models/unet.py``,
``unet_blocks.py``, ``attention.py``, ``resnet.py``; LaVie, Wang et al. 2023,
"LaVie: High-Quality Video Generation with Cascaded Latent Diffusion Models", base stage), on
current diffusers building blocks. Its ``state_dict()`` is exactly the 830 keys of the released
``lavie_base.pt`` (listed in tests/data/lavie_base_state_dict.json), in the same order.

The layout between blocks is (B, C, F, H, W). What is per frame and what is not (as in the official
``base/models/resnet.py`` and ``base/models/attention.py``):

- every convolution is a 2D convolution applied to each frame (:class:`FrameConv2d`); there is no
  temporal convolution;
- the GroupNorms of the ResNet blocks and ``conv_norm_out`` see the 5-D tensor, so their statistics
  pool over the frames too (a trap: diffusers' ``ResnetBlock2D`` would normalize per frame, hence
  :class:`ResnetBlock3D`); the transformer's GroupNorm is per frame;
- each transformer block is spatial self-attention -> cross-attention -> temporal attention -> GEGLU
  feed-forward; the temporal attention (:class:`TemporalAttention`) is full and bidirectional over
  the frames, with rotary position embedding on q and k plus a learned T5-style relative position
  bias; there is no absolute temporal position encoding and no mask.

The configuration is a diffusers ``UNet2DConditionModel`` config (SD v1.4's ``unet/config.json`` by
default, :data:`SD14_UNET_CONFIG`) plus LaVie's temporal settings (:data:`LAVIE_TEMPORAL`); 2D block
names are read as their 3D counterparts, as LaVie's ``from_pretrained_2d`` does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.upsampling import Upsample2D
from rotary_embedding_torch import RotaryEmbedding
from torch import nn
from torch.utils.checkpoint import checkpoint

from mpcore.config import ConfigError

# SD v1.4's unet/config.json (CompVis/stable-diffusion-v1-4), which LaVie's from_pretrained_2d reads.
SD14_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

# What LaVie's from_pretrained_2d sets on top (base/models/unet.py in github.com/Vchitect/LaVie).
LAVIE_TEMPORAL: dict[str, Any] = {
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "use_first_frame": False,
    "use_relative_position": False,
}

# Fixed by the checkpoint's shapes: one RotaryEmbedding(32) (freqs [16]) and a [32 buckets, heads]
# relative position bias table in every temporal attention (the checkpoint's key list;
# TemporalAttention and RelativePositionBias in LaVie's base/models/attention.py).
ROTARY_DIM = 32
ROTARY_THETA = 10000
REL_POS_BUCKETS = 32
REL_POS_MAX_DISTANCE = 32

_BLOCK_3D = {
    "CrossAttnDownBlock2D": "CrossAttnDownBlock3D",
    "DownBlock2D": "DownBlock3D",
    "CrossAttnUpBlock2D": "CrossAttnUpBlock3D",
    "UpBlock2D": "UpBlock3D",
    "UNetMidBlock2DCrossAttn": "UNetMidBlock3DCrossAttn",
}
_DOWN = ("CrossAttnDownBlock3D", "DownBlock3D")
_UP = ("CrossAttnUpBlock3D", "UpBlock3D")
# diffusers UNet2DConditionModel settings this implementation supports only at this value
_FIXED = {
    "center_input_sample": False,
    "act_fn": "silu",
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "use_first_frame": False,
    "use_relative_position": False,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "attention_type": "default",
    "dropout": 0.0,
    "addition_embed_type_num_heads": 64,
    "num_attention_heads": None,
}
_USED = set(SD14_UNET_CONFIG) | {"mid_block_type", "upcast_attention"}


def resolve_config(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """A full LaVie UNet3D config: SD v1.4's values, updated with ``config`` (a diffusers UNet config,
    e.g. a ``unet/config.json``), plus LaVie's temporal settings; block names in their 3D form.

    Raises :class:`~mpcore.config.ConfigError` naming any setting this implementation does not support.
    """
    given = {k: v for k, v in (config or {}).items() if not k.startswith("_")}
    resolved = {**SD14_UNET_CONFIG, "upcast_attention": False, **LAVIE_TEMPORAL, **given}
    problems = []
    for key, value in resolved.items():
        if key in _FIXED:
            if value != _FIXED[key] and not (isinstance(value, list) and value == [_FIXED[key]] * len(value)):
                problems.append(f"{key}={value!r} (supported: {_FIXED[key]!r})")
        elif key not in _USED:
            problems.append(f"{key} (unknown setting)")
    for key in ("down_block_types", "up_block_types"):
        resolved[key] = [_BLOCK_3D.get(name, name) for name in resolved[key]]
    resolved["mid_block_type"] = _BLOCK_3D.get(resolved["mid_block_type"], resolved["mid_block_type"])
    down, up, channels = resolved["down_block_types"], resolved["up_block_types"], resolved["block_out_channels"]
    problems += [f"down block {n!r} (supported: {', '.join(_DOWN)})" for n in down if n not in _DOWN]
    problems += [f"up block {n!r} (supported: {', '.join(_UP)})" for n in up if n not in _UP]
    if resolved["mid_block_type"] != "UNetMidBlock3DCrossAttn":
        problems.append(f"mid_block_type={resolved['mid_block_type']!r} (supported: UNetMidBlock3DCrossAttn)")
    if not (len(down) == len(up) == len(channels)):
        problems.append("down_block_types, up_block_types and block_out_channels must have the same length")
    heads = resolved["attention_head_dim"]
    if isinstance(heads, list) and len(heads) != len(channels):
        problems.append("attention_head_dim as a list needs one entry per block")
    if problems:
        raise ConfigError("unsupported LaVie UNet config: " + "; ".join(problems))
    resolved = {k: v for k, v in resolved.items() if k in _USED or k in LAVIE_TEMPORAL}  # drop checked defaults
    for c, h in zip(channels, _per_block(heads, len(channels))):
        if c % h or c // h < ROTARY_DIM:
            raise ConfigError(
                f"unsupported LaVie UNet config: {c} channels with {h} heads; the head width must be an "
                f"integer >= {ROTARY_DIM} (the rotary embedding covers {ROTARY_DIM} channels per head)"
            )
    return resolved


def read_config(path: str | Path | None) -> dict[str, Any]:
    """:func:`resolve_config` of a JSON file (None: SD v1.4's)."""
    if path is None:
        return resolve_config(None)
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"UNet config not found: {path} (pass --unet-config with a diffusers unet/config.json)")
    try:
        return resolve_config(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise ConfigError(f"UNet config {path} is not valid JSON: {error}") from None


def _per_block(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def make_rotary() -> RotaryEmbedding:
    """LaVie's single rotary embedding, shared by every temporal attention: rotary-embedding-torch's
    ``RotaryEmbedding(32)``: frequencies ``1 / 10000^(arange(0, 32, 2) / 32)`` (its ``freqs``
    parameter, a checkpoint key, not trained), adjacent channel pairs rotated by ``pos * freq``
    (the interleaved form, not GPT-NeoX's half split), positions 0..F-1, only the first 32 channels
    of each head."""
    return RotaryEmbedding(ROTARY_DIM, theta=ROTARY_THETA)


# ----------------------------------------------------------------------------- frame helpers


def _to_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W), batch-major."""
    return x.transpose(1, 2).flatten(0, 1)


def _from_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W)."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2)


class FrameConv2d(nn.Conv2d):
    """A 2D convolution applied to every frame of a (B, C, F, H, W) video (LaVie's "inflated" conv)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _from_frames(super().forward(_to_frames(x)), x.shape[0])


# ----------------------------------------------------------------------------- ResNet


class ResnetBlock3D(nn.Module):
    """SD's ResNet block on videos. Its GroupNorms see (B, C, F, H, W): statistics are pooled over
    channels-in-group, frames and pixels, as LaVie's are (plain nn.GroupNorm on the
    5-D tensor in its base/models/resnet.py); convolutions are per frame."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float,
                 output_scale_factor: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = FrameConv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = FrameConv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = FrameConv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


# ----------------------------------------------------------------------------- temporal attention


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = REL_POS_BUCKETS,
                             max_distance: int = REL_POS_MAX_DISTANCE) -> torch.Tensor:
    """T5's bidirectional bucketing of ``n = i - j`` (query i, key j) (Raffel et al. 2020).

    Half the buckets per sign (keys after the query, n < 0, get an offset of ``num_buckets / 2``);
    within a half, |n| below a quarter of the buckets is its own bucket, larger |n| fall in
    logarithmically wider buckets up to ``max_distance``, capped at the half's last bucket.
    """
    half = num_buckets // 2
    bucket = (relative_position < 0).long() * half
    n = relative_position.abs()
    exact = half // 2
    large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return bucket + torch.where(n < exact, n, large)


class RelativePositionBias(nn.Module):
    """A learned per-head bias of the attention scores from the bucketed frame offset."""

    def __init__(self, heads: int, num_buckets: int = REL_POS_BUCKETS, max_distance: int = REL_POS_MAX_DISTANCE):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def forward(self, frames: int, device: torch.device) -> torch.Tensor:
        """(heads, F, F) bias for query frame i and key frame j."""
        pos = torch.arange(frames, device=device)
        buckets = relative_position_bucket(pos[:, None] - pos[None, :], self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)


class TemporalAttention(nn.Module):
    """Self-attention over the frames of each pixel (``TemporalAttention`` in LaVie's
    ``base/models/attention.py``).

    ``softmax(rot(q * d^-1/2) . rot(k) + bias(i - j)) v``: q/k/v without bias, rotary on q (after
    the scale, which commutes with it) and k, the relative position bias added unscaled; no mask.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, rotary_emb: RotaryEmbedding):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
        self.time_rel_pos_bias = RelativePositionBias(heads)
        self.rotary_emb = rotary_emb  # one module shared by all temporal attentions
        nn.init.zeros_(self.to_out[0].weight)  # LaVie starts the temporal branch at identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, F, C) -> (N, F, C)."""
        n, f, _ = x.shape

        def heads(t):  # (N, F, h*d) -> (N, h, F, d)
            return t.view(n, f, self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.to_q(x) * self.scale), heads(self.to_k(x)), heads(self.to_v(x))
        q = self.rotary_emb.rotate_queries_or_keys(q)  # sequence dim -2 = frames
        k = self.rotary_emb.rotate_queries_or_keys(k)
        bias = self.time_rel_pos_bias(f, x.device).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # q is already scaled
        out = out.transpose(1, 2).reshape(n, f, -1)
        return self.to_out[1](self.to_out[0](out))


# ----------------------------------------------------------------------------- transformer


class TransformerBlock3D(nn.Module):
    """attn1 (spatial self) -> attn2 (text cross) -> attn_temp (over frames) -> GEGLU feed-forward,
    each pre-LayerNorm with a residual (``BasicTransformerBlock`` in LaVie's base/models/attention.py)."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int, rotary_emb: RotaryEmbedding,
                 upcast_attention: bool = False):
        super().__init__()
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=dim_head, bias=False, upcast_attention=upcast_attention)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=dim_head,
                               bias=False, upcast_attention=upcast_attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn_temp = TemporalAttention(dim, heads, dim_head, rotary_emb)
        self.norm_temp = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")  # (value, gate) -> value * gelu(gate), exact gelu
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, frames: int) -> torch.Tensor:
        """x: (B*F, H*W, C); text: (B*F, L, D)."""
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), encoder_hidden_states=text) + x
        bf, pixels, c = x.shape
        xt = x.view(bf // frames, frames, pixels, c).transpose(1, 2).reshape(-1, frames, c)  # (B*HW, F, C)
        xt = self.attn_temp(self.norm_temp(xt)) + xt
        x = xt.view(bf // frames, pixels, frames, c).transpose(1, 2).reshape(bf, pixels, c)
        return self.ff(self.norm3(x)) + x


class Transformer3D(nn.Module):
    """GroupNorm (per frame) -> 1x1 conv -> transformer block -> 1x1 conv, with a residual."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int, groups: int, rotary_emb: RotaryEmbedding,
                 upcast_attention: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock3D(channels, heads, channels // heads, cross_attention_dim, rotary_emb, upcast_attention)]
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        residual = _to_frames(x)
        y = self.proj_in(self.norm(residual)).permute(0, 2, 3, 1).reshape(b * f, h * w, c)
        text = text.repeat_interleave(f, dim=0)  # 'b n c -> (b f) n c'
        for block in self.transformer_blocks:
            y = block(y, text, f)
        y = self.proj_out(y.reshape(b * f, h, w, c).permute(0, 3, 1, 2))
        return _from_frames(y + residual, b)


# ----------------------------------------------------------------------------- blocks


def _per_frame(module: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    return _from_frames(module(_to_frames(x), **kwargs), x.shape[0])


class DownBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, layers: int, groups: int, eps: float,
                 add_downsample: bool, downsample_padding: int, heads: int | None = None,
                 cross_attention_dim: int | None = None, rotary_emb: RotaryEmbedding | None = None,
                 upcast_attention: bool = False):
        super().__init__()
        if heads is not None:  # CrossAttnDownBlock3D
            self.attentions = nn.ModuleList(
                [Transformer3D(out_channels, heads, cross_attention_dim, groups, rotary_emb, upcast_attention)
                 for _ in range(layers)]
            )
        else:
            self.attentions = None
        self.resnets = nn.ModuleList(
            [ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps)
             for i in range(layers)]
        )
        self.downsamplers = nn.ModuleList(
            [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding, name="op")]
        ) if add_downsample else None

    def forward(self, x, temb, text):
        outputs = ()
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, text)
            outputs += (x,)
        if self.downsamplers is not None:
            x = _per_frame(self.downsamplers[0], x)
            outputs += (x,)
        return x, outputs


class UpBlock3D(nn.Module):
    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int, layers: int,
                 groups: int, eps: float, add_upsample: bool, heads: int | None = None,
                 cross_attention_dim: int | None = None, rotary_emb: RotaryEmbedding | None = None,
                 upcast_attention: bool = False):
        super().__init__()
        if heads is not None:  # CrossAttnUpBlock3D
            self.attentions = nn.ModuleList(
                [Transformer3D(out_channels, heads, cross_attention_dim, groups, rotary_emb, upcast_attention)
                 for _ in range(layers)]
            )
        else:
            self.attentions = None
        resnets = []
        for i in range(layers):
            skip = in_channels if i == layers - 1 else out_channels
            resnet_in = prev_output_channel if i == 0 else out_channels
            resnets.append(ResnetBlock3D(resnet_in + skip, out_channels, temb_channels, groups, eps))
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) \
            if add_upsample else None

    def forward(self, x, skips, temb, text, upsample_size=None):
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips[-1 - i]], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, text)
        if self.upsamplers is not None:  # nearest x2 in H, W only (frames untouched)
            x = _per_frame(self.upsamplers[0], x, output_size=upsample_size)
        return x


class MidBlock3D(nn.Module):
    """UNetMidBlock3DCrossAttn: resnet -> transformer -> resnet."""

    def __init__(self, channels: int, temb_channels: int, groups: int, eps: float, heads: int, cross_attention_dim: int,
                 rotary_emb: RotaryEmbedding, output_scale_factor: float = 1.0, upcast_attention: bool = False):
        super().__init__()
        self.attentions = nn.ModuleList(
            [Transformer3D(channels, heads, cross_attention_dim, groups, rotary_emb, upcast_attention)]
        )
        self.resnets = nn.ModuleList(
            [ResnetBlock3D(channels, channels, temb_channels, groups, eps, output_scale_factor) for _ in range(2)]
        )

    def forward(self, x, temb, text):
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, text), temb)


# ----------------------------------------------------------------------------- UNet


class LaVieUNet3D(nn.Module):
    """``eps = unet(x_t (B, 4, F, h, w), t, text (B, L, 768))`` (as LaVie's pipeline_videogen.py calls
    it: one text condition per video, repeated per frame inside; the timestep embedding is SD's: 320
    sinusoidal channels, cos first, then Linear-SiLU-Linear to 1280)."""

    def __init__(self, config: dict[str, Any] | None = None, rotary_emb: RotaryEmbedding | None = None):
        super().__init__()
        config = resolve_config(config)
        self.config = config
        self.gradient_checkpointing = False
        channels = list(config["block_out_channels"])
        heads = _per_block(config["attention_head_dim"], len(channels))
        layers, groups, eps = config["layers_per_block"], config["norm_num_groups"], config["norm_eps"]
        cross, upcast = config["cross_attention_dim"], config["upcast_attention"]
        temb = channels[0] * 4
        rotary = rotary_emb if rotary_emb is not None else make_rotary()

        self.conv_in = FrameConv2d(config["in_channels"], channels[0], 3, padding=1)
        self.time_proj = Timesteps(channels[0], config["flip_sin_to_cos"], config["freq_shift"])
        self.time_embedding = TimestepEmbedding(channels[0], temb, act_fn="silu")

        down = []
        out = channels[0]
        for i, kind in enumerate(config["down_block_types"]):
            prev, out = out, channels[i]
            cross_attn = kind == "CrossAttnDownBlock3D"
            down.append(DownBlock3D(prev, out, temb, layers, groups, eps, add_downsample=i < len(channels) - 1,
                                    downsample_padding=config["downsample_padding"],
                                    heads=heads[i] if cross_attn else None, cross_attention_dim=cross,
                                    rotary_emb=rotary if cross_attn else None, upcast_attention=upcast))
        self.down_blocks = nn.ModuleList(down)

        up = []
        rev_channels, rev_heads = channels[::-1], heads[::-1]
        out = rev_channels[0]
        for i, kind in enumerate(config["up_block_types"]):
            prev, out = out, rev_channels[i]
            skip_in = rev_channels[min(i + 1, len(channels) - 1)]
            cross_attn = kind == "CrossAttnUpBlock3D"
            up.append(UpBlock3D(skip_in, prev, out, temb, layers + 1, groups, eps, add_upsample=i < len(channels) - 1,
                                heads=rev_heads[i] if cross_attn else None, cross_attention_dim=cross,
                                rotary_emb=rotary if cross_attn else None, upcast_attention=upcast))
        self.up_blocks = nn.ModuleList(up)
        # registered after the up blocks: the checkpoint's key order (tests/data/lavie_base_state_dict.json)
        self.mid_block = MidBlock3D(channels[-1], temb, groups, eps, heads[-1], cross, rotary,
                                    output_scale_factor=config["mid_block_scale_factor"], upcast_attention=upcast)

        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=eps)  # pooled over frames too
        self.conv_out = FrameConv2d(channels[0], config["out_channels"], 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def _call(self, block, *args, **kwargs):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        batch = sample.shape[0]
        up_factor = 2 ** (len(self.up_blocks) - 1)
        forward_upsample_size = any(s % up_factor for s in sample.shape[-2:])

        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(batch)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype))

        x = self.conv_in(sample)
        skips = (x,)
        for block in self.down_blocks:
            x, outputs = self._call(block, x, emb, encoder_hidden_states)
            skips += outputs
        x = self._call(self.mid_block, x, emb, encoder_hidden_states)
        for i, block in enumerate(self.up_blocks):
            block_skips, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            size = tuple(skips[-1].shape[-2:]) if forward_upsample_size and i < len(self.up_blocks) - 1 else None
            x = self._call(block, x, block_skips, emb, encoder_hidden_states, size)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def expected_shapes(config: dict[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """The key -> shape map of the UNet at ``config``, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        unet = LaVieUNet3D(config)
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}
