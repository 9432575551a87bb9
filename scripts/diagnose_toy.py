#!/usr/bin/env python
"""Run ``mpcore diagnose steps`` on the bundled toy model with real held-out toy-world clips.

Writes ``--clips`` real clips of held-out scenes (seeds 9,000,000+, used by nothing else) as mp4 with
a caption file, then asks the toy model and its bundled discriminator, per sampling step, how much
of those clips' motion the one-step and rollout estimates keep and whether the discriminator tells
them from the model's own. The result (JSON + PNG) is what chose the toy model's guidance defaults.

    python scripts/diagnose_toy.py --out benchmarks/results/diagnose_toy      # ~20 min on 2 idle cores
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mpcore.toy import world as toyworld  # noqa: E402
from mpcore.io.video import write_video  # noqa: E402

CLIP_SEED = 9_000_000


def write_real_clips(folder: Path, count: int) -> Path:
    """``count`` real held-out clips as mp4 and ``captions.txt`` (one per clip, in file order)."""
    folder.mkdir(parents=True, exist_ok=True)
    captions = []
    for i in range(count):
        scene = toyworld.sample_scene(CLIP_SEED + i, split="heldout")
        path = folder / f"real_{i:04d}.mp4"
        if not path.exists():
            write_video(toyworld.render(scene).uint8(), path, fps=8)
        captions.append(scene.caption)
    prompts = folder.parent / "captions.txt"
    prompts.write_text("\n".join(captions) + "\n")
    return prompts


@click.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="diagnose.json and diagnose.png go here.")
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/mp_diagnose_toy"), show_default=True)
@click.option("--clips", default=16, show_default=True)
@click.option("--pairs", default=3, show_default=True, help="Frame pairs per clip.")
@click.option("--check-steps", default="0,2,4,6,8,10,12,14,16,18,20,22", show_default=True)
@click.option("--estimates", default="tweedie,rollout3", show_default=True)
def main(out: Path, work: Path, clips: int, pairs: int, check_steps: str, estimates: str):
    """Write real held-out toy clips and run the step diagnostic of the toy model on them."""
    prompts = write_real_clips(work / "real", clips)
    command = [sys.executable, "-m", "mpcore", "diagnose", "steps", "--model", "toy", "--videos", str(work / "real"),
               "--prompts", str(prompts), "--pairs", str(pairs), "--check-steps", check_steps,
               "--estimates", estimates, "--out", str(out), "--no-progress"]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
