"""Differentiable RAFT flow (Teed & Deng, ECCV 2020) on torchvision's implementation.

``load(...)`` returns a :class:`RAFTFlow`: ``flow = f(frame_a, frame_b)`` with frames (B, 3, H, W)
in [-1, 1] (the range torchvision's RAFT expects) and flow (B, 2, H, W) in pixels, x then y. In
MotionPrompt the flow of decoded frame pairs is fed to the flow discriminator, so gradients must
reach both frames: nothing here runs under ``torch.no_grad``; the RAFT weights themselves are frozen
(``requires_grad=False``, eval mode).

RAFT needs H and W divisible by 8, and its 4-level correlation pyramid needs feature maps of at
least 16 cells, i.e. images of at least 128 px per side. Frames are therefore replicate-padded
(centred) up to the next multiple of 8, and further up to that minimum when smaller; the flow is
cropped back to (H, W).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights, raft_large, raft_small

from mpcore.weights import CheckpointMismatchError, read_state_dict, shapes, state_dict_diff

SIZES = {
    "small": (raft_small, Raft_Small_Weights),
    "large": (raft_large, Raft_Large_Weights),
}
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
RANDOM = "random"


def normalize_size(size: str) -> str:
    """'small' | 'large' (also 'raft_small' / 'raft_large', any case)."""
    key = str(size).strip().lower()
    if key.startswith("raft_"):
        key = key[len("raft_"):]
    if key not in SIZES:
        raise ValueError(f"unknown RAFT size {size!r}; expected one of: small, large, raft_small, raft_large")
    return key


def pad_amounts(height: int, width: int, multiple: int = 8, minimum: int = 128) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) replicate padding that makes (height, width) a multiple of
    ``multiple`` and at least ``minimum``, centred (the odd pixel goes right / bottom)."""

    def split(n: int) -> tuple[int, int]:
        target = max(math.ceil(n / multiple) * multiple, minimum)
        extra = target - n
        return extra // 2, extra - extra // 2

    left, right = split(width)
    top, bottom = split(height)
    return left, right, top, bottom


class RAFTFlow(nn.Module):
    """A frozen torchvision RAFT as a MotionPrompt flow estimator: ``flow = f(frame_a, frame_b)``."""

    def __init__(self, raft: nn.Module, size: str, num_flow_updates: int, weights_source: str, is_random_init: bool):
        super().__init__()
        self.raft = raft
        self.size = size
        self.num_flow_updates = num_flow_updates
        self.weights_source = weights_source
        self.is_random_init = is_random_init
        # smallest image side the correlation pyramid accepts: 8 * 2 * 2 ** (levels - 1)
        self.min_side = 8 * 2 * 2 ** (raft.corr_block.num_levels - 1)
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "RAFTFlow":
        # a frozen estimator stays in eval mode (BatchNorm of raft_large must not update its stats)
        return super().train(False)

    def forward(self, frame_a: torch.Tensor, frame_b: torch.Tensor) -> torch.Tensor:
        if frame_a.ndim != 4 or frame_a.shape[1] != 3:
            raise ValueError(f"RAFT frames must be (B, 3, H, W); got frame_a {tuple(frame_a.shape)}")
        if frame_a.shape != frame_b.shape:
            raise ValueError(f"RAFT frames must have the same shape; got {tuple(frame_a.shape)} and {tuple(frame_b.shape)}")
        height, width = frame_a.shape[-2:]
        left, right, top, bottom = pad_amounts(height, width, 8, self.min_side)
        dtype = next(self.raft.parameters()).dtype
        frames = torch.cat([frame_a, frame_b]).to(dtype)
        frames = F.pad(frames, (left, right, top, bottom), mode="replicate")
        padded_a, padded_b = frames.chunk(2)
        flow = self.raft(padded_a, padded_b, num_flow_updates=self.num_flow_updates)[-1]
        return flow[:, :, top : top + height, left : left + width]

    def describe(self) -> dict[str, Any]:
        """What was loaded, for the run manifest."""
        return {
            "name": "raft",
            "size": self.size,
            "weights": self.weights_source,
            "num_flow_updates": self.num_flow_updates,
            "is_random_init": self.is_random_init,
        }


def _looks_like_path(weights: str) -> bool:
    return weights.lower().endswith(WEIGHT_SUFFIXES) or "/" in weights or os.sep in weights or Path(weights).exists()


def _enum_weights(enum_cls, name: str, size: str):
    key = name.split(".")[-1].strip()  # accept "Raft_Small_Weights.C_T_V2" as well as "C_T_V2"
    for member_name, member in enum_cls.__members__.items():  # includes the DEFAULT alias
        if member_name.lower() == key.lower():
            return member
    names = ", ".join(enum_cls.__members__)
    raise ValueError(
        f"unknown torchvision raft_{size} weights {name!r}; expected one of: {names}, "
        f"a local .pth/.pt/.safetensors path, or {RANDOM!r}"
    )


def _download_state_dict(weights_enum, size: str) -> dict[str, torch.Tensor]:
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=True)
    except Exception as error:
        raise RuntimeError(
            f"could not get torchvision raft_{size} weights {weights_enum} from {weights_enum.url} "
            f"({type(error).__name__}: {error}). Offline? Download that file elsewhere and pass its local "
            f".pth path as the flow weights, or pass weights={RANDOM!r} for a smoke run (random flow)."
        ) from error


def _file_state_dict(path: Path, expected: dict[str, tuple[int, ...]], size: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"RAFT weights file not found: {path}")
    state = read_state_dict(path)
    diff = state_dict_diff(expected, shapes(state))
    if diff:
        other = "large" if size == "small" else "small"
        raise CheckpointMismatchError(
            f"{path} is not a torchvision raft_{size} state dict (strict load):\n{diff}\n"
            f"If it holds raft_{other} weights pass size={other!r}. Checkpoints of the original "
            f"princeton-vl RAFT code use other key names; this loader expects torchvision's layout, "
            f"e.g. torch.save(torchvision.models.optical_flow.raft_{size}(weights=...).state_dict(), path)."
        )
    return state


def load(
    weights: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    size: str = "small",
    num_flow_updates: int = 12,
    **options: Any,
) -> RAFTFlow:
    """Build a frozen RAFT flow estimator (Teed & Deng 2020; torchvision implementation).

    ``weights``: ``None`` (= torchvision's ``DEFAULT`` weights of that size), a torchvision weights
    enum name such as ``"C_T_V2"`` (downloaded through torchvision's cache), a local
    ``.pth``/``.pt``/``.safetensors`` file holding a torchvision RAFT state dict (strict load), or
    ``"random"`` (random init seeded by ``seed``; flow is meaningless, for offline smoke runs).
    The global torch RNG state is left untouched.
    """
    if options:
        raise TypeError(
            f"unknown option(s) for the raft flow estimator: {', '.join(sorted(options))}; "
            "accepted: seed, size (small|large), num_flow_updates"
        )
    size = normalize_size(size)
    if int(num_flow_updates) < 1:
        raise ValueError(f"num_flow_updates must be an integer >= 1; got {num_flow_updates!r}")
    build, enum_cls = SIZES[size]

    # architecture init draws from the RNG: seed it, inside a fork so the caller's state is unchanged
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        raft = build(weights=None, progress=False)

    is_random = False
    if isinstance(weights, str) and weights.strip().lower() == RANDOM:
        source, is_random = f"random (seed {int(seed)})", True
    elif weights is not None and (isinstance(weights, os.PathLike) or _looks_like_path(str(weights))):
        path = Path(weights)
        raft.load_state_dict(_file_state_dict(path, shapes(raft.state_dict()), size), strict=True)
        source = str(path)
    else:
        weights_enum = _enum_weights(enum_cls, "DEFAULT" if weights is None else str(weights), size)
        raft.load_state_dict(_download_state_dict(weights_enum, size), strict=True)
        source = f"torchvision {weights_enum}"

    return RAFTFlow(raft, size, int(num_flow_updates), source, is_random).to(torch.device(device))
