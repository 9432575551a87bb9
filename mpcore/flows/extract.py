"""Flow datasets for training the discriminator: flows of random frame pairs of a folder of videos.

MotionPrompt's discriminator learns to tell the optical flow of real videos (DAVIS, WebVid) from
that of videos the backbone generated (docs/design.md, "The method"). ``mpcore flows extract`` builds one
side of that dataset: it finds the videos under a folder (:func:`find_sources`), samples frame pairs
of each, computes their flows with a flow estimator plugin and stores them in a flow cache
(:mod:`mpcore.flows.cache`) with :func:`extract_flows`.

Per video, in this order:

1. **Frames**: the number of frames is counted (ffmpeg decodes the video once to count; GIFs and
   frame folders are counted without decoding), the pairs are sampled, and only the frames the pairs
   use are decoded (a video is decoded up to its last needed frame).
2. **Pairs**: ``pairs_per_video`` distinct pairs ``(a, a + gap)``; each pair draws its gap uniformly
   from the gaps in ``[gap_min, gap_max]`` that still have an unused pair, then its first frame
   uniformly. A video with fewer distinct pairs gives all of them (its entry records how many). The
   random numbers come from :class:`random.Random` seeded with a SHA-256 of ``(seed, video id)`` and
   only its ``random()`` method is used (Python guarantees that sequence across versions): the pairs
   of a video depend on nothing but the seed, its id and its frame count, not on the other videos,
   their order or the process that handles them.
3. **Resizing, before the flow**: frames are resized to ``size`` = (H, W) (bilinear with
   antialiasing, the aspect ratio is NOT kept: the discriminator sees a fixed grid), rounded to uint8,
   then mapped to [-1, 1]. The flow is computed on the resized frames, so it is in pixels of the
   stored H x W grid -- the same grid the discriminator is given at guidance time.
4. **Flow**: frames (B, 3, H, W) in [-1, 1] -> flow (B, 2, H, W) in pixels (the flow estimator
   contract), under ``torch.no_grad()``, ``batch_size`` pairs per call (a batch may span videos).

A video that cannot be used -- unreadable, corrupt, empty, too short for the smallest gap, a folder
that mixes images with other files, or one on which the estimator fails or returns NaN/inf -- is
skipped: recorded with its reason in the cache index and the summary, and the run goes on.

Several processes (``accelerate launch`` / ``torchrun``; :mod:`mpcore.jobs.distributed`) each take a
contiguous block of the sorted video list (rank order), write their own shards into one shared
temporary folder beside ``out`` and their part of the index; after a barrier the main process
merges the parts into index.json and renames the folder (:func:`mpcore.flows.cache.write_merged`).
As each video's pairs and flows depend only on that video, the seed and the settings, the cache
reads back as a single-process extraction's: the same videos, pairs and flows in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from mpcore.flows.cache import FORMAT, INDEX, FlowCacheWriter, VideoEntry

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mov", ".mkv")
"""Video files read with imageio's ffmpeg plugin (imageio-ffmpeg)."""
GIF_SUFFIXES = (".gif",)
"""Animated GIFs, read with Pillow."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""Frame files: a folder holding only these is one sequence, frames in sorted name order."""


class ExtractError(ValueError):
    """A problem with the whole run (not one video); the message says what to do."""


class ExtractOptionError(ExtractError):
    """An option that is invalid as given (a ``--videos`` folder that does not exist), naming the flag
    (``option``): the CLI exits 2, as for an :class:`mpcore.jobs.options.OptionError` (which this package
    cannot import: :mod:`mpcore.jobs` imports it)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


class EstimatorContractError(RuntimeError):
    """The flow estimator broke the contract (wrong output shape): a bug, not a property of a video."""


# ---------------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class Source:
    """One video found under the videos folder.

    ``id`` is unique in the list of :func:`find_sources` (the path relative to the folder without
    the extension; with it when two sources would otherwise share an id). ``kind`` is ``"video"``
    (ffmpeg), ``"gif"`` (Pillow), ``"frames"`` (a folder of images; ``frames`` lists them in order)
    or ``"invalid"`` (``problem`` says why it cannot be used; it is recorded as skipped)."""

    id: str
    path: Path
    rel: str
    kind: str
    frames: tuple[str, ...] = ()
    problem: str | None = None


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _natural_key(name: str) -> list[Any]:
    """Sort key: digit runs compare as numbers ("f2.jpg" < "f10.jpg"); zero-padded names keep their order."""
    return [(0, int(part), part) if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def find_sources(root: str | os.PathLike, option: str = "--videos") -> list[Source]:
    """All candidate videos under ``root`` (recursive), sorted by relative path: deterministic.

    * files ending in .mp4 .avi .webm .mov .mkv (ffmpeg) or .gif (Pillow);
    * folders of frames: a folder whose files are all .jpg/.jpeg/.png images is one sequence (e.g.
      DAVIS ``JPEGImages/480p/<sequence>/00000.jpg``), frames in name order with digit runs compared
      as numbers (``f2.jpg`` before ``f10.jpg``); a folder that mixes images with other files is
      listed as ``"invalid"`` (skipped with the reason), an empty folder too;
    * the DAVIS layout: in a folder that holds ``JPEGImages``, only ``JPEGImages`` is searched
      (``Annotations`` holds segmentation masks, not frames), and in ``JPEGImages`` only ``480p`` if
      it exists (``Full-Resolution`` holds the same sequences again);
    * hidden files and folders (names starting with ".") are ignored, other files too.

    Raises :class:`ExtractOptionError` naming ``option`` (the flag that gave ``root``) if ``root`` is not a
    directory.
    """
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise ExtractOptionError(f"{option} {root} {what}; give a folder of videos or of frame folders", option)
    found: list[tuple[str, Path, str, tuple[str, ...], str | None]] = []  # rel, path, kind, frames, problem
    _walk(root, "", found, set())
    found.sort(key=lambda item: item[0])
    ids = _unique_ids(root, found)
    sources = [Source(source_id, path, rel, kind, frames, problem)
               for source_id, (rel, path, kind, frames, problem) in zip(ids, found)]
    return sources


def _entries(folder: Path) -> tuple[list[str], list[str]]:
    """The visible (not ".") file and folder names of ``folder``, sorted; in the DAVIS layout only
    ``JPEGImages`` is kept of a folder's sub-folders, and in ``JPEGImages`` only ``480p``."""
    files, dirs = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            dirs.append(entry.name)
        elif entry.is_file():
            files.append(entry.name)
    if "JPEGImages" in dirs:
        dirs = ["JPEGImages"]
    if folder.name == "JPEGImages" and "480p" in dirs:
        dirs = ["480p"]
    return files, dirs


def _walk(folder: Path, rel: str, found: list, visited: set[Path]) -> None:
    """Append the sources in ``folder`` (relative path ``rel``, "" for the root) and below it to
    ``found`` as (rel, path, kind, frames, problem): the folder itself if it holds frames (or is
    an invalid frame folder), its video and GIF files, then its sub-folders, recursively.
    ``visited`` holds the resolved folders seen so far (a symlink loop is walked once)."""
    real = folder.resolve()
    if real in visited:  # a symlink loop
        return
    visited.add(real)
    files, dirs = _entries(folder)
    join = (lambda name: name) if rel == "" else (lambda name: f"{rel}/{name}")
    images = sorted((name for name in files if _suffix(name) in IMAGE_SUFFIXES), key=_natural_key)
    folder_rel = rel or "."
    if images and len(images) == len(files):
        found.append((folder_rel, folder, "frames", tuple(images), None))
    elif images:
        others = [name for name in files if _suffix(name) not in IMAGE_SUFFIXES]
        found.append((folder_rel, folder, "invalid", (), (
            f"folder mixes {len(images)} image file(s) with {len(others)} other file(s) (e.g. {others[0]}); "
            "frames are read only from folders that hold nothing but .jpg/.jpeg/.png images")))
    elif not files and not dirs and rel != "":
        found.append((folder_rel, folder, "invalid", (), "empty folder: no frames"))
    for name in files:
        suffix = _suffix(name)
        if suffix in VIDEO_SUFFIXES or suffix in GIF_SUFFIXES:
            found.append((join(name), folder / name, "gif" if suffix in GIF_SUFFIXES else "video", (), None))
    for name in dirs:
        _walk(folder / name, join(name), found, visited)


def _unique_ids(root: Path, found: list) -> list[str]:
    """The ids of the sources ``found`` (sorted): the relative path without the file extension;
    sources that would share an id keep their extension (the relative path, unique), repeated until
    no id is shared. The root folder itself (rel ".") is named after the folder."""
    ids = []
    for rel, path, _, _, _ in found:
        if rel == ".":
            ids.append(root.resolve().name)
        elif path.is_dir() or not path.suffix:
            ids.append(rel)
        else:
            ids.append(rel[: -len(path.suffix)])
    while True:
        counts: dict[str, int] = {}
        for source_id in ids:
            counts[source_id] = counts.get(source_id, 0) + 1
        shared = [i for i, source_id in enumerate(ids) if counts[source_id] > 1 and source_id != found[i][0]]
        if not shared:
            break
        for i in shared:
            ids[i] = found[i][0]
    return ids


# ---------------------------------------------------------------------------------------------------
# reading frames


class SourceError(Exception):
    """This video cannot be used (the message is the reason recorded in the index)."""


def _error_text(error: BaseException) -> str:
    """``Type: message`` on one line; of a long multi-line message (ffmpeg's log) the first and last lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 2:
        lines = [lines[0].split(":")[0] + ":", "...", lines[-1]]
    text = " ".join(" ".join(lines).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def count_frames(source: Source) -> int:
    """The number of frames of ``source`` (ffmpeg decodes a video once to count exactly)."""
    if source.kind == "frames":
        return len(source.frames)
    if source.kind == "gif":
        from PIL import Image

        with Image.open(source.path) as image:
            return int(getattr(image, "n_frames", 1))
    if source.kind == "video":
        import imageio_ffmpeg

        return int(imageio_ffmpeg.count_frames_and_secs(str(source.path))[0])
    raise SourceError(source.problem or f"cannot read a source of kind {source.kind!r}")


def _rgb(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return np.ascontiguousarray(array[..., :3]).astype(np.uint8, copy=False)


def read_frames(source: Source, indices: Iterable[int]) -> tuple[dict[int, np.ndarray], int | None]:
    """Decode only the frames ``indices`` of ``source`` as uint8 (H, W, 3) arrays.

    Returns ``(frames, length)``: ``length`` is the number of frames decoded when the video ended
    before the last wanted frame (its frame count was wrong), else None. Videos and GIFs are decoded
    in order up to the last wanted frame; frame folders read only the wanted files."""
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return {}, None
    last = wanted[-1]
    keep = set(wanted)
    frames: dict[int, np.ndarray] = {}
    if source.kind == "frames":
        from PIL import Image

        for i in wanted:
            if i >= len(source.frames):
                return frames, len(source.frames)
            with Image.open(source.path / source.frames[i]) as image:
                frames[i] = _rgb(np.asarray(image.convert("RGB")))
        return frames, None
    if source.kind == "gif":
        from PIL import Image, ImageSequence

        with Image.open(source.path) as image:
            count = 0
            for i, frame in enumerate(ImageSequence.Iterator(image)):
                count = i + 1
                if i in keep:
                    frames[i] = _rgb(np.asarray(frame.convert("RGB")))
                if i == last:
                    return frames, None
        return frames, count
    if source.kind == "video":
        import imageio.v2 as imageio

        reader = imageio.get_reader(str(source.path), format="FFMPEG")
        try:
            count = 0
            for i, frame in enumerate(reader):
                count = i + 1
                if i in keep:
                    frames[i] = _rgb(frame)
                if i == last:
                    return frames, None
        finally:
            reader.close()
        return frames, count
    raise SourceError(source.problem or f"cannot read a source of kind {source.kind!r}")


# ---------------------------------------------------------------------------------------------------
# pair sampling


def pair_seed(seed: int, video_id: str) -> int:
    """The random seed of one video: the first 8 bytes of SHA-256("{seed}:{video_id}") (stable across
    runs, processes and Python versions, unlike ``hash``)."""
    digest = hashlib.sha256(f"{int(seed)}:{video_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _below(rng: random.Random, n: int) -> int:
    """A uniform integer in [0, n) from ``rng.random()`` only (whose sequence Python keeps stable)."""
    return min(int(rng.random() * n), n - 1)


def sample_pairs(num_frames: int, count: int, gap: tuple[int, int], seed: int, video_id: str) -> list[tuple[int, int]]:
    """``count`` distinct frame pairs ``(a, a + g)`` of a video of ``num_frames`` frames, sorted.

    Each pair draws its gap ``g`` uniformly among the gaps of ``gap`` = (min, max) that still have an
    unused pair, then ``a`` uniformly among that gap's unused starts. All distinct pairs (fewer than
    ``count``, possibly none) when the video has no more. Deterministic in (seed, video_id, num_frames).
    """
    gap_min, gap_max = gap
    if not 1 <= gap_min <= gap_max:
        raise ValueError(f"gap must satisfy 1 <= min <= max; got {gap}")
    if count < 1:
        raise ValueError(f"count must be >= 1; got {count}")
    starts = {g: list(range(num_frames - g)) for g in range(gap_min, gap_max + 1) if g < num_frames}
    total = sum(len(s) for s in starts.values())
    if total <= count:
        return sorted((a, a + g) for g, s in starts.items() for a in s)
    rng = random.Random(pair_seed(seed, video_id))
    chosen = []
    while len(chosen) < count:
        gaps = [g for g, s in starts.items() if s]
        g = gaps[_below(rng, len(gaps))]
        a = starts[g].pop(_below(rng, len(starts[g])))
        chosen.append((a, a + g))
    return sorted(chosen)


# ---------------------------------------------------------------------------------------------------
# one video -> frames of its pairs


def resize_to_model(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, *size) in [-1, 1]: bilinear with antialiasing (aspect not
    kept), rounded to uint8 first so every estimator and every run sees the same 8-bit frames."""
    from mpcore.flows.evaluate import resize_frames, to_model_frames

    return to_model_frames(resize_frames(frames, tuple(size)))


@dataclass
class _Job:
    """One video on its way through the estimator."""

    source: Source
    num_frames: int
    pairs: list[tuple[int, int]]
    frame_a: torch.Tensor
    frame_b: torch.Tensor
    flows: list[torch.Tensor] = field(default_factory=list)
    sent: int = 0
    error: str | None = None

    @property
    def remaining(self) -> int:
        return 0 if self.error else len(self.pairs) - self.sent


def prepare(source: Source, pairs_per_video: int, gap: tuple[int, int], seed: int, size: tuple[int, int]) -> _Job:
    """Count, sample, decode and resize the frames of one video; :class:`SourceError` if unusable."""
    if source.kind == "invalid":
        raise SourceError(source.problem or "not a video")
    try:
        num_frames = count_frames(source)
    except Exception as error:  # any decoder failure means: this file is unreadable
        raise SourceError(f"unreadable: {_error_text(error)}") from None
    for attempt in range(2):
        if num_frames < 1:
            raise SourceError("no frames")
        if num_frames < gap[0] + 1:
            raise SourceError(f"too short: {num_frames} frame(s); the smallest gap {gap[0]} needs at least {gap[0] + 1}")
        pairs = sample_pairs(num_frames, pairs_per_video, gap, seed, source.id)
        try:
            frames, length = read_frames(source, [i for pair in pairs for i in pair])
        except Exception as error:
            raise SourceError(f"cannot decode: {_error_text(error)}") from None
        if length is None:
            break
        if attempt == 1 or length >= num_frames:
            raise SourceError(f"decoding is inconsistent: counted {num_frames} frames, decoding ended after {length}")
        num_frames = length  # the count was wrong: sample again from the frames that decode
    shapes = {frame.shape for frame in frames.values()}
    if len(shapes) > 1:
        raise SourceError(f"frames differ in size: {sorted(s[:2] for s in shapes)} (H, W)")
    order = sorted(frames)
    resized = resize_to_model(np.stack([frames[i] for i in order]), size)
    position = {index: k for k, index in enumerate(order)}
    frame_a = resized[[position[a] for a, _ in pairs]]
    frame_b = resized[[position[b] for _, b in pairs]]
    return _Job(source, num_frames, pairs, frame_a, frame_b)


# ---------------------------------------------------------------------------------------------------
# batches of pairs -> flows


class _Batcher:
    """Runs the estimator on ``batch_size`` pairs at a time, taken in order from the queued videos
    (a batch may span videos); hands back each video once all its pairs have a flow or it failed.

    If a batch that spans videos raises, each video's part is run alone, so the error is recorded
    for the video that caused it only."""

    def __init__(self, estimator: Callable, batch_size: int, device: torch.device | str, size: tuple[int, int]):
        self.estimator = estimator
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.size = tuple(size)
        self.queue: deque[_Job] = deque()
        self.seconds = 0.0

    def add(self, job: _Job) -> list[_Job]:
        self.queue.append(job)
        return self._run(final=False)

    def finish(self) -> list[_Job]:
        return self._run(final=True)

    def _run(self, final: bool) -> list[_Job]:
        done = []
        while True:
            pending = sum(job.remaining for job in self.queue)
            if pending == 0 or (pending < self.batch_size and not final):
                break
            parts, taken = [], 0
            for job in self.queue:
                take = min(job.remaining, self.batch_size - taken)
                if take:
                    parts.append((job, job.sent, job.sent + take))
                    taken += take
                if taken == self.batch_size:
                    break
            self._compute(parts)
            while self.queue and self.queue[0].remaining == 0:
                done.append(self.queue.popleft())
        while self.queue and self.queue[0].remaining == 0:
            done.append(self.queue.popleft())
        return done

    def _compute(self, parts: list[tuple[_Job, int, int]]) -> None:
        frame_a = torch.cat([job.frame_a[start:stop] for job, start, stop in parts]).to(self.device)
        frame_b = torch.cat([job.frame_b[start:stop] for job, start, stop in parts]).to(self.device)
        started = time.perf_counter()
        try:
            with torch.no_grad():
                flow = self.estimator(frame_a, frame_b)
        except Exception as error:  # a failure on these frames: find (and skip) the video it belongs to
            self.seconds += time.perf_counter() - started
            if len(parts) == 1:
                job, start, stop = parts[0]
                job.error = f"flow estimator failed on pairs {job.pairs[start:stop]}: {_error_text(error)}"
            else:
                for part in parts:
                    self._compute([part])
            return
        self.seconds += time.perf_counter() - started
        expected = (frame_a.shape[0], 2, *self.size)
        if not isinstance(flow, torch.Tensor) or tuple(flow.shape) != expected:
            got = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
            raise EstimatorContractError(
                f"the flow estimator returned {got} for frames {tuple(frame_a.shape)}; the contract is flow (B, 2, H, W) "
                f"= {expected}"
            )
        flow = flow.detach().to("cpu", torch.float32)
        offset = 0
        for job, start, stop in parts:
            job.flows.append(flow[offset:offset + stop - start])
            job.sent = stop
            offset += stop - start


# ---------------------------------------------------------------------------------------------------
# the whole run


def _is_flow_cache(path: Path) -> bool:
    try:
        return json.loads((path / INDEX).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_cache_path(out: str | os.PathLike, overwrite: bool) -> Path:
    """Check that a cache can be written at ``out`` before any work; :class:`ExtractError` if not.

    An existing ``out`` needs ``overwrite``, and even then is replaced only if it is a flow cache
    (holds an index.json of this format) or an empty folder: nothing else is ever deleted."""
    out = Path(out).expanduser()
    if out.exists():
        if not out.is_dir():
            raise ExtractError(f"--out {out} exists and is a file; a cache is a folder: choose another --out")
        if not overwrite:
            raise ExtractError(f"--out {out} already exists; pass --overwrite to replace it, or choose another --out")
        if not _is_flow_cache(out) and any(out.iterdir()):
            raise ExtractError(
                f"--out {out} exists and is not a flow cache (no {INDEX} of format {FORMAT!r}); refusing to delete it "
                "even with --overwrite: remove it yourself or choose another --out"
            )
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExtractError(f"cannot create {parent}: {error.strerror or error}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExtractError(f"{parent} is not writable; choose another --out")
    return out


def describe_estimator(estimator: Any) -> dict[str, Any] | None:
    """The estimator's own ``describe()`` (what was used, for the index), or None if it has none."""
    from mpcore.io.manifest import json_safe

    describe = getattr(estimator, "describe", None)
    return json_safe(describe()) if callable(describe) else None


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"size must be (H, W) with both >= 8; got {size}")
    return size  # type: ignore[return-value]


def extract_flows(
    sources: Sequence[Source],
    estimator: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    out: str | os.PathLike,
    *,
    size: Sequence[int] = (224, 224),
    pairs_per_video: int = 4,
    gap: tuple[int, int] = (1, 1),
    seed: int = 0,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    label: str | None = None,
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    shard_size: int = 1024,
    progress: bool = True,
    dist: Any = None,
) -> dict[str, Any]:
    """Sample frame pairs of each source, compute their flows and write a flow cache at ``out``.

    ``sources`` (from :func:`find_sources`, or any part of that list: each video's pairs and flows
    depend only on that video, the seed and the settings) are processed in order; ``estimator`` is a
    loaded flow estimator (frames (B, 3, H, W) in [-1, 1] -> flow (B, 2, H, W) in pixels), run under
    ``torch.no_grad()`` on ``device``. ``meta`` (e.g. the estimator's name and options, the command line) is
    stored in the index beside the settings. Returns
    the summary (also stored in the index under "summary"). Raises :class:`ExtractError` when no pair
    could be extracted (nothing is written then) and :class:`EstimatorContractError` for an
    estimator that returns the wrong shape. See the module docstring for the steps.

    ``dist`` (a :class:`mpcore.jobs.distributed.Dist` of several processes; every process calls this with
    the same arguments) splits the work across the processes and merges their parts into one cache.
    """
    size = _check_size(size)
    gap = (int(gap[0]), int(gap[1]))
    if not 1 <= gap[0] <= gap[1]:
        raise ValueError(f"gap must satisfy 1 <= min <= max; got {gap}")
    if pairs_per_video < 1 or batch_size < 1:
        raise ValueError(f"pairs_per_video and batch_size must be >= 1; got {pairs_per_video}, {batch_size}")
    started = time.perf_counter()
    if hasattr(estimator, "eval"):
        estimator.eval()
    settings = {
        **(meta or {}),
        "estimator_describe": describe_estimator(estimator),
        "size": list(size),
        "gap": list(gap),
        "pairs_per_video": pairs_per_video,
        "seed": seed,
        "label": label,
        "preprocessing": "frames resized to size (bilinear, antialiased, aspect not kept) BEFORE the flow; uint8 -> [-1, 1]",
        "flow_units": "pixels of the stored size grid, x then y, from frame_a to frame_b",
    }
    if dist is not None and dist.enabled:
        return _extract_distributed(sources, estimator, Path(out), settings, dist, size=size,
                                    pairs_per_video=pairs_per_video, gap=gap, seed=seed, batch_size=batch_size,
                                    device=device, overwrite=overwrite, shard_size=shard_size, progress=progress,
                                    started=started)
    with FlowCacheWriter(Path(out), settings, shard_size=shard_size, overwrite=overwrite) as writer:
        run = _extract_into(writer, sources, estimator, size=size, pairs_per_video=pairs_per_video, gap=gap, seed=seed,
                            batch_size=batch_size, device=device, progress=progress)
        pairs = run["pairs"]
        if pairs == 0:
            raise _nothing_extracted(len(sources), writer.skipped)
        summary = _summary(out, settings, len(sources), run["used"], len(writer.skipped), run["magnitude_sum"],
                           run["magnitude_count"], time.perf_counter() - started, run["seconds_flow"], pairs_per_video)
        writer.meta["summary"] = {k: v for k, v in summary.items() if k not in settings and k != "out"}
    summary["skipped"] = list(writer.skipped)
    return summary


def _nothing_extracted(count: int, skipped: list[dict[str, str]]) -> ExtractError:
    reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in skipped[:5])
    more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
    return ExtractError(f"no flow pairs were extracted from {count} source(s), nothing was written: {reasons}{more}")


def _summary(out, settings: dict[str, Any], videos: int, used: list[dict[str, Any]], skipped: int, magnitude_sum: float,
             magnitude_count: int, seconds: float, seconds_flow: float, pairs_per_video: int) -> dict[str, Any]:
    pairs = sum(v["pairs"] for v in used)
    fewer = [v for v in used if v["pairs"] < pairs_per_video]
    return {
        "out": str(out),
        **settings,
        "videos": videos,
        "videos_used": len(used),
        "videos_skipped": skipped,
        "pairs": pairs,
        "videos_with_fewer_pairs": len(fewer),
        "fewer_pairs": fewer,
        "mean_flow_magnitude": magnitude_sum / magnitude_count,
        "seconds": seconds,
        "seconds_flow": seconds_flow,
        "seconds_per_pair": seconds / pairs,
        "seconds_flow_per_pair": seconds_flow / pairs,
    }


def _extract_into(writer: FlowCacheWriter, sources: Sequence[Source], estimator, *, size, pairs_per_video, gap, seed,
                  batch_size, device, progress: bool, desc: str = "flows") -> dict[str, Any]:
    """Sample, decode and compute the flows of ``sources`` in order, adding each usable video to
    ``writer`` (and each unusable one to its skipped list). Returns the used videos and the stats."""
    from tqdm.auto import tqdm

    batcher = _Batcher(estimator, batch_size, device, size)
    used: list[dict[str, Any]] = []
    magnitude_sum, magnitude_count = 0.0, 0

    def store(job: _Job) -> None:
        nonlocal magnitude_sum, magnitude_count
        if job.error is None:
            flows = torch.cat(job.flows)
            if not torch.isfinite(flows).all():
                bad = [job.pairs[k] for k in range(len(job.pairs)) if not torch.isfinite(flows[k]).all()]
                job.error = f"the flow estimator returned NaN/inf flow for pair(s) {bad}"
        if job.error is not None:
            writer.skip(job.source.rel, job.error)
            return
        entry = VideoEntry(job.source.id, job.source.rel, frames=job.num_frames)
        writer.add(entry, flows, [a for a, _ in job.pairs], [b for _, b in job.pairs])
        magnitude = flows.square().sum(dim=1).sqrt()
        magnitude_sum += float(magnitude.sum(dtype=torch.float64))
        magnitude_count += magnitude.numel()
        used.append({"id": entry.id, "frames": entry.frames, "pairs": entry.pairs})

    bar = tqdm(sources, desc=desc, unit="video", file=sys.stderr, disable=not progress)
    for source in bar:
        try:
            job = prepare(source, pairs_per_video, gap, seed, size)
        except SourceError as error:
            writer.skip(source.rel, str(error))
        else:
            for finished in batcher.add(job):
                store(finished)
        bar.set_postfix(pairs=sum(v["pairs"] for v in used), skipped=len(writer.skipped), refresh=False)
    for finished in batcher.finish():
        store(finished)
    bar.close()
    return {"used": used, "pairs": sum(v["pairs"] for v in used), "magnitude_sum": magnitude_sum,
            "magnitude_count": magnitude_count, "seconds_flow": batcher.seconds}


def _extract_distributed(sources, estimator, out: Path, settings: dict[str, Any], dist, *, size, pairs_per_video, gap,
                         seed, batch_size, device, overwrite: bool, shard_size: int, progress: bool,
                         started: float) -> dict[str, Any]:
    """:func:`extract_flows` on several processes (see the module docstring); every process returns
    the same summary, with a ``ranks`` row per process."""
    import shutil
    import socket

    from mpcore.flows.cache import write_merged
    from mpcore.io.manifest import write_json_atomic

    workdir = None
    if dist.is_main:  # one shared temporary folder beside `out`, created before the others learn its name
        out.parent.mkdir(parents=True, exist_ok=True)
        workdir = out.with_name(f".{out.name}.tmp-{os.getpid()}-{dist.world_size}p")
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
    workdir = Path(dist.broadcast(str(workdir) if workdir else None))
    mine = [sources[i] for i in dist.contiguous_share(len(sources))]
    writer = FlowCacheWriter(out, settings, shard_size=shard_size, overwrite=overwrite, workdir=workdir,
                             shard_prefix=f"shard-r{dist.rank:05d}-")
    rank_started = time.perf_counter()
    try:
        run = _extract_into(writer, mine, estimator, size=size, pairs_per_video=pairs_per_video, gap=gap, seed=seed,
                            batch_size=batch_size, device=device, progress=progress and dist.is_main,
                            desc=f"flows (rank 0 of {dist.world_size})")
        part = {**writer.part(), "rank": dist.rank, "host": socket.gethostname(), "device": str(device),
                "sources": len(mine), **{k: v for k, v in run.items() if k != "used"}, "used": run["used"],
                "seconds": time.perf_counter() - rank_started}
        write_json_atomic(part, workdir / f"part-{dist.rank:05d}.json")
    except BaseException:
        writer.abort()
        raise
    dist.barrier()  # every process has written its shards and its part
    parts = [json.loads((workdir / f"part-{rank:05d}.json").read_text()) for rank in range(dist.world_size)]
    used = [video for part in parts for video in part["used"]]
    skipped = [entry for part in parts for entry in part["skipped"]]
    if not used or sum(v["pairs"] for v in used) == 0:
        dist.barrier()  # every process has read the parts before the folder goes
        if dist.is_main:
            shutil.rmtree(workdir, ignore_errors=True)
        raise _nothing_extracted(len(sources), skipped)
    summary = _summary(out, settings, len(sources), used, len(skipped), sum(p["magnitude_sum"] for p in parts),
                       sum(p["magnitude_count"] for p in parts), time.perf_counter() - started,
                       sum(p["seconds_flow"] for p in parts), pairs_per_video)
    summary["processes"] = dist.world_size
    summary["ranks"] = [{"rank": p["rank"], "host": p["host"], "device": p["device"], "videos": p["sources"],
                         "pairs": p["pairs"], "seconds": p["seconds"],
                         "pairs_per_s": p["pairs"] / p["seconds"] if p["seconds"] > 0 else None} for p in parts]
    dist.barrier()  # every process has read the parts before the main process merges (and removes) them
    if dist.is_main:
        meta = {**settings, "summary": {k: v for k, v in summary.items() if k not in settings and k != "out"}}
        write_merged(out, workdir, meta, parts, overwrite=overwrite)
    dist.barrier()  # the cache is in place before any process returns
    summary["skipped"] = skipped
    return summary
