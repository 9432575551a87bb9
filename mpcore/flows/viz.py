"""Optical flow as a picture: the standard Middlebury color coding.

Hue is the flow's direction and saturation its magnitude relative to the largest magnitude in the
image (white = no motion), the color wheel of Baker et al., "A database and evaluation methodology
for optical flow" (IJCV 2011). The coding itself is torchvision's implementation,
:func:`torchvision.utils.flow_to_image`; this module adds a legend (the wheel itself) and writes
PNGs, optionally beside the two input frames. Colors are normalized per image: the same color means
the same *relative* motion, so report the maximum magnitude along with a picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpcore.io.files import atomic_path

GAP = 4
"""White pixels between panels."""


def _flow_tensor(flow: Any) -> torch.Tensor:
    """``(2, H, W)`` or ``(1, 2, H, W)`` array/tensor -> float32 CPU tensor ``(2, H, W)``."""
    flow = flow.detach().to("cpu") if isinstance(flow, torch.Tensor) else torch.as_tensor(np.asarray(flow))
    if flow.ndim == 4 and flow.shape[0] == 1:
        flow = flow[0]
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow must be (2, H, W) or (1, 2, H, W); got shape {tuple(flow.shape)}")
    return flow.float()


def flow_image(flow: Any) -> np.ndarray:
    """Middlebury color coding of one flow ``(2, H, W)`` (x then y, pixels): uint8 ``(H, W, 3)``.

    Uses :func:`torchvision.utils.flow_to_image` (normalized by the flow's largest magnitude).
    """
    from torchvision.utils import flow_to_image

    return flow_to_image(_flow_tensor(flow)).permute(1, 2, 0).contiguous().numpy()


def color_wheel(size: int = 64) -> np.ndarray:
    """The legend: uint8 ``(size, size, 3)`` image of the flow ``(x, y)`` relative to the centre,
    inside the inscribed disk (white outside); the disk's rim is the largest magnitude."""
    coords = torch.linspace(-1.0, 1.0, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    inside = (x**2 + y**2) <= 1.0
    flow = torch.stack([x, y]) * inside
    return flow_image(flow)


def to_rgb_uint8(frame: Any) -> np.ndarray:
    """A frame as uint8 ``(H, W, 3)``: uint8 arrays pass through; float tensors/arrays ``(3, H, W)``
    or ``(1, 3, H, W)`` are taken to be in [-1, 1] (the flow estimator contract)."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be (H, W, 3); got {frame.shape}")
        return frame
    x = frame.detach().to("cpu", torch.float32) if isinstance(frame, torch.Tensor) else torch.as_tensor(np.asarray(frame), dtype=torch.float32)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"float frames must be (3, H, W) in [-1, 1]; got shape {tuple(x.shape)}")
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def compose(flow: Any, frame_a: Any = None, frame_b: Any = None, legend: bool = True, gap: int = GAP) -> np.ndarray:
    """One uint8 image: ``[frame_a | frame_b |] flow [| legend]`` on white, panels ``gap`` px apart.

    Without frames and legend it is exactly the ``(H, W, 3)`` flow image. The legend is a color
    wheel of side ``min(96, max(H, 16))``, top-aligned.
    """
    panels = [to_rgb_uint8(frame) for frame in (frame_a, frame_b) if frame is not None]
    image = flow_image(flow)
    height, width = image.shape[:2]
    for panel in panels:
        if panel.shape[:2] != (height, width):
            raise ValueError(f"frames {panel.shape[:2]} and flow {(height, width)} differ in size")
    panels.append(image)
    if legend:
        panels.append(color_wheel(min(96, max(height, 16))))
    if len(panels) == 1:
        return image
    canvas_height = max(panel.shape[0] for panel in panels)
    canvas_width = sum(panel.shape[1] for panel in panels) + gap * (len(panels) - 1)
    canvas = np.full((canvas_height, canvas_width, 3), 255, np.uint8)
    left = 0
    for panel in panels:
        canvas[: panel.shape[0], left : left + panel.shape[1]] = panel
        left += panel.shape[1] + gap
    return canvas


def write_flow_png(path: str | Path, flow: Any, frame_a: Any = None, frame_b: Any = None, legend: bool = True) -> Path:
    """Write :func:`compose` ``(flow, frame_a, frame_b, legend)`` as a PNG, atomically
    (:func:`mpcore.io.files.atomic_path`). Returns ``path``."""
    from PIL import Image

    image = compose(flow, frame_a, frame_b, legend)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def magnitude_stats(flow: Any) -> dict[str, float]:
    """``{"max": ..., "mean": ...}`` of the per-pixel flow magnitude (pixels)."""
    magnitude = _flow_tensor(flow).double().pow(2).sum(0).sqrt()
    return {"max": float(magnitude.max()), "mean": float(magnitude.mean())}
