"""``mpcore generate``: one video per (prompt, seed) of a prompt list, resumable.

The items are :func:`generation_items` (prompt-major, then seed), each named from the prompt's
index and the seed (``p0003_s0001``): its video ``p0003_s0001.mp4`` and its manifest
``p0003_s0001.json`` (written last, so it marks the item complete; plus ``_compare`` and ``_trace``
files as in ``mpcore run``). An item whose video and manifest both exist is skipped, so a killed
run is resumed by running the same command again; every file is written atomically, so a kill
leaves no half-written file under a final name. ``generate.json`` in the output folder holds the
settings and the item list with each item's status, written at the start and again at the end.

Under a multi-process launcher (``accelerate launch -m mpcore generate ...``, ``torchrun -m mpcore
generate ...``; :mod:`mpcore.jobs.distributed`) every process scans the folder, then the items still to
do are dealt round-robin (item k of that list to rank k mod N), so each is generated exactly once
and, as every item is seeded by its own seed, exactly as a single process would generate it. Each
process writes its part of the summary (``.generate.part-RANK.json``, atomically); after a barrier
the main process merges the parts into ``generate.json`` (with per-process throughput) and removes
them. Only the main process shows a progress bar (of all processes' items, counted from the
manifests in the folder).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpcore.io.console import echo
from mpcore.io.files import remove_stale_temporaries
from mpcore.io.prompts import Prompt
from mpcore.jobs.execute import GuidanceSkippedError
from mpcore.jobs.items import (FORMATS, GenerateError, Item, check_out_dir, check_same_settings, generation_items,
                               is_complete, item_video_path, parse_seeds)
from mpcore.jobs.options import RunOptions, resolve_device
from mpcore.jobs.run import run_one
from mpcore.jobs import setup as run_setup

SUMMARY_FILE = "generate.json"
PART_GLOB = ".generate.part-*.json"
"""Per-process parts of the summary of a multi-process run (merged into generate.json, then removed)."""
EXIT_AFTER_ENV = "MPCORE_TEST_EXIT_AFTER_ITEMS"
"""Testing only: ``RANK:N`` makes process RANK exit abruptly (exit code 3, nothing cleaned up) after
generating N items, to simulate a crash of one process of a multi-process run."""
@dataclass
class GenerateJob:
    """What ``generate`` decided before loading anything: the run's setup, the items and which of them are
    this process's to do, the output folder and the summary's settings."""

    setup: Any  # mpcore.jobs.setup.RunSetup
    dist: Any  # mpcore.jobs.distributed.Distributed
    prompts_path: Path
    prompts: list[Prompt]
    seeds: list[int]
    out_dir: Path
    fmt: str
    fail_fast: bool
    items: list[Item]
    settings: dict[str, Any]
    status: dict[str, dict[str, Any]]  # item name -> {"status": "skipped"|"pending"|"generated"|"failed", ...}
    todo: list[Item]  # every process's items still to generate
    mine: list[Item]  # this process's share of todo

    @property
    def summary_path(self) -> Path:
        return self.out_dir / SUMMARY_FILE

    def write_summary(self, seconds: float, ranks: list[dict[str, Any]] | None = None) -> None:
        from mpcore.io.manifest import build_manifest, write_json_atomic

        extra = {"distributed": {**self.dist.describe(), "ranks": ranks}} if self.dist.enabled else {}
        status = self.status
        write_json_atomic(build_manifest(
            command=["mpcore", *sys.argv[1:]],
            prompts={"file": str(self.prompts_path), "count": len(self.prompts)},
            seeds=self.seeds,
            settings=self.settings,
            summary={**_counts(status), "seconds": seconds, "seconds_per_video": _seconds_per_video(status)},
            items=[{"name": item.name, "prompt_index": item.prompt.index, "prompt": item.prompt.text,
                    "category": item.prompt.category, "seed": item.seed, **status[item.name]} for item in self.items],
            **extra,
        ), self.summary_path)


def generate(options: RunOptions, prompts: str | Path, out: str | Path, seeds: str | None = None, fmt: str = "mp4",
             fail_fast: bool = False) -> None:
    """``mpcore generate``: one video per (prompt, seed) of the prompt file ``prompts`` into the folder ``out``,
    with ``options`` (``run``'s; the seed comes from ``seeds``, '0,1' or '0-3'; default the backbone's). Raises
    :class:`GenerateError` if items failed or every guided video equals its baseline, after everything else
    is written."""
    from mpcore.jobs import distributed

    dist = distributed.init(options.device)
    job = plan(options, prompts, out, seeds, fmt, fail_fast, dist)
    if dist.is_main:
        _start_summary(job)
    dist.barrier()  # every process has scanned the folder before any writes to it: all share one `todo`
    start = time.perf_counter()
    _generate_items(job, start)
    ranks = None
    if dist.enabled:
        dist.barrier()  # every process has written its part
        if not dist.is_main:
            return
        ranks = _merge_parts(job.out_dir, dist, job.status)
        job.write_summary(time.perf_counter() - start, ranks)
    _finish(job, time.perf_counter() - start, ranks)


def plan(options: RunOptions, prompts_file: str | Path, out: str | Path, seeds_text: str | None, fmt: str,
         fail_fast: bool, dist) -> GenerateJob:
    """The cheap checks first (prompts, settings, seeds, output folder), then what is already done and which
    items are this process's (round-robin over the items still to do)."""
    from mpcore.io.manifest import json_safe
    from mpcore.io.prompts import read_prompts, resolve_prompts_path

    if fmt not in FORMATS:
        raise GenerateError(f"format {fmt!r}; allowed: {', '.join(FORMATS)}")
    # ---- several processes (accelerate launch / torchrun): one device per process, one progress bar
    requested_device = options.device
    if dist.enabled:
        options = dataclasses.replace(options, device=dist.device(requested_device),
                                      progress=options.progress and dist.is_main)
    prompts_path = resolve_prompts_path(prompts_file)
    prompts = read_prompts(prompts_path)
    setup = run_setup.prepare(options)
    seeds = parse_seeds(seeds_text) if seeds_text is not None else [setup.sampler.seed]
    out_dir = check_out_dir(Path(out))
    items = generation_items(prompts, seeds)
    settings = {**setup.settings(), "format": fmt}
    if dist.enabled:  # the device as one process records it (cuda, not cuda:3): a folder resumes with any process count
        settings["device"] = str(resolve_device(requested_device))
    check_same_settings(out_dir / SUMMARY_FILE, json_safe(settings))
    status: dict[str, dict[str, Any]] = {}
    for item in items:
        status[item.name] = {"status": "skipped" if is_complete(item, item_video_path(out_dir, item, fmt)) else "pending"}
    todo = [item for item in items if status[item.name]["status"] == "pending"]
    mine = todo[dist.rank::dist.world_size]  # all of them in a single process
    return GenerateJob(setup, dist, prompts_path, prompts, seeds, out_dir, fmt, fail_fast, items, settings, status,
                       todo, mine)


def _start_summary(job: GenerateJob) -> None:
    """Main process, before any item: clear what a killed run left, write the summary, say what is to do."""
    # a killed run's half-written files (its writers are gone: nobody writes before the barrier)
    remove_stale_temporaries(job.out_dir, [item_video_path(job.out_dir, item, job.fmt).stem for item in job.todo])
    job.write_summary(0.0)
    processes = f" on {job.dist.world_size} processes" if job.dist.enabled else ""
    echo(f"{len(job.items)} items ({len(job.prompts)} prompts x {len(job.seeds)} seeds) in {job.out_dir}: "
         f"{len(job.items) - len(job.todo)} already complete, {len(job.todo)} to generate{processes}")


def _generate_items(job: GenerateJob, start: float) -> None:
    """Load once (unless all is done), then one video per item of this process; the summary (or this
    process's part of it) is written at the end, also when an item raises (``--fail-fast``) or on a kill."""
    from tqdm.auto import tqdm

    setup, dist, status = job.setup, job.dist, job.status
    exit_after = _exit_after(dist.rank)
    bar = None
    try:
        models = run_setup.load(setup) if job.mine else None
        bar = tqdm(total=len(job.todo), desc="generate", unit="video", disable=not setup.progress, dynamic_ncols=True)
        for item in job.mine:
            status[item.name] = _generate_item(job, models, item)
            if dist.enabled:
                status[item.name]["rank"] = dist.rank
                bar.n = sum(_manifest_path(job.out_dir, other, job.fmt).is_file() for other in job.todo)  # every process's items
                bar.refresh()
            else:
                bar.update(1)
            if exit_after is not None and _counts(status)["generated"] >= exit_after:
                os._exit(3)  # testing only (EXIT_AFTER_ENV): a crash, nothing cleaned up
    finally:
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        if dist.enabled:
            _write_part(job.out_dir, dist.rank, str(setup.device), job.mine, status, seconds)
            # no barrier when failing: the others would wait for this process; the launcher ends them
        else:
            job.write_summary(seconds)


def _generate_item(job: GenerateJob, models, item: Item) -> dict[str, Any]:
    """One item's video and companions (:func:`mpcore.jobs.run.run_one`); its status entry. A failure is
    recorded and reported (raised with ``--fail-fast``)."""
    from tqdm.auto import tqdm

    item_start = time.perf_counter()

    def report_skips(line: str) -> None:  # only items with skipped updates: no noise
        if not line.endswith(" 0 skipped"):
            tqdm.write(f"{item.name}: {line}", file=sys.stderr)

    try:
        run_one(job.setup, models, item.prompt.text, item.seed, item_video_path(job.out_dir, item, job.fmt),
                            manifest_extra={"item": {"name": item.name, "prompt_index": item.prompt.index,
                                                     "category": item.prompt.category,
                                                     "prompts_file": str(job.prompts_path)}},
                            report=report_skips)
    except GuidanceSkippedError:  # written and complete, but it equals its baseline
        return {"status": "generated", "seconds": time.perf_counter() - item_start, "all_updates_skipped": True}
    except Exception as error:
        job.status[item.name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        tqdm.write(f"failed {item.name} (prompt {item.prompt.text!r}, seed {item.seed}): "
                   f"{type(error).__name__}: {error}", file=sys.stderr)
        if job.fail_fast:
            raise
        return job.status[item.name]
    return {"status": "generated", "seconds": time.perf_counter() - item_start}


def _finish(job: GenerateJob, seconds: float, ranks: list[dict[str, Any]] | None) -> None:
    """The closing lines (counts, per-process throughput); :class:`GenerateError` if items failed or every
    guided video equals its baseline."""
    items, status = job.items, job.status
    counts, per_video = _counts(status), _seconds_per_video(status)
    per_video = f", {per_video:.2f} s/video" if per_video is not None else ""
    echo(f"generated {counts['generated']}, skipped {counts['skipped']}, failed {counts['failed']} "
         f"in {seconds:.1f} s{per_video}; {job.summary_path}")
    for row in ranks or []:
        rate = f"{row['items_per_s']:.3f} items/s" if row["items_per_s"] is not None else "-"
        echo(f"  rank {row['rank']} ({row['host']}, {row['device']}): generated {row['generated']} of {row['items']}, "
             f"failed {row['failed']} in {row['seconds']:.1f} s, {rate}")
    if counts["failed"]:
        raise GenerateError(f"{counts['failed']} of {len(items)} items failed (listed in {job.summary_path}); "
                            "run the same command again to retry them")
    unguided = [name for name, s in status.items() if s.get("all_updates_skipped")]
    if unguided:
        raise GenerateError(
            f"{len(unguided)} of {len(items)} videos equal their plain baseline: MotionPrompt skipped every token "
            f"update ({', '.join(unguided[:5])}{', ...' if len(unguided) > 5 else ''}; see guidance_updates in their "
            "manifests). Lower the learning rate (-o lr=...) or the loss weights and generate into a new --out."
        )


def _manifest_path(out_dir: Path, item: Item, fmt: str) -> Path:
    return item_video_path(out_dir, item, fmt).with_name(f"{item.name}.json")


def _exit_after(rank: int) -> int | None:
    """The item count after which this process exits (EXIT_AFTER_ENV ``RANK:N``), None normally."""
    value = os.environ.get(EXIT_AFTER_ENV)
    if not value:
        return None
    target, count = value.split(":")
    return int(count) if int(target) == rank else None


def _write_part(out_dir: Path, rank: int, device: str, mine: list[Item], status: dict[str, dict[str, Any]],
                seconds: float) -> None:
    """This process's part of the summary: its items' statuses and its throughput (written atomically)."""
    from mpcore.io.manifest import write_json_atomic

    own = {item.name: status[item.name] for item in mine}
    generated = sum(s["status"] == "generated" for s in own.values())
    write_json_atomic({
        "rank": rank,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "device": device,
        "items": len(mine),
        "generated": generated,
        "failed": sum(s["status"] == "failed" for s in own.values()),
        "seconds": seconds,
        "items_per_s": generated / seconds if generated and seconds > 0 else None,
        "status": own,
    }, out_dir / f".generate.part-{rank:05d}.json")


def _merge_parts(out_dir: Path, dist, status: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Main process, after the barrier: every process's statuses into ``status``; the per-process rows
    (rank, host, device, items, generated, failed, seconds, items/s). Removes the part files."""
    ranks = []
    for rank in range(dist.world_size):
        part = json.loads((out_dir / f".generate.part-{rank:05d}.json").read_text(encoding="utf-8"))
        status.update(part.pop("status"))
        ranks.append(part)
    for path in out_dir.glob(PART_GLOB):  # also stale parts of an earlier, killed run
        path.unlink(missing_ok=True)
    return ranks


def _counts(status: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {key: sum(s["status"] == key for s in status.values()) for key in ("generated", "skipped", "failed", "pending")}


def _seconds_per_video(status: dict[str, dict[str, Any]]) -> float | None:
    """Mean wall time of the videos generated in this run (sampling and writing), None if none was."""
    seconds = [s["seconds"] for s in status.values() if s["status"] == "generated"]
    return sum(seconds) / len(seconds) if seconds else None
