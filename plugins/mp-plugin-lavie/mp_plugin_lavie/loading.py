"""Loading LaVie as users download it (as the official code does: github.com/Vchitect/LaVie,
``base/download.py``, ``base/models/__init__.py``, ``base/pipelines/sample.py``).

- ``lavie_base.pt`` (Hugging Face ``YaohuiW/LaVie``): the UNet only, ``torch.save``'d as
  ``{"ema": state_dict, ...}``; LaVie's ``find_model`` takes ``checkpoint["ema"]`` when present, else
  the whole dict, and loads it strictly. So do we, with a readable diff on any mismatch.
- VAE, CLIP tokenizer and text encoder: a Stable Diffusion v1.4 diffusers folder or hub id
  (``CompVis/stable-diffusion-v1-4``), subfolders ``vae``, ``tokenizer``, ``text_encoder``.
- The scheduler: SD v1.4's scheduler settings with LaVie's overrides (:data:`LAVIE_SCHEDULER`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mp_plugin_lavie.unet import LaVieUNet3D, make_rotary, read_config
from mpcore import OptionError
from mpcore.backbones import ModelNotFoundError, hub_error, looks_local, require_file, torch_load
from mpcore.io.weights import CheckpointMismatchError, read_state_dict, shapes, state_dict_diff

CHECKPOINT_WRAPPER = "ema"
LATENT_SCALE = 0.18215  # hard-coded by LaVie's pipeline (latents / 0.18215 before decoding)
BASE_SUBFOLDERS = ("vae", "tokenizer", "text_encoder")
SD14_HUB_ID = "CompVis/stable-diffusion-v1-4"
LAVIE_HUB_ID = "YaohuiW/LaVie"

# LaVie's base/configs/sample.yaml and pipeline_videogen.py: linear betas 1e-4..0.02 (not SD's
# scaled_linear), 1000 training steps, epsilon prediction, clip_sample False; SD v1.4's steps_offset 1
# and set_alpha_to_one False (LaVie's "ddim" option; with 50 steps the timesteps are 981, 961, ..., 1).
# LaVie's own default sampler is ancestral DDPM; MotionPrompt (and mpcore's loop) samples with DDIM,
# eta 0 by default.
LAVIE_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
    timestep_spacing="leading",
)

# LaVie's base/pipelines/sample.py samples with DDPMScheduler on the betas above; diffusers 0.16's DDPM
# ignored steps_offset, so its 50 timesteps are 980, 960, ..., 0 (steps_offset 0 gives the same here).
LAVIE_DDPM_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=False,
    variance_type="fixed_small",
    steps_offset=0,
    prediction_type="epsilon",
    timestep_spacing="leading",
)


def check_checkpoint(model: str | None) -> None:
    if not model:
        raise OptionError(
            "--backbone lavie needs --model PATH: the LaVie base UNet checkpoint lavie_base.pt (download it from "
            f"the Hugging Face repo {LAVIE_HUB_ID}), or --model tiny for a tiny random model",
            "--model",
        )
    require_file(model, "LaVie checkpoint",
                 f"Pass --model with the downloaded lavie_base.pt (Hugging Face repo {LAVIE_HUB_ID}).")


def check_base(base: str | None) -> None:
    """The SD v1.4 source of VAE, tokenizer and text encoder: given, and complete if it is a folder."""
    if not base:
        raise OptionError(
            "--backbone lavie needs --base: the Stable Diffusion v1.4 diffusers folder or hub id that provides the "
            f"VAE, tokenizer and text encoder (subfolders {', '.join(BASE_SUBFOLDERS)}), e.g. --base {SD14_HUB_ID}",
            "--base",
        )
    path = Path(base).expanduser()
    if not looks_local(base):
        return  # a hub id: resolved at load time
    if not path.exists():
        raise ModelNotFoundError(
            f"Stable Diffusion v1.4 folder not found at {path}. Pass --base with a diffusers folder (subfolders "
            f"{', '.join(BASE_SUBFOLDERS)}) or a hub id such as {SD14_HUB_ID}."
        )
    if path.is_file():
        raise ModelNotFoundError(
            f"--base {path} is a file; LaVie needs a Stable Diffusion v1.4 diffusers folder (subfolders "
            f"{', '.join(BASE_SUBFOLDERS)}) or a hub id such as {SD14_HUB_ID}."
        )
    missing = [name for name in BASE_SUBFOLDERS if not (path / name).is_dir()]
    if missing:
        raise ModelNotFoundError(
            f"the Stable Diffusion folder {path} has no {', '.join(missing)} subfolder(s); LaVie takes its VAE, "
            f"tokenizer and text encoder from a diffusers SD v1.4 folder (e.g. `hf download {SD14_HUB_ID}`)."
        )


# ----------------------------------------------------------------------------- UNet checkpoint


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a LaVie UNet checkpoint: ``checkpoint["ema"]`` if that key exists, else the whole
    dict (LaVie's ``find_model``); ``.safetensors`` files are read as they are. Memory-mapped when the
    file allows it, so a 3.6 GB file is not read twice."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return read_state_dict(path)
    state = torch_load(path)
    if isinstance(state, Mapping) and isinstance(state.get(CHECKPOINT_WRAPPER), Mapping):
        state = state[CHECKPOINT_WRAPPER]
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_unet(path: str | Path, config: dict[str, Any] | None = None) -> LaVieUNet3D:
    """The UNet3D at ``config`` with the weights of ``path``, strictly: every key present, no other
    key, every shape equal, else :class:`CheckpointMismatchError` listing the differences.

    The module is built on the meta device and the checkpoint's tensors are assigned (no random
    init, no second copy); the rotary embedding (whose non-persistent cache buffers are not in the
    checkpoint) is built for real. Tensors keep the file's dtype: cast afterwards.
    """
    state = read_checkpoint(path)
    rotary = make_rotary()
    with torch.device("meta"):
        unet = LaVieUNet3D(config, rotary_emb=rotary)
    diff = state_dict_diff(shapes(unet.state_dict()), shapes(state))
    if diff:
        raise CheckpointMismatchError(
            f"{path} does not match the LaVie UNet3D ({describe_config(unet.config)}):\n{diff}"
        )
    unet.load_state_dict(state, strict=True, assign=True)
    return unet


def describe_config(config: dict[str, Any]) -> str:
    return (f"block_out_channels={list(config['block_out_channels'])}, layers_per_block={config['layers_per_block']}, "
            f"cross_attention_dim={config['cross_attention_dim']}")


def expected_keys(variant: str | None = None, config: str | None = None) -> dict[str, tuple[int, ...]]:
    """``BackboneSpec.expected_keys`` of ``lavie``: the checkpoint's key -> shape map (after the
    ``ema`` unwrap) at the SD v1.4 config, or at the diffusers UNet config JSON ``config``."""
    from mp_plugin_lavie.unet import expected_shapes

    if variant not in (None, "base"):
        raise ValueError(f"unknown lavie variant {variant!r}; known: base (lavie_base.pt, the default)")
    return expected_shapes(read_config(config))


# ----------------------------------------------------------------------------- SD v1.4 parts


def load_base(base: str):
    """(tokenizer, text_encoder, vae) from an SD v1.4 diffusers folder or hub id."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(base).expanduser()
    source = str(path) if path.exists() else base
    try:
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder")
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae")
    except OSError as error:
        raise hub_error(base, "the Stable Diffusion v1.4 parts from", error, "--base") from error
    return tokenizer, text_encoder, vae
