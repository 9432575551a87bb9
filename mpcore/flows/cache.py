"""Flow caches: the optical flows of sampled frame pairs, on disk, for training the discriminator.

MotionPrompt's discriminator is trained on flows of random frame pairs from real videos versus
videos the backbone generated (docs/design.md, "The method"). ``mpcore flows extract`` computes those
flows once and stores them here; ``mpcore disc train`` reads them.

Layout of a cache directory::

    CACHE/
      index.json                 what is inside (format, estimator, size, videos, shards, skipped)
      shard-00000.safetensors    tensors: flow (n, 2, H, W) float16 in pixels of the stored grid,
      shard-00001.safetensors             video (n,) int64 index into index.json "videos",
      ...                                 frame_a, frame_b (n,) int64 frame indices in that video

A cache is written into a temporary directory beside its final name and renamed when complete
(:class:`FlowCacheWriter`), so a directory named CACHE is always a finished cache.

A cache written by several processes (``mpcore flows extract`` under ``accelerate launch`` /
``torchrun``) holds each process's shards (``shard-r00001-00000.safetensors``); their ``video``
tensors count from 0 within the process's part, and the shard's entry in index.json gives the
``video_offset`` to add (such an index has version 2, so an older mpcore refuses it instead of
misreading it). Processes take contiguous blocks of the video list in rank order, so the merged
cache lists the same videos and pairs in the same order as a single-process extraction
(:func:`write_merged`).
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mpcore.io.files import follow_umask, write_text_atomic

FORMAT = "mpcore-flow-cache"
VERSION = 1
VERSION_OFFSETS = 2
"""The version of an index whose shards carry a ``video_offset`` (a multi-process cache)."""
READ_VERSIONS = (VERSION, VERSION_OFFSETS)
INDEX = "index.json"


class FlowCacheError(ValueError):
    """A path that is not a readable flow cache (the message says what is wrong and what to do)."""


@dataclass
class VideoEntry:
    """One source video of a cache: ``id`` is unique in the cache (train/val splits are by video)."""

    id: str
    source: str
    frames: int
    pairs: int = 0


@dataclass
class FlowCacheWriter:
    """Write a cache: ``add`` the pairs of each video, then ``close`` (or use as a context manager).

    ``meta`` is stored in index.json (estimator description, frame size, pair sampling, label...).
    Nothing appears under ``path`` until ``close`` succeeds; an exception removes the partial cache.

    One process of a multi-process extraction gives the shared ``workdir`` (which it neither creates
    nor removes) and its own ``shard_prefix``, and ends with :meth:`part` instead of ``close``; the
    main process then joins the parts with :func:`write_merged`.
    """

    path: Path
    meta: dict[str, Any]
    shard_size: int = 1024
    overwrite: bool = False
    videos: list[VideoEntry] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    _shards: list[dict[str, Any]] = field(default_factory=list)
    _pending: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    _pending_count: int = 0
    workdir: Path | None = None
    shard_prefix: str = "shard-"

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.path.exists() and not self.overwrite:
            raise FlowCacheError(f"{self.path} already exists; choose another --out or remove it first")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1; got {self.shard_size}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.workdir is not None:  # one part of a multi-process cache: the folder is shared
            self.tmp = Path(self.workdir)
            return
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()

    def __enter__(self) -> "FlowCacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add(self, video: VideoEntry, flows: torch.Tensor, frame_a: list[int], frame_b: list[int]) -> None:
        """Store the flows (k, 2, H, W) of ``video``'s pairs (frame_a[i] -> frame_b[i])."""
        if flows.ndim != 4 or flows.shape[1] != 2:
            raise ValueError(f"flows must be (k, 2, H, W); got {tuple(flows.shape)}")
        if not len(frame_a) == len(frame_b) == flows.shape[0]:
            raise ValueError("one (frame_a, frame_b) pair per flow is needed")
        if any(v.id == video.id for v in self.videos):
            raise ValueError(f"video id {video.id!r} is already in the cache")
        video.pairs = int(flows.shape[0])
        self.videos.append(video)
        index = len(self.videos) - 1
        self._pending.append((flows.detach().to("cpu", torch.float16), index,
                              torch.tensor(frame_a, dtype=torch.int64), torch.tensor(frame_b, dtype=torch.int64)))
        self._pending_count += video.pairs
        if self._pending_count >= self.shard_size:
            self._flush()

    def skip(self, source: str, reason: str) -> None:
        """Record a video that was not used (unreadable, too short...): listed in the summary."""
        self.skipped.append({"source": str(source), "reason": reason})

    def _flush(self) -> None:
        if not self._pending:
            return
        flows = torch.cat([item[0] for item in self._pending])
        videos = torch.cat([torch.full((item[0].shape[0],), item[1], dtype=torch.int64) for item in self._pending])
        frame_a = torch.cat([item[2] for item in self._pending])
        frame_b = torch.cat([item[3] for item in self._pending])
        name = f"{self.shard_prefix}{len(self._shards):05d}.safetensors"
        save_file({"flow": flows.contiguous(), "video": videos, "frame_a": frame_a, "frame_b": frame_b},
                  str(self.tmp / name))
        follow_umask(self.tmp / name)  # safetensors creates its files 0600
        self._shards.append({"file": name, "count": int(flows.shape[0])})
        self._pending, self._pending_count = [], 0

    def close(self) -> Path:
        """Write the last shard and index.json, then move the finished cache to ``path``."""
        self._flush()
        _check_one_size(self.tmp, self._shards)
        index = {
            "format": FORMAT,
            "version": VERSION,
            **self.meta,
            "pairs": sum(s["count"] for s in self._shards),
            "videos": [vars(v) for v in self.videos],
            "skipped": self.skipped,
            "shards": self._shards,
        }
        _finish(self.tmp, index, self.path, self.overwrite)
        return self.path

    def part(self) -> dict[str, Any]:
        """Write the last shard of this process's part; return the part (videos, skipped, shards)
        for :func:`write_merged`."""
        self._flush()
        return {"videos": [vars(v) for v in self.videos], "skipped": list(self.skipped), "shards": list(self._shards)}

    def abort(self) -> None:
        if self.workdir is not None:  # only this process's files: the folder is shared
            for shard in self._shards:
                (self.tmp / shard["file"]).unlink(missing_ok=True)
            return
        shutil.rmtree(self.tmp, ignore_errors=True)


def _check_one_size(folder: Path, shards: list[dict[str, Any]]) -> None:
    sizes = set()
    for shard in shards:
        with safe_open(str(folder / shard["file"]), framework="pt") as handle:
            sizes.add(tuple(handle.get_slice("flow").get_shape()[-2:]))
    if len(sizes) > 1:
        raise ValueError(f"all flows of a cache must share one size; got {sorted(sizes)}")


def _finish(folder: Path, index: dict[str, Any], path: Path, overwrite: bool) -> None:
    """Write index.json into the finished temporary ``folder`` and move it to ``path``."""
    write_text_atomic(json.dumps(index, indent=1) + "\n", folder / INDEX)
    if path.exists() and overwrite:
        shutil.rmtree(path)
    os.replace(folder, path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # what killed runs into the same --out left
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def write_merged(path: str | os.PathLike, workdir: str | os.PathLike, meta: dict[str, Any],
                 parts: list[dict[str, Any]], overwrite: bool = False) -> Path:
    """Join the parts (:meth:`FlowCacheWriter.part`, in rank order) written into ``workdir`` into
    one cache at ``path``: videos, skipped and shards concatenated in part order, each shard with
    the ``video_offset`` of its part; index.json written last, then ``workdir`` is moved to ``path``.
    Files in ``workdir`` that are no shard of a part (e.g. the parts' own JSON) are removed first."""
    path, workdir = Path(path), Path(workdir)
    videos: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    shards: list[dict[str, Any]] = []
    for part in parts:
        offset = len(videos)
        shards.extend({**shard, "video_offset": offset} for shard in part["shards"])
        videos.extend(part["videos"])
        skipped.extend(part["skipped"])
    keep = {shard["file"] for shard in shards}
    for entry in workdir.iterdir():
        if entry.name not in keep:
            entry.unlink()
    _check_one_size(workdir, shards)
    index = {
        "format": FORMAT,
        "version": VERSION_OFFSETS,
        **meta,
        "pairs": sum(s["count"] for s in shards),
        "videos": videos,
        "skipped": skipped,
        "shards": shards,
    }
    _finish(workdir, index, path, overwrite)
    return path


class FlowCache:
    """Read a cache written by :class:`FlowCacheWriter`.

    ``len(cache)`` pairs; ``cache.flows(indices)`` (k, 2, H, W) float32; ``cache.video_index``
    (N,) the video of each pair (index into ``cache.videos``), for splitting by video.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index_path = self.path / INDEX
        if not index_path.is_file():
            hint = " (an unfinished cache: the run that wrote it did not complete)" if self.path.name.startswith(".") else ""
            raise FlowCacheError(
                f"{self.path} is not a flow cache: {INDEX} not found{hint}. Make one with "
                "`mpcore flows extract --videos DIR --out CACHE --estimator NAME`."
            )
        try:
            self.index = json.loads(index_path.read_text())
        except json.JSONDecodeError as error:
            raise FlowCacheError(f"{index_path}: not valid JSON ({error})") from error
        if self.index.get("format") != FORMAT or self.index.get("version") not in READ_VERSIONS:
            raise FlowCacheError(
                f"{index_path}: format {self.index.get('format')!r} version {self.index.get('version')!r}; "
                f"expected {FORMAT!r} version {' or '.join(map(str, READ_VERSIONS))}"
            )
        self.videos = [VideoEntry(**v) for v in self.index["videos"]]
        self._shards = self.index["shards"]
        self._starts = []
        start = 0
        for shard in self._shards:
            self._starts.append(start)
            start += shard["count"]
        self._length = start
        video_index = [self._read(i, "video") + self._shards[i].get("video_offset", 0) for i in range(len(self._shards))]
        self.video_index = torch.cat(video_index) if video_index else torch.zeros(0, dtype=torch.int64)
        self._flow_shards: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self._length

    @property
    def size(self) -> tuple[int, int] | None:
        """(H, W) of the stored flows (None for an empty cache)."""
        if not self._shards:
            return None
        with safe_open(str(self.path / self._shards[0]["file"]), framework="pt") as handle:
            return tuple(handle.get_slice("flow").get_shape()[-2:])  # type: ignore[return-value]

    def _read(self, shard: int, name: str) -> torch.Tensor:
        file = self.path / self._shards[shard]["file"]
        try:
            with safe_open(str(file), framework="pt") as handle:
                return handle.get_tensor(name)
        except Exception as error:  # SafetensorError (truncated, corrupt), OSError (missing), KeyError...
            raise FlowCacheError(
                f"flow cache {self.path}: shard {file.name} cannot be read ({type(error).__name__}: {error}); "
                "the cache is damaged (e.g. a copy cut short): extract it again with `mpcore flows extract`"
            ) from None

    def _shard_flows(self, shard: int) -> torch.Tensor:
        """The flows of one shard, read once and kept; checked finite (one pass over data just read)."""
        if shard not in self._flow_shards:
            flows = self._read(shard, "flow")
            finite = torch.isfinite(flows).flatten(1).all(dim=1)
            if not finite.all():
                bad = int((~finite).nonzero()[0])
                video = self.videos[int(self.video_index[self._starts[shard] + bad])].id
                raise FlowCacheError(
                    f"flow cache {self.path}: shard {self._shards[shard]['file']} holds non-finite flows (NaN/inf) in "
                    f"{int((~finite).sum())} of its {len(finite)} pairs, first pair {self._starts[shard] + bad} "
                    f"(video {video!r}); extract the cache again (`mpcore flows extract`) or leave that video out"
                )
            self._flow_shards[shard] = flows
        return self._flow_shards[shard]

    def flows(self, indices: list[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Flows of pairs ``indices`` (all when None) as float32 (k, 2, H, W), in that order."""
        if indices is None:
            indices = range(len(self))
        indices = [int(i) for i in indices]
        out = []
        for i in indices:
            if not 0 <= i < len(self):
                raise IndexError(f"pair {i} out of range for a cache of {len(self)} pairs")
            shard = bisect.bisect_right(self._starts, i) - 1
            out.append(self._shard_flows(shard)[i - self._starts[shard]])
        if not out:
            height, width = self.size or (0, 0)
            return torch.zeros(0, 2, height, width)
        return torch.stack(out).float()

    def pairs(self) -> list[dict[str, Any]]:
        """Per pair: video id, frame_a, frame_b (for reports)."""
        rows = []
        for shard in range(len(self._shards)):
            video, frame_a, frame_b = (self._read(shard, n).tolist() for n in ("video", "frame_a", "frame_b"))
            offset = self._shards[shard].get("video_offset", 0)
            rows.extend({"video": self.videos[v + offset].id, "frame_a": a, "frame_b": b}
                        for v, a, b in zip(video, frame_a, frame_b))
        return rows
