"""The official inference configs (schema of the lvdm YAML files), embedded, and reading a user's YAML.

From ``configs/inference_t2v_512_v2.0.yaml`` of VideoCrafter2 (github.com/AILab-CVC/VideoCrafter) and
``configs/inference_{256,512,1024}_v1.0.yaml`` of DynamiCrafter (github.com/Doubiiu/DynamiCrafter). A
user's ``--model-config PATH`` is a YAML (or JSON) file of the same schema: ``model.params`` with
``unet_config.params``, ``first_stage_config.params.ddconfig``, ``cond_stage_config.params``, and for
DynamiCrafter ``img_cond_stage_config`` and ``image_proj_stage_config.params``. Only the keys that shape
the model or the sampler are read; ``target`` entries are informative.

Extension (not in the official files): ``cond_stage_config.params.arch`` and
``img_cond_stage_config.params.arch`` may be a dict of an OpenCLIP model config (``embed_dim``,
``vision_cfg``, ``text_cfg``) instead of a name such as ``ViT-H-14``; the tiny test models use it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

VARIANTS = ("256", "512", "1024")

_FIRST_STAGE = {
    "target": "lvdm.models.autoencoder.AutoencoderKL",
    "params": {
        "embed_dim": 4,
        "monitor": "val/rec_loss",
        "ddconfig": {
            "double_z": True, "z_channels": 4, "resolution": 512, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
        },
        "lossconfig": {"target": "torch.nn.Identity"},
    },
}

_TEXT = {
    "target": "lvdm.modules.encoders.condition.FrozenOpenCLIPEmbedder",
    "params": {"freeze": True, "layer": "penultimate"},
}

_UNET_COMMON = {
    "out_channels": 4, "model_channels": 320, "attention_resolutions": [4, 2, 1], "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4], "num_head_channels": 64, "transformer_depth": 1, "context_dim": 1024,
    "use_linear": True, "use_checkpoint": True, "temporal_conv": True, "temporal_attention": True,
    "temporal_selfatt_only": True, "use_relative_position": False, "use_causal_attention": False,
    "temporal_length": 16, "addition_attention": True,
}

VIDEOCRAFTER2: dict[str, Any] = {
    "model": {
        "target": "lvdm.models.ddpm3d.LatentDiffusion",
        "params": {
            "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "timesteps": 1000,
            "first_stage_key": "video", "cond_stage_key": "caption", "cond_stage_trainable": False,
            "conditioning_key": "crossattn", "image_size": [40, 64], "channels": 4, "scale_by_std": False,
            "scale_factor": 0.18215, "use_ema": False, "uncond_type": "empty_seq",
            "use_scale": True, "scale_b": 0.7,
            "unet_config": {
                "target": "lvdm.modules.networks.openaimodel3d.UNetModel",
                "params": {**_UNET_COMMON, "in_channels": 4, "dropout": 0.0, "fps_cond": True},
            },
            "first_stage_config": _FIRST_STAGE,
            "cond_stage_config": _TEXT,
        },
    }
}


def _dynamicrafter(variant: str) -> dict[str, Any]:
    v256 = variant == "256"
    params: dict[str, Any] = {
        "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "timesteps": 1000,
        "first_stage_key": "video", "cond_stage_key": "caption", "cond_stage_trainable": False,
        "image_proj_model_trainable": True, "conditioning_key": "hybrid",
        "image_size": {"256": [32, 32], "512": [40, 64], "1024": [72, 128]}[variant], "channels": 4,
        "scale_by_std": False, "scale_factor": 0.18215, "use_ema": False, "uncond_type": "empty_seq",
        "fps_condition_type": "fs" if v256 else "fps",
    }
    if not v256:
        params.update({
            "rescale_betas_zero_snr": True, "parameterization": "v", "use_dynamic_rescale": True,
            "base_scale": {"512": 0.7, "1024": 0.3}[variant], "perframe_ae": True,
        })
    unet = {**_UNET_COMMON, "in_channels": 8, "dropout": 0.1, "image_cross_attention": True,
            "default_fs": {"256": 3, "512": 24, "1024": 10}[variant], "fs_condition": True}
    if v256:
        unet["image_cross_attention_scale_learnable"] = True
    first_stage = copy.deepcopy(_FIRST_STAGE)
    first_stage["params"]["ddconfig"]["resolution"] = 256
    params.update({
        "unet_config": {"target": "lvdm.modules.networks.openaimodel3d.UNetModel", "params": unet},
        "first_stage_config": first_stage,
        "cond_stage_config": _TEXT,
        "img_cond_stage_config": {
            "target": "lvdm.modules.encoders.condition.FrozenOpenCLIPImageEmbedderV2", "params": {"freeze": True},
        },
        "image_proj_stage_config": {
            "target": "lvdm.modules.encoders.resampler.Resampler",
            "params": {"dim": 1024, "depth": 4, "dim_head": 64, "heads": 12, "num_queries": 16, "embedding_dim": 1280,
                       "output_dim": 1024, "ff_mult": 4, "video_length": 16},
        },
    })
    return {"model": {"target": "lvdm.models.ddpm3d.LatentVisualDiffusion", "params": params}}


DYNAMICRAFTER: dict[str, dict[str, Any]] = {v: _dynamicrafter(v) for v in VARIANTS}


def default_config(backbone: str, variant: str | None = None) -> dict[str, Any]:
    """A deep copy of the official config of ``backbone`` (``videocrafter2`` or ``dynamicrafter`` +
    variant 256/512/1024)."""
    if backbone == "videocrafter2":
        if variant not in (None, "512", "base"):
            raise ValueError(f"unknown videocrafter2 variant {variant!r}; known: 512 (VideoCrafter2 320x512, the default)")
        return copy.deepcopy(VIDEOCRAFTER2)
    variant = resolve_variant(variant)
    return copy.deepcopy(DYNAMICRAFTER[variant])


def resolve_variant(variant: str | int | None) -> str:
    variant = "512" if variant is None else str(variant)
    if variant not in VARIANTS:
        raise ValueError(f"unknown dynamicrafter variant {variant!r}; known: {', '.join(VARIANTS)}")
    return variant


def read_config(path: str | Path) -> dict[str, Any]:
    """A user's config file (the official YAML schema; JSON is YAML too), checked for the parts the
    model is built from."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not a readable YAML config: {error}") from None
    try:
        params = config["model"]["params"]
        params["unet_config"]["params"]
        params["first_stage_config"]["params"]["ddconfig"]
        params["cond_stage_config"]
    except (KeyError, TypeError):
        raise ValueError(
            f"{path} does not follow the lvdm inference config schema: it needs model.params with unet_config.params, "
            "first_stage_config.params.ddconfig and cond_stage_config (as configs/inference_*.yaml of "
            "VideoCrafter/DynamiCrafter)"
        ) from None
    check_openclip_archs(config, path)
    return config


def check_openclip_archs(config: dict[str, Any], source: str | Path) -> None:
    """Every OpenCLIP ``arch`` name of the text and image embedders is one open_clip ships a config for
    (checked before any model is built; a dict is an inline config and passes)."""
    from mp_plugin_lvdm.clip import openclip_config

    params = config["model"]["params"]
    for stage in ("cond_stage_config", "img_cond_stage_config"):
        arch = ((params.get(stage) or {}).get("params") or {}).get("arch")
        if arch is None or isinstance(arch, dict):
            continue
        try:
            openclip_config(arch)
        except ValueError:
            raise ValueError(
                f"{source}: model.params.{stage}.params.arch = {arch!r} is not an OpenCLIP architecture open_clip "
                "knows (e.g. 'ViT-H-14'; `python -c \"import open_clip; print(open_clip.list_models())\"` lists them). "
                "For a custom architecture give its OpenCLIP config inline as a dict (embed_dim, vision_cfg, text_cfg)."
            ) from None


def resolve(backbone: str, variant: str | None, config: str | Path | dict | None) -> dict[str, Any]:
    """The config a command builds from: the user's file (or dict) if given, else the official one."""
    if config is None:
        return default_config(backbone, variant)
    if isinstance(config, dict):
        return copy.deepcopy(config)
    return read_config(config)


def dump(config: dict[str, Any], path: str | Path) -> Path:
    """Write ``config`` as YAML (``.yaml``/``.yml``) or JSON."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        path.write_text(json.dumps(config, indent=1))
    return path
