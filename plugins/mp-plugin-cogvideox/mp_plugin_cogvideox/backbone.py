"""The CogVideoX backbone adapter: diffusers' CogVideoX components behind mpcore's interface.

CogVideoX (Yang et al., "CogVideoX: Text-to-Video Diffusion Models with An Expert Transformer", 2024):
a DiT over text and video tokens jointly (expert adaptive LayerNorm), a causal 3D VAE (8x space, 4x
time: latent frame 0 is video frame 0, latent frame k >= 1 holds video frames 4k-3 .. 4k), a T5 v1.1
XXL text encoder, v-prediction with a zero-terminal-SNR, SNR-shifted schedule. Sampling follows
``diffusers.CogVideoXPipeline.__call__`` step for step (tested bitwise on tiny components).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline

from mp_plugin_cogvideox import loading, tiny
from mpcore.backbones import ModelNotFoundError, choose_attention, describe, freeze, quiet_diffusers
from mpcore.interfaces import Backbone
from mpcore.jobs.options import OptionError
from mpcore.text import T5TextTokens

WINDOW_LATENT_FRAMES = 2
""":meth:`CogVideoXBackbone.decode_pairs` decodes each latent pair (k, k+1) alone, as a 2-frame video."""


class PipelineLayoutDPMScheduler(CogVideoXDPMScheduler):
    """``CogVideoXDPMScheduler`` stepping latents of mpcore's layout (B, C, F, h, w) in the pipeline's
    layout (B, F, C, h, w).

    This DPM-Solver++(2M) variant is stochastic: every step draws Gaussian noise of the sample's shape
    from the generator (``randn_tensor(sample.shape)``). Drawn in mpcore's layout the same numbers
    would land on other elements than in ``CogVideoXPipeline``, so the step swaps the frame and channel
    axes of its tensor arguments, steps, and swaps back (exact: a permutation)."""

    def step(self, model_output, old_pred_original_sample, timestep, timestep_back, sample, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise=None, return_dict: bool = False):
        def swap(x):
            return None if x is None else x.transpose(1, 2)

        prev_sample, pred_original_sample = super().step(
            swap(model_output), swap(old_pred_original_sample), timestep, timestep_back, swap(sample), eta=eta,
            use_clipped_model_output=use_clipped_model_output, generator=generator, variance_noise=swap(variance_noise),
            return_dict=False)
        return swap(prev_sample), swap(pred_original_sample)


class CogVideoXBackbone(Backbone):
    """``CogVideoXTransformer3DModel`` + ``AutoencoderKLCogVideoX`` + T5 encoder, sampled with the model
    folder's CogVideoX DDIM or DPM scheduler (v-prediction).

    MotionPrompt's clean estimate is the v form x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v with
    a_t = ``scheduler.alphas_cumprod[t]``: in both CogVideoX schedulers that table is the SNR-shifted
    (``snr_shift_scale``, SD3-style: a / (s + (1 - s) a)) and zero-terminal-SNR-rescaled one, the same
    table their ``step`` reads, so the estimate is exactly the step's own ``pred_original_sample``.
    """

    name = "cogvideox"
    prediction_type = "v_prediction"

    def __init__(self, pipe: CogVideoXPipeline, device: torch.device, dtype: torch.dtype, source: dict[str, Any],
                 max_sequence_length: int | None = None, is_random_init: bool = False):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = pipe.vae
        self.scheduler_config = dict(pipe.scheduler.config)
        self.scheduler_class = type(pipe.scheduler).__name__
        loading.checked_scheduler_name({"_class_name": self.scheduler_class}, "the pipeline's scheduler")
        self.device = device
        self.dtype = dtype
        self.source = source
        self.is_random_init = is_random_init
        config = self.transformer.config
        self.latent_channels = config.in_channels
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.temporal_compression = int(self.vae.config.temporal_compression_ratio)
        self.rotary = bool(config.use_rotary_positional_embeddings)
        # CogVideoXPipeline.__call__'s default is 226, the released transformers' max_text_seq_length
        self.max_sequence_length = max_sequence_length or config.max_text_seq_length
        if not self.rotary and self.max_sequence_length != config.max_text_seq_length:
            raise ValueError(
                f"--max-sequence-length {self.max_sequence_length}: this CogVideoX transformer adds sincos position "
                f"embeddings for exactly {config.max_text_seq_length} text tokens (max_text_seq_length; CogVideoX-2b); "
                "leave --max-sequence-length unset")
        self.text = T5TextTokens(pipe.tokenizer, pipe.text_encoder, device, dtype, self.max_sequence_length,
                                 attention_mask=False, zero_padding=False)
        self._rotary_cache: dict[tuple[int, int, int], Any] = {}
        freeze(self.transformer, self.vae, pipe.text_encoder)

    # ------------------------------------------------------------------ sampling
    def make_scheduler(self):
        """The folder's scheduler class with its config (``CogVideoXDDIMScheduler``: 2b;
        ``CogVideoXDPMScheduler``: 5b, stepping in the pipeline's layout: :class:`PipelineLayoutDPMScheduler`)."""
        if self.scheduler_class == "CogVideoXDPMScheduler":
            return PipelineLayoutDPMScheduler.from_config(self.scheduler_config)
        return CogVideoXDDIMScheduler.from_config(self.scheduler_config)

    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """x_T as ``CogVideoXPipeline.prepare_latents`` draws it: ``randn_tensor`` of (B, F, C, h, w) in the
        latent dtype, then viewed as mpcore's (B, C, F, h, w)."""
        from diffusers.utils.torch_utils import randn_tensor

        batch, channels, frames, height, width = shape
        noise = randn_tensor((batch, frames, channels, height, width), generator=generator, device=self.device,
                             dtype=self.latent_dtype)
        return noise.permute(0, 2, 1, 3, 4)

    def rotary_embeddings(self, frames: int, height: int, width: int):
        """The 3D rotary embeddings (cos, sin) of a latent video of ``frames`` x ``height`` x ``width``
        (CogVideoX-5b; None for the 2b's sincos embeddings), computed as ``CogVideoXPipeline``
        computes them: the patch grid cropped into the transformer's sample-size grid."""
        if not self.rotary:
            return None
        key = (frames, height, width)
        if key not in self._rotary_cache:
            from diffusers.models.embeddings import get_3d_rotary_pos_embed
            from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

            config = self.transformer.config
            grid = (height // config.patch_size, width // config.patch_size)
            crops = get_resize_crop_region_for_grid(grid, config.sample_width // config.patch_size,
                                                    config.sample_height // config.patch_size)
            self._rotary_cache[key] = get_3d_rotary_pos_embed(embed_dim=config.attention_head_dim, crops_coords=crops,
                                                              grid_size=grid, temporal_size=frames, device=self.device)
        return self._rotary_cache[key]

    def predict(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """v for ``latents`` (N, C, F, h, w): the transformer takes (N, F, C, h, w) and the timestep
        broadcast to N; returned in float32, as the pipeline casts ``noise_pred`` before CFG."""
        hidden = latents.permute(0, 2, 1, 3, 4).to(self.dtype)
        t = torch.as_tensor(t, device=self.device)
        timestep = t.expand(hidden.shape[0]) if t.dim() == 0 else t
        frames, height, width = hidden.shape[1], hidden.shape[3], hidden.shape[4]
        out = self.transformer(hidden_states=hidden, encoder_hidden_states=cond, timestep=timestep,
                               image_rotary_emb=self.rotary_embeddings(frames, height, width), return_dict=False)[0]
        return out.float().permute(0, 2, 1, 3, 4)

    def latent_scale(self, t=None) -> float:
        return float(self.vae.config.scaling_factor)

    def set_denoiser_checkpointing(self, enabled: bool) -> None:
        """diffusers' gradient checkpointing of the transformer: each block recomputed in the backward."""
        if enabled:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()

    # ------------------------------------------------------------------ decoding
    def _vae_decode(self, z: torch.Tensor, checkpoint: bool) -> torch.Tensor:
        """``vae.decode`` of latent videos (N, C, F, h, w), with the decoder's per-block gradient
        checkpointing (mid block, each up block and its ResNets) when ``checkpoint``. The setting stays
        until the next call: the backward pass recomputes the blocks with the flags of the forward."""
        if checkpoint != self.vae.decoder.gradient_checkpointing:
            if checkpoint:
                self.vae.enable_gradient_checkpointing()
            else:
                self.vae.disable_gradient_checkpointing()
        return self.vae.decode(z).sample

    def decode(self, latents: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """Each latent frame (N, C, h, w) decoded alone, as a one-frame video (the causal VAE decodes a
        single latent frame to a single image, as it decodes a video's first frame); (N, 3, H, W)."""
        video = self._vae_decode(latents.unsqueeze(2), checkpoint)  # (N, 3, 1, H, W)
        return video[:, :, 0]

    def decode_pairs(self, latents: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """One adjacent pair of video frames per adjacent latent pair (MotionPrompt's frames to flow).

        ``latents`` (2n, C, h, w) are the clean estimates of latent frames (k_i, k_i + 1), i = 0..n-1,
        latent scale undone. Only these frames are estimated, so each pair is decoded ALONE, as a
        two-latent-frame video (no conv cache from earlier frames; the causal convolutions pad the
        window's start by repeating its first frame). A 2-frame batch is even, so both temporal
        up-samplings double every frame: the window decodes to 2 x 4 = 8 video frames, 0-3 from
        latent k and 4-7 from latent k + 1. Returned: window frames (3, 4), the last frame of latent k
        and the first of latent k + 1 -- the pair across the latent boundary, whose flow depends on
        both latent frames. In the full video they stand for video frames (4k, 4k + 1) when the video
        has an odd number of latent frames (the pipeline's 49 frames = 13 latent frames; latent 0 is
        video frame 0 alone), and (4k + 3, 4k + 4) when it has an even number (then every latent
        frame, the first included, decodes to 4 frames).

        Where this is exact: the full decode (``AutoencoderKLCogVideoX._decode``) cuts the latent video
        into batches of 2 latent frames, the first batch taking the odd remainder (13 latent frames:
        (0, 1, 2), (3, 4), ...), each batch with the conv cache of the previous one. The window equals
        the full decode's frames only when it IS a cache-free batch of the full decode: latent pair
        (0, 1) of a video with an even number of latent frames (the 8 window frames are then full
        video frames 0-7, bitwise). Everywhere else the window misses the conv cache (and, against the
        odd first batch, the first-frame handling and GroupNorm statistics over three frames); the
        difference is measured in the tests and the README (on the random tiny VAE it is large: the
        window's first frames differ most, its last frames least). Returns (2n, 3, H, W), order
        (a0, b0, a1, b1, ...), differentiable; ``checkpoint`` checkpoints the decoder per block."""
        n = latents.shape[0] // 2
        channels, height, width = latents.shape[1:]
        z = latents.reshape(n, WINDOW_LATENT_FRAMES, channels, height, width).permute(0, 2, 1, 3, 4)
        video = self._vae_decode(z, checkpoint)  # (n, 3, 2r, H, W)
        r = self.temporal_compression
        pair = video[:, :, r - 1 : r + 1]  # window frames (r-1, r): last of latent k, first of latent k + 1
        return pair.permute(0, 2, 1, 3, 4).reshape(2 * n, *video.shape[1:2], *video.shape[3:])

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """The first video of final latents (B, C, F, h, w) as ``CogVideoXPipeline.decode_latents``
        decodes it (times 1 / scaling_factor, the whole latent video in one ``vae.decode``, with
        tiling / slicing if enabled), frames (F_video, 3, H, W) float32 in [-1, 1]."""
        z = 1 / self.vae.config.scaling_factor * latents[:1].to(self.dtype)
        video = self.vae.decode(z).sample  # (1, 3, F_video, H, W)
        return video[0].permute(1, 0, 2, 3).float().clamp(-1, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "backbone 'cogvideox' does not implement encode(): its causal VAE maps 4 video frames to one latent "
            "frame, so frames cannot be encoded one by one as mpcore diagnose expects")

    def describe(self) -> dict[str, Any]:
        return describe(
            self,
            scheduler={"class": self.scheduler_class,
                       **{k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}},
            max_sequence_length=self.max_sequence_length,
            rotary_embeddings=self.rotary,
            vae_scaling_factor=self.latent_scale(),
            vae_tiling=bool(self.vae.use_tiling),
            vae_slicing=bool(self.vae.use_slicing),
            transformer_parameters=sum(p.numel() for p in self.transformer.parameters()),
            decode_pairs="each latent pair (k, k+1) decoded alone (8 frames); window frames (3, 4) returned",
        )


def load(
    model: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    offload: bool = False,
    attention: str = "auto",
    max_sequence_length: int | None = None,
    vae_tiling: bool | None = None,
    vae_slicing: bool | None = None,
    tiny_variant: str = "2b",
) -> CogVideoXBackbone:
    """Load CogVideoX from a diffusers folder or hub id (default ``THUDM/CogVideoX-2b``);
    ``model="tiny"`` builds the tiny random model of ``tiny_variant`` from ``seed``."""
    device = torch.device(device)
    model = model or loading.DEFAULT_MODEL
    if attention == "xformers":
        raise RuntimeError("--attention xformers: CogVideoX's joint text-video attention (with rotary embeddings "
                           "on the video tokens) has its own processor; use --attention sdpa")
    attention_used = choose_attention(attention, device)
    if model == "tiny":
        parts = tiny.tiny_components(seed, tiny_variant)
        source: dict[str, Any] = {"model": "tiny", "variant": tiny_variant, "seed": seed}
    else:
        parts = loading.load_components(model, dtype)
        source = {"model": model}
    with quiet_diffusers():
        pipe = CogVideoXPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if vae_slicing:
        pipe.vae.enable_slicing()
    if offload:
        if device.type != "cuda":
            raise RuntimeError("--offload (model CPU offload) needs a CUDA --device; on CPU everything is on the CPU already")
        with quiet_diffusers():
            pipe.to(dtype=dtype)
        pipe.enable_model_cpu_offload(device=device)
    else:
        with quiet_diffusers():
            pipe.to(device=device, dtype=dtype)
    source.update(attention=attention_used, offload=offload)
    return CogVideoXBackbone(pipe, device, dtype, source, max_sequence_length, is_random_init=(model == "tiny"))


def wrap(pipeline: CogVideoXPipeline, max_sequence_length: int | None = None) -> CogVideoXBackbone:
    """The CogVideoX backbone around a ``CogVideoXPipeline`` you already have (:func:`mpcore.wrap_pipeline`): its
    transformer, VAE, T5 encoder and tokenizer, the same objects, on the device ``pipeline(...)`` computes on
    (``pipeline._execution_device``: the transformer's, or the GPU of a model-offloaded pipeline) in the
    transformer's dtype. ``max_sequence_length`` as :func:`load`'s (default: the transformer's
    ``max_text_seq_length``, the pipeline's 226). A CogVideoX 1.5 pipeline (temporal patches) is refused, as
    :func:`mp_plugin_cogvideox.loading.load_components` refuses its folder.

    What it changes on ``pipeline``: the transformer, VAE and text encoder are put in eval mode with
    ``requires_grad_(False)`` (:func:`mpcore.backbones.freeze`), and the text encoder's input embedding gets a
    forward hook (:class:`mpcore.text.T5TextTokens`) that only acts inside mpcore's own prompt encodes; a guidance
    that learns tokens adds them to the tokenizer and embedding table (:func:`mpcore.wrap_pipeline`). Nothing is
    moved, cast or re-configured (VAE tiling or slicing, progress bar, ``pipeline.scheduler``): enable
    ``pipeline.vae.enable_tiling()`` / ``enable_slicing()`` yourself, the final decode uses them.

    Scheduler: the pipeline scheduler's class with its config, ``CogVideoXDDIMScheduler`` (2b) or
    ``CogVideoXDPMScheduler`` (5b, stepped in the pipeline's layout), as the load path takes a folder's (any
    other class is refused); a fresh one per video."""
    problem = loading.unsupported_transformer(pipeline.transformer)
    if problem:
        raise OptionError(f"this CogVideoXPipeline's transformer {problem}")
    if max_sequence_length is not None and max_sequence_length < 1:
        raise OptionError(f"max_sequence_length must be >= 1, got {max_sequence_length}")
    try:
        loading.checked_scheduler_name({"_class_name": type(pipeline.scheduler).__name__}, "the pipeline's scheduler")
    except ModelNotFoundError as error:
        raise OptionError(str(error)) from None
    source = {"model": getattr(pipeline.config, "_name_or_path", None) or None, "wrapped": type(pipeline).__name__}
    return CogVideoXBackbone(pipeline, pipeline._execution_device, pipeline.transformer.dtype, source,
                             max_sequence_length)
