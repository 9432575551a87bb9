"""The AnimateDiff backbone adapter: diffusers' AnimateDiff components behind mpcore's interface."""

from __future__ import annotations

import functools
from typing import Any

import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler
from torch.utils.checkpoint import checkpoint

from mp_plugin_animatediff import loading, tiny, toy
from mpcore.backbones import choose_attention, describe, freeze, quiet_diffusers
from mpcore.interfaces import Backbone
from mpcore.vae import FrameByFrameVAE
from mpcore.text import HFTextTokens


class AnimateDiffBackbone(FrameByFrameVAE, Backbone):
    """SD-1.5 UNet + motion adapter (``UNetMotionModel``), AutoencoderKL and CLIP ViT-L/14 text encoder."""

    name = "animatediff"

    def __init__(self, pipe: AnimateDiffPipeline, scheduler_config: dict, device: torch.device, dtype: torch.dtype,
                 source: dict[str, Any], is_random_init: bool = False):
        self.pipe = pipe
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.scheduler_config = dict(scheduler_config)
        self.device = device
        self.dtype = dtype
        self.source = source
        self.is_random_init = is_random_init
        self.text = HFTextTokens(pipe.tokenizer, pipe.text_encoder, device, dtype)
        self.latent_channels = self.unet.config.in_channels
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        freeze(self.unet, self.vae, pipe.text_encoder)

    def make_scheduler(self) -> DDIMScheduler:
        return DDIMScheduler.from_config(self.scheduler_config)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # UNetMotionModel takes one text condition per frame: (B * F, L, D), as the pipeline passes it
        frames = latents.shape[2]
        return self.unet(latents, t, encoder_hidden_states=cond.repeat_interleave(frames, dim=0)).sample

    def latent_scale(self, t=None) -> float:
        return float(self.vae.config.scaling_factor)

    def set_denoiser_checkpointing(self, enabled: bool) -> None:
        """Checkpoint every layer of the UNet's down, mid and up blocks (ResNet, spatial transformer,
        motion module, resampler) as a whole (see :func:`checkpoint_each`)."""
        checkpoint_each(unet_layers(self.unet), enabled)

    def describe(self) -> dict[str, Any]:
        return describe(
            self,
            scheduler={k: v for k, v in self.scheduler_config.items() if not k.startswith("_")},
            unet_parameters=sum(p.numel() for p in self.unet.parameters()),
        )


def _checkpointed_forward(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def unet_layers(unet) -> list[torch.nn.Module]:
    """The layers of a ``UNetMotionModel``'s blocks, in order: ResNets, spatial transformers, motion
    modules, down/up-samplers."""
    layers = []
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        for kind in ("resnets", "attentions", "motion_modules", "downsamplers", "upsamplers"):
            layers.extend(getattr(block, kind, None) or [])
    return layers


def checkpoint_each(modules: list[torch.nn.Module], enabled: bool) -> None:
    """Gradient checkpointing of each module in ``blocks`` as a whole: only its inputs are kept for
    the backward pass, which runs its forward again (same ops, same gradient).

    diffusers' own ``enable_gradient_checkpointing`` of ``UNetMotionModel`` checkpoints only the
    ResNets: the spatial transformers and the motion modules keep every activation, over half of the
    forward's saved tensors on the mid benchmark model (issue 18). Per layer rather than per block:
    the backward then holds one layer's activations at a time, not a whole block's (live peak of a
    lean guided step on the mid model: 350 MiB per block, 191 MiB per layer). Idempotent;
    ``enabled=False`` restores the modules' own ``forward``."""
    for module in modules:
        wrapped = "forward" in vars(module)
        if enabled and not wrapped:
            module.forward = functools.partial(_checkpointed_forward, module.forward)
        elif not enabled and wrapped:
            del module.forward


def drop_adapter_copy(pipe: AnimateDiffPipeline) -> None:
    """Release the pipeline's ``MotionAdapter``: building the pipeline copied its weights into the
    ``UNetMotionModel``, and sampling never uses the adapter module itself, so keeping it only costs
    memory (v1.5-2: ~450M parameters, about 0.9 GB in float16)."""
    pipe.register_modules(motion_adapter=None)


def load(
    model: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    offload: bool = False,
    attention: str = "auto",
    motion_adapter: str | None = None,
    base_config: str | None = None,
) -> AnimateDiffBackbone:
    """Load AnimateDiff. ``model="tiny"`` builds the tiny random-init model from ``seed``;
    ``model="toy"`` loads the bundled trained toy model (package data)."""
    device = torch.device(device)
    model = model or loading.DEFAULT_BASE
    if model == "tiny":
        parts = tiny.tiny_components(seed)
        with quiet_diffusers():
            pipe = AnimateDiffPipeline(**parts)
        scheduler_config = dict(parts["scheduler"].config)
        source = {"model": "tiny", "motion_adapter": "tiny", "seed": seed}
    elif model == toy.TOY_MODEL:
        paths = toy.toy_paths()
        pipe, scheduler_config = loading.load_pipeline(str(paths["base"]), str(paths["motion_adapter"]), dtype)
        source = {"model": toy.TOY_MODEL, "motion_adapter": toy.TOY_MODEL, "folder": str(toy.toy_folder())}
    else:
        adapter = motion_adapter or loading.DEFAULT_MOTION_ADAPTER
        pipe, scheduler_config = loading.load_pipeline(model, adapter, dtype, base_config)
        source = {"model": model, "motion_adapter": adapter}
    drop_adapter_copy(pipe)
    pipe.set_progress_bar_config(disable=True)
    attention_used = choose_attention(attention, device)
    if attention_used == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    if offload:
        if device.type != "cuda":
            raise RuntimeError("--offload (model CPU offload) needs a CUDA --device; on CPU everything is on the CPU already")
        with quiet_diffusers():
            if pipe.unet.dtype != dtype:
                pipe.to(dtype=dtype)
        pipe.enable_model_cpu_offload(device=device)
    else:
        with quiet_diffusers():
            if pipe.unet.dtype != dtype:
                pipe.to(dtype=dtype)
            pipe.to(device=device)
    source["attention"] = attention_used
    source["offload"] = offload
    return AnimateDiffBackbone(pipe, scheduler_config, device, dtype, source, is_random_init=(model == "tiny"))


def wrap(pipeline: AnimateDiffPipeline) -> AnimateDiffBackbone:
    """The AnimateDiff backbone around an ``AnimateDiffPipeline`` you already have (:func:`mpcore.wrap_pipeline`):
    its UNet (a ``UNetMotionModel``), VAE, CLIP text encoder and tokenizer, the same objects, on the device
    ``pipeline(...)`` computes on (``pipeline._execution_device``: the UNet's, or the GPU of a model-offloaded
    pipeline) in the UNet's dtype.

    What it changes on ``pipeline``: the UNet, VAE and text encoder are put in eval mode with
    ``requires_grad_(False)`` (:func:`mpcore.backbones.freeze`), and the text encoder's input embedding gets a
    forward hook (:class:`mpcore.text.HFTextTokens`) that only acts inside mpcore's own prompt encodes; a guidance
    that learns tokens adds them to the tokenizer and embedding table (:func:`mpcore.wrap_pipeline`). Nothing is
    moved, cast, dropped (unlike :func:`load`, the ``motion_adapter`` copy stays) or re-configured (attention
    processors, progress bar, ``pipeline.scheduler``). Modules built fresh (in training mode, unlike
    ``from_pretrained``'s) then decode with other float rounding: diffusers' ``ResnetBlock2D`` makes its shortcut
    input contiguous only in training mode.

    Scheduler: DDIM (the paper's sampler) on the pipeline scheduler's config read as a ``DDIMScheduler``
    (``DDIMScheduler.from_config(pipeline.scheduler.config)``, as :func:`mp_plugin_animatediff.loading.load_pipeline`
    reads a model folder's), whatever scheduler class the pipeline holds; a fresh one per video."""
    scheduler_config = dict(DDIMScheduler.from_config(pipeline.scheduler.config).config)
    source = {"model": getattr(pipeline.config, "_name_or_path", None) or None, "wrapped": type(pipeline).__name__}
    return AnimateDiffBackbone(pipeline, scheduler_config, pipeline._execution_device, pipeline.unet.dtype, source)
