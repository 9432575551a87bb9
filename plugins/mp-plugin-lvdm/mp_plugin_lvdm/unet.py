"""The lvdm 3D UNet of VideoCrafter2 and DynamiCrafter, written from their code.

``lvdm/modules/networks/openaimodel3d.py`` and ``lvdm/modules/attention.py`` of VideoCrafter2
(github.com/AILab-CVC/VideoCrafter: block layout, ResBlock with the temporal conv ``temopral_conv``
(sic), SpatialTransformer, TemporalTransformer, ``init_attn``, [cos, sin] sinusoids, fps embedding) and
of DynamiCrafter (github.com/Doubiiu/DynamiCrafter: 8 input channels, frame-stride/fps embedding,
per-frame image tokens, image cross-attention ``to_k_ip``/``to_v_ip`` with the 256 model's learnable
``alpha``). Module and parameter names follow the checkpoint's keys.

Layout inside: latents (B, C, T, H, W) are processed as (B*T, C, H, W) by the spatial layers and
reshaped to (B, C, T, H, W) inside the temporal conv / temporal transformer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

TEXT_CONTEXT_LEN = 77
IMAGE_TOKENS_PER_FRAME = 16


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding, **[cos, sin]** order (lvdm/models/utils_diffusion.py)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (lvdm's ``GroupNormSpecific``), its affine parameters too (as under
    the autocast the official scripts sample with): torch refuses a float32 input with float16/bfloat16
    parameters, so a model in a reduced dtype would fail here otherwise."""

    def forward(self, x):
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def _attention(q, k, v, heads: int) -> torch.Tensor:
    """Multi-head softmax attention, scale dim_head**-0.5; (N, L, heads*d) in and out."""
    n, lq, inner = q.shape
    d = inner // heads
    q, k, v = (x.reshape(n, x.shape[1], heads, d).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(n, lq, inner)


class CrossAttention(nn.Module):
    """``to_q/k/v`` (no bias), ``to_out.0``; with ``image_cross_attention`` also ``to_k_ip``/``to_v_ip``
    on the context after the first 77 (text) tokens, added with scale 1 (x (tanh(alpha) + 1) when the
    scale is learnable: the 256 model)."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, dropout: float = 0.0,
                 image_cross_attention: bool = False, image_cross_attention_scale_learnable: bool = False):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        self.image_cross_attention = image_cross_attention
        self.learnable_scale = image_cross_attention_scale_learnable
        if image_cross_attention:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
            if image_cross_attention_scale_learnable:
                self.register_parameter("alpha", nn.Parameter(torch.tensor(0.0)))

    def forward(self, x, context=None):
        q = self.to_q(x)
        if context is None:
            context = x
        if self.image_cross_attention:
            text, image = context[:, :TEXT_CONTEXT_LEN], context[:, TEXT_CONTEXT_LEN:]
            out = _attention(q, self.to_k(text), self.to_v(text), self.heads)
            out_ip = _attention(q, self.to_k_ip(image), self.to_v_ip(image), self.heads)
            if self.learnable_scale:
                out_ip = out_ip * (torch.tanh(self.alpha) + 1)
            out = out + out_ip  # image_cross_attention_scale = 1.0
        else:
            out = _attention(q, self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)  # (value, gate) order
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """self-attention, cross-attention (self again when ``context_dim`` is None), GEGLU FF; pre-LN."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None, dropout: float = 0.0,
                 image_cross_attention: bool = False, image_cross_attention_scale_learnable: bool = False):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout, image_cross_attention,
                                    image_cross_attention_scale_learnable)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, dropout: float,
                 image_cross_attention: bool = False, image_cross_attention_scale_learnable: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, image_cross_attention,
                                  image_cross_attention_scale_learnable)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x, context):
        n, c, h, w = x.shape
        y = self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c)
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = self.proj_out(y)
        return y.reshape(n, h, w, c).permute(0, 3, 1, 2) + x


class TemporalTransformer(nn.Module):
    """Attention over frames: GroupNorm on (B, C, T, H, W) (statistics over all frames), tokens
    (B*H*W, T, C), both attentions self-attention, no positional encoding, no mask."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, dropout: float, conv_proj: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.conv_proj = conv_proj
        if conv_proj:  # init_attn: Conv1d k=1 weights [inner, c, 1]
            self.proj_in = nn.Conv1d(channels, inner, 1)
            self.proj_out = nn.Conv1d(inner, channels, 1)
        else:
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = nn.Linear(inner, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, None, dropout) for _ in range(depth)
        )

    def _project(self, layer, y):
        if self.conv_proj:
            return layer(y.transpose(1, 2)).transpose(1, 2)
        return layer(y)

    def forward(self, x, batch_size: int):
        bt, c, h, w = x.shape
        t = bt // batch_size
        x5 = x.reshape(batch_size, t, c, h, w).permute(0, 2, 1, 3, 4)  # (b, c, t, h, w)
        y = self.norm(x5).permute(0, 3, 4, 2, 1).reshape(batch_size * h * w, t, c)
        y = self._project(self.proj_in, y)
        for block in self.transformer_blocks:
            y = block(y)
        y = self._project(self.proj_out, y)
        y = y.reshape(batch_size, h, w, t, c).permute(0, 3, 4, 1, 2).reshape(bt, c, h, w)
        return y + x


class TemporalConvBlock(nn.Module):
    """Four GN -> SiLU -> [Dropout] -> Conv3d (3,1,1) stages over (B, C, T, H, W); residual."""

    def __init__(self, channels: int, dropout: float = 0.1):
        super().__init__()

        def stage(drop: bool):
            layers = [nn.GroupNorm(32, channels), nn.SiLU()]
            if drop:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))
            return nn.Sequential(*layers)

        self.conv1, self.conv2, self.conv3, self.conv4 = stage(False), stage(True), stage(True), stage(True)

    def forward(self, x):
        identity = x
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return identity + x


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float, temporal_conv: bool):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        self.use_temporal_conv = temporal_conv
        if temporal_conv:
            self.temopral_conv = TemporalConvBlock(out_channels, dropout=0.1)  # sic: the checkpoint's spelling

    def forward(self, x, emb, batch_size: int):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        if self.use_temporal_conv:
            bt, c, hh, ww = h.shape
            h5 = h.reshape(batch_size, bt // batch_size, c, hh, ww).transpose(1, 2)
            h = self.temopral_conv(h5).transpose(1, 2).reshape(bt, c, hh, ww)
        return h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Calls each layer with what it takes: ResBlocks the embedding, spatial transformers the
    context, temporal modules the batch size."""

    def forward(self, x, emb, context, batch_size: int):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, batch_size)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = layer(x, batch_size)
            else:
                x = layer(x)
        return x


UNET_DEFAULTS: dict[str, Any] = dict(
    in_channels=4, out_channels=4, model_channels=320, attention_resolutions=(4, 2, 1), num_res_blocks=2,
    channel_mult=(1, 2, 4, 4), num_head_channels=64, num_heads=-1, transformer_depth=1, temporal_transformer_depth=None,
    context_dim=1024, dropout=0.0, temporal_conv=False, temporal_attention=True, addition_attention=False,
    fps_cond=False, fs_condition=False, default_fs=None, image_cross_attention=False,
    image_cross_attention_scale_learnable=False, use_linear=True, temporal_length=16,
)
UNSUPPORTED = dict(use_relative_position=False, use_causal_attention=False, use_scale_shift_norm=False,
                   resblock_updown=False, use_image_attention=False, tempspatial_aware=False)


def resolve_unet_config(params: dict[str, Any]) -> dict[str, Any]:
    """``unet_config.params`` -> the constructor arguments (defaults as lvdm's UNetModel). Options this
    implementation does not have (relative position, causal attention, ...) are refused."""
    for key, value in UNSUPPORTED.items():
        if params.get(key, value) != value:
            raise ValueError(f"unet_config.params.{key}={params[key]!r} is not supported (VideoCrafter2/DynamiCrafter use {value})")
    if params.get("use_linear", True) is not True:
        raise ValueError("unet_config.params.use_linear must be true (Linear proj_in/proj_out)")
    config = {k: params.get(k, v) for k, v in UNET_DEFAULTS.items()}
    config["attention_resolutions"] = list(config["attention_resolutions"])
    config["channel_mult"] = list(config["channel_mult"])
    if config["temporal_transformer_depth"] is None:
        # DynamiCrafter builds its temporal transformers with transformer_depth; VideoCrafter's default is 1
        config["temporal_transformer_depth"] = config["transformer_depth"] if config["fs_condition"] else 1
    return config


class LVDMUNet3D(nn.Module):
    """lvdm ``UNetModel`` (openaimodel3d.py) as VideoCrafter2 (``fps_cond``) and DynamiCrafter
    (``fs_condition``, ``image_cross_attention``, 8 input channels) configure it."""

    def __init__(self, params: dict[str, Any]):
        super().__init__()
        cfg = self.config = resolve_unet_config(params)
        mc, dropout = cfg["model_channels"], cfg["dropout"]
        emb_dim = mc * 4
        self.gradient_checkpointing = False
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg["fps_cond"] or cfg["fs_condition"]:
            self.fps_embedding = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def heads_of(ch):
            if cfg["num_head_channels"] == -1:
                return cfg["num_heads"], ch // cfg["num_heads"]
            return ch // cfg["num_head_channels"], cfg["num_head_channels"]

        def transformers(ch):
            heads, dim_head = heads_of(ch)
            layers = [SpatialTransformer(ch, heads, dim_head, cfg["transformer_depth"], cfg["context_dim"], dropout,
                                         cfg["image_cross_attention"], cfg["image_cross_attention_scale_learnable"])]
            if cfg["temporal_attention"]:
                layers.append(TemporalTransformer(ch, heads, dim_head, cfg["temporal_transformer_depth"], dropout))
            return layers

        def res(cin, cout):
            return ResBlock(cin, emb_dim, cout, dropout, cfg["temporal_conv"])

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg["in_channels"], mc, 3, padding=1))])
        if cfg["addition_attention"]:
            _, dim_head = heads_of(mc)
            self.init_attn = TimestepEmbedSequential(
                TemporalTransformer(mc, 8, dim_head, cfg["temporal_transformer_depth"], dropout, conv_proj=True))
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg["channel_mult"]):
            for _ in range(cfg["num_res_blocks"]):
                layers = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg["attention_resolutions"]:
                    layers += transformers(ch)
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(cfg["channel_mult"]) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), *transformers(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg["channel_mult"]))[::-1]:
            for i in range(cfg["num_res_blocks"] + 1):
                layers = [res(ch + chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg["attention_resolutions"]:
                    layers += transformers(ch)
                if level and i == cfg["num_res_blocks"]:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(mc, cfg["out_channels"], 3, padding=1))

    def _run(self, module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                fs: torch.Tensor | int | None = None) -> torch.Tensor:
        """x (B, C, T, H, W) (DynamiCrafter: already [noisy, image latent] on channels), timesteps (B,)
        or scalar, context (B, L, D), fs the fps (VideoCrafter2) / frame stride or fps (DynamiCrafter)."""
        cfg = self.config
        b, _, t, h, w = x.shape
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(b)
        emb = self.time_embed(timestep_embedding(timesteps, cfg["model_channels"]).to(x.dtype))
        if hasattr(self, "fps_embedding"):
            if fs is None:
                fs = cfg["default_fs"] if cfg["fs_condition"] else 16
            fs = torch.as_tensor(fs, device=x.device).reshape(-1).expand(b)
            emb = emb + self.fps_embedding(timestep_embedding(fs, cfg["model_channels"]).to(x.dtype))
        emb = emb.repeat_interleave(t, dim=0)
        if cfg["image_cross_attention"] and context.shape[1] == TEXT_CONTEXT_LEN + t * IMAGE_TOKENS_PER_FRAME:
            # frame i sees the text and its own 16 image tokens (frame-major order)
            text = context[:, :TEXT_CONTEXT_LEN].repeat_interleave(t, dim=0)
            image = context[:, TEXT_CONTEXT_LEN:].reshape(b * t, IMAGE_TOKENS_PER_FRAME, context.shape[-1])
            context = torch.cat([text, image], dim=1)
        else:
            context = context.repeat_interleave(t, dim=0)
        hidden = x.permute(0, 2, 1, 3, 4).reshape(b * t, x.shape[1], h, w)
        skips = []
        for index, module in enumerate(self.input_blocks):
            hidden = self._run(module, hidden, emb, context, b)
            if index == 0 and hasattr(self, "init_attn"):
                hidden = self._run(self.init_attn, hidden, emb, context, b)
            skips.append(hidden)
        hidden = self._run(self.middle_block, hidden, emb, context, b)
        for module in self.output_blocks:
            hidden = self._run(module, torch.cat([hidden, skips.pop()], dim=1), emb, context, b)
        out = self.out(hidden)
        return out.reshape(b, t, -1, h, w).permute(0, 2, 1, 3, 4)
