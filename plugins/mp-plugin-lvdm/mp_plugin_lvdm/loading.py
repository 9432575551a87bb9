"""Loading the official ``model.ckpt`` files strictly, offline.

As the original scripts (VideoCrafter ``scripts/evaluation/funcs.py``, DynamiCrafter
``scripts/evaluation/inference.py``): ``{"state_dict": ...}`` or a DeepSpeed ``{"module": ...}`` file
(first 16 characters ``_forward_module.`` of each key stripped), or a bare state dict / safetensors
conversion; the 256 DynamiCrafter file's ``framestride_embed.*`` keys are read as ``fps_embedding.*``.
Every key present, no other key, every shape equal, else :class:`CheckpointMismatchError` with the
readable diff. Everything (text encoder, image encoder) comes from the checkpoint: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mp_plugin_lvdm.model import LatentDiffusion, build_meta
from mpcore import OptionError
from mpcore.backbones import ModelNotFoundError, require_file, torch_load  # noqa: F401 (loading.ModelNotFoundError)
from mpcore.io.weights import CheckpointMismatchError, shapes, state_dict_diff

HUB = {
    "videocrafter2": "VideoCrafter/VideoCrafter2",
    "dynamicrafter_256": "Doubiiu/DynamiCrafter",
    "dynamicrafter_512": "Doubiiu/DynamiCrafter_512",
    "dynamicrafter_1024": "Doubiiu/DynamiCrafter_1024",
}
DEEPSPEED_PREFIX = "_forward_module."


def hub_name(backbone: str, variant: str | None) -> str:
    return HUB["videocrafter2"] if backbone == "videocrafter2" else HUB[f"dynamicrafter_{variant or '512'}"]


def check_checkpoint(model: str | None, backbone: str, variant: str | None = None) -> None:
    repo = hub_name(backbone, variant)
    if not model:
        raise OptionError(
            f"--backbone {backbone} needs --model PATH: the official model.ckpt (Hugging Face repo {repo}), "
            "or --model tiny for a tiny random model",
            "--model",
        )
    require_file(model, f"{backbone} checkpoint", f"Pass --model with the downloaded model.ckpt (Hugging Face repo {repo}).")


def rename_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 256 DynamiCrafter file's frame-stride MLP ``framestride_embed`` is the model's ``fps_embedding``."""
    return {k.replace("framestride_embed", "fps_embedding"): v for k, v in state.items()}


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint as the model loads them (wrapper removed, keys renamed);
    memory-mapped when the file allows it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch_load(path)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    elif isinstance(state, Mapping) and isinstance(state.get("module"), Mapping):
        state = {k[len(DEEPSPEED_PREFIX):] if k.startswith(DEEPSPEED_PREFIX) else k: v for k, v in state["module"].items()}
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{path} holds a {type(state).__name__}, not a state dict")
    return rename_keys({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})


def describe(config: dict[str, Any]) -> str:
    unet = config["model"]["params"]["unet_config"]["params"]
    return (f"model_channels={unet.get('model_channels')}, channel_mult={list(unet.get('channel_mult', []))}, "
            f"in_channels={unet.get('in_channels')}, context_dim={unet.get('context_dim')}")


def load_model(path: str | Path, config: dict[str, Any], name: str) -> LatentDiffusion:
    """The module at ``config`` with the weights of ``path``, strictly. Built on the meta device and
    the checkpoint's tensors assigned (no random init, no second copy); the non-persistent buffers
    (attention masks, CLIP mean/std) are rebuilt for real. Tensors keep the file's dtype."""
    state = read_checkpoint(path)
    model = build_meta(config)
    diff = state_dict_diff(shapes(model.state_dict()), shapes(state))
    if diff:
        raise CheckpointMismatchError(f"{path} does not match the {name} model ({describe(config)}):\n{diff}")
    model.load_state_dict(state, strict=True, assign=True)
    _materialize_nonpersistent(model)
    return model


def _materialize_nonpersistent(model: torch.nn.Module) -> None:
    from mp_plugin_lvdm.clip import CLIP_MEAN, CLIP_STD

    text = model.cond_stage_model.model
    ctx = text.positional_embedding.shape[0]
    text.attn_mask = torch.full((ctx, ctx), float("-inf")).triu_(1)
    if hasattr(model, "embedder"):
        model.embedder.mean = torch.tensor(CLIP_MEAN)
        model.embedder.std = torch.tensor(CLIP_STD)
    for name, buffer in model.named_buffers():
        if buffer.is_meta:
            raise RuntimeError(f"buffer {name} was not materialized")
