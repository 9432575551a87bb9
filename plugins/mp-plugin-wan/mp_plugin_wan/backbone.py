"""The Wan 2.1 text-to-video backbone: diffusers' Wan components behind mpcore's interface.

Wan 2.1 (Wan Team, "Wan: Open and Advanced Large-Scale Video Generative Models", 2025) is a flow-matching
DiT: the transformer predicts the velocity v = noise - x0 of the straight path
x_t = (1 - sigma_t) x0 + sigma_t noise (rectified flow, Liu et al. 2023; Esser et al. 2024, eq. 2-3),
so MotionPrompt's clean estimate is x0_hat = x_t - sigma_t v with sigma_t the scheduler's (shifted)
sigma of the step. Everything the sampler sees is what ``WanPipeline.__call__`` does:

* text: UMT5 encoding of ``max_sequence_length`` tokens (512) with the attention mask, padding positions
  zeroed, prompts cleaned by the pipeline's own ``prompt_clean`` (:class:`mpcore.text.T5TextTokens`);
* noise: float32, drawn in the pipeline's (B, C, F, h, w) layout, and float32 latents throughout; the
  model input cast to the transformer's dtype, the timestep ``t.expand(B)``;
* CFG: conditional and unconditional outputs in two model calls, conditional first;
* the scheduler of the model folder (UniPC with flow sigmas, flow shift 3.0, for the official folders);
* decoding: the VAE's latent normalisation undone per channel (``z * std + mean``) inside the decode
  methods, so :meth:`latent_scale` is 1.

The causal 3D VAE compresses time 4x (latent frame 0 is video frame 0, latent frame k >= 1 holds video
frames 4k-3 .. 4k). How MotionPrompt's frame pairs are decoded through it: :meth:`WanBackbone.decode_pairs`.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from torch.utils.checkpoint import checkpoint as checkpoint_fn

from mp_plugin_wan import loading, tiny
from mpcore.backbones import ATTENTION_CHOICES, ModelNotFoundError, describe, freeze, quiet_diffusers
from mpcore.interfaces import Backbone
from mpcore.jobs.options import OptionError
from mpcore.text import T5TextTokens

DEFAULT_MAX_SEQUENCE_LENGTH = 512
"""``WanPipeline.__call__``'s default text length (``--max-sequence-length`` overrides it)."""


def _onload(module: torch.nn.Module) -> None:
    """With model CPU offload, move ``module`` to the execution device before calling its submodules
    directly (what diffusers' ``apply_forward_hook`` does for ``vae.decode``)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


class WanBackbone(Backbone):
    """WanTransformer3DModel, AutoencoderKLWan and UMT5 encoder, sampled as ``WanPipeline`` samples."""

    name = "wan"
    prediction_type = "flow_matching"
    separate_cfg_passes = True

    def __init__(self, parts: dict[str, Any], device: torch.device, dtype: torch.dtype, source: dict[str, Any],
                 max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH, is_random_init: bool = False):
        """``parts``: ``transformer``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler_class`` and
        ``scheduler_config`` (as :func:`mp_plugin_wan.loading.load_components` returns them)."""
        self.transformer = parts["transformer"]
        self.vae = parts["vae"]
        self.text_encoder = parts["text_encoder"]
        self.scheduler_class = parts["scheduler_class"]
        self.scheduler_config = dict(parts["scheduler_config"])
        self.device = device
        self.dtype = dtype
        self.source = source
        self.is_random_init = is_random_init
        self.max_sequence_length = max_sequence_length
        self.text = T5TextTokens(parts["tokenizer"], self.text_encoder, device, dtype, max_sequence_length,
                                 attention_mask=True, zero_padding=True, clean=prompt_clean)
        config = self.vae.config
        self.latent_channels = int(config.z_dim)
        self.vae_scale_factor = int(config.scale_factor_spatial)
        self.temporal_compression = int(config.scale_factor_temporal)
        # the decoder's causal convolutions, one feature-cache slot each (decode_latent_video)
        self.decoder_convs = sum(isinstance(m, WanCausalConv3d) for m in self.vae.decoder.modules())
        freeze(self.transformer, self.vae, self.text_encoder)

    @property
    def latent_dtype(self) -> torch.dtype:
        """WanPipeline draws float32 noise and keeps its latents in float32 whatever the model's dtype."""
        return torch.float32

    def make_scheduler(self):
        return self.scheduler_class.from_config(self.scheduler_config)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The flow velocity v for latents (N, C, F, h, w): input cast to the transformer's dtype, the
        timestep expanded to the batch, output in the transformer's dtype (as WanPipeline's loop)."""
        timestep = torch.as_tensor(t, device=latents.device).expand(latents.shape[0])
        return self.transformer(hidden_states=latents.to(self.transformer.dtype), timestep=timestep,
                                encoder_hidden_states=cond, return_dict=False)[0]

    def set_denoiser_checkpointing(self, enabled: bool) -> None:
        """diffusers' gradient checkpointing of the transformer: each WanTransformerBlock as a whole."""
        if enabled:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()

    # ------------------------------------------------------------------ decoding

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Wan's latent normalisation undone per channel, z * std + mean (``vae.config.latents_std`` /
        ``latents_mean``), computed as WanPipeline computes it, ``z / (1 / std) + mean`` in z's dtype, so
        the decoded video is bitwise the pipeline's."""
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(z.device, z.dtype)
        inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(z.device, z.dtype)
        return z / inverse_std + mean

    def decode_latent_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Sampler latents (B, C, F, h, w) -> video (B, 3, 1 + r (F - 1), H, W), differentiable, NOT clamped.

        The causal decode of ``AutoencoderKLWan.decode``: latent frame after latent frame through the
        decoder, each causal convolution reading the last frames of its previous input from a feature
        cache (latent frame 0 gives one video frame, every later one r = 4). The cache here is this
        call's own list (the VAE's ``decode`` keeps it on the module), so the function is pure and can be
        gradient-checkpointed; and it leaves out ``decode``'s final clamp to [-1, 1], so pixels beyond it
        still pass gradient (as the SD-family VAE decodes of the other backbones)."""
        _onload(self.vae)
        vae = self.vae
        x = vae.post_quant_conv(self.denormalize(latents.to(device=self.device, dtype=vae.dtype)))
        cache: list[Any] = [None] * self.decoder_convs
        frames = [vae.decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=(i == 0))
                  for i in range(x.shape[2])]
        video = torch.cat(frames, dim=2)
        if vae.config.patch_size is not None:
            video = unpatchify(video, patch_size=vae.config.patch_size)
        return video

    def decode(self, latents: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """Each latent frame (N, C, h, w) decoded on its own as a one-frame video (the causal VAE's image
        decode), -> (N, 3, H, W). For latent frame k >= 1 this is NOT a frame of the decoded video (that
        needs the frames before it): MotionPrompt decodes through :meth:`decode_pairs` instead."""
        def run(z):
            return self.decode_latent_video(z[:, :, None])[:, :, 0]

        if checkpoint and torch.is_grad_enabled():
            return checkpoint_fn(run, latents, use_reentrant=False)
        return run(latents)

    def decode_pairs(self, latents: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """One adjacent pair of video frames per adjacent latent pair, for MotionPrompt's flow.

        ``latents`` (2n, C, h, w) are the estimated clean latent frames (a0, b0, a1, b1, ...) with
        b_i = a_i + 1 = k + 1. Each pair is decoded as a two-latent-frame video window with the causal
        VAE: latent k plays the window's first frame (one video frame), latent k + 1 gives four; the
        window's LAST two video frames, those with the most causal context, are returned. They stand for
        video frames (4(k+1) - 1, 4(k+1)) of the full video: for k = 0 they are exactly those frames of
        the full decode (the window is the video's start; the causal cache makes it the same
        computation); for k >= 1 the full decode would also see latents 0 .. k - 1 and decodes latent k
        as four frames, not one, so the window's frames differ from the video's (tiny random VAE,
        tests/test_wan_decode.py: RMS difference about 1.1x the frames' std, max 1.1-1.5 on [-1, 1]; a trained
        VAE is unmeasured here). Alternatives weighed: a longer window (k-1, k, k+1) only brought that to
        0.66x on the tiny model; decoding latents 0 .. k+1 is exact but costs k + 2 latent frames of
        decoder with gradient instead of 2. Differentiable, NOT clamped to [-1, 1] (see
        :meth:`decode_latent_video`); one window at a time; ``checkpoint``: each window's decode is
        gradient-checkpointed (its activations are recomputed in the backward pass). Returns
        (2n, 3, H, W) in the VAE's dtype, in the order of ``latents``."""
        if latents.dim() != 4 or latents.shape[0] % 2:
            raise ValueError(f"decode_pairs takes latent frames (2n, C, h, w) in adjacent pairs, got {tuple(latents.shape)}")

        def last_two_frames(window):  # (1, C, 2, h, w) -> (2, 3, H, W)
            return self.decode_latent_video(window)[0, :, -2:].permute(1, 0, 2, 3)

        images = []
        for i in range(0, latents.shape[0], 2):
            window = latents[i : i + 2].permute(1, 0, 2, 3)[None]
            if checkpoint and torch.is_grad_enabled():
                images.append(checkpoint_fn(last_two_frames, window, use_reentrant=False))
            else:
                images.append(last_two_frames(window))
        return torch.cat(images)

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """The first video of final latents (B, C, F, h, w) as WanPipeline decodes it: to the VAE's dtype,
        normalisation undone, the whole latent video through ``vae.decode`` (its causal cache, its tiling
        if enabled, its clamp) -> (F_video, 3, H, W) float32 in [-1, 1]."""
        z = self.denormalize(latents[:1].to(device=self.device, dtype=self.vae.dtype))
        video = self.vae.decode(z, return_dict=False)[0]
        return video[0].permute(1, 0, 2, 3).float().clamp(-1, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "backbone 'wan' does not encode single images: its causal video VAE maps 1 + 4k video frames to "
            "1 + k latent frames, not frame to frame, so `mpcore diagnose` cannot put real clips on its "
            "trajectory frame by frame (not implemented for this backbone)")

    def describe(self) -> dict[str, Any]:
        return describe(
            self,
            scheduler={"class": self.scheduler_class.__name__,
                       **{k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}},
            max_sequence_length=self.max_sequence_length,
            vae_dtype=str(self.vae.dtype).replace("torch.", ""),
            vae_tiling=bool(getattr(self.vae, "use_tiling", False)),
            transformer_parameters=sum(p.numel() for p in self.transformer.parameters()),
            decode_pairs="latent pair (k, k+1) decoded as a 2-latent-frame causal window; its last two video "
                         "frames stand for video frames (4k+3, 4k+4)",
        )


def place(parts: dict[str, Any], device: torch.device, dtype: torch.dtype, offload: bool) -> None:
    """The transformer and text encoder in ``dtype``, the VAE in float32, all on ``device``; or, with
    ``offload``, diffusers' model CPU offload of a WanPipeline built from the parts (each model moves to
    the GPU when it runs, in the pipeline's order text_encoder -> transformer -> vae)."""
    from diffusers import WanPipeline

    with quiet_diffusers():
        for name in ("transformer", "text_encoder"):
            if parts[name].dtype != dtype:
                parts[name].to(dtype=dtype)
        if offload:
            if device.type != "cuda":
                raise RuntimeError("--offload (model CPU offload) needs a CUDA --device; on CPU everything is on the CPU already")
            pipe = WanPipeline(transformer=parts["transformer"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                               tokenizer=parts["tokenizer"], scheduler=parts["scheduler"])
            pipe.enable_model_cpu_offload(device=device)
        else:
            for name in ("transformer", "text_encoder", "vae"):
                parts[name].to(device=device)


def with_flow_shift(scheduler_config: dict[str, Any], flow_shift: float) -> dict[str, Any]:
    """A copy of ``scheduler_config`` with its sigma shift set (UniPC names it ``flow_shift``,
    flow-matching Euler ``shift``)."""
    key = "flow_shift" if "flow_shift" in scheduler_config else "shift"
    return {**scheduler_config, key: float(flow_shift)}


def load(
    model: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    offload: bool = False,
    attention: str = "auto",
    max_sequence_length: int | None = None,
    vae_tiling: bool | None = None,
    flow_shift: float | None = None,
) -> WanBackbone:
    """Load Wan 2.1 from a diffusers folder or hub id (default ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``);
    ``model="tiny"`` builds the tiny random-init model from ``seed`` (offline). ``flow_shift``: the
    scheduler's sigma shift instead of the folder's (3.0 in the diffusers folders; Wan's own scripts and
    FlowMo's published run use 5.0 for text-to-video)."""
    device = torch.device(device)
    if flow_shift is not None and not flow_shift > 0:
        raise ValueError(f"--flow-shift must be a number > 0, got {flow_shift}")
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"--attention must be one of {', '.join(ATTENTION_CHOICES)}, got {attention!r}")
    if attention == "xformers":
        raise RuntimeError("--attention xformers is not available for wan (diffusers' Wan attention runs torch "
                           "scaled-dot-product attention); use --attention sdpa")
    model = model or loading.DEFAULT_MODEL
    length = max_sequence_length or DEFAULT_MAX_SEQUENCE_LENGTH
    if model == "tiny":
        parts = tiny.tiny_components(seed)
        source: dict[str, Any] = {"model": "tiny", "seed": seed}
    else:
        parts = loading.load_components(model, dtype)
        source = {"model": model}
    if flow_shift is not None:
        parts["scheduler_config"] = with_flow_shift(parts["scheduler_config"], flow_shift)
        source["flow_shift"] = float(flow_shift)
    place(parts, device, dtype, offload)
    if vae_tiling:
        parts["vae"].enable_tiling()
    source.update(attention="sdpa", offload=offload)
    return WanBackbone(parts, device, dtype, source, max_sequence_length=length, is_random_init=(model == "tiny"))


def wrap(pipeline, max_sequence_length: int | None = None, flow_shift: float | None = None) -> WanBackbone:
    """The Wan backbone around a Wan 2.1 ``WanPipeline`` you already have (:func:`mpcore.wrap_pipeline`): its
    transformer, VAE, UMT5 encoder and tokenizer, the same objects, on the device ``pipeline(...)`` computes on
    (``pipeline._execution_device``: the transformer's, or the GPU of a model-offloaded pipeline) in the
    transformer's dtype (the VAE decodes in its own, float32 in diffusers' Wan examples). ``max_sequence_length``
    (default 512, the pipeline's) and ``flow_shift`` as :func:`load`'s. A Wan 2.2 pipeline (a second transformer
    or per-token timesteps) is refused: its sampling is not Wan 2.1's.

    What it changes on ``pipeline``: the transformer, VAE and text encoder are put in eval mode with
    ``requires_grad_(False)`` (:func:`mpcore.backbones.freeze`), and the text encoder's input embedding gets a
    forward hook (:class:`mpcore.text.T5TextTokens`) that only acts inside mpcore's own prompt encodes; a guidance
    that learns tokens adds them to the tokenizer and embedding table (:func:`mpcore.wrap_pipeline`). Nothing is
    moved, cast or re-configured (VAE tiling, progress bar, ``pipeline.scheduler``): call
    ``pipeline.vae.enable_tiling()`` yourself for a tiled final decode.

    Scheduler: the pipeline scheduler's class with its config (UniPC on flow sigmas, flow shift 3.0, in the
    official folders), refused unless it is a flow-matching one, as :func:`mp_plugin_wan.loading.load_components`
    takes a folder's; a fresh one per video (``flow_shift`` changes that copy's config, not ``pipeline.scheduler``)."""
    config = pipeline.config
    if pipeline.transformer is None or getattr(pipeline, "transformer_2", None) is not None \
            or config.get("boundary_ratio") is not None or config.get("expand_timesteps"):
        raise OptionError("this WanPipeline is a Wan 2.2 one (a second transformer, a boundary_ratio or per-token "
                          "timesteps); the wan backbone samples Wan 2.1 text-to-video (one transformer)")
    if max_sequence_length is not None and max_sequence_length < 1:
        raise OptionError(f"max_sequence_length must be >= 1, got {max_sequence_length}")
    if flow_shift is not None and not flow_shift > 0:
        raise OptionError(f"flow_shift must be a number > 0 (the folder's is 3.0), got {flow_shift}")
    scheduler = {**pipeline.scheduler.config, "_class_name": type(pipeline.scheduler).__name__}
    try:
        scheduler_class, scheduler_config = loading.scheduler_from_config(scheduler, "the pipeline's scheduler")
    except ModelNotFoundError as error:
        raise OptionError(str(error)) from None
    source: dict[str, Any] = {"model": getattr(config, "_name_or_path", None) or None,
                              "wrapped": type(pipeline).__name__}
    if flow_shift is not None:
        scheduler_config = with_flow_shift(scheduler_config, flow_shift)
        source["flow_shift"] = float(flow_shift)
    parts = dict(transformer=pipeline.transformer, vae=pipeline.vae, text_encoder=pipeline.text_encoder,
                 tokenizer=pipeline.tokenizer, scheduler_class=scheduler_class, scheduler_config=scheduler_config)
    return WanBackbone(parts, pipeline._execution_device, pipeline.transformer.dtype, source,
                       max_sequence_length=max_sequence_length or DEFAULT_MAX_SEQUENCE_LENGTH)
