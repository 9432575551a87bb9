"""How well a discriminator tells real from generated flows: logits over cache pairs and their metrics.

:func:`predict` runs the model (eval mode) over (label, pair) items of two flow caches,
:func:`logit_metrics` turns logits into the class-weighted BCE loss, accuracy (logit > 0 = real),
per-class accuracy and mean logit and the exact ROC-AUC (:func:`roc_auc`). Training validates with
them each epoch; ``mpcore disc eval`` runs :func:`evaluate_caches` on held-out caches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mpcore.disc.data import CLASS_NAMES, FAKE, REAL, DiscTrainError, batch_loader, class_weights, index_sha256
from mpcore.flows.cache import FlowCache




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


def model_logits(model, flows: torch.Tensor) -> torch.Tensor:
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
        for flows, batch_labels, _ in tqdm(batch_loader(caches, items, batches, {REAL: 1.0, FAKE: 1.0}, num_workers),
                                           total=len(batches), desc=desc, disable=not progress, leave=False):
            logits.append(model_logits(model, flows.to(device)).cpu())
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


def predict_distributed(model, caches, items, batch_size: int, device: torch.device, dist, num_workers: int = 0,
                        progress: bool = False, desc: str = "eval"):
    """:func:`predict` with ``items`` split into contiguous shares across the processes and the
    logits gathered back in order (every process gets all of them)."""
    share = [items[i] for i in dist.contiguous_share(len(items))]
    logits, labels = predict(model, caches, share, batch_size, device, num_workers, progress, desc)
    gathered = dist.all_gather((logits, labels))
    return torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered])
