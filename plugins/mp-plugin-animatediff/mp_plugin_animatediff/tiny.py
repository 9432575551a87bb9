"""The reserved model name ``tiny``: a tiny random-init AnimateDiff-architecture model.

Same architecture family as the real one (SD-style UNet + motion adapter -> ``UNetMotionModel``,
AutoencoderKL, CLIP text encoder with CLIP's real 49408-token vocabulary rebuilt offline), at a
size that samples in seconds on a CPU. Built deterministically from a seed. Its output is noise;
it exists so the whole path (and every test) runs anywhere, offline.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from mp_plugin_animatediff.loading import ANIMATEDIFF_SCHEDULER, MOTION_HEADS, MOTION_NORM_GROUPS
from mpcore.clip_vocab import BOS, EOS, VOCAB_SIZE, build_clip_tokenizer

TINY_SAMPLER_DEFAULTS = dict(frames=8, height=64, width=64, steps=25, cfg_scale=7.5)


def tiny_components(seed: int = 0) -> dict:
    """Random-init components (SD-1.5 layout, tiny widths), deterministic in ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(16, 32, 32),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            latent_channels=4,
            norm_num_groups=8,
            layers_per_block=1,
            sample_size=64,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=VOCAB_SIZE,
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=77,
                bos_token_id=VOCAB_SIZE - 2,
                eos_token_id=VOCAB_SIZE - 1,
                pad_token_id=VOCAB_SIZE - 1,
                hidden_act="quick_gelu",
                projection_dim=32,
            )
        )
        motion_adapter = MotionAdapter(
            block_out_channels=(32, 64),
            motion_layers_per_block=1,
            motion_num_attention_heads=MOTION_HEADS,
            motion_norm_num_groups=MOTION_NORM_GROUPS,
            motion_max_seq_length=32,
            use_motion_mid_block=False,
        )
        # diffusers zero-initialises proj_out of every motion module: randomise them so the tiny
        # model's frames actually interact (a real trained adapter is not zero either)
        for name, param in motion_adapter.named_parameters():
            if "proj_out" in name:
                torch.nn.init.normal_(param, std=0.02)
    tokenizer = build_clip_tokenizer(Path(tempfile.mkdtemp(prefix="mpcore-clip-tokenizer-")))
    assert tokenizer.convert_tokens_to_ids(BOS) == VOCAB_SIZE - 2 and tokenizer.convert_tokens_to_ids(EOS) == VOCAB_SIZE - 1
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
    """The adapter's weights in the original AnimateDiff ``.ckpt`` layout (FACTS.md §2/§4, inverted),
    including the stored ``pos_encoder.pe`` buffers of every attention block."""
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
