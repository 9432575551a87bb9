"""Train a MotionPrompt flow discriminator on two flow caches: real videos vs generated ones.

MotionPrompt (Nam et al., "Optical-Flow Guided Prompt Optimization for Coherent Video Generation",
CVPR 2025) guides sampling with a discriminator trained, once per backbone, to tell the optical flow
of random frame pairs of real videos from that of videos the backbone generated. The paper's recipe,
which :class:`TrainConfig` defaults to: binary cross-entropy (real = 1, generated = 0), SGD with
lr 5e-4 and momentum 0.9, batch 32, about 20 epochs, keeping the epoch with the best validation loss.

This module is generic over discriminator plugins: it needs a :class:`mpcore.interfaces.DiscriminatorSpec`
with ``build`` (a trainable model, ``logit = D(flow)``) and ``save`` (weights + config JSON that the
spec's ``load`` reads back). The flows come from :class:`mpcore.flows.cache.FlowCache` directories.

Choices made here (not in the paper):

* validation is split **by video**, per cache, so no video has pairs on both sides (pairs of one
  video are highly correlated; a pair split would leak);
* with ``balance`` the loss weights each class by ``N / (2 N_class)`` so both count equally;
* every epoch's data order comes from a generator seeded by (seed, epoch), and a checkpoint with the
  optimizer and RNG states is written after each epoch, so ``resume`` continues exactly where an
  uninterrupted run would be (bit-identical weights on the same device and thread count).

Outputs beside ``OUT.safetensors``: ``OUT.json`` (config, from ``spec.save``), ``OUT_log.json``,
``OUT_curves.png`` and ``OUT.ckpt.pt``; see :class:`Outputs`.

Several processes (``accelerate launch`` / ``torchrun``; pass ``dist``): data-parallel training with
DDP (the model wrapped by accelerate's ``prepare_model``) and the **global batch kept fixed** at
``batch_size`` (the paper's 32, whatever the number of processes): every process draws the same
epoch order, takes its contiguous share of each global batch, and scales its summed loss by
``processes / batch_size``, so DDP's gradient average is the gradient of the single-process batch
mean. The run is therefore the single-process run up to floating-point summation order (the
all-reduce and the per-process partial sums add in a different order; the model must have no
cross-sample layers such as BatchNorm, which the ViT discriminator has not); resuming with another
number of processes is allowed. A process whose share of a (last, short) batch is empty runs one
zero-weight copy of the batch's first pair, so every process takes part in every step. Validation
is split across the processes and gathered. Only the main process writes files or prints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mpcore.io.files import atomic_path
from mpcore.flows.cache import FlowCache, FlowCacheError
from mpcore.io.manifest import build_manifest, write_json_atomic

CHECKPOINT_FORMAT = "mpcore-disc-checkpoint"
CHECKPOINT_VERSION = 1
REAL, FAKE = 1, 0
CLASS_NAMES = {REAL: "real", FAKE: "fake"}
RESUMABLE_FIELDS = ("epochs", "num_workers")
"""TrainConfig fields that may differ on resume: more epochs continue the same run (epoch e's data
order depends only on (seed, e)); workers do not change what is computed."""


class DiscTrainError(ValueError):
    """A discriminator training/eval request that cannot run (the message says what to do)."""


# ---------------------------------------------------------------------------------------------------
# config


@dataclass
class TrainConfig:
    """Training hyper-parameters; defaults are MotionPrompt's recipe (Nam et al., CVPR 2025)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    """Fraction of each cache's videos held out for validation (0: no validation, keep the last epoch)."""
    seed: int = 0
    """Seeds the split, the model init and every epoch's data order."""
    balance: bool = True
    """Weight the loss so real and generated pairs count equally (N / (2 N_class) per class)."""
    num_workers: int = 0
    """DataLoader worker processes reading flows from the caches."""

    def validate(self) -> "TrainConfig":
        def fail(name: str, allowed: str) -> None:
            raise DiscTrainError(f"invalid training config: {name} = {getattr(self, name)!r}; allowed: {allowed}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def is_number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not is_int(self.epochs) or self.epochs < 1:
            fail("epochs", "an integer >= 1 (paper: about 20)")
        if not is_int(self.batch_size) or self.batch_size < 1:
            fail("batch_size", "an integer >= 1 (paper: 32)")
        if not is_number(self.lr) or self.lr <= 0:
            fail("lr", "a number > 0 (paper: 5e-4)")
        if not is_number(self.momentum) or not 0 <= self.momentum < 1:
            fail("momentum", "a number in [0, 1) (paper: 0.9)")
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            fail("weight_decay", "a number >= 0")
        if not is_number(self.val_fraction) or not 0 <= self.val_fraction < 1:
            fail("val_fraction", "a number in [0, 1) (0 = no validation)")
        if not is_int(self.seed) or self.seed < 0:
            fail("seed", "an integer >= 0")
        if not isinstance(self.balance, bool):
            fail("balance", "true or false")
        if not is_int(self.num_workers) or self.num_workers < 0:
            fail("num_workers", "an integer >= 0")
        return self


def derived_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from ``seed`` and ``parts`` (e.g. ("epoch", 3)): independent streams per use."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---------------------------------------------------------------------------------------------------
# outputs


@dataclass
class Outputs:
    """The files of one training run, all named after ``--out NAME.safetensors``."""

    weights: Path
    config: Path
    log: Path
    curves: Path
    checkpoint: Path

    @classmethod
    def for_weights(cls, out: str | os.PathLike) -> "Outputs":
        out = Path(out).expanduser()
        if out.suffix != ".safetensors":
            raise DiscTrainError(f"--out must name a .safetensors file (the config JSON goes beside it); got {out}")
        if out.is_dir():
            raise DiscTrainError(f"--out {out} is a directory; give a file path such as {out / 'disc.safetensors'}")
        return cls(
            weights=out,
            config=out.with_suffix(".json"),
            log=out.with_name(out.stem + "_log.json"),
            curves=out.with_name(out.stem + "_curves.png"),
            checkpoint=out.with_name(out.stem + ".ckpt.pt"),
        )

    def all(self) -> list[Path]:
        return [self.weights, self.config, self.log, self.curves, self.checkpoint]


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove it writable with a temporary file (before any work is done)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".mpcore-write-test-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise DiscTrainError(f"cannot write to {folder}: {error.strerror or error}") from None


# ---------------------------------------------------------------------------------------------------
# data


def index_sha256(cache: FlowCache) -> str:
    """Identity of a cache: the SHA-256 of its index.json (which lists its videos and shards)."""
    return hashlib.sha256((cache.path / "index.json").read_bytes()).hexdigest()


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


def _loader(caches, items, batches, weights, num_workers: int):
    return torch.utils.data.DataLoader(_Batches(caches, items, batches, weights), batch_size=None, shuffle=False,
                                       num_workers=num_workers)


# ---------------------------------------------------------------------------------------------------
# metrics


def roc_auc(scores, labels) -> float | None:
    """Exact ROC-AUC: the Mann-Whitney U statistic over n_pos * n_neg, i.e. the probability that a
    random positive scores above a random negative, ties counted one half.

    With average ranks r (ties share the mean of their ranks, 1-based), U = sum(r[pos]) -
    n_pos (n_pos + 1) / 2. None when one class is absent or a score is NaN.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0 or np.isnan(scores).any():
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # 1-based rank of the last member of each group of equal scores
    average_rank = last - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def logit_metrics(logits: torch.Tensor, labels: torch.Tensor, weights: dict[int, float]) -> dict[str, Any]:
    """Weighted BCE loss, accuracy (logit > 0 = real), per-class accuracy and mean logit, ROC-AUC, counts."""
    logits = logits.double().reshape(-1)
    labels = labels.double().reshape(-1)
    sample_weights = torch.where(labels > 0.5, weights[REAL], weights[FAKE]).double()
    out: dict[str, Any] = {"count": int(labels.numel())}
    if labels.numel() == 0:
        return {**out, "loss": None, "accuracy": None, "auc": None}
    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    correct = ((logits > 0).double() == labels).double()
    out["loss"] = float((losses * sample_weights).sum() / labels.numel())
    out["accuracy"] = float(correct.mean())
    for label in (REAL, FAKE):
        name = CLASS_NAMES[label]
        mask = labels == float(label)
        out[f"count_{name}"] = int(mask.sum())
        out[f"accuracy_{name}"] = float(correct[mask].mean()) if mask.any() else None
        out[f"mean_logit_{name}"] = float(logits[mask].mean()) if mask.any() else None
    out["balanced_accuracy"] = (
        (out["accuracy_real"] + out["accuracy_fake"]) / 2 if None not in (out["accuracy_real"], out["accuracy_fake"]) else None
    )
    out["auc"] = roc_auc(logits.numpy(), labels.numpy() > 0.5)
    return out


def _logits(model, flows: torch.Tensor) -> torch.Tensor:
    logits = model(flows)
    if logits.shape != (flows.shape[0],):
        logits = logits.reshape(-1)
        if logits.shape != (flows.shape[0],):
            raise DiscTrainError(f"the discriminator returned logits of shape {tuple(logits.shape)}; expected ({flows.shape[0]},)")
    return logits.float()


@torch.no_grad()
def predict(model, caches: dict[int, FlowCache], items: list[tuple[int, int]], batch_size: int,
            device: torch.device, num_workers: int = 0, progress: bool = False, desc: str = "eval"):
    """Logits and labels of ``items`` (label, pair) with the model in eval mode (restored after)."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    batches = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    logits, labels = [], []
    try:
        for flows, batch_labels, _ in tqdm(_loader(caches, items, batches, {REAL: 1.0, FAKE: 1.0}, num_workers),
                                           total=len(batches), desc=desc, disable=not progress, leave=False):
            logits.append(_logits(model, flows.to(device)).cpu())
            labels.append(batch_labels)
    finally:
        if was_training:
            model.train()
    if not logits:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(logits), torch.cat(labels)


def evaluate_caches(model, caches: dict[int, FlowCache], batch_size: int = 64, device: str | torch.device = "cpu",
                    progress: bool = False) -> dict[str, Any]:
    """``mpcore disc eval``: metrics of ``model`` on every pair of both caches (balanced loss)."""
    device = torch.device(device)
    items, logits, labels = [], [], []
    for label in (REAL, FAKE):  # one class at a time: the caches may hold flows of different sizes
        class_items = [(label, pair) for pair in range(len(caches[label]))]
        class_logits, class_labels = predict(model, caches, class_items, batch_size, device, progress=progress,
                                             desc=CLASS_NAMES[label])
        items += class_items
        logits.append(class_logits)
        labels.append(class_labels)
    metrics = logit_metrics(torch.cat(logits), torch.cat(labels), class_weights(items, True))
    for label in (REAL, FAKE):
        cache = caches[label]
        metrics[CLASS_NAMES[label] + "_cache"] = {"path": str(cache.path), "pairs": len(cache), "videos": len(cache.videos),
                                                  "index_sha256": index_sha256(cache)}
    return metrics


# ---------------------------------------------------------------------------------------------------
# checkpoint


def _config_differences(saved: dict[str, Any], current: dict[str, Any], what: str, skip=()) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{what} {key}: checkpoint {saved.get(key, '(unset)')!r}, now {current.get(key, '(unset)')!r}"
            for key in keys if key not in skip and saved.get(key, "(unset)") != current.get(key, "(unset)")]


def check_resumable(state: dict[str, Any], path: Path, disc_type: str, arch_options: dict[str, Any], pretrained: bool,
                    config: TrainConfig, caches: dict[int, FlowCache]) -> None:
    """Refuse to resume ``state`` with different caches, training config or architecture (naming each)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise DiscTrainError(f"{path} is not a discriminator training checkpoint")
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise DiscTrainError(f"{path} was written by a newer mpcore (checkpoint version {state['version']}); upgrade mpcore")
    diffs: list[str] = []
    if state["type"] != disc_type:
        diffs.append(f"discriminator type: checkpoint {state['type']!r}, now {disc_type!r}")
    if state["pretrained"] != pretrained:
        diffs.append(f"pretrained: checkpoint {state['pretrained']}, now {pretrained}")
    diffs += _config_differences(state["config"], dataclasses.asdict(config), "config", skip=RESUMABLE_FIELDS)
    diffs += _config_differences(state["arch_options"], dict(arch_options), "--arch")
    for label in (REAL, FAKE):
        name, saved = CLASS_NAMES[label], state["caches"][CLASS_NAMES[label]]
        digest = index_sha256(caches[label])
        if saved["index_sha256"] != digest:
            diffs.append(f"--{name} cache: checkpoint {saved['path']} (index sha256 {saved['index_sha256'][:12]}), "
                         f"now {caches[label].path} (index sha256 {digest[:12]})")
    if diffs:
        raise DiscTrainError(
            f"cannot resume {path}: the run differs from the checkpoint's:\n  " + "\n  ".join(diffs)
            + "\nResume with the original settings, or start over with --overwrite."
        )


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------------------------------------------
# plots


def plot_curves(history: list[dict[str, Any]], best_epoch: int | None, out: Path, title: str) -> None:
    """Loss (train, val) and accuracy (train, val) + val ROC-AUC per epoch; the best epoch marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def series(key: str) -> list[float]:
        return [math.nan if row.get(key) is None else float(row[key]) for row in history]

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, series("train_loss"), "o-", label="train")
    loss_ax.plot(epochs, series("val_loss"), "o-", label="val")
    loss_ax.set(xlabel="epoch", ylabel="BCE loss" + (" (class-balanced)" if history and history[0].get("balanced") else ""),
                title="loss")
    acc_ax.plot(epochs, series("train_accuracy"), "o-", label="train accuracy")
    acc_ax.plot(epochs, series("val_accuracy"), "o-", label="val accuracy")
    acc_ax.plot(epochs, series("val_auc"), "s--", label="val ROC-AUC")
    acc_ax.set(xlabel="epoch", ylim=(-0.02, 1.02), title="accuracy / AUC")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", linestyle=":", label=f"kept (epoch {best_epoch})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")


# ---------------------------------------------------------------------------------------------------
# training


def _quiet(message: str) -> None:
    """``echo`` of the processes other than the main one."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _format_epoch(row: dict[str, Any], epochs: int, improved: bool) -> str:
    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    return (f"epoch {row['epoch']}/{epochs}  train loss {num(row['train_loss'])} acc {num(row['train_accuracy'])}  |  "
            f"val loss {num(row['val_loss'])} acc {num(row['val_accuracy'])} auc {num(row['val_auc'])}  "
            f"({row['seconds']:.1f} s){'  * kept' if improved else ''}")


def train_epoch(model, optimizer, batches, device: torch.device) -> tuple[float, float]:
    """One pass of SGD over ``batches`` of (flows, labels, weights): BCE-with-logits, real = 1 and
    generated = 0 (MotionPrompt's discriminator objective). Returns (mean weighted loss, accuracy)."""
    model.train()
    loss_sum = correct = seen = 0.0
    for flows, labels, weights in batches:
        flows, labels, weights = flows.to(device), labels.to(device), weights.to(device)
        logits = _logits(model, flows)
        loss = F.binary_cross_entropy_with_logits(logits, labels, weight=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(labels)
        correct += float(((logits.detach() > 0).float() == labels).sum())
        seen += len(labels)
        if hasattr(batches, "set_postfix"):  # a tqdm bar
            batches.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
    if hasattr(batches, "close"):
        batches.close()
    return loss_sum / seen, correct / seen


def train_epoch_distributed(model, optimizer, batches, global_sizes: list[int], live: list[bool], device: torch.device,
                            dist) -> tuple[float, float]:
    """:func:`train_epoch` for one process of a DDP run: ``batches`` are this process's shares of the
    global batches (sizes ``global_sizes``; ``live[i]`` False for a zero-weight stand-in share). The
    loss is sum(w * BCE) * processes / global size, so DDP's gradient average equals the gradient of
    the global batch's weighted mean. Returns the global (mean weighted loss, accuracy)."""
    model.train()
    loss_sum = correct = seen = 0.0
    scale = float(dist.world_size)
    for (flows, labels, weights), size, is_live in zip(batches, global_sizes, live):
        flows, labels, weights = flows.to(device), labels.to(device), weights.to(device)
        if not is_live:
            weights = torch.zeros_like(weights)
        logits = _logits(model, flows)
        summed = F.binary_cross_entropy_with_logits(logits, labels, weight=weights, reduction="sum")
        loss = summed * (scale / size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if is_live:
            loss_sum += float(summed.detach())
            correct += float(((logits.detach() > 0).float() == labels).sum())
            seen += len(labels)
        if hasattr(batches, "set_postfix") and seen:  # a tqdm bar (the main process's own share)
            batches.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
    if hasattr(batches, "close"):
        batches.close()
    loss_sum, correct, seen = dist.all_reduce_sum([loss_sum, correct, seen])
    return loss_sum / seen, correct / seen


def _shares(batches: list[list[int]], dist) -> tuple[list[list[int]], list[int], list[bool]]:
    """This process's contiguous share of each global batch, the global sizes, and which shares
    are real (an empty share becomes the batch's first pair, used with weight 0)."""
    shares, sizes, live = [], [], []
    for batch in batches:
        share = [batch[i] for i in dist.contiguous_share(len(batch))]
        shares.append(share or batch[:1])
        sizes.append(len(batch))
        live.append(bool(share))
    return shares, sizes, live


def predict_distributed(model, caches, items, batch_size: int, device: torch.device, dist, num_workers: int = 0,
                        progress: bool = False, desc: str = "eval"):
    """:func:`predict` with ``items`` split into contiguous shares across the processes and the
    logits gathered back in order (every process gets all of them)."""
    share = [items[i] for i in dist.contiguous_share(len(items))]
    logits, labels = predict(model, caches, share, batch_size, device, num_workers, progress, desc)
    gathered = dist.all_gather((logits, labels))
    return torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered])


def train_discriminator(
    spec,
    real: str | os.PathLike,
    fake: str | os.PathLike,
    out: str | os.PathLike,
    config: TrainConfig | None = None,
    arch_options: dict[str, Any] | None = None,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    command: list[str] | None = None,
    dist: Any = None,
) -> dict[str, Any]:
    """Train ``spec``'s discriminator on the ``real`` vs ``fake`` flow caches; return the log dict.

    Cheap checks run first (config, plugin has build/save, output folder writable, existing outputs,
    caches readable, the checkpoint compatible on ``resume``) and only then is a model built.
    ``on_epoch_end(epoch, metrics)`` is called after each epoch's files are written (tests use it to
    simulate a kill). See the module docstring for the recipe and the outputs. ``dist`` (a
    :class:`mpcore.jobs.distributed.Dist` of several processes, each calling this with the same arguments
    and its own ``device``) trains with DDP: see the module docstring.
    """
    distributed = dist is not None and dist.enabled
    is_main = not distributed or dist.is_main
    if not is_main:
        echo = _quiet
        progress = False
    config = (config or TrainConfig()).validate()
    arch_options = dict(arch_options or {})
    device = torch.device(device)
    if spec.build is None or spec.save is None:
        raise DiscTrainError(f"the discriminator plugin {spec.name!r} cannot be trained here: its spec has no build/save")
    outputs = Outputs.for_weights(out)
    check_writable(outputs.weights.parent)
    if resume:
        if not outputs.checkpoint.is_file():
            raise DiscTrainError(f"--resume: no checkpoint at {outputs.checkpoint}; run without --resume to start training")
    elif not overwrite:
        existing = [p for p in (outputs.checkpoint, outputs.weights) if p.exists()]
        if existing:
            hint = "continue it with --resume, or " if outputs.checkpoint.exists() else ""
            raise DiscTrainError(f"{', '.join(map(str, existing))} already exist(s) (an earlier run): {hint}"
                                 "start over with --overwrite (which deletes the earlier outputs), or choose another --out")
    caches = open_caches(real, fake)
    training_data = trained_on(caches)  # refuses caches of different estimators or frame sizes
    cache_info = {CLASS_NAMES[label]: {"path": str(caches[label].path), "index_sha256": index_sha256(caches[label])}
                  for label in (REAL, FAKE)}
    state = None
    if resume:
        try:
            state = torch.load(outputs.checkpoint, map_location="cpu", weights_only=True)
        except Exception as error:
            raise DiscTrainError(f"could not read the checkpoint {outputs.checkpoint} ({type(error).__name__}: {error}); "
                                 "start over with --overwrite") from None
        check_resumable(state, outputs.checkpoint, spec.name, arch_options, pretrained, config, caches)
        if state["epoch"] >= config.epochs:
            echo(f"{outputs.checkpoint}: training already finished ({state['epoch']} epochs, best epoch "
                 f"{(state['best'] or {}).get('epoch')}); nothing to do. Pass a larger --epochs to train on.")
            return state["log"]

    split = split_by_video(caches, config.val_fraction, config.seed)
    for warning in split.warnings:
        echo(f"warning: {warning}")
    train_weights = class_weights(split.train, config.balance)
    val_weights = class_weights(split.val, config.balance)
    balance = {"train": balance_summary(split.train, train_weights), "val": balance_summary(split.val, val_weights)}
    for side in ("train", "val"):
        real_info, fake_info = balance[side]["real"], balance[side]["fake"]
        line = (f"{side} (split by video): real {split.summary['real'][side]['videos']} videos, {real_info['pairs']} pairs | "
                f"fake {split.summary['fake'][side]['videos']} videos, {fake_info['pairs']} pairs")
        if balance[side]["pairs"]:
            line += (f"; class balance real {real_info['fraction']:.0%} / fake {fake_info['fraction']:.0%}, "
                     f"loss weights {real_info['loss_weight']:.3f} / {fake_info['loss_weight']:.3f}")
        echo(line)

    # ---- build (the first expensive step)
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    else:
        rng_devices = []
    with torch.random.fork_rng(devices=rng_devices):  # the caller's RNG state is left as it was
        torch.manual_seed(config.seed)
        try:
            model = spec.build(arch_options, pretrained=pretrained, seed=config.seed)
        except (ValueError, RuntimeError, OSError) as error:  # plugins raise these for bad options / weights
            raise DiscTrainError(f"could not build the {spec.name!r} discriminator: {error}") from error
        model = model.to(device)
        model.train()
        model.trained_on = training_data  # spec.save writes it into the config JSON (interfaces.Discriminator)
        train_model = model
        if distributed:  # DDP through accelerate; `model` stays the plain module (saved, validated)
            from accelerate import Accelerator

            train_model = Accelerator(cpu=device.type == "cpu", mixed_precision="no").prepare_model(
                model, device_placement=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"], device)
            history, epoch_seconds, sessions = state["history"], state["epoch_seconds"], state["sessions"]
            best, start_epoch = state["best"], state["epoch"]
            echo(f"resuming {outputs.checkpoint} after epoch {start_epoch} of {config.epochs}")
        else:
            if overwrite and is_main:
                for path in outputs.all():
                    path.unlink(missing_ok=True)
            history, epoch_seconds, sessions, best, start_epoch = [], [], [], None, 0
        sessions.append({"started": _now(), "start_epoch": start_epoch, "device": str(device),
                         **({"processes": dist.world_size} if distributed else {})})
        describe = model.describe() if hasattr(model, "describe") else {}
        parameters = sum(p.numel() for p in model.parameters())

        def make_log(finished: bool) -> dict[str, Any]:
            return build_manifest(
                kind="mpcore-disc-train",
                command=command,
                discriminator={"type": spec.name, "arch_options": arch_options, "pretrained": pretrained,
                               "parameters": parameters, "describe": describe},
                config=dataclasses.asdict(config),
                data={"caches": cache_info, "flow_size": list(caches[REAL].size), "trained_on": training_data,
                      "split": split.summary,
                      "class_balance": balance},
                epochs=history,
                best=best,
                finished=finished,
                # the weights (and their config) exist only once an epoch improved on validation
                outputs={**({"weights": outputs.weights, "config": outputs.config} if best is not None else {}),
                         "log": outputs.log, "curves": outputs.curves, "checkpoint": outputs.checkpoint},
                timings={"epoch_s": epoch_seconds, "train_s": sum(epoch_seconds)},
                sessions=sessions,
                **({"distributed": {**dist.describe(), "global_batch_size": config.batch_size}} if distributed else {}),
            )

        log: dict[str, Any] = {}
        for epoch in range(start_epoch, config.epochs):
            started = time.perf_counter()
            generator = torch.Generator().manual_seed(derived_seed(config.seed, "epoch", epoch))
            order = torch.randperm(len(split.train), generator=generator).tolist()
            batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
            try:  # a damaged shard or non-finite flows (FlowCacheError) stop training, naming cache and shard
                if distributed:
                    shares, sizes, live = _shares(batches, dist)
                    bar = tqdm(_loader(caches, split.train, shares, train_weights, config.num_workers), total=len(shares),
                               desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False, unit="batch")
                    train_loss, train_accuracy = train_epoch_distributed(train_model, optimizer, bar, sizes, live, device,
                                                                         dist)
                else:
                    bar = tqdm(_loader(caches, split.train, batches, train_weights, config.num_workers), total=len(batches),
                               desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False, unit="batch")
                    train_loss, train_accuracy = train_epoch(model, optimizer, bar, device)
                if split.val and distributed:
                    logits, labels = predict_distributed(model, caches, split.val, config.batch_size, device, dist,
                                                         config.num_workers, progress,
                                                         desc=f"val {epoch + 1}/{config.epochs}")
                elif split.val:
                    logits, labels = predict(model, caches, split.val, config.batch_size, device, config.num_workers,
                                             progress, desc=f"val {epoch + 1}/{config.epochs}")
            except FlowCacheError as error:
                # a DataLoader worker's error arrives with its traceback in the message: keep the last line
                message = str(error).strip().splitlines()[-1].removeprefix("FlowCacheError: ")
                raise DiscTrainError(f"{message}. Training stopped in epoch {epoch + 1}; this epoch was not saved.") from None
            if not math.isfinite(train_loss):  # the flows are finite (checked when read): the optimization diverged
                raise DiscTrainError(
                    f"the training loss became {train_loss} in epoch {epoch + 1} although every flow of --real "
                    f"{caches[REAL].path} and --fake {caches[FAKE].path} is finite (checked when read): the training "
                    f"diverged. Lower --lr (now {config.lr}) and start over with --overwrite; this epoch was not saved."
                )
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_accuracy,
                                   "balanced": config.balance, "lr": config.lr}
            if split.val:
                metrics = logit_metrics(logits, labels, val_weights)
                row.update({"val_loss": metrics["loss"], "val_accuracy": metrics["accuracy"],
                            "val_accuracy_real": metrics["accuracy_real"], "val_accuracy_fake": metrics["accuracy_fake"],
                            "val_auc": metrics["auc"], "val_mean_logit_real": metrics["mean_logit_real"],
                            "val_mean_logit_fake": metrics["mean_logit_fake"]})
            else:  # no validation: the last epoch is kept
                row.update({"val_loss": None, "val_accuracy": None, "val_auc": None})
            val_loss = row["val_loss"]
            improved = (not split.val) or (
                val_loss is not None and math.isfinite(val_loss) and (best is None or val_loss < best["val_loss"])
            )
            if improved:
                best = {"epoch": epoch + 1, "val_loss": val_loss, "val_accuracy": row["val_accuracy"], "val_auc": row["val_auc"]}
                if is_main:
                    spec.save(model, outputs.weights)  # weights first: a checkpoint never points at stale weights
            seconds = time.perf_counter() - started
            history.append(row)
            epoch_seconds.append(seconds)
            echo(_format_epoch({**row, "seconds": seconds}, config.epochs, improved))
            log = make_log(finished=epoch + 1 == config.epochs)
            if not is_main:  # only the main process writes; the others wait for its files
                dist.barrier()
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, row)
                continue
            write_json_atomic(log, outputs.log)
            plot_curves(history, best and best["epoch"], outputs.curves, f"discriminator {spec.name}: {outputs.weights.name}")
            checkpoint = {
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "type": spec.name, "arch_options": arch_options, "pretrained": pretrained,
                "config": dataclasses.asdict(config), "caches": cache_info,
                "epoch": epoch + 1, "best": best, "history": history, "epoch_seconds": epoch_seconds,
                "sessions": sessions,
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(device),
                "log": json.loads(json.dumps(log)),  # plain JSON types only (a weights_only load reads them)
            }
            with atomic_path(outputs.checkpoint) as tmp:
                torch.save(checkpoint, tmp)
            if distributed:
                dist.barrier()  # the epoch's files are written before any process goes on
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)
    return log
