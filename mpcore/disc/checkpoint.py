"""The files of one training run and resuming it.

:class:`Outputs` names them after ``--out NAME.safetensors``. After each epoch the main process
writes ``NAME.ckpt.pt`` (:func:`write_checkpoint`: model, optimizer and RNG states, the per-epoch
history, the kept epoch, the log), so ``--resume`` continues exactly where an uninterrupted run would
be (:func:`read_checkpoint`, :func:`check_resumable`, :func:`restore`). The epoch with the best
validation loss so far is kept (:func:`keep_if_best`): its weights and config JSON are written by
the discriminator plugin's ``save`` before the checkpoint, so a checkpoint never points at stale
weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mpcore.disc.data import CLASS_NAMES, FAKE, REAL, DiscTrainError, index_sha256
from mpcore.flows.cache import FlowCache
from mpcore.io.files import atomic_path

CHECKPOINT_FORMAT = "mpcore-disc-checkpoint"
CHECKPOINT_VERSION = 1
RESUMABLE_FIELDS = ("epochs", "num_workers")
"""TrainConfig fields that may differ on resume: more epochs continue the same run (epoch e's data
order depends only on (seed, e)); workers do not change what is computed."""


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


def check_existing(outputs: Outputs, resume: bool, overwrite: bool) -> None:
    """Refuse to start over an earlier run's outputs (unless ``overwrite``) or to resume without a checkpoint."""
    if resume:
        if not outputs.checkpoint.is_file():
            raise DiscTrainError(f"--resume: no checkpoint at {outputs.checkpoint}; run without --resume to start training")
    elif not overwrite:
        existing = [p for p in (outputs.checkpoint, outputs.weights) if p.exists()]
        if existing:
            hint = "continue it with --resume, or " if outputs.checkpoint.exists() else ""
            raise DiscTrainError(f"{', '.join(map(str, existing))} already exist(s) (an earlier run): {hint}"
                                 "start over with --overwrite (which deletes the earlier outputs), or choose another --out")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (plain tensors and JSON types: a ``weights_only`` load)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DiscTrainError(f"could not read the checkpoint {path} ({type(error).__name__}: {error}); "
                             "start over with --overwrite") from None



def _config_differences(saved: dict[str, Any], current: dict[str, Any], what: str, skip=()) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{what} {key}: checkpoint {saved.get(key, '(unset)')!r}, now {current.get(key, '(unset)')!r}"
            for key in keys if key not in skip and saved.get(key, "(unset)") != current.get(key, "(unset)")]


def check_resumable(state: dict[str, Any], path: Path, disc_type: str, arch_options: dict[str, Any], pretrained: bool,
                    config: Any, caches: dict[int, FlowCache]) -> None:
    """Refuse to resume ``state`` with different caches, training config or architecture (naming each).
    ``config`` is the run's :class:`mpcore.disc.train.TrainConfig` (any dataclass: it is compared field by field)."""
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


@dataclass
class RunState:
    """What a run has done so far: epochs finished, the kept epoch, per-epoch rows and seconds, sessions."""

    epoch: int = 0
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)


def restore(state: dict[str, Any], model, optimizer, device: torch.device) -> RunState:
    """Load a checkpoint's model, optimizer and RNG states; return what its run had done."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"], device)
    return RunState(epoch=state["epoch"], best=state["best"], history=state["history"],
                    epoch_seconds=state["epoch_seconds"], sessions=state["sessions"])


def keep_if_best(record: RunState, row: dict[str, Any], validated: bool, spec, model, weights: Path | None) -> bool:
    """Whether the epoch of ``row`` is kept: the lowest finite validation loss so far (without
    validation: every epoch, so the last is kept). A kept epoch becomes ``record.best`` and, when
    ``weights`` is given (the main process), the plugin's ``save`` writes its weights and config JSON."""
    val_loss = row["val_loss"]
    improved = (not validated) or (
        val_loss is not None and math.isfinite(val_loss) and (record.best is None or val_loss < record.best["val_loss"])
    )
    if improved:
        record.best = {"epoch": row["epoch"], "val_loss": val_loss, "val_accuracy": row["val_accuracy"],
                       "val_auc": row["val_auc"]}
        if weights is not None:
            spec.save(model, weights)  # weights first: a checkpoint never points at stale weights
    return improved


def write_checkpoint(path: Path, record: RunState, model, optimizer, device: torch.device, log: dict[str, Any], *,
                     disc_type: str, arch_options: dict[str, Any], pretrained: bool, config: Any,
                     cache_info: dict[str, Any]) -> None:
    """Write the checkpoint after epoch ``record.epoch`` atomically (a kill leaves the previous one).
    ``config`` is the run's :class:`mpcore.disc.train.TrainConfig`, stored as a dict."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "type": disc_type, "arch_options": arch_options, "pretrained": pretrained,
        "config": dataclasses.asdict(config), "caches": cache_info,
        "epoch": record.epoch, "best": record.best, "history": record.history, "epoch_seconds": record.epoch_seconds,
        "sessions": record.sessions,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(device),
        "log": json.loads(json.dumps(log)),  # plain JSON types only (a weights_only load reads them)
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global torch RNG state (and the CUDA one on a CUDA device), for the checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore the RNG states that :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
