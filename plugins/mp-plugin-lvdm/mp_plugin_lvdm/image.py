"""The input image of DynamiCrafter, prepared as its inference script does (scripts/evaluation/inference.py
of github.com/Doubiiu/DynamiCrafter, ``load_data_prompts``):
``Resize(min(H, W))`` (short side, PIL bilinear with antialias) -> ``CenterCrop((H, W))`` (zero padding if
the resized image is smaller) -> ``ToTensor`` -> ``Normalize(0.5, 0.5)``: (1, 3, H, W) in [-1, 1]."""

from __future__ import annotations

from pathlib import Path

import torch

from mpcore import OptionError


def check_image(path: str | None) -> None:
    """A clear usage error, before any model loads, for a missing or unreadable ``--image``."""
    if not path:
        raise OptionError(
            "--backbone dynamicrafter is image-to-video: pass --image PATH (the start frame, e.g. start.png)", "--image"
        )
    file = Path(path).expanduser()
    if not file.is_file():
        raise OptionError(f"--image {path}: file not found", "--image")
    try:
        load_image(file)
    except Exception as error:  # PIL raises several types for broken files
        raise OptionError(f"--image {path}: not a readable image ({type(error).__name__}: {error})",
                          "--image") from None


def load_image(path: str | Path):
    from PIL import Image

    with Image.open(Path(path).expanduser()) as image:
        image.load()
        return image.convert("RGB")


def resize_and_crop(image, height: int, width: int) -> torch.Tensor:
    """PIL image (or a (3, h, w) / (1, 3, h, w) tensor in [-1, 1]) -> (1, 3, height, width) in [-1, 1]."""
    import torchvision.transforms.functional as TF

    if isinstance(image, torch.Tensor):
        x = (image if image.dim() == 4 else image[None]).float() * 0.5 + 0.5  # pad with black, as on a PIL image
        x = TF.center_crop(TF.resize(x, min(height, width), antialias=True), [height, width])
        return x * 2.0 - 1.0
    image = TF.center_crop(TF.resize(image, min(height, width)), [height, width])
    return TF.to_tensor(image)[None] * 2.0 - 1.0
