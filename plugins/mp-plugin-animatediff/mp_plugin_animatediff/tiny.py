"""The reserved model name ``tiny``: a tiny random-init AnimateDiff-architecture model.

Same architecture family as the real one (SD-style UNet + motion adapter -> ``UNetMotionModel``,
AutoencoderKL, CLIP text encoder with CLIP's real 49408-token vocabulary rebuilt offline), at a
size that samples in seconds on a CPU. Built deterministically from a seed. Its output is noise;
it exists so the whole path (and every test) runs anywhere, offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel

from mp_plugin_animatediff.loading import ANIMATEDIFF_SCHEDULER, MOTION_HEADS, MOTION_NORM_GROUPS
from mpcore.backbones import tiny_clip_text_encoder, tiny_clip_tokenizer

TINY_SAMPLER_DEFAULTS = dict(frames=8, height=64, width=64, steps=25, cfg_scale=7.5)


# Widths of the random-init models: "tiny" for tests and `--model tiny`, "mid" for benchmarks
# (~20M UNet parameters; costs closer to a real model's proportions on a CPU).
SIZES = {
    "tiny": dict(unet_channels=(32, 64), down=("CrossAttnDownBlock2D", "DownBlock2D"), up=("UpBlock2D", "CrossAttnUpBlock2D"),
                 text_width=32, text_ffn=37, text_layers=2, vae_channels=(16, 32, 32), vae_layers=1, norm_groups=8,
                 motion_mid_block=False),
    "mid": dict(unet_channels=(64, 128, 256), down=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), text_width=256, text_ffn=1024,
                text_layers=4, vae_channels=(32, 64, 128), vae_layers=2, norm_groups=32, motion_mid_block=True),
}


def tiny_components(seed: int = 0, size: str = "tiny") -> dict:
    """Random-init components (SD-1.5 layout, small widths from ``SIZES``), deterministic in ``seed``."""
    arch = SIZES[size]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=arch["unet_channels"],
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=arch["down"],
            up_block_types=arch["up"],
            cross_attention_dim=arch["text_width"],
            attention_head_dim=8,
            norm_num_groups=arch["norm_groups"],
        )
        vae = AutoencoderKL(
            block_out_channels=arch["vae_channels"],
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(arch["vae_channels"]),
            up_block_types=("UpDecoderBlock2D",) * len(arch["vae_channels"]),
            latent_channels=4,
            norm_num_groups=arch["norm_groups"],
            layers_per_block=arch["vae_layers"],
            sample_size=64,
        )
        text_encoder = tiny_clip_text_encoder(arch["text_width"], arch["text_ffn"], arch["text_layers"])
        motion_adapter = MotionAdapter(
            block_out_channels=arch["unet_channels"],
            motion_layers_per_block=1,
            motion_num_attention_heads=MOTION_HEADS,
            motion_norm_num_groups=MOTION_NORM_GROUPS,
            motion_max_seq_length=32,
            use_motion_mid_block=arch["motion_mid_block"],
        )
        # diffusers zero-initialises proj_out of every motion module: randomise them so the tiny
        # model's frames actually interact (a real trained adapter is not zero either)
        for name, param in motion_adapter.named_parameters():
            if "proj_out" in name:
                torch.nn.init.normal_(param, std=0.02)
    tokenizer = tiny_clip_tokenizer()
    scheduler = DDIMScheduler(**ANIMATEDIFF_SCHEDULER)
    return dict(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, motion_adapter=motion_adapter
    )


def save_tiny(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Save the tiny model as users' files look: an SD-1.5 diffusers folder and a MotionAdapter
    folder. Returns (base_folder, motion_adapter_folder)."""
    folder = Path(folder)
    parts = tiny_components(seed)
    base = StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    base.save_pretrained(folder / "base")
    parts["motion_adapter"].save_pretrained(folder / "motion_adapter")
    return folder / "base", folder / "motion_adapter"


def original_motion_module_state(adapter: MotionAdapter) -> dict[str, torch.Tensor]:
    """The adapter's weights in the original AnimateDiff ``.ckpt`` layout (diffusers'
    convert_animatediff_motion_module_to_diffusers.py mapping, inverted), including the stored
    ``pos_encoder.pe`` buffers of every attention block."""
    state = {}
    for key, value in adapter.state_dict().items():
        parts = key.split(".")
        if key.endswith("pos_embed.pe"):
            continue
        # <blk>.motion_modules.<j>.rest -> <blk>.motion_modules.<j>.temporal_transformer.rest
        at = parts.index("motion_modules") + 2
        original = ".".join(parts[:at] + ["temporal_transformer"] + parts[at:])
        original = (
            original.replace(".norm1", ".norms.0")
            .replace(".norm2", ".norms.1")
            .replace(".norm3", ".ff_norm")
            .replace(".attn1", ".attention_blocks.0")
            .replace(".attn2", ".attention_blocks.1")
        )
        state[original] = value.clone()
        if original.endswith("attention_blocks.0.to_q.weight") or original.endswith("attention_blocks.1.to_q.weight"):
            pe_key = original.replace("to_q.weight", "pos_encoder.pe")
            block = key.rsplit(".attn", 1)[0]
            state[pe_key] = adapter.state_dict()[f"{block}.pos_embed.pe"].clone()
    return state


# ----------------------------------------------------------------------------- single-file (LDM) layout
# The CompVis/LDM key layout of SD-1.5 single-file checkpoints (``model.diffusion_model.*``,
# ``first_stage_model.*``, ``cond_stage_model.transformer.*``), written from the tiny model so
# the single-file loading path can be tested offline. Mapping: diffusers' LDM converters (which
# AnimateDiff copies in animatediff/utils/convert_from_ckpt.py) and the layout of the LDM UNet
# (input_blocks / middle_block / output_blocks) and VAE (down / mid / up).

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
_VAE_RESNET = [("conv_shortcut", "nin_shortcut")]
_VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _rename(rest: str, pairs) -> str:
    for ours, theirs in pairs:
        if rest.startswith(ours + "."):
            return theirs + rest[len(ours):]
    return rest


def ldm_unet_state(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """diffusers SD UNet -> LDM ``model.diffusion_model.*`` keys."""
    per_level = unet.config.layers_per_block
    out = {}
    for key, value in unet.state_dict().items():
        parts = key.split(".")
        if parts[0] == "time_embedding":
            new = {"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[parts[1]] + "." + ".".join(parts[2:])
        elif parts[0] in ("conv_in", "conv_norm_out", "conv_out"):
            new = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}[parts[0]] + "." + parts[1]
        elif parts[0] == "down_blocks":
            level, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":  # downsamplers.0.conv.* -> input_blocks.N.0.op.*
                new = f"input_blocks.{(per_level + 1) * (level + 1)}.0.op." + ".".join(parts[5:])
            else:
                index = (per_level + 1) * level + int(parts[3]) + 1
                rest = ".".join(parts[4:])
                new = f"input_blocks.{index}.0." + _rename(rest, _RESNET) if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
        elif parts[0] == "mid_block":
            rest = ".".join(parts[3:])  # mid_block.{attentions,resnets}.j.rest
            if parts[1] == "attentions":
                new = f"middle_block.1.{rest}"
            else:
                new = f"middle_block.{2 * int(parts[2])}." + _rename(rest, _RESNET)
        elif parts[0] == "up_blocks":
            level, kind = int(parts[1]), parts[2]
            has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in unet.state_dict())
            if kind == "upsamplers":
                slot = 2 if has_attention else 1
                new = f"output_blocks.{(per_level + 1) * level + per_level}.{slot}." + ".".join(parts[4:])
            else:
                index = (per_level + 1) * level + int(parts[3])
                rest = ".".join(parts[4:])
                new = f"output_blocks.{index}.0." + _rename(rest, _RESNET) if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
        else:
            raise KeyError(f"unmapped UNet key {key}")
        out["model.diffusion_model." + new] = value.clone()
    return out


def ldm_vae_state(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL -> LDM ``first_stage_model.*`` keys (attention linears as 1x1 convs)."""
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        parts = key.split(".")
        side, rest = parts[0], parts[1:]
        if side in ("quant_conv", "post_quant_conv"):
            new = key
        elif rest[0] in ("conv_in", "conv_out"):
            new = key
        elif rest[0] == "conv_norm_out":
            new = f"{side}.norm_out." + ".".join(rest[1:])
        elif rest[0] == "mid_block":
            tail = ".".join(rest[3:])  # mid_block.{attentions,resnets}.j.rest
            if rest[1] == "attentions":
                new = f"{side}.mid.attn_1." + _rename(tail, _VAE_ATTENTION)
                if value.dim() == 2:
                    value = value[:, :, None, None]
            else:
                new = f"{side}.mid.block_{int(rest[2]) + 1}." + _rename(tail, _VAE_RESNET)
        elif rest[0] in ("down_blocks", "up_blocks"):
            level = int(rest[1]) if side == "encoder" else levels - 1 - int(rest[1])
            group = "down" if side == "encoder" else "up"
            if rest[2] in ("downsamplers", "upsamplers"):
                sample = "downsample" if side == "encoder" else "upsample"
                new = f"{side}.{group}.{level}.{sample}." + ".".join(rest[4:])
            else:
                new = f"{side}.{group}.{level}.block.{rest[3]}." + _rename(".".join(rest[4:]), _VAE_RESNET)
        else:
            raise KeyError(f"unmapped VAE key {key}")
        out["first_stage_model." + new] = value.clone()
    return out


def save_tiny_single_file(path: str | Path, seed: int = 0) -> Path:
    """The tiny base model as one LDM-layout ``.safetensors`` file, like community SD-1.5 bases."""
    from safetensors.torch import save_file

    parts = tiny_components(seed)
    state = {**ldm_unet_state(parts["unet"]), **ldm_vae_state(parts["vae"])}
    for key, value in parts["text_encoder"].state_dict().items():
        # released SD-1.5 files store "cond_stage_model.transformer.text_model.*" (newer
        # transformers versions drop the "text_model." level from CLIPTextModel's own keys)
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value.clone()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return Path(path)
