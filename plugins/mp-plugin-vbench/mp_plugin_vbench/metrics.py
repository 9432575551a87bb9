"""VBench's temporal-quality metrics, re-implemented from its definitions.

Reference: Huang et al., "VBench: Comprehensive Benchmark Suite for Video Generative Models",
CVPR 2024 (github.com/Vchitect/VBench, ``vbench/*.py``). Each loader returns
``score = f(frames, fps=None)`` for uint8 RGB frames (F, H, W, 3) and raises
:class:`mpcore.interfaces.MetricUnavailable` when its weights are missing or unloadable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from mpcore.flows.evaluate import backward_warp
from mpcore.interfaces import MetricUnavailable

from mp_plugin_vbench import hub

DINO_ARCH = "vit_base_patch16_224.dino"
CLIP_ARCH = "ViT-B-32"
CLIP_PRETRAINED = "openai"
RAFT_TORCHVISION_THINGS = "C_T_V1"
"""torchvision's RAFT-large weights ported from the original ``raft-things.pth`` (Chairs + Things)."""

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def check_frames(frames: Any, minimum: int = 2, name: str = "metric") -> np.ndarray:
    """uint8 (F, H, W, 3) with at least ``minimum`` frames, else ValueError."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{name}: frames must be uint8 (F, H, W, 3); got {frames.dtype} {frames.shape}")
    if frames.shape[0] < minimum:
        raise ValueError(f"{name}: needs at least {minimum} frames; got {frames.shape[0]}")
    return frames


def _no_weights(name: str, weights: str | None) -> None:
    if weights is not None and str(weights).strip().lower() not in ("", "none"):
        raise ValueError(f"{name} has no weights; got weights={weights!r}")


def _frames_tensor(frames: np.ndarray, device) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, H, W) float32 in [0, 255] (VBench's ``load_video`` output)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()


# ---------------------------------------------------------------------------------------------------
# temporal flickering


def temporal_flickering(frames: Any, fps: float | None = None) -> float:
    """VBench temporal flickering (Huang et al., CVPR 2024; ``vbench/temporal_flickering.py``).

    Frames at their stored resolution, no preprocessing; per consecutive pair the mean absolute
    difference over all pixels and channels (float32 absdiff); the video's score is
    ``(255 - mean over pairs) / 255``. 1.0 = no change at all between frames.
    """
    frames = check_frames(frames, 2, "temporal_flickering")
    x = frames.astype(np.float32)
    per_pair = np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3), dtype=np.float64)
    return float((255.0 - per_pair.mean()) / 255.0)


def load_temporal_flickering(weights: str | None = None, device: Any = "cpu", **options: Any):
    _no_weights("temporal_flickering", weights)
    if options:
        raise TypeError(f"temporal_flickering takes no options; got {', '.join(sorted(options))}")
    return temporal_flickering


# ---------------------------------------------------------------------------------------------------
# subject and background consistency


def vbench_consistency(features: torch.Tensor) -> float:
    """Combine per-frame features as VBench's subject/background consistency do.

    Features are L2-normalised; for every frame i > 0:
    ``(max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2``; the video's value is the mean
    over i (VBench: ``video_sim / (len(images) - 1)``). A single frame gives 1.0.
    """
    features = F.normalize(features.float(), dim=-1, p=2)
    if features.shape[0] < 2:
        return 1.0
    previous = F.cosine_similarity(features[:-1], features[1:], dim=-1).clamp(min=0.0)
    first = F.cosine_similarity(features[:1].expand_as(features[1:]), features[1:], dim=-1).clamp(min=0.0)
    return float(((previous + first) / 2).mean())


def dino_transform(frames: torch.Tensor) -> torch.Tensor:
    """VBench's ``dino_transform(224)`` for videos: ``Resize(224)`` (shorter side to 224, bilinear)
    then ImageNet ``Normalize`` applied to the [0, 255] values as VBench does (its video path does not
    divide by 255). Then the right/bottom remainder below a multiple of 16 is cropped, which is what
    DINO's stride-16 patch convolution discards anyway."""
    from torchvision.transforms import Normalize, Resize

    x = Normalize(IMAGENET_MEAN, IMAGENET_STD)(Resize(size=224)(frames))
    height, width = x.shape[-2] // 16 * 16, x.shape[-1] // 16 * 16
    return x[..., :height, :width]


def clip_transform(frames: torch.Tensor) -> torch.Tensor:
    """VBench's ``clip_transform(224)``: ``Resize(224, bicubic)``, ``CenterCrop(224)``, ``/255``,
    CLIP ``Normalize``."""
    from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize

    x = CenterCrop(224)(Resize(224, interpolation=InterpolationMode.BICUBIC)(frames))
    return Normalize(CLIP_MEAN, CLIP_STD)(x / 255.0)


def _encode_in_batches(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([encode(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def _local_file(metric: str, weights: str, what: str) -> Path:
    path = Path(os.path.expanduser(str(weights)))
    if not path.is_file():
        raise MetricUnavailable(f"weights file {str(path)!r} not found ({what})")
    return path


def _brief(error: BaseException, limit: int = 70) -> str:
    """``Type: first line of the message``, at most ``limit`` characters (a library's error can be a page)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def load_subject_consistency(weights: str | None = None, device: Any = "cpu", arch: str = DINO_ARCH, **options: Any):
    """VBench subject consistency (Huang et al., CVPR 2024; ``vbench/subject_consistency.py``).

    DINO ViT-B/16 (timm ``vit_base_patch16_224.dino``; the CLS token after the final norm, as
    DINO's hub model returns) on :func:`dino_transform` frames, combined by
    :func:`vbench_consistency`. ``weights``: None = timm's hub weights, or a local state dict
    (timm layout or DINO's ``dino_vitbase16_pretrain.pth``). ``arch`` overrides the timm
    architecture (tests use a tiny ViT; keep the default for VBench numbers). Non-224 inputs use
    timm's position-embedding interpolation (DINO's own code interpolates slightly differently).
    """
    if options:
        raise TypeError(f"subject_consistency: unknown option(s) {', '.join(sorted(options))}; accepted: arch")
    import timm

    what = "DINO ViT-B/16" if arch == DINO_ARCH else f"timm {arch}"
    kwargs: dict[str, Any] = dict(pretrained=True, num_classes=0, dynamic_img_size=True)
    if weights is not None:
        source = str(_local_file("subject_consistency", weights,
                                 "a DINO ViT-B/16 state dict, e.g. dino_vitbase16_pretrain.pth"))
    else:  # the hub's file: from the local cache if it is there, else a download where one can work
        repo, source = hub.timm_hub_file(arch)
        offline = None if source else hub.offline_reason(hub.hub_host())
        if offline:
            raise MetricUnavailable(f"{offline} and no cached {what} weights")
    if source:
        kwargs["pretrained_cfg_overlay"] = dict(file=source)
    try:
        with hub.quiet_library_logging():
            model = timm.create_model(arch, **kwargs)
    except Exception as error:  # offline hub, bad file, wrong architecture
        origin = repr(source) if source else "the hub"
        raise MetricUnavailable(f"cannot load {what} weights from {origin}: {_brief(error)}") from None
    model = model.eval().to(device)

    def subject_consistency(frames: Any, fps: float | None = None) -> float:
        frames = check_frames(frames, 1, "subject_consistency")
        x = dino_transform(_frames_tensor(frames, device))
        return vbench_consistency(_encode_in_batches(model, x))

    return subject_consistency


def load_background_consistency(
    weights: str | None = None, device: Any = "cpu", arch: str = CLIP_ARCH, quick_gelu: Any = True, **options: Any
):
    """VBench background consistency (Huang et al., CVPR 2024; ``vbench/background_consistency.py``).

    CLIP ViT-B/32 image features (open_clip ``ViT-B-32`` with OpenAI's weights and their QuickGELU
    activation, as VBench's ``clip.load('ViT-B/32')``) on :func:`clip_transform` frames, combined by
    :func:`vbench_consistency`. ``weights``: None = open_clip's ``openai`` weights (download), or a
    local open_clip checkpoint. ``arch``/``quick_gelu`` override the architecture (tests only).
    """
    if options:
        raise TypeError(f"background_consistency: unknown option(s) {', '.join(sorted(options))}; accepted: arch, quick_gelu")
    import open_clip

    quick = str(quick_gelu).strip().lower() in ("1", "true", "yes")
    what = f"CLIP {arch} ({CLIP_PRETRAINED})"
    if weights is not None:
        pretrained = str(_local_file("background_consistency", weights, "an open_clip CLIP ViT-B/32 checkpoint"))
    else:  # the hub's file: from the local cache if it is there, else a download where one can work
        cfg = open_clip.get_pretrained_cfg(arch, CLIP_PRETRAINED) or {}
        if not cfg:
            raise MetricUnavailable(f"open_clip has no {CLIP_PRETRAINED!r} weights for {arch}")
        repo, cached = hub.open_clip_hub_file(arch, CLIP_PRETRAINED)
        host = hub.hub_host() if repo else urlparse(str(cfg.get("url", ""))).hostname or "the network"
        offline = None if cached else hub.offline_reason(host)
        if offline:
            raise MetricUnavailable(f"{offline} and no cached {what} weights")
        pretrained = cached or CLIP_PRETRAINED
    try:
        with hub.quiet_library_logging():  # open_clip logs a failed download with logging.error
            model = open_clip.create_model(arch, pretrained=pretrained, force_quick_gelu=quick, device=device)
    except Exception as error:
        origin = "the hub" if pretrained == CLIP_PRETRAINED else repr(pretrained)
        raise MetricUnavailable(f"cannot load {what} weights from {origin}: {_brief(error)}") from None
    model = model.eval()

    def background_consistency(frames: Any, fps: float | None = None) -> float:
        frames = check_frames(frames, 1, "background_consistency")
        x = clip_transform(_frames_tensor(frames, device))
        return vbench_consistency(_encode_in_batches(model.encode_image, x))

    return background_consistency


# ---------------------------------------------------------------------------------------------------
# dynamic degree


def dynamic_degree_params(height: int, width: int, count: int, fps: float) -> tuple[float, int]:
    """VBench's thresholds: ``thres = max(1, 8 / fps) * 6 * min(H, W) / 256`` and
    ``count_num = round(4 * count / 16)`` (count = number of sampled frames, fps = the video's)."""
    factor = max(1.0, 8.0 / fps)
    return factor * 6.0 * (min(height, width) / 256.0), round(4 * (count / 16.0))


def top5_magnitude(flow: torch.Tensor) -> float:
    """Mean of the largest 5% (``int(h * w * 0.05)``) flow magnitudes of one (2, h, w) flow."""
    magnitude = flow.float().pow(2).sum(0).sqrt().flatten()
    cut = int(magnitude.numel() * 0.05)
    return float(magnitude.sort(descending=True).values[:cut].mean()) if cut > 0 else float("nan")


def dynamic_degree_from_flow(flow_fn: Callable, frames: np.ndarray, fps: float | None, device: Any = "cpu") -> float:
    """VBench dynamic degree (Huang et al., CVPR 2024; ``vbench/dynamic_degree.py``) with ``flow_fn``.

    Frames are sampled every ``max(1, round(fps / 8))`` (fps unknown: 8, VBench's default); flow
    of each consecutive sampled pair; a pair "moves" when its top-5% mean magnitude exceeds
    ``thres``; the video is dynamic (1.0) once ``count_num`` pairs moved, else 0.0
    (:func:`dynamic_degree_params`).
    """
    frames = check_frames(frames, 2, "dynamic_degree")
    fps = 8.0 if not fps else float(fps)
    sampled = frames[:: max(1, round(fps / 8))]
    thres, count_num = dynamic_degree_params(frames.shape[1], frames.shape[2], len(sampled), fps)
    x = _frames_tensor(sampled, device) / 255.0 * 2.0 - 1.0  # RAFT's input range
    moved = 0
    with torch.no_grad():
        for i in range(len(sampled) - 1):
            score = top5_magnitude(flow_fn(x[i : i + 1], x[i + 1 : i + 2])[0])
            if score > thres:
                moved += 1
            if moved >= count_num:  # VBench checks after every pair (count_num 0: any pair)
                return 1.0
    return 0.0


def load_dynamic_degree(weights: str | None = None, device: Any = "cpu", **options: Any):
    """VBench dynamic degree with RAFT-large (20 refinement iterations, as VBench) from the ``raft``
    flow plugin. ``weights``: the original ``raft-things.pth`` (or any RAFT-large file the plugin
    reads), None = torchvision's ``C_T_V1`` (the same raft-things weights; download). ``options`` go
    to the RAFT loader (e.g. ``num_flow_updates``)."""
    from mpcore import plugins

    options = {"size": "large", "num_flow_updates": 20, **options}
    if weights is not None:
        source = str(_local_file("dynamic_degree", weights, "the original RAFT raft-things.pth"))
    else:  # torchvision's file: from torch.hub's cache if it is there, else a download where one can work
        from torchvision.models.optical_flow import Raft_Large_Weights

        url = getattr(Raft_Large_Weights, RAFT_TORCHVISION_THINGS).url
        cached = hub.torch_hub_file(url)
        offline = None if cached.is_file() else hub.offline_reason(urlparse(url).hostname or "download.pytorch.org")
        if offline:
            raise MetricUnavailable(f"{offline} and no cached RAFT-large weights ({RAFT_TORCHVISION_THINGS})")
        source = str(cached) if cached.is_file() else RAFT_TORCHVISION_THINGS  # a torchvision state dict file
    try:
        spec = plugins.get("flow", "raft").spec
    except plugins.UnknownPluginError as error:
        raise MetricUnavailable(f"needs the raft flow plugin: {error}") from None
    try:
        with hub.quiet_library_logging():
            flow_fn = spec.load(source, device, **options)
    except Exception as error:
        origin = f"torchvision's {RAFT_TORCHVISION_THINGS}" if source == RAFT_TORCHVISION_THINGS else repr(source)
        raise MetricUnavailable(f"cannot load RAFT-large weights from {origin}: {_brief(error)}") from None

    def dynamic_degree(frames: Any, fps: float | None = None) -> float:
        return dynamic_degree_from_flow(flow_fn, frames, fps, device)

    return dynamic_degree


# ---------------------------------------------------------------------------------------------------
# motion smoothness substitute (NOT VBench's)


def _flow_at_most(flow_fn: Callable, a: torch.Tensor, b: torch.Tensor, flow_side: int | None) -> torch.Tensor:
    """Flow of full-size frames, computed on frames shrunk so the long side is <= ``flow_side``
    (None = full size) and upsampled back with its vectors scaled (a cost bound for large videos)."""
    height, width = a.shape[-2:]
    scale = 1.0 if flow_side is None else min(1.0, flow_side / max(height, width))
    if scale == 1.0:
        return flow_fn(a, b)
    size = (max(8, round(height * scale)), max(8, round(width * scale)))
    small = [F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False) for x in (a, b)]
    flow = F.interpolate(flow_fn(*small), size=(height, width), mode="bilinear", align_corners=False)
    return flow * flow.new_tensor([width / size[1], height / size[0]]).view(1, 2, 1, 1)


def interpolate_midpoints(flow_fn: Callable, frames: torch.Tensor, flow_side: int | None = None) -> torch.Tensor:
    """Middle frames between consecutive ``frames`` (N, 3, H, W) in [-1, 1] -> (N-1, 3, H, W).

    Flows both ways, the intermediate flows of Jiang et al. 2018 (Super SloMo, eq. 4, t = 1/2):
    F_t0 = -F_01/4 + F_10/4, F_t1 = F_01/4 - F_10/4; the two backward-warped frames averaged.
    """
    a, b = frames[:-1], frames[1:]
    f01, f10 = _flow_at_most(flow_fn, a, b, flow_side), _flow_at_most(flow_fn, b, a, flow_side)
    ft0, ft1 = 0.25 * (f10 - f01), 0.25 * (f01 - f10)
    return 0.5 * backward_warp(a, ft0)[0] + 0.5 * backward_warp(b, ft1)[0]


def load_motion_smoothness_flowinterp(weights: str | None = None, device: Any = "cpu", **options: Any):
    """Motion smoothness SUBSTITUTE (not VBench's definition; id ``motion_smoothness_flowinterp``).

    VBench (Huang et al., CVPR 2024; ``vbench/motion_smoothness.py``) keeps the even frames,
    re-creates each odd frame with the AMT interpolation network from its two even neighbours, and
    scores ``(255 - mean_i mean|odd_i - interp_i|) / 255`` (uint8 absdiff). This substitute keeps
    that frame selection and formula but interpolates with :func:`interpolate_midpoints` on the
    weight-free ``tvl1`` flow plugin, so its values are NOT comparable with VBench's. The flows are
    computed with the long side shrunk to ``flow_side`` (default 256; 0 = full size) and upsampled,
    which bounds the cost on large videos. Other ``options`` go to the tvl1 loader.
    """
    from mpcore import plugins

    flow_side = int(options.pop("flow_side", 256)) or None
    _no_weights("motion_smoothness_flowinterp", weights)
    try:
        flow_fn = plugins.get("flow", "tvl1").spec.load(None, device, **options)
    except plugins.UnknownPluginError as error:
        raise MetricUnavailable(f"needs the tvl1 flow plugin: {error}") from None

    def motion_smoothness_flowinterp(frames: Any, fps: float | None = None) -> float:
        frames = check_frames(frames, 3, "motion_smoothness_flowinterp")
        evens = _frames_tensor(frames[0::2], device) / 255.0 * 2.0 - 1.0
        with torch.no_grad():
            middle = interpolate_midpoints(flow_fn, evens, flow_side)
        middle = ((middle + 1.0) / 2.0 * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        middle = middle.transpose(0, 2, 3, 1)
        odd = frames[1::2][: len(middle)]
        diff = np.abs(odd.astype(np.int16) - middle[: len(odd)].astype(np.int16))
        mae = diff.reshape(len(odd), -1).mean(axis=1, dtype=np.float64).mean()
        return float((255.0 - mae) / 255.0)

    return motion_smoothness_flowinterp
