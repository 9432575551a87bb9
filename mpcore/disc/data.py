"""What a discriminator trains on: two flow caches, real videos (label 1) vs generated ones (label 0).

The caches are checked (readable, not empty, flows of one size, one flow estimator and frame size:
:func:`open_caches`, :func:`trained_on`), split into train and validation pairs **by video**, per
cache, so no video has pairs on both sides (pairs of one video are highly correlated; a pair split
would leak: :func:`split_by_video`), given per-class loss weights (with ``balance``, ``N / (2 N_class)``
so both classes count equally: :func:`class_weights`) and read in batches by a DataLoader
(:func:`batch_loader`). Every random choice comes from a generator seeded by :func:`derived_seed`.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from mpcore.flows.cache import FlowCache, FlowCacheError

REAL, FAKE = 1, 0
CLASS_NAMES = {REAL: "real", FAKE: "fake"}


class DiscTrainError(ValueError):
    """A discriminator training/eval request that cannot run (the message says what to do)."""


class DiscOptionError(DiscTrainError):
    """A training setting that is invalid as given (``--epochs 0``, ``--arch preset=nope``), naming the flag
    that sets it (``option``): the CLI exits 2, as for an :class:`mpcore.jobs.options.OptionError` (which this
    package cannot import: :mod:`mpcore.jobs` imports it)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


def derived_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from ``seed`` and ``parts`` (e.g. ("epoch", 3)): independent streams per use."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def index_sha256(cache: FlowCache) -> str:
    """Identity of a cache: the SHA-256 of its index.json (which lists its videos and shards)."""
    return hashlib.sha256((cache.path / "index.json").read_bytes()).hexdigest()


def cache_identities(caches: dict[int, FlowCache]) -> dict[str, dict[str, str]]:
    """Each cache's path and index SHA-256, by class name (the log and the checkpoint record them)."""
    return {CLASS_NAMES[label]: {"path": str(caches[label].path), "index_sha256": index_sha256(caches[label])}
            for label in (REAL, FAKE)}


def open_caches(real: str | os.PathLike, fake: str | os.PathLike, same_size: bool = True) -> dict[int, FlowCache]:
    """The real and generated flow caches, checked: readable, not empty, flows of one size.

    For training both classes must share one flow size (``same_size``): a size difference would be
    a trivial cue for the discriminator (and resizing one class would leave its own artifacts)."""
    caches: dict[int, FlowCache] = {}
    for label, path in ((REAL, real), (FAKE, fake)):
        name = CLASS_NAMES[label]
        try:
            cache = FlowCache(path)
        except FlowCacheError as error:
            raise DiscTrainError(f"--{name}: {error}") from None
        if len(cache) == 0:
            raise DiscTrainError(f"--{name} {cache.path}: the cache has no flow pairs")
        caches[label] = cache
    if same_size and caches[REAL].size != caches[FAKE].size:
        raise DiscTrainError(
            f"the caches hold flows of different sizes: real {caches[REAL].size}, fake {caches[FAKE].size} (H, W). "
            "Extract both at the same size: a size difference is a trivial cue the discriminator would learn."
        )
    return caches


def trained_on(caches: dict[int, FlowCache]) -> dict[str, Any]:
    """What a discriminator trained on ``caches`` was trained on, from the caches' index.json
    (written by ``mpcore flows extract``): the flow estimator (``estimator``: name, weights, options)
    and the frame size the flows were computed at (``size`` [H, W]), plus each cache's path and
    index SHA-256. Stored in the discriminator's config JSON; ``mpcore run`` checks it.

    Both caches must agree on both: flows of two estimators or frame sizes differ in ways the
    discriminator would learn instead of real vs generated motion. A cache that does not record one
    (e.g. written by hand) takes the other's value; when neither records it, it is None."""
    found: dict[str, dict[str, Any]] = {}
    for label in (REAL, FAKE):
        index = caches[label].index
        estimator = index.get("estimator")
        found[CLASS_NAMES[label]] = {
            "estimator": dict(estimator) if isinstance(estimator, dict) and estimator.get("name") else None,
            "size": [int(n) for n in index["size"]] if isinstance(index.get("size"), list) else None,
        }
    real, fake = found["real"], found["fake"]
    for key, what, fix in (("estimator", "flow estimator", "--estimator (and --weights/--option)"),
                           ("size", "frame size (H, W) of the flows", "--size")):
        if real[key] is not None and fake[key] is not None and real[key] != fake[key]:
            raise DiscTrainError(
                f"the caches were extracted with different {what}s: --real {caches[REAL].path} has {real[key]}, "
                f"--fake {caches[FAKE].path} has {fake[key]}. Extract both with the same {fix}: the discriminator "
                "would learn that difference instead of real vs generated motion."
            )
    estimator = real["estimator"] or fake["estimator"]
    return {
        "flow_estimator": estimator["name"] if estimator else None,
        "flow_weights": estimator.get("weights") if estimator else None,
        "flow_options": estimator.get("options") if estimator else None,
        "frame_size": real["size"] or fake["size"],
        "caches": [{"label": CLASS_NAMES[label], "path": str(caches[label].path),
                    "index_sha256": index_sha256(caches[label])} for label in (REAL, FAKE)],
    }


@dataclass
class Split:
    """Pairs of each side, as (label, pair index in that label's cache), and a summary for the log."""

    train: list[tuple[int, int]]
    val: list[tuple[int, int]]
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def split_by_video(caches: dict[int, FlowCache], val_fraction: float, seed: int) -> Split:
    """Hold out about ``val_fraction`` of each cache's videos (at least one when it has two or more),
    chosen by a seeded shuffle of its videos; every pair of a video goes to that video's side."""
    train: list[tuple[int, int]] = []
    val: list[tuple[int, int]] = []
    summary: dict[str, Any] = {}
    warnings: list[str] = []
    for label in (REAL, FAKE):
        cache, name = caches[label], CLASS_NAMES[label]
        count = len(cache.videos)
        n_val = int(math.floor(val_fraction * count + 0.5))
        if val_fraction > 0 and count >= 2:
            n_val = max(1, min(count - 1, n_val))
        elif count < 2:
            n_val = 0
            if val_fraction > 0:
                warnings.append(f"the {name} cache has {count} video: it cannot be split, all of it is used for training")
        generator = torch.Generator().manual_seed(derived_seed(seed, "split", name))
        order = torch.randperm(count, generator=generator).tolist()
        val_videos = set(order[:n_val])
        video_of_pair = cache.video_index.tolist()
        sides: dict[str, list[int]] = {"train": [], "val": []}
        for pair, video in enumerate(video_of_pair):
            sides["val" if video in val_videos else "train"].append(pair)
        train.extend((label, pair) for pair in sides["train"])
        val.extend((label, pair) for pair in sides["val"])
        summary[name] = {
            "cache": str(cache.path),
            "train": {"videos": count - n_val, "pairs": len(sides["train"])},
            "val": {"videos": n_val, "pairs": len(sides["val"])},
            "val_video_ids": [cache.videos[v].id for v in sorted(val_videos)],
        }
        if not sides["train"]:
            raise DiscTrainError(f"no {name} pairs left for training (the cache's {count} video(s) have no pairs)")
    if val_fraction > 0 and val and len({label for label, _ in val}) < 2:
        warnings.append("the validation set has only one class: its ROC-AUC is undefined")
    return Split(train, val, summary, warnings)


def class_weights(items: list[tuple[int, int]], balance: bool) -> dict[int, float]:
    """Per-class loss weights: ``N / (C N_class)`` over the C classes present when ``balance``, else 1."""
    counts = {label: sum(1 for lab, _ in items if lab == label) for label in (REAL, FAKE)}
    present = [label for label, n in counts.items() if n]
    if not balance or not present:
        return {REAL: 1.0, FAKE: 1.0}
    total = sum(counts.values())
    return {label: (total / (len(present) * counts[label]) if counts[label] else 0.0) for label in (REAL, FAKE)}


def balance_summary(items: list[tuple[int, int]], weights: dict[int, float]) -> dict[str, Any]:
    """Pairs of each class in ``items``, their fraction and loss weight (for the log)."""
    total = len(items)
    out: dict[str, Any] = {"pairs": total}
    for label in (REAL, FAKE):
        count = sum(1 for lab, _ in items if lab == label)
        out[CLASS_NAMES[label]] = {"pairs": count, "fraction": count / total if total else None, "loss_weight": weights[label]}
    return out


class _Batches(torch.utils.data.Dataset):
    """Item i = batch i: (flows (B, 2, H, W) float32, labels (B,) float32, weights (B,) float32)."""

    def __init__(self, caches: dict[int, FlowCache], items: list[tuple[int, int]], batches: list[list[int]],
                 weights: dict[int, float]):
        self.caches, self.items, self.batches, self.weights = caches, items, batches, weights

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        chosen = [self.items[j] for j in self.batches[i]]
        height, width = self.caches[chosen[0][0]].size  # one size per batch (checked by open_caches)
        flows = torch.empty(len(chosen), 2, height, width)
        for label, cache in self.caches.items():
            rows = [k for k, (lab, _) in enumerate(chosen) if lab == label]
            if rows:
                flows[rows] = cache.flows([chosen[k][1] for k in rows])
        labels = torch.tensor([float(lab) for lab, _ in chosen])
        weights = torch.tensor([self.weights[lab] for lab, _ in chosen])
        return flows, labels, weights


def batch_loader(caches, items, batches, weights, num_workers: int):
    """A DataLoader yielding batch i of ``batches`` (indices into ``items``) as (flows, labels, weights)."""
    return torch.utils.data.DataLoader(_Batches(caches, items, batches, weights), batch_size=None, shuffle=False,
                                       num_workers=num_workers)
