#!/usr/bin/env python
"""Peak memory of ``mpcore diagnose steps``'s measuring pass (:func:`mpcore.analysis.diagnose.diagnose_steps`).

The diagnostic only measures: no estimate needs a gradient. This runs it on the bundled toy model
(2 toy-world clips, steps 4, 10, 16, one-step and 3-call rollout estimates, the stand-in flow and
discriminator of :mod:`mpcore.testing`) and reports the peak resident memory above the level after
loading, sampled every 2 ms by a thread reading ``/proc/self/statm`` (CPU; on CUDA
``torch.cuda.max_memory_allocated`` would be the measure).

    python benchmarks/bench_diagnose_memory.py            # prints one JSON line
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_during(fn) -> tuple[float, int]:
    """(seconds, peak RSS above the start) while ``fn()`` runs."""
    start, peak, done = rss_bytes(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    began = time.perf_counter()
    fn()
    seconds = time.perf_counter() - began
    done.set()
    thread.join()
    return seconds, max(peak[0], rss_bytes()) - start


def main() -> None:
    from mp_plugin_animatediff.backbone import load
    from mp_plugin_animatediff.toy import TOY_MOTIONPROMPT_DEFAULTS, TOY_SAMPLER_DEFAULTS

    from mpcore.analysis import diagnose
    from mpcore.config import MotionPromptConfig, SamplerConfig
    from mpcore.testing import DifferenceFlow, LinearDiscriminator
    from mpcore.toy import world

    torch.set_num_threads(2)
    backbone = load("toy")
    sampler = SamplerConfig(**TOY_SAMPLER_DEFAULTS, seed=0)
    motion = MotionPromptConfig(**{**TOY_MOTIONPROMPT_DEFAULTS, "flow_estimator": "difference"})
    clips = [diagnose.Clip(frames=c.frames, caption=c.caption) for c in world.make_clips(7_000_000, 2, split="heldout")]
    seconds, peak = peak_during(lambda: diagnose.diagnose_steps(
        backbone, clips, DifferenceFlow(), LinearDiscriminator(), sampler, motion, [4, 10, 16],
        {"tweedie": 1, "rollout3": 3}, progress=False))
    print(json.dumps({"peak_rss_above_load_mib": round(peak / 2**20, 1), "seconds": round(seconds, 1),
                      "grad_enabled_outside": torch.is_grad_enabled()}))


if __name__ == "__main__":
    main()
