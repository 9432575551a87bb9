"""OpenCLIP parts: the text encoder (``cond_stage_model``), the image embedder (``embedder``), the
Resampler (``image_proj_model``) and learnable tokens on OpenCLIP's tokenizer.

As ``lvdm/modules/encoders/condition.py`` of VideoCrafter2 (github.com/AILab-CVC/VideoCrafter:
``FrozenOpenCLIPEmbedder``, penultimate layer then ``ln_final``, pad id 0, text_projection/logit_scale/last
block kept but unused) and of DynamiCrafter (github.com/Doubiiu/DynamiCrafter:
``FrozenOpenCLIPImageEmbedderV2``, 257 tokens of the last visual block without ``ln_post``/``proj``,
kornia-style antialiased bicubic resize to 224, CLIP mean/std; ``lvdm/modules/encoders/resampler.py``, the
Resampler with inner dim 768 and dim_head**-0.25 on q and k).
The residual attention blocks are open_clip's own (``open_clip.transformer``), whose keys are the
checkpoint's; weights all come from the checkpoint (nothing is downloaded).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm, Transformer, VisionTransformer
from torch import nn

from mpcore.interfaces import TextTokens

SOT, EOT, PAD = 49406, 49407, 0
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def openclip_config(arch: str | dict[str, Any]) -> dict[str, Any]:
    """An OpenCLIP model config (embed_dim, vision_cfg, text_cfg): by name from open_clip's bundled
    configs (offline), or given as a dict."""
    if isinstance(arch, dict):
        return arch
    from open_clip import get_model_config

    config = get_model_config(arch)
    if config is None:
        raise ValueError(f"unknown OpenCLIP architecture {arch!r}")
    return config


class _TextLeftovers(nn.Module):
    """token_embedding, positional_embedding, ln_final, text_projection, logit_scale of an OpenCLIP CLIP."""

    def _build_text_parts(self, embed_dim: int, text_cfg: dict[str, Any]):
        width, ctx = text_cfg["width"], text_cfg.get("context_length", 77)
        self.token_embedding = nn.Embedding(text_cfg.get("vocab_size", 49408), width)
        self.positional_embedding = nn.Parameter(torch.empty(ctx, width))
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)


class OpenCLIPTextModel(_TextLeftovers):
    """``cond_stage_model.model``: the text tower of an OpenCLIP CLIP (``visual`` deleted)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        text_cfg = config["text_cfg"]
        self._build_text_parts(config["embed_dim"], text_cfg)
        self.transformer = Transformer(text_cfg["width"], text_cfg["layers"], text_cfg["heads"],
                                       mlp_ratio=text_cfg.get("mlp_ratio", 4.0), batch_first=True)
        ctx = self.positional_embedding.shape[0]
        self.register_buffer("attn_mask", torch.full((ctx, ctx), float("-inf")).triu_(1), persistent=False)


class FrozenOpenCLIPEmbedder(nn.Module):
    """Text -> (B, 77, D): blocks 0..n-2 (penultimate layer), then ``ln_final``; no pooling/projection."""

    def __init__(self, params: dict[str, Any]):
        super().__init__()
        layer = params.get("layer", "penultimate")
        if layer not in ("penultimate", "last"):
            raise ValueError(f"cond_stage_config.params.layer must be 'penultimate' or 'last', got {layer!r}")
        self.layer_idx = 1 if layer == "penultimate" else 0
        self.model = OpenCLIPTextModel(openclip_config(params.get("arch", "ViT-H-14")))

    def forward(self, tokens: torch.Tensor, override: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        model = self.model
        x = model.token_embedding(tokens)
        for token_id, row in (override or {}).items():
            x = torch.where((tokens == token_id).unsqueeze(-1), row.to(dtype=x.dtype, device=x.device), x)
        x = x + model.positional_embedding.to(x.dtype)
        mask = model.attn_mask.to(device=x.device)
        blocks = model.transformer.resblocks
        for block in blocks[: len(blocks) - self.layer_idx]:
            x = block(x, attn_mask=mask)
        return model.ln_final(x)


class OpenCLIPImageModel(_TextLeftovers):
    """``embedder.model``: an OpenCLIP CLIP without its text ``transformer`` (the text leftovers stay)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        v = config["vision_cfg"]
        self.visual = VisionTransformer(
            image_size=v.get("image_size", 224), patch_size=v["patch_size"], width=v["width"], layers=v["layers"],
            heads=v["width"] // v.get("head_width", 64), mlp_ratio=v.get("mlp_ratio", 4.0), output_dim=config["embed_dim"],
        )
        self._build_text_parts(config["embed_dim"], config["text_cfg"])


def antialiased_bicubic_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """kornia.geometry.resize(x, size, 'bicubic', align_corners=True, antialias=True): a Gaussian blur
    with sigma = max((in/out - 1)/2, 0.001) per axis, kernel odd(int(max(4 sigma, 3))), reflect
    border, then bicubic interpolation."""
    h, w = x.shape[-2:]
    factors = (h / size[0], w / size[1])
    if any(f > 1 for f in factors):
        sigmas = [max((f - 1.0) / 2.0, 0.001) for f in factors]
        kernels = []
        for sigma in sigmas:
            k = int(max(2.0 * 2 * sigma, 3))
            k += 1 - k % 2
            pos = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
            g = torch.exp(-pos.pow(2) / (2 * sigma**2))
            kernels.append(g / g.sum())
        ky, kx = kernels
        c = x.shape[1]
        x = F.pad(x, (kx.numel() // 2, kx.numel() // 2, ky.numel() // 2, ky.numel() // 2), mode="reflect")
        x = F.conv2d(x, ky.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        x = F.conv2d(x, kx.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


class FrozenOpenCLIPImageEmbedderV2(nn.Module):
    """Image in [-1, 1] -> (B, 257, width): resize to 224 (aspect not kept), CLIP-normalise, patch +
    class tokens, positional embedding, ``ln_pre``, all blocks; no ``ln_post``, no ``proj``."""

    def __init__(self, params: dict[str, Any]):
        super().__init__()
        self.model = OpenCLIPImageModel(openclip_config(params.get("arch", "ViT-H-14")))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD), persistent=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        size = self.model.visual.image_size
        x = antialiased_bicubic_resize(x, tuple(size))
        x = (x + 1.0) / 2.0
        return (x - self.mean.to(x)[None, :, None, None]) / self.std.to(x)[None, :, None, None]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        x = visual.conv1(self.preprocess(image).to(visual.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks:
            x = block(x)
        return x


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        inner = dim_head * heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x, latents):
        x, latents = self.norm1(x), self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        scale = self.dim_head**-0.25
        weight = ((q * scale) @ (k * scale).transpose(-2, -1)).float().softmax(dim=-1).to(q.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class Resampler(nn.Module):
    """``image_proj_model``: (B, 257, 1280) image tokens -> (B, num_queries * video_length, output_dim)."""

    def __init__(self, params: dict[str, Any]):
        super().__init__()
        dim, depth = params.get("dim", 1024), params.get("depth", 8)
        dim_head, heads = params.get("dim_head", 64), params.get("heads", 16)
        queries = params.get("num_queries", 8) * params.get("video_length", 1)
        ff = dim * params.get("ff_mult", 4)
        self.latents = nn.Parameter(torch.randn(1, queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(params.get("embedding_dim", 768), dim)
        self.proj_out = nn.Linear(dim, params.get("output_dim", 1024))
        self.norm_out = nn.LayerNorm(params.get("output_dim", 1024))
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, dim_head, heads),
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ff, bias=False), nn.GELU(), nn.Linear(ff, dim, bias=False)),
            ])
            for _ in range(depth)
        )

    def forward(self, x):
        latents = self.latents.repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class OpenCLIPTextTokens(TextTokens):
    """:class:`~mpcore.interfaces.TextTokens` on open_clip's BPE tokenizer (which has no
    ``add_tokens``): added token strings are cut out of the prompt before BPE and mapped to rows
    appended to ``token_embedding``; tokenization otherwise as ``open_clip.tokenize`` (SOT + BPE + EOT,
    truncated to 77 with EOT last, padded with id 0)."""

    def __init__(self, encoder: FrozenOpenCLIPEmbedder, device: torch.device, dtype: torch.dtype):
        from open_clip.tokenizer import SimpleTokenizer

        self.encoder = encoder
        self.tokenizer = SimpleTokenizer()
        self.context_length = encoder.model.positional_embedding.shape[0]
        self.device, self.dtype = device, dtype
        self.added: dict[str, int] = {}

    def add_tokens(self, tokens: list[str]) -> list[int]:
        new = [t for t in tokens if t not in self.added]
        if new:
            embedding = self.encoder.model.token_embedding
            base = embedding.weight.shape[0]
            for k, token in enumerate(new):
                self.added[token] = base + k
            rows = embedding.weight.new_zeros(len(new), embedding.weight.shape[1])
            weight = torch.cat([embedding.weight.detach(), rows])
            embedding.weight = nn.Parameter(weight, requires_grad=False)
            embedding.num_embeddings = weight.shape[0]
        return [self.added[t] for t in tokens]

    def word_embedding(self, word: str) -> torch.Tensor:
        ids = self.tokenizer.encode(word)
        if not ids:
            raise ValueError(f"init word {word!r} tokenizes to nothing")
        return self.embedding_table()[ids].detach().float().mean(0)

    def embedding_table(self) -> torch.Tensor:
        return self.encoder.model.token_embedding.weight

    @torch.no_grad()
    def set_rows(self, ids: list[int], values: torch.Tensor) -> None:
        table = self.embedding_table()
        table[ids] = values.to(device=table.device, dtype=table.dtype)

    def token_ids(self, prompt: str, truncate: bool = True) -> list[int]:
        """SOT + BPE (added tokens mapped to their rows) + EOT; cut to the context length with EOT last."""
        pattern = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")") \
            if self.added else None
        ids = []
        for piece in (pattern.split(prompt) if pattern else [prompt]):
            if piece in self.added:
                ids.append(self.added[piece])
            elif piece:
                ids += self.tokenizer.encode(piece)
        ids = [SOT] + ids + [EOT]
        if truncate and len(ids) > self.context_length:
            ids = ids[: self.context_length]
            ids[-1] = EOT
        return ids

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        rows = [self.token_ids(prompt) for prompt in prompts]
        return torch.tensor([ids + [PAD] * (self.context_length - len(ids)) for ids in rows], dtype=torch.long)

    def encode(self, prompts: list[str], override: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        hidden = self.encoder(self.tokenize(prompts).to(self.device), override)
        return hidden.to(dtype=self.dtype, device=self.device)
