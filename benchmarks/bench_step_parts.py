#!/usr/bin/env python
"""Where a guided step's time goes: per-call timings of its parts on the mid AnimateDiff (CPU).

The floor analysis of ``fast`` in README "Benchmarks" adds these up. Each part is timed ``--repeats``
times, interleaved (part A, B, C, D, A, B, ...), so a slow drift of the machine's load hits every part
alike; the median is reported, with every run, and the ratio to the unguided step:

* ``cfg_forward_batch2`` -- the unguided step's model call: CFG as one batch [uncond, cond];
* ``forward_batch1`` -- one branch alone (guided steps call the unconditional and the final
  conditional branch separately);
* ``cond_forward_backward`` -- an optimizer iteration's conditional forward + backward to the condition;
* ``decode2_forward_backward`` -- the full VAE decode of the two guided frames with backward;
* ``raft_disc_forward_backward`` -- RAFT (random weights: time does not depend on them) on the pair and the
  ViT discriminator, with backward to the frames.

    python benchmarks/bench_step_parts.py --threads 1 --repeats 7      # ~2 min on an idle machine

Prints a table and writes ``<out>/bench_step_parts_mid_cpu_<threads>t.json`` atomically. Run it on an idle machine:
other processes make single calls slower by several times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_guidance  # noqa: E402

from mpcore import plugins  # noqa: E402
from mpcore.io.files import write_text_atomic  # noqa: E402


def parts(device: torch.device) -> dict:
    """The timed callables, built on the mid model at the mid config's video size (8 frames, 128x128;
    its VAE down-samples 4x: 32x32 latents)."""
    backbone = bench_guidance.load_mid(device, torch.float32, 0)
    shape = bench_guidance.video_shape("mid")
    f = backbone.vae_scale_factor
    h, w = shape["height"] // f, shape["width"] // f
    latents = torch.randn(1, backbone.latent_channels, shape["frames"], h, w, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    cond, uncond = backbone.encode_prompt(["a horse galloping"]), backbone.encode_prompt([""])
    flow = plugins.get("flow", "raft").spec.load("random", device, seed=0)
    disc = plugins.get("discriminator", "vit").spec.random(seed=0, device=device)
    frames_latents = torch.randn(2, backbone.latent_channels, h, w, generator=torch.Generator().manual_seed(1))
    images = torch.rand(2, 3, shape["height"], shape["width"], generator=torch.Generator().manual_seed(2)) * 2 - 1

    def cfg_forward_batch2():
        with torch.no_grad():
            backbone.predict(torch.cat([latents] * 2), t, torch.cat([uncond, cond]))

    def forward_batch1():
        with torch.no_grad():
            backbone.predict(latents, t, cond)

    def cond_forward_backward():
        c = cond.clone().requires_grad_(True)
        backbone.predict(latents, t, c)[:, :, :2].sum().backward()

    def decode2_forward_backward():
        z = frames_latents.clone().requires_grad_(True)
        backbone.decode(z).sum().backward()

    def raft_disc_forward_backward():
        x = images.clone().requires_grad_(True)
        disc(flow(x[:1], x[1:])).sum().backward()

    return {f.__name__: f for f in (cfg_forward_batch2, forward_batch1, cond_forward_backward,
                                    decode2_forward_backward, raft_disc_forward_backward)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per part (default 7)")
    parser.add_argument("--out", default="benchmarks/results", help="results folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calls = parts(torch.device("cpu"))
    for call in calls.values():  # warm-up
        call()
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            runs[name].append(time.perf_counter() - start)
    step = statistics.median(runs["cfg_forward_batch2"])
    rows = [{"part": name, "median_s": statistics.median(v), "x_unguided_step": statistics.median(v) / step, "all_s": v}
            for name, v in runs.items()]
    for row in rows:
        print(f"{row['part']:28s} {row['median_s']:.3f} s  {row['x_unguided_step']:.2f}x the unguided step")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"config": "mid", "device": "cpu", "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    write_text_atomic(json.dumps(result, indent=2) + "\n", out / f"bench_step_parts_mid_cpu_{args.threads}t.json")


if __name__ == "__main__":
    main()
