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
``OUT_curves.png`` and ``OUT.ckpt.pt``; see :class:`mpcore.disc.checkpoint.Outputs`.

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

The rooms: :mod:`mpcore.disc.data` (the caches, the split by video, class weights, batches),
:mod:`mpcore.disc.checkpoint` (the run's files, the kept epoch, resuming), :mod:`mpcore.disc.evaluate`
(logits and metrics), and here the training config, the epoch loop and :func:`train_discriminator`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mpcore.disc.checkpoint import (
    Outputs,
    RunState,
    check_existing,
    check_resumable,
    check_writable,
    keep_if_best,
    read_checkpoint,
    restore,
    write_checkpoint,
)
from mpcore.disc.data import (
    FAKE,
    REAL,
    DiscOptionError,
    DiscTrainError,
    Split,
    balance_summary,
    batch_loader,
    cache_identities,
    class_weights,
    derived_seed,
    open_caches,
    split_by_video,
    trained_on,
)
from mpcore.disc.evaluate import logit_metrics, model_logits, predict, predict_distributed
from mpcore.flows.cache import FlowCache, FlowCacheError
from mpcore.io.files import atomic_path
from mpcore.io.manifest import build_manifest, write_json_atomic


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
        def fail(name: str, allowed: str) -> None:  # each field is the flag of its name (lr: --lr)
            raise DiscOptionError(f"invalid training config: {name} = {getattr(self, name)!r}; allowed: {allowed}",
                                  "--" + name.replace("_", "-"))

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
    """The current UTC time, to the second (a session's start)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _format_epoch(row: dict[str, Any], epochs: int, improved: bool) -> str:
    """The line printed after an epoch."""
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
        logits = model_logits(model, flows)
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
        logits = model_logits(model, flows)
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



# ---------------------------------------------------------------------------------------------------
# the run, step by step


@dataclass
class _Run:
    """The fixed parts of one training run, which its steps share."""

    spec: Any
    config: TrainConfig
    arch_options: dict[str, Any]
    pretrained: bool
    device: torch.device
    dist: Any
    outputs: Outputs
    caches: dict[int, FlowCache]
    training_data: dict[str, Any]
    cache_info: dict[str, Any]
    split: Split
    train_weights: dict[int, float]
    val_weights: dict[int, float]
    balance: dict[str, Any]
    command: list[str] | None
    echo: Callable[[str], None]
    progress: bool

    @property
    def distributed(self) -> bool:
        return self.dist is not None and self.dist.enabled

    @property
    def is_main(self) -> bool:
        return not self.distributed or self.dist.is_main


def _check_request(spec, out: str | os.PathLike, resume: bool, overwrite: bool) -> Outputs:
    """The cheap checks on the outputs: the plugin can train, the folder is writable, an earlier
    run's files are neither overwritten by accident nor missing on ``resume``."""
    if spec.build is None or spec.save is None:
        raise DiscOptionError(f"the discriminator plugin {spec.name!r} cannot be trained here: its spec has no "
                              "build/save", "--type")
    outputs = Outputs.for_weights(out)
    check_writable(outputs.weights.parent)
    check_existing(outputs, resume, overwrite)
    return outputs


def _split_and_weigh(caches: dict[int, FlowCache], config: TrainConfig, echo: Callable[[str], None]):
    """Split the pairs by video, weigh the classes, and say so (warnings, one line per side).
    Returns (split, train class weights, val class weights, balance summary)."""
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
    return split, train_weights, val_weights, balance


def _rng_devices(device: torch.device) -> list[int]:
    """The CUDA device whose RNG :func:`torch.random.fork_rng` saves and restores (none on CPU)."""
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


def build_model(spec, arch_options: dict[str, Any], pretrained: bool, seed: int):
    """``spec.build``: the plugin's trainable model. Options it refuses (its ``ValueError``, as the
    :class:`mpcore.interfaces.DiscriminatorSpec` contract says) are a :class:`DiscOptionError` naming
    ``--arch``; pretrained weights it cannot get or load (``RuntimeError``, ``OSError``) a :class:`DiscTrainError`."""
    try:
        return spec.build(dict(arch_options), pretrained=pretrained, seed=seed)
    except ValueError as error:
        raise DiscOptionError(f"could not build the {spec.name!r} discriminator: {error}", "--arch") from error
    except (RuntimeError, OSError) as error:
        raise DiscTrainError(f"could not build the {spec.name!r} discriminator: {error}") from error


def _build(run: _Run):
    """The first expensive step: the plugin's trainable model (seeded), on the device, its DDP
    wrapper when distributed, and the SGD optimizer. Returns (model, model to train, optimizer)."""
    model = build_model(run.spec, run.arch_options, run.pretrained, run.config.seed)
    model = model.to(run.device)
    model.train()
    model.trained_on = run.training_data  # spec.save writes it into the config JSON (interfaces.Discriminator)
    train_model = model
    if run.distributed:  # DDP through accelerate; `model` stays the plain module (saved, validated)
        from accelerate import Accelerator

        train_model = Accelerator(cpu=run.device.type == "cpu", mixed_precision="no").prepare_model(
            model, device_placement=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=run.config.lr, momentum=run.config.momentum,
                                weight_decay=run.config.weight_decay)
    return model, train_model, optimizer


def _start(run: _Run, model, optimizer, state: dict[str, Any] | None, overwrite: bool) -> RunState:
    """Continue the checkpoint's run (``state``) or start a new one (deleting an earlier run's
    outputs on ``overwrite``); either way record this session."""
    if state is not None:
        record = restore(state, model, optimizer, run.device)
        run.echo(f"resuming {run.outputs.checkpoint} after epoch {record.epoch} of {run.config.epochs}")
    else:
        if overwrite and run.is_main:
            for path in run.outputs.all():
                path.unlink(missing_ok=True)
        record = RunState()
    record.sessions.append({"started": _now(), "start_epoch": record.epoch, "device": str(run.device),
                            **({"processes": run.dist.world_size} if run.distributed else {})})
    return record


def _fit(run: _Run, model, train_model, optimizer, epoch: int) -> tuple[float, float]:
    """SGD over the training pairs in epoch ``epoch``'s order (drawn from a generator seeded by
    (seed, epoch)), in global batches of ``batch_size``; when distributed, this process's shares."""
    config = run.config
    generator = torch.Generator().manual_seed(derived_seed(config.seed, "epoch", epoch))
    order = torch.randperm(len(run.split.train), generator=generator).tolist()
    batches = [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    if run.distributed:
        shares, sizes, live = _shares(batches, run.dist)
        bar = tqdm(batch_loader(run.caches, run.split.train, shares, run.train_weights, config.num_workers),
                   total=len(shares), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not run.progress, leave=False,
                   unit="batch")
        return train_epoch_distributed(train_model, optimizer, bar, sizes, live, run.device, run.dist)
    bar = tqdm(batch_loader(run.caches, run.split.train, batches, run.train_weights, config.num_workers),
               total=len(batches), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not run.progress, leave=False,
               unit="batch")
    return train_epoch(model, optimizer, bar, run.device)


def _validate(run: _Run, model, epoch: int):
    """Logits and labels of the validation pairs (split across the processes and gathered when distributed)."""
    config, desc = run.config, f"val {epoch + 1}/{run.config.epochs}"
    if run.distributed:
        return predict_distributed(model, run.caches, run.split.val, config.batch_size, run.device, run.dist,
                                   config.num_workers, run.progress, desc=desc)
    return predict(model, run.caches, run.split.val, config.batch_size, run.device, config.num_workers, run.progress,
                   desc=desc)


def _fit_and_validate(run: _Run, model, train_model, optimizer, epoch: int):
    """One epoch's computation: :func:`_fit`, then :func:`_validate` (logits None without validation).
    A damaged shard, non-finite flows or a diverged loss stop training with what to do.
    Returns (train loss, train accuracy, val logits, val labels)."""
    logits = labels = None
    try:  # a damaged shard or non-finite flows (FlowCacheError) stop training, naming cache and shard
        train_loss, train_accuracy = _fit(run, model, train_model, optimizer, epoch)
        if run.split.val:
            logits, labels = _validate(run, model, epoch)
    except FlowCacheError as error:
        # a DataLoader worker's error arrives with its traceback in the message: keep the last line
        message = str(error).strip().splitlines()[-1].removeprefix("FlowCacheError: ")
        raise DiscTrainError(f"{message}. Training stopped in epoch {epoch + 1}; this epoch was not saved.") from None
    if not math.isfinite(train_loss):  # the flows are finite (checked when read): the optimization diverged
        raise DiscTrainError(
            f"the training loss became {train_loss} in epoch {epoch + 1} although every flow of --real "
            f"{run.caches[REAL].path} and --fake {run.caches[FAKE].path} is finite (checked when read): the training "
            f"diverged. Lower --lr (now {run.config.lr}) and start over with --overwrite; this epoch was not saved."
        )
    return train_loss, train_accuracy, logits, labels


def _epoch_row(run: _Run, epoch: int, train_loss: float, train_accuracy: float, logits, labels) -> dict[str, Any]:
    """The epoch's row of the history: train loss/accuracy and the validation metrics (None without validation)."""
    row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_accuracy,
                           "balanced": run.config.balance, "lr": run.config.lr}
    if run.split.val:
        metrics = logit_metrics(logits, labels, run.val_weights)
        row.update({"val_loss": metrics["loss"], "val_accuracy": metrics["accuracy"],
                    "val_accuracy_real": metrics["accuracy_real"], "val_accuracy_fake": metrics["accuracy_fake"],
                    "val_auc": metrics["auc"], "val_mean_logit_real": metrics["mean_logit_real"],
                    "val_mean_logit_fake": metrics["mean_logit_fake"]})
    else:  # no validation: the last epoch is kept
        row.update({"val_loss": None, "val_accuracy": None, "val_auc": None})
    return row


def _describe_model(run: _Run, model) -> dict[str, Any]:
    """The log's ``discriminator`` section: plugin, options, parameter count, the model's own description."""
    describe = model.describe() if hasattr(model, "describe") else {}
    parameters = sum(p.numel() for p in model.parameters())
    return {"type": run.spec.name, "arch_options": run.arch_options, "pretrained": run.pretrained,
            "parameters": parameters, "describe": describe}


def _log(run: _Run, record: RunState, discriminator: dict[str, Any], finished: bool) -> dict[str, Any]:
    """The run's log (``OUT_log.json``) after the epochs in ``record``."""
    distributed = run.distributed
    return build_manifest(
        kind="mpcore-disc-train",
        command=run.command,
        discriminator=discriminator,
        config=dataclasses.asdict(run.config),
        data={"caches": run.cache_info, "flow_size": list(run.caches[REAL].size), "trained_on": run.training_data,
              "split": run.split.summary,
              "class_balance": run.balance},
        epochs=record.history,
        best=record.best,
        finished=finished,
        # the weights (and their config) exist only once an epoch improved on validation
        outputs={**({"weights": run.outputs.weights, "config": run.outputs.config} if record.best is not None else {}),
                 "log": run.outputs.log, "curves": run.outputs.curves, "checkpoint": run.outputs.checkpoint},
        timings={"epoch_s": record.epoch_seconds, "train_s": sum(record.epoch_seconds)},
        sessions=record.sessions,
        **({"distributed": {**run.dist.describe(), "global_batch_size": run.config.batch_size}} if distributed else {}),
    )


def _write_epoch_files(run: _Run, model, optimizer, record: RunState, log: dict[str, Any]) -> None:
    """The main process's files after an epoch: the log, the curves, then the checkpoint."""
    write_json_atomic(log, run.outputs.log)
    plot_curves(record.history, record.best and record.best["epoch"], run.outputs.curves,
                f"discriminator {run.spec.name}: {run.outputs.weights.name}")
    write_checkpoint(run.outputs.checkpoint, record, model, optimizer, run.device, log, disc_type=run.spec.name,
                     arch_options=run.arch_options, pretrained=run.pretrained, config=run.config,
                     cache_info=run.cache_info)


def _train_epochs(run: _Run, model, train_model, optimizer, record: RunState,
                  on_epoch_end: Callable[[int, dict[str, Any]], None] | None) -> dict[str, Any]:
    """The epochs after ``record.epoch`` up to ``config.epochs``: fit, validate, keep the best, write
    the files (main process; the others wait for them). Returns the last log."""
    discriminator = _describe_model(run, model)
    log: dict[str, Any] = {}
    for epoch in range(record.epoch, run.config.epochs):
        started = time.perf_counter()
        train_loss, train_accuracy, logits, labels = _fit_and_validate(run, model, train_model, optimizer, epoch)
        row = _epoch_row(run, epoch, train_loss, train_accuracy, logits, labels)
        improved = keep_if_best(record, row, bool(run.split.val), run.spec, model,
                                run.outputs.weights if run.is_main else None)
        seconds = time.perf_counter() - started
        record.history.append(row)
        record.epoch_seconds.append(seconds)
        record.epoch = epoch + 1
        run.echo(_format_epoch({**row, "seconds": seconds}, run.config.epochs, improved))
        log = _log(run, record, discriminator, finished=epoch + 1 == run.config.epochs)
        if run.is_main:  # only the main process writes; the others wait for its files
            _write_epoch_files(run, model, optimizer, record, log)
        if run.distributed:
            run.dist.barrier()  # the epoch's files are written before any process goes on
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    return log


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
    if distributed and not dist.is_main:
        echo = _quiet
        progress = False
    config = (config or TrainConfig()).validate()
    arch_options = dict(arch_options or {})
    device = torch.device(device)
    outputs = _check_request(spec, out, resume, overwrite)
    caches = open_caches(real, fake)
    training_data = trained_on(caches)  # refuses caches of different estimators or frame sizes
    cache_info = cache_identities(caches)
    state = None
    if resume:
        state = read_checkpoint(outputs.checkpoint)
        check_resumable(state, outputs.checkpoint, spec.name, arch_options, pretrained, config, caches)
        if state["epoch"] >= config.epochs:
            echo(f"{outputs.checkpoint}: training already finished ({state['epoch']} epochs, best epoch "
                 f"{(state['best'] or {}).get('epoch')}); nothing to do. Pass a larger --epochs to train on.")
            return state["log"]
    split, train_weights, val_weights, balance = _split_and_weigh(caches, config, echo)
    run = _Run(spec=spec, config=config, arch_options=arch_options, pretrained=pretrained, device=device, dist=dist,
               outputs=outputs, caches=caches, training_data=training_data, cache_info=cache_info, split=split,
               train_weights=train_weights, val_weights=val_weights, balance=balance, command=command, echo=echo,
               progress=progress)
    # ---- build (the first expensive step), then the epochs
    with torch.random.fork_rng(devices=_rng_devices(device)):  # the caller's RNG state is left as it was
        torch.manual_seed(config.seed)
        model, train_model, optimizer = _build(run)
        record = _start(run, model, optimizer, state, overwrite)
        return _train_epochs(run, model, train_model, optimizer, record, on_epoch_end)
