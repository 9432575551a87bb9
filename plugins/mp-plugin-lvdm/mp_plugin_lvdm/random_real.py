"""VideoCrafter2 and DynamiCrafter at their real size with random weights: for benchmarks (time and
memory do not depend on the weight values), no download.

The architecture of the official ``model.ckpt`` at its official config (:mod:`mp_plugin_lvdm.configs`:
VideoCrafter2's ``inference_t2v_512_v2.0.yaml``; DynamiCrafter's ``inference_{256,512,1024}_v1.0.yaml``,
512 by default): the whole ``LatentDiffusion`` module (UNet3D, LDM VAE, OpenCLIP ViT-H/14 text tower,
for DynamiCrafter the ViT-H/14 image tower and the Resampler), every key of the checkpoint. Sampled at
16 frames of 320x512 (DynamiCrafter 256: 256x256, 1024: 576x1024). Assembled as
:func:`mp_plugin_lvdm.backbone.load` assembles a downloaded model: the same sampling settings (fps
conditioning, timestep spacing, CFG rescale of the variant).

Built with the parameters on the meta device and then materialized with a cheap deterministic init on
the target device, in the target dtype (:func:`mpcore.backbones.materialize`); the schedule buffers
(betas, alphas_cumprod, scale_arr, ...), attention masks and CLIP mean/std are computed for real when
the module is constructed. ``device="meta"`` stops before the materialization (shapes only, for tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mp_plugin_lvdm import configs
from mp_plugin_lvdm.backbone import DC_SETTINGS, VC2_FPS, DynamiCrafterBackbone, LVDMBackbone, _place
from mp_plugin_lvdm.model import LatentDiffusion
from mpcore.backbones import materialize, parameters_on_meta

BACKBONES = ("videocrafter2", "dynamicrafter")
REAL_SAMPLER = {"videocrafter2": dict(frames=16, height=320, width=512),
                **{f"dynamicrafter_{v}": dict(frames=16, height=s["size"][0], width=s["size"][1])
                   for v, s in DC_SETTINGS.items()}}


def real_sampler(backbone: str, variant: str | None = None) -> dict[str, int]:
    """Frames, height and width the official scripts sample at."""
    if backbone == "videocrafter2":
        return dict(REAL_SAMPLER["videocrafter2"])
    return dict(REAL_SAMPLER[f"dynamicrafter_{configs.resolve_variant(variant)}"])


def random_real_model(backbone: str = "videocrafter2", variant: str | None = None, seed: int = 0,
                      device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      config: dict[str, Any] | None = None) -> tuple[LatentDiffusion, dict[str, Any]]:
    """``(model, config)``: the ``LatentDiffusion`` at ``config`` (default the official config of
    ``backbone``/``variant``) with random weights, deterministic in ``seed``; its schedule buffers stay
    float32. ``device="meta"``: parameters on the meta device."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown lvdm backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    cfg = configs.resolve(backbone, configs.resolve_variant(variant) if backbone == "dynamicrafter" else variant, config)
    with parameters_on_meta():
        model = LatentDiffusion(cfg)
    materialize(model, device, dtype, seed)
    return model.eval(), cfg


def load_random_real(backbone: str = "videocrafter2", device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, seed: int = 0, variant: str | None = None,
                     image: str | Path | torch.Tensor | None = None,
                     config: dict[str, Any] | None = None) -> LVDMBackbone:
    """The VideoCrafter2 or DynamiCrafter backbone (``image``: its start frame) at the real
    architecture with random weights (see the module's doc)."""
    device = torch.device(device)
    is_dc = backbone == "dynamicrafter"
    variant = configs.resolve_variant(variant) if is_dc else None
    net, cfg = random_real_model(backbone, variant, seed, device, dtype, config)
    _place(net, device, dtype)
    what = f"{backbone}{'-' + variant if is_dc else ''}"
    source = {"model": f"real-random ({what} architecture, random init)", "seed": seed,
              "config": "official (built in)" if config is None else "given"}
    params = cfg["model"]["params"]
    if is_dc:
        settings = DC_SETTINGS[variant]
        return DynamiCrafterBackbone(net, cfg, device, dtype, source, params["unet_config"]["params"].get("default_fs"),
                                     settings["spacing"], settings["guidance_rescale"], is_random_init=True,
                                     variant=variant, image=image)
    return LVDMBackbone(net, cfg, device, dtype, source, VC2_FPS, "uniform", 0.0, is_random_init=True)
