#!/usr/bin/env python
"""How much of a guidance's change of x_t survives the next sampling step, per scheduler.

A guidance (FlowMo) replaces x_t by x_t + delta at step k; the fraction <x'_{k+1} - x_{k+1}, delta> /
<delta, delta> between the runs with and without the change (:func:`mpcore.testing.measure_latent_change_survival`)
says what the sampler carries on. Measured on the tiny random backbones at 50 steps, with the scheduler
told of the change (mpcore's default, ``keep_scheduler_state=False``) and not told (FlowMo's published
loop, ``True``): UniPC's corrector rebuilds x_t from the previous step unless told.

    python benchmarks/bench_latent_survival.py     # writes results/latent_survival.json and prints a table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mpcore.io.files import write_text_atomic  # noqa: E402


def backbones():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from mp_plugin_cogvideox.backbone import load as cogvideox
    from mp_plugin_wan.backbone import load as wan
    from mp_plugin_wan.tiny import TINY_SAMPLER_DEFAULTS

    from mpcore.config import SamplerConfig

    config = SamplerConfig(**{**TINY_SAMPLER_DEFAULTS, "steps": 50, "seed": 2})
    unipc = wan("tiny", seed=0, flow_shift=5.0)
    yield "wan UniPC (shift 5)", unipc, config
    euler = wan("tiny", seed=0)
    euler.scheduler_class, euler.scheduler_config = FlowMatchEulerDiscreteScheduler, {"shift": 5.0}
    yield "wan Euler (shift 5)", euler, config
    yield "cogvideox-5b DPM", cogvideox("tiny", seed=0, tiny_variant="5b"), config
    yield "cogvideox-2b DDIM", cogvideox("tiny", seed=0, tiny_variant="2b"), config


def main() -> None:
    from mpcore.testing import measure_latent_change_survival

    rows = []
    for name, backbone, config in backbones():
        for at in (0, 1, 5, 11):
            row = {"scheduler": name, "step": at}
            for keep in (True, False):
                row["not_told" if keep else "told"] = round(measure_latent_change_survival(
                    backbone, config, at=at, min_fraction=-1e9, keep_scheduler_state=keep), 4)
            rows.append(row)
            print(row, flush=True)
    out = ROOT / "benchmarks" / "results" / "latent_survival.json"
    write_text_atomic(json.dumps({"steps": 50, "rows": rows}, indent=1), out)
    print("| scheduler | step | scheduler not told (FlowMo published) | told (mpcore default) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['scheduler']} | {r['step']} | {r['not_told']:.3f} | {r['told']:.3f} |")


if __name__ == "__main__":
    main()
