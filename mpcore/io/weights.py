"""Reading checkpoints as users download them, and readable key/shape diffs for strict loads."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model; the message lists the differences."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or torch pickle file, unwrapping ``state_dict`` wrappers and
    dropping non-tensor entries (e.g. AnimateDiff v3's ``animatediff_config``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    while isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def state_dict_diff(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], limit: int = 20
) -> str:
    """Readable difference between two key -> shape maps ('' when they match)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    lines = []
    for title, keys, fmt in (
        ("missing", missing, lambda k: f"{k} {tuple(expected[k])}"),
        ("unexpected", unexpected, lambda k: f"{k} {tuple(found[k])}"),
        ("shape mismatch", mismatched, lambda k: f"{k}: checkpoint {tuple(found[k])}, model {tuple(expected[k])}"),
    ):
        if keys:
            lines.append(f"{len(keys)} {title} key(s):")
            lines += [f"  {fmt(k)}" for k in keys[:limit]]
            if len(keys) > limit:
                lines.append(f"  ... and {len(keys) - limit} more")
    return "\n".join(lines)


def shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}
