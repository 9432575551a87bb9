"""The VideoCrafter2 and DynamiCrafter adapters behind mpcore's :class:`~mpcore.interfaces.Backbone`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mp_plugin_lvdm import configs, loading, tiny
from mp_plugin_lvdm.clip import OpenCLIPTextTokens
from mp_plugin_lvdm.model import LatentDiffusion, scale_settings
from mp_plugin_lvdm.schedule import LVDMDDIMScheduler, ScaledAlphaBarSchedule, make_scheduler
from mpcore.backbones import describe, freeze
from mpcore.interfaces import Backbone

# Sampling as shipped (VideoCrafter's scripts/run_text2video.sh, DynamiCrafter's scripts/run.sh)
VC2_FPS = 28  # scripts/run_text2video.sh --fps 28
DC_SETTINGS = {
    "256": dict(spacing="uniform", guidance_rescale=0.0, size=(256, 256)),
    "512": dict(spacing="uniform_trailing", guidance_rescale=0.7, size=(320, 512)),
    "1024": dict(spacing="uniform_trailing", guidance_rescale=0.7, size=(576, 1024)),
}


class LVDMBackbone(Backbone):
    """VideoCrafter2 (text-to-video, Chen et al. 2024): lvdm UNet3D + LDM VAE + OpenCLIP ViT-H/14 text."""

    name = "videocrafter2"

    def __init__(self, model: LatentDiffusion, config: dict[str, Any], device: torch.device, dtype: torch.dtype,
                 source: dict[str, Any], fs: int | None, spacing: str, guidance_rescale: float,
                 is_random_init: bool = False):
        self.model = model
        self.config = config
        self.params = config["model"]["params"]
        self.unet = model.unet
        self.vae = model.first_stage_model
        self.device, self.dtype = device, dtype
        self.source = source
        self.is_random_init = is_random_init
        self.fs = fs
        self.spacing = spacing
        self.guidance_rescale = float(guidance_rescale)
        self.scale_factor = float(self.params.get("scale_factor", 0.18215))
        self.latent_channels = self.unet.config["out_channels"]
        self.vae_scale_factor = self.vae.downsampling
        self.prediction_type = "v_prediction" if self.params.get("parameterization", "eps") == "v" else "epsilon"
        self.scale_arr = model.scale_arr.detach().float().cpu() if hasattr(model, "scale_arr") else None
        freeze(model)
        self.text = OpenCLIPTextTokens(model.cond_stage_model, device, dtype)

    def make_scheduler(self) -> LVDMDDIMScheduler:
        return make_scheduler(self.params, self.spacing, self.model.alphas_cumprod, self.scale_arr)

    def noise_schedule(self, scheduler) -> ScaledAlphaBarSchedule:
        """lvdm's schedule math with its scale schedule (the rollout's rescale, q_sample's scaling)."""
        return ScaledAlphaBarSchedule(self, scheduler)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(latents, t, cond, fs=fs_for_batch(self.fs, latents.shape[0]))

    def latent_scale(self, t=0) -> float:
        """scale_factor x scale_arr[t]: the network's clean latent at t is scaled by scale_arr[t]
        (lvdm's use_scale / use_dynamic_rescale), so a Tweedie estimate is divided by both before decoding."""
        if self.scale_arr is None:
            return self.scale_factor
        return self.scale_factor * float(self.scale_arr[int(t)])

    def vae_scaling_factor(self) -> float:
        """The VAE's own scale factor (0.18215, without scale_arr): the SD latent space's convention."""
        return self.scale_factor

    def decode(self, latents: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """Frame by frame ``decoder(post_quant_conv(z))`` (decode_first_stage_2DAE)."""
        decoder = self.vae.decoder
        previous = decoder.gradient_checkpointing
        decoder.gradient_checkpointing = checkpoint
        try:
            frames = [self.vae.decode(latents[i : i + 1].to(self.dtype)) for i in range(latents.shape[0])]
        finally:
            decoder.gradient_checkpointing = previous
        return torch.cat(frames)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> unscaled latent frames (N, C, H/f, W/f): the posterior
        mean (``vae.encode_mean``), one frame at a time (as :meth:`decode`); DynamiCrafter's too."""
        images = images.to(self.device, self.dtype)
        return torch.cat([self.vae.encode_mean(images[i : i + 1]) for i in range(images.shape[0])])

    def set_denoiser_checkpointing(self, enabled: bool) -> None:
        self.unet.gradient_checkpointing = enabled

    def describe(self) -> dict[str, Any]:
        scale = scale_settings(self.params)
        return describe(
            self,
            prediction_type=self.prediction_type,
            timestep_spacing=self.spacing,
            guidance_rescale=self.guidance_rescale,
            fs=self.fs,
            scale_factor=self.scale_factor,
            scale_schedule=None if scale is None else {k: v for k, v in scale.items()},
            unet=dict(self.unet.config),
            parameters=sum(p.numel() for p in self.model.parameters()),
        )


def fs_for_batch(fs: int | float | torch.Tensor | None, n: int):
    """The fps / frame-stride condition for a denoiser batch of ``n``: a scalar (or None: the config's
    default) serves every sample; a tensor of B per-sample values serves a batch of B samples, or the
    CFG-stacked batch [uncond, cond] of 2B (repeated per stacked condition, as the latents are)."""
    if fs is None or not isinstance(fs, torch.Tensor) or fs.numel() == 1:
        return fs
    fs = fs.reshape(-1)
    if n % fs.numel():
        raise ValueError(f"fs has {fs.numel()} per-sample values for a batch of {n} latents; give one value per "
                         "video (or a scalar)")
    return fs.repeat(n // fs.numel())


def is_pil_image(image) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(image, Image.Image)


class DynamiCrafterBackbone(LVDMBackbone):
    """DynamiCrafter (image-to-video, Xing et al. 2024): the VideoCrafter UNet with 8 input channels
    (noisy latent + first-frame latent), CLIP image tokens through the Resampler in every spatial
    cross-attention, fs conditioning; the image is set with :meth:`set_image` and sized to the
    sampler's frames in :meth:`prepare_sampling`."""

    name = "dynamicrafter"

    def __init__(self, *args, variant: str, image: Any = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.variant = variant
        self.image = image
        self._prepared: dict[str, Any] | None = None

    def set_image(self, image) -> None:
        self.image = image
        self._prepared = None

    @torch.no_grad()
    def prepare_sampling(self, config) -> None:
        """Resize/crop the input image to (height, width) as DynamiCrafter's script does, encode it:
        the VAE posterior *sample* of it (seeded by the run's seed) x scale_factor is the concat latent;
        CLIP image tokens of it (cond) and of the all-zero [-1, 1] image, i.e. mid-grey (uncond)."""
        from mp_plugin_lvdm.image import load_image, resize_and_crop

        if self.image is None:
            raise RuntimeError("dynamicrafter needs an input image: pass --image PATH")
        key = (config.height, config.width, config.seed)
        if self._prepared is not None and self._prepared["key"] == key:
            return
        native = DC_SETTINGS[self.variant]["size"]
        if (config.height, config.width) != native and not self.is_random_init:
            print(f"note: sampling DynamiCrafter-{self.variant} at {config.height}x{config.width}; its native size is "
                  f"{native[0]}x{native[1]} (--height {native[0]} --width {native[1]})")
        image = self.image
        if is_pil_image(image):
            image = image.convert("RGB")
        elif not isinstance(image, torch.Tensor):
            image = load_image(image)
        pixels = resize_and_crop(image, config.height, config.width).to(self.device, self.dtype)
        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        latent = self.vae.encode_sample(pixels, generator) * self.scale_factor
        tokens = self.model.image_proj_model(self.model.embedder(pixels))
        null = self.model.image_proj_model(self.model.embedder(torch.zeros_like(pixels)))
        self._prepared = dict(key=key, latent=latent, tokens=tokens, null=null)

    def _need(self) -> dict[str, Any]:
        if self._prepared is None:
            raise RuntimeError("DynamiCrafterBackbone.prepare_sampling(config) must run before encoding/predicting")
        return self._prepared

    def encode_prompt(self, prompts, override=None) -> torch.Tensor:
        text = self.text.encode(prompts, override)
        tokens = self._need()["tokens"].to(text.dtype).expand(text.shape[0], -1, -1)
        return torch.cat([text, tokens], dim=1)

    def encode_negative_prompt(self, prompts) -> torch.Tensor:
        text = self.text.encode(prompts)
        null = self._need()["null"].to(text.dtype).expand(text.shape[0], -1, -1)
        return torch.cat([text, null], dim=1)

    def predict(self, latents, t, cond):
        latent = self._need()["latent"].to(latents.dtype)
        n, _, frames, h, w = latents.shape
        if latent.shape[-2:] != (h, w):
            raise RuntimeError(f"image latent {tuple(latent.shape[-2:])} does not match the sampled latents {(h, w)}")
        image = latent[:, :, None].expand(n, -1, frames, -1, -1)
        return self.unet(torch.cat([latents, image], dim=1), t, cond, fs=fs_for_batch(self.fs, n))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(variant=self.variant, image="tensor" if isinstance(self.image, torch.Tensor) else
                    "PIL image" if is_pil_image(self.image) else str(self.image))
        return info


def _place(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Weights to ``dtype``; the schedule buffers stay float32."""
    model.to(device=device)
    for name, module in model.named_children():
        module.to(dtype=dtype)


def load(
    model: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    offload: bool = False,
    attention: str = "auto",
    backbone: str = "videocrafter2",
    config: str | dict | None = None,
    variant: str | None = None,
    image: str | Path | torch.Tensor | PIL.Image.Image | None = None,  # noqa: F821 (PIL: annotation only)
    cond_fps: int | None = None,
    frame_stride: int | None = None,
    guidance_rescale: float | None = None,
) -> LVDMBackbone:
    """Load VideoCrafter2 or DynamiCrafter: ``model`` is the official ``model.ckpt`` (or ``"tiny"``),
    ``config`` a YAML of the official schema (default: the official config of the variant)."""
    device = torch.device(device)
    if offload:
        raise RuntimeError(f"--offload is not supported by the {backbone} backbone")
    if attention not in ("auto", "sdpa"):
        raise RuntimeError(f"--attention {attention} is not supported by the {backbone} backbone: it uses torch SDPA")
    is_dc = backbone == "dynamicrafter"
    variant = configs.resolve_variant(variant) if is_dc else None
    if model == "tiny":
        if config is not None:
            raise ValueError("--model tiny builds its own tiny random model: drop --config")
        cfg = tiny.tiny_config(backbone, variant)
        net = tiny.tiny_model(cfg, seed)
        source = {"model": "tiny", "seed": seed}
    else:
        loading.check_checkpoint(model, backbone, variant)
        cfg = configs.resolve(backbone, variant, config)
        net = loading.load_model(model, cfg, f"{backbone}{'-' + variant if is_dc else ''}")
        source = {"model": str(model), "config": str(config) if isinstance(config, (str, Path)) else "official (built in)"}
    _place(net, device, dtype)
    params = cfg["model"]["params"]
    if is_dc:
        settings = DC_SETTINGS[variant]
        fs = frame_stride if frame_stride is not None else params["unet_config"]["params"].get("default_fs")
        rescale = settings["guidance_rescale"] if guidance_rescale is None else guidance_rescale
        return DynamiCrafterBackbone(net, cfg, device, dtype, source, fs, settings["spacing"], rescale,
                                     is_random_init=(model == "tiny"), variant=variant, image=image)
    fs = VC2_FPS if cond_fps is None else cond_fps
    return LVDMBackbone(net, cfg, device, dtype, source, fs, "uniform", guidance_rescale or 0.0,
                        is_random_init=(model == "tiny"))
