"""Multi-process runs (``accelerate launch`` / ``torchrun``): who am I, wait for the others, share.

``mpcore generate``, ``mpcore flows extract`` and ``mpcore disc train`` scale out across processes
(one per GPU, on one or more nodes) when started by a launcher that sets ``WORLD_SIZE`` > 1::

    accelerate launch --num_processes 4 -m mpcore generate ...
    torchrun --nproc-per-node 4 -m mpcore generate ...

The process group is set up by accelerate's :class:`~accelerate.PartialState` (NCCL on GPUs, gloo
on CPU); mpcore writes no scheduler of its own. Started any other way (``mpcore ...``,
``python -m mpcore ...``) :func:`init` returns a single-process :class:`Dist` that touches nothing
distributed, so a single-process run does exactly what it did before.

The output folder must be visible to every process (one machine, or a shared filesystem across
nodes): the processes coordinate through the files they write there plus a few barriers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

TIMEOUT_ENV = "MPCORE_DIST_TIMEOUT_S"
"""Seconds a process waits at a barrier for the others (default 24 h: a rank may still be
generating its last video while the others wait; a dead rank is reaped by the launcher anyway)."""
DEFAULT_TIMEOUT_S = 24 * 3600


def launched() -> bool:
    """True when started by a multi-process launcher (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@dataclass
class Dist:
    """This process's place in the run. The default is the single-process run: rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    state: Any = None  # accelerate.PartialState when distributed

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process got here (a no-op in a single process)."""
        if self.enabled:
            self.state.wait_for_everyone()

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process (a picklable object)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the processes (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        device = self.state.device if self.backend == "nccl" else "cpu"
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def contiguous_share(self, count: int) -> range:
        """This process's block of ``range(count)``: contiguous, in rank order, sizes differing by at most
        one (the split of accelerate's ``split_between_processes``), so concatenating the blocks of
        ranks 0..N-1 gives ``range(count)`` back."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))

    def device(self, requested: str | None) -> str | None:
        """The torch device of this process for a ``--device`` value: with several processes a CUDA
        device without an index (``cuda``, or the default on a CUDA machine) becomes this process's
        ``cuda:LOCAL_RANK``; anything else is kept as given."""
        if not self.enabled:
            return requested
        import torch

        if requested is None and torch.cuda.is_available():
            requested = "cuda"
        if requested is not None and requested.strip() == "cuda":
            return f"cuda:{self.local_rank}"
        return requested

    def describe(self) -> dict[str, Any]:
        return {"processes": self.world_size, "backend": self.backend}


_DIST: Dist | None = None


def init(device: str | None = None) -> Dist:
    """This process's :class:`Dist`; the first call under a launcher sets up the process group.

    ``device`` (a ``--device`` value) picks the backend: gloo when the run is on the CPU (asked for,
    or no CUDA), else accelerate's choice (NCCL)."""
    global _DIST
    if _DIST is not None:
        return _DIST
    if not launched():
        _DIST = Dist()
        return _DIST
    import torch
    from accelerate import PartialState

    cpu = (device is not None and device.strip().startswith("cpu")) or not torch.cuda.is_available()
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    state = PartialState(cpu=cpu, timeout=timeout)
    _DIST = Dist(rank=state.process_index, world_size=state.num_processes, local_rank=state.local_process_index,
                 backend=state.backend, state=state)
    return _DIST


def reset() -> None:
    """Forget the cached :class:`Dist` (tests); does not tear down a process group."""
    global _DIST
    _DIST = None
