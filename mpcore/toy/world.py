"""The toy world: procedural "real" videos with captions and exact object masks.

A small, fully known world in which MotionPrompt can be trained and measured on a CPU (the bundled
toy model and discriminator are trained on it; ``benchmarks/bench_effect.py`` measures in it).
A clip is one to three solid-colour objects (circle, square, triangle, diamond) over a textured
background (plain, striped, checkered, gradient), with smooth, physically plausible motion:

* constant velocity (``left``/``right``/``up``/``down``), objects staying inside the frame;
* ``bouncing``: constant speed, reflected at the frame's edges;
* ``spinning``: rotation in place (not for circles, whose spin is invisible);
* ``pan_left``/``pan_right``: a static scene under a camera pan (object and background move the
  opposite way, at the same speed).

Rendering is analytic: each shape is a signed distance function, anti-aliased over one pixel, so
sub-pixel motion is smooth. The generator also returns each object's alpha mask, centre and colour
per frame, which makes object-level measures exact (see :func:`object_stats`).

Everything is deterministic in the seed: :func:`sample_scene` draws parameters from
``numpy.random.default_rng(seed)`` and rendering is plain float32 arithmetic.

Held-out split (for fidelity/generalisation measures): a fixed subset of (colour, shape, motion)
combinations and one caption template are never drawn with ``split="train"``; ``split="heldout"``
draws only held-out combinations, worded with any of the three templates.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

COLORS = {  # name -> RGB in [0, 1]; saturated, far from the (low-saturation, darker) backgrounds
    "red": (0.90, 0.12, 0.10),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.15, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.65, 0.20, 0.85),
    "orange": (1.00, 0.55, 0.05),
}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUNDS = ("plain", "striped", "checkered", "gradient")
DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # (dx, dy), y down
MOTIONS = ("right", "left", "up", "down", "bouncing", "spinning", "pan_left", "pan_right")
MOTION_WEIGHTS = (0.15, 0.15, 0.15, 0.15, 0.08, 0.12, 0.10, 0.10)

TRAIN_TEMPLATES = (
    "a {color} {shape} moving {direction} over a {background} background",
    "a {color} {shape} sliding {direction} on a {background} background",
)
HELDOUT_TEMPLATE = "{background} background, a {color} {shape} drifting {direction}"
HELDOUT_FRACTION = 0.15


def screen_direction(motion: str) -> tuple[float, float] | None:
    """The unit (dx, dy) the object moves on screen, or None (bouncing, spinning: no single direction).
    A camera panning left makes the scene move right."""
    if motion in DIRECTIONS:
        return DIRECTIONS[motion]
    if motion.startswith("pan_"):
        dx, dy = DIRECTIONS[motion[4:]]
        return (-dx, -dy)
    return None


def is_heldout_combo(color: str, shape: str, motion: str) -> bool:
    """A fixed ~15% of (colour, shape, motion) combinations, chosen by a hash (stable across runs)."""
    digest = hashlib.sha256(f"{color}|{shape}|{motion}".encode()).digest()
    return digest[0] / 256.0 < HELDOUT_FRACTION


def _allowed_motions(shape: str) -> tuple[list[str], np.ndarray]:
    motions = [m for m in MOTIONS if not (shape == "circle" and m == "spinning")]
    weights = np.array([MOTION_WEIGHTS[MOTIONS.index(m)] for m in motions])
    return motions, weights / weights.sum()


@dataclass
class ObjectSpec:
    """One object: its look, its start (pixels, frame coordinates), velocity (px/frame), rotation."""

    color: str
    shape: str
    radius: float
    position: tuple[float, float]
    velocity: tuple[float, float]
    angle: float
    spin: float  # radians per frame


@dataclass
class Scene:
    """Everything a clip is rendered from (one motion for the whole clip)."""

    seed: int
    size: int
    frames: int
    background: str
    background_colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    background_period: float
    motion: str
    pan_velocity: tuple[float, float]
    objects: list[ObjectSpec]
    template: str
    caption: str = field(default="")


def _caption(template: str, objects: list[ObjectSpec], motion: str, background: str) -> str:
    """Caption of a scene. Pans and non-directional motions have their own wording."""
    first = objects[0]
    if motion in DIRECTIONS:
        direction = motion
    else:
        direction = {"bouncing": "around", "spinning": "in place", "pan_left": "left", "pan_right": "right"}[motion]
    text = template.format(color=first.color, shape=first.shape, direction=direction, background=background)
    if motion == "bouncing":
        text = text.replace(" moving around", " bouncing around").replace(" sliding around", " bouncing around") \
                   .replace(" drifting around", " bouncing around")
    elif motion == "spinning":
        text = text.replace(" moving in place", " spinning in place").replace(" sliding in place", " spinning in place") \
                   .replace(" drifting in place", " spinning in place")
    elif motion.startswith("pan_"):
        # the object is still: it is the camera that moves
        for verb in ("moving", "sliding", "drifting"):
            text = text.replace(f" {verb} {direction}", "")
        text += f", the camera panning {direction}"
    for extra in objects[1:]:
        text += f", with a {extra.color} {extra.shape}"
    return _articles(text)


def _articles(text: str) -> str:
    """'a orange' -> 'an orange' (the only vowel-initial words of the world are colours)."""
    return " ".join("an" if word == "a" and following[0] in "aeiou" else word
                    for word, following in zip(text.split(), text.split()[1:] + ["x"]))


def sample_scene(seed: int, size: int = 32, frames: int = 8, max_objects: int = 1, split: str = "train") -> Scene:
    """Draw a scene from ``seed``. ``split`` is "train" (held-out combos and template excluded),
    "heldout" (only those) or "any"."""
    if split not in ("train", "heldout", "any"):
        raise ValueError(f"split must be train, heldout or any, got {split!r}")
    if not 1 <= max_objects <= 3:
        raise ValueError(f"max_objects must be in 1..3, got {max_objects}")
    rng = np.random.default_rng(seed)
    color_names = list(COLORS)
    # the first object names the caption: draw its (colour, shape, motion) inside the split
    while True:
        color = color_names[rng.integers(len(color_names))]
        shape = SHAPES[rng.integers(len(SHAPES))]
        motions, weights = _allowed_motions(shape)
        motion = motions[rng.choice(len(motions), p=weights)]
        heldout = is_heldout_combo(color, shape, motion)
        if split == "any" or heldout == (split == "heldout"):
            break
    if split == "train":
        template = TRAIN_TEMPLATES[rng.integers(len(TRAIN_TEMPLATES))]
    else:  # held-out combinations are worded with any template, one in three with the held-out one
        template = (*TRAIN_TEMPLATES, HELDOUT_TEMPLATE)[rng.integers(len(TRAIN_TEMPLATES) + 1)]

    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    base = rng.uniform(0.12, 0.35) + rng.uniform(-0.05, 0.05, size=3)  # dark, low saturation
    second = base + rng.uniform(0.18, 0.28)
    background_colors = (tuple(np.clip(base, 0, 1).tolist()), tuple(np.clip(second, 0, 1).tolist()))
    period = float(rng.uniform(0.3, 0.5) * size)

    scale = size / 32.0
    speed = float(rng.uniform(0.8, 1.6) * scale)
    pan = (0.0, 0.0)
    count = int(rng.integers(1, max_objects + 1))
    objects = []
    for index in range(count):
        o_color = color if index == 0 else color_names[rng.integers(len(color_names))]
        o_shape = shape if index == 0 else SHAPES[rng.integers(len(SHAPES))]
        radius = float(rng.uniform(4.0, 6.5) * scale)
        travel = speed * (frames - 1)
        margin = radius + 1.0
        velocity, spin = (0.0, 0.0), 0.0
        direction = screen_direction(motion)
        if motion in DIRECTIONS:
            velocity = (direction[0] * speed, direction[1] * speed)
        elif motion == "bouncing":
            theta = rng.uniform(0, 2 * math.pi)
            velocity = (math.cos(theta) * speed * 1.5, math.sin(theta) * speed * 1.5)
        elif motion == "spinning" and o_shape != "circle":
            spin = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.3))
        # start so that straight-line motion stays inside the frame (bouncing reflects anyway)
        lo = [margin, margin]
        hi = [size - margin, size - margin]
        if motion in DIRECTIONS or motion.startswith("pan_"):
            dx, dy = direction
            for axis, d in enumerate((dx, dy)):
                if d > 0:
                    hi[axis] -= travel
                elif d < 0:
                    lo[axis] += travel
        position = tuple(float(rng.uniform(lo[a], max(hi[a], lo[a] + 1e-3))) for a in range(2))
        # upright unless spinning: a rotated square would be a diamond and vice versa
        angle = float(rng.uniform(0, 2 * math.pi)) if spin else 0.0
        objects.append(ObjectSpec(o_color, o_shape, radius, position, velocity, angle, spin))
    if motion.startswith("pan_"):
        direction = screen_direction(motion)
        pan = (direction[0] * speed, direction[1] * speed)
    scene = Scene(seed, size, frames, background, background_colors, period, motion, pan, objects, template)
    scene.caption = _caption(template, objects, motion, background)
    return scene


def _positions(obj: ObjectSpec, scene: Scene) -> np.ndarray:
    """(F, 2) object centres per frame, with reflection at the edges for bouncing objects."""
    out = np.zeros((scene.frames, 2))
    pos = np.array(obj.position, dtype=float)
    vel = np.array(obj.velocity, dtype=float) + np.array(scene.pan_velocity)
    lo, hi = obj.radius, scene.size - obj.radius
    for f in range(scene.frames):
        out[f] = pos
        pos = pos + vel
        if scene.motion == "bouncing":
            for a in range(2):
                if pos[a] < lo:
                    pos[a], vel[a] = 2 * lo - pos[a], -vel[a]
                elif pos[a] > hi:
                    pos[a], vel[a] = 2 * hi - pos[a], -vel[a]
    return out


def _shape_distance(shape: str, qx: torch.Tensor, qy: torch.Tensor, radius: float) -> torch.Tensor:
    """Signed distance (pixels, <0 inside) of a shape centred at the origin, in its own rotated frame."""
    if shape == "circle":
        return torch.sqrt(qx**2 + qy**2) - radius
    if shape == "square":
        return torch.maximum(qx.abs(), qy.abs()) - radius * 0.8
    if shape == "diamond":
        return (qx.abs() + qy.abs()) / math.sqrt(2) - radius * 0.7
    if shape == "triangle":  # equilateral: the largest of three edge half-plane distances
        edges = [(0.0, 1.0), (math.sin(2 * math.pi / 3), math.cos(2 * math.pi / 3)),
                 (-math.sin(2 * math.pi / 3), math.cos(2 * math.pi / 3))]
        return torch.stack([nx * qx + ny * qy for nx, ny in edges]).amax(0) - radius * 0.5
    raise ValueError(f"unknown shape {shape!r}")


def _background(scene: Scene, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(3, H, W) background at pixel coordinates (x, y) already shifted by the pan."""
    period = scene.background_period
    if scene.background == "plain":
        mix = torch.zeros_like(x)
    elif scene.background == "striped":
        mix = 0.5 + 0.5 * torch.tanh(3.0 * torch.sin(2 * math.pi * x / period))
    elif scene.background == "checkered":
        mix = 0.5 + 0.5 * torch.tanh(3.0 * torch.sin(2 * math.pi * x / period) * torch.sin(2 * math.pi * y / period) * 2)
    elif scene.background == "gradient":
        mix = 0.5 + 0.5 * torch.sin(2 * math.pi * (x + 0.5 * y) / (period * 3.0))
    else:
        raise ValueError(f"unknown background {scene.background!r}")
    base = torch.tensor(scene.background_colors[0]).view(3, 1, 1)
    second = torch.tensor(scene.background_colors[1]).view(3, 1, 1)
    return base + (second - base) * mix


@dataclass
class Clip:
    """A rendered clip. ``frames`` (F, 3, H, W) float32 in [0, 1]; ``masks`` (N, F, H, W) alpha of
    each object (occlusion by later objects applied); ``centers`` (N, F, 2) in pixels (x, y)."""

    scene: Scene
    frames: torch.Tensor
    masks: torch.Tensor
    centers: torch.Tensor

    @property
    def caption(self) -> str:
        return self.scene.caption

    def uint8(self) -> np.ndarray:
        """(F, H, W, 3) uint8, the layout of :func:`mpcore.io.video.write_video`."""
        return (self.frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def render(scene: Scene) -> Clip:
    """Render a scene: background, then the objects in order, each anti-aliased over one pixel."""
    size, frames = scene.size, scene.frames
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    centers = torch.tensor(np.stack([_positions(o, scene) for o in scene.objects]), dtype=torch.float32)
    video = torch.empty(frames, 3, size, size)
    masks = torch.zeros(len(scene.objects), frames, size, size)
    for f in range(frames):
        shift_x, shift_y = scene.pan_velocity[0] * f, scene.pan_velocity[1] * f
        image = _background(scene, x - shift_x, y - shift_y)
        for index, obj in enumerate(scene.objects):
            cx, cy = centers[index, f].tolist()
            angle = obj.angle + obj.spin * f
            # rotate pixel offsets into the object's frame (rotation by -angle)
            dx, dy = x - cx, y - cy
            qx = math.cos(angle) * dx + math.sin(angle) * dy
            qy = -math.sin(angle) * dx + math.cos(angle) * dy
            alpha = (0.5 - _shape_distance(obj.shape, qx, qy, obj.radius)).clamp(0, 1)
            color = torch.tensor(COLORS[obj.color]).view(3, 1, 1)
            image = image * (1 - alpha) + color * alpha
            masks[:index, f] *= 1 - alpha  # later objects occlude earlier ones
            masks[index, f] = alpha
        video[f] = image
    return Clip(scene, video.clamp(0, 1), masks, centers)


def make_clip(seed: int, size: int = 32, frames: int = 8, max_objects: int = 1, split: str = "train") -> Clip:
    """The clip of ``seed``: :func:`sample_scene` then :func:`render`."""
    return render(sample_scene(seed, size, frames, max_objects, split))


def make_clips(first_seed: int, count: int, **kwargs) -> list[Clip]:
    """``count`` clips of consecutive seeds."""
    return [make_clip(first_seed + i, **kwargs) for i in range(count)]


def parse_caption(caption: str) -> dict[str, str | None]:
    """Read (colour, shape, background, motion) back from a caption of any template.

    ``motion`` is a key of :data:`MOTIONS` (pans as ``pan_left``/``pan_right``); a field the caption
    does not name is None. Only the first object is read.
    """
    words = caption.lower().replace(",", " ").split()
    found = dict(color=None, shape=None, background=None, motion=None)
    for word in words:
        if found["color"] is None and word in COLORS:
            found["color"] = word
        elif found["shape"] is None and word in SHAPES:
            found["shape"] = word
        elif found["background"] is None and word in BACKGROUNDS:
            found["background"] = word
    text = " ".join(words)
    if "camera panning left" in text:
        found["motion"] = "pan_left"
    elif "camera panning right" in text:
        found["motion"] = "pan_right"
    elif "bouncing" in words:
        found["motion"] = "bouncing"
    elif "spinning" in words:
        found["motion"] = "spinning"
    else:
        for direction in DIRECTIONS:
            if direction in words:
                found["motion"] = direction
                break
    return found


def color_mask(frames: torch.Tensor, color: str, threshold: float = 0.3) -> torch.Tensor:
    """(F, H, W) soft mask of pixels near the named colour: the object mask of a GENERATED clip,
    whose true mask is unknown. ``frames`` (F, 3, H, W) in [0, 1]. 1 within ``threshold/2`` (RGB
    Euclidean), 0 beyond ``threshold``, linear between. Object colours are saturated and
    backgrounds are not, so on real clips this recovers the object (tested)."""
    target = torch.tensor(COLORS[color], dtype=frames.dtype).view(1, 3, 1, 1)
    distance = (frames - target).norm(dim=1)
    return ((threshold - distance) / (threshold / 2)).clamp(0, 1)


def object_stats(frames: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame object measures from a (F, H, W) mask: ``area`` (F,) in pixels, ``centroid``
    (F, 2) (x, y) in pixels (NaN where the mask is empty), ``color`` (F, 3) mean RGB inside."""
    size = frames.shape[-1]
    coords = torch.arange(size, dtype=frames.dtype) + 0.5
    area = mask.sum(dim=(1, 2))
    safe = area.clamp_min(1e-6)
    cx = (mask * coords.view(1, 1, -1)).sum(dim=(1, 2)) / safe
    cy = (mask * coords.view(1, -1, 1)).sum(dim=(1, 2)) / safe
    centroid = torch.stack([cx, cy], dim=1)
    centroid[area < 1e-6] = float("nan")
    color = (frames * mask[:, None]).sum(dim=(2, 3)) / safe[:, None]
    return {"area": area, "centroid": centroid, "color": color}
