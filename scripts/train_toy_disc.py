"""Train the toy model's flow discriminator with mpcore's own pipeline, then install it as package data.

Real videos: procedural clips of the toy world (:mod:`mpcore.toy.world`, split "train", seeds not
used to train the video model), written with the same encoder as generated videos. Fake videos:
the bundled toy model (``mpcore generate --model toy --guidance none``) on the SAME captions, as the
paper pairs real and generated videos of one prompt set. Flows: the weight-free ``tvl1_fast`` estimator
(the toy model's guidance default) at the native 32x32. Discriminator: a small ViT (the ``tiny`` preset with 4x4 patches, width 64, depth 4)
from random init (no downloads).

    python scripts/train_toy_disc.py --work /work/toy_disc [--install]

``--install`` copies the weights to mp_plugin_animatediff/toy/discriminator.{safetensors,json}.
Held-out accuracy/AUC (``mpcore disc eval`` on clips and seeds not trained on) go to WORK/summary.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mpcore.toy import world as toyworld  # noqa: E402
from mpcore.io.video import write_video  # noqa: E402
from mpcore.jobs.generate import parse_seeds  # noqa: E402

REAL_SEEDS = {"train": 3_000_000, "test": 3_500_000}  # disjoint from train_toy.py's 1_000_000+
# the tiny preset's ViT, wider and deeper, with 4x4 patches: 64 tokens of a 32x32 flow
VIT = {"patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}
TOY_FOLDER = ROOT / "plugins" / "mp-plugin-animatediff" / "mp_plugin_animatediff" / "toy"


def write_real(work: Path, split: str, count: int, video_format: str = "mp4") -> Path:
    """``count`` real clips (mp4, or lossless PNG-frame folders) + a prompt file of their captions (one per
    line, same order)."""
    folder = work / f"real_{split}"
    folder.mkdir(parents=True, exist_ok=True)
    captions = []
    for i in range(count):
        clip = toyworld.make_clip(REAL_SEEDS[split] + i, split="train")
        path = folder / (f"real_{i:05d}.mp4" if video_format == "mp4" else f"real_{i:05d}")
        if not path.exists():
            write_video(clip.uint8(), path, fps=8)
        captions.append(clip.caption)
    prompts = work / f"prompts_{split}.txt"
    prompts.write_text("\n".join(captions) + "\n")
    return prompts


def mpcore(*args: str, capture: bool = False) -> tuple[float, str]:
    start = time.perf_counter()
    print("$ mpcore " + " ".join(args), flush=True)
    result = subprocess.run([sys.executable, "-m", "mpcore", *args], check=True, text=True,
                            capture_output=capture)
    return time.perf_counter() - start, result.stdout if capture else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mp_toy_disc"))
    parser.add_argument("--train-clips", type=int, default=400)
    parser.add_argument("--test-clips", type=int, default=100)
    parser.add_argument("--pairs-per-video", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--fake-train-seeds", default="0",
                        help="seeds of the fakes: the first train-clips / (number of seeds) captions x these seeds")
    parser.add_argument("--fake-test-seeds", default="1")
    parser.add_argument("--format", choices=("mp4", "frames"), default="mp4",
                        help="how real and fake videos are written: mp4 (the shipped discriminator's) or lossless PNG "
                             "frames (what guidance decodes)")
    parser.add_argument("--install", action="store_true", help="copy the result into the plugin's toy folder")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    times = {}

    start = time.perf_counter()
    prompts = {split: write_real(work, split, n, args.format)
               for split, n in (("train", args.train_clips), ("test", args.test_clips))}
    times["write_real_s"] = time.perf_counter() - start
    toy = ["--model", "toy", "--guidance", "none", "--format", args.format, "--no-progress"]
    # fakes: as many as real clips, the first captions at each seed; the held-out test set uses other captions AND
    # other seeds
    for split, seeds in (("train", args.fake_train_seeds), ("test", args.fake_test_seeds)):
        real_captions = prompts[split].read_text().splitlines()
        captions = real_captions[:len(real_captions) // len(parse_seeds(seeds))]
        fake_prompts = work / f"prompts_fake_{split}.txt"
        fake_prompts.write_text("\n".join(captions) + "\n")
        times[f"generate_fake_{split}_s"], _ = mpcore("generate", *toy, "--prompts", str(fake_prompts), "--seeds", seeds,
                                                      "--out", str(work / f"fake_{split}"))
    extract = ["--estimator", "tvl1_fast", "--size", "32", "--gap", "1-2", "--pairs-per-video", str(args.pairs_per_video),
               "--overwrite", "--no-progress"]
    for split in ("train", "test"):
        for label in ("real", "fake"):
            times[f"extract_{label}_{split}_s"], _ = mpcore(
                "flows", "extract", "--videos", str(work / f"{label}_{split}"), "--out", str(work / f"cache_{label}_{split}"),
                "--label", label, *extract)
    disc = work / "disc.safetensors"
    times["disc_train_s"], _ = mpcore(
        "disc", "train", "--real", str(work / "cache_real_train"), "--fake", str(work / "cache_fake_train"), "--out",
        str(disc), "--arch", "preset=tiny", "--arch", "flow_scale=1", "--arch", f"timm_kwargs={json.dumps(VIT)}",
        "--arch", "head_hidden=64", "--no-pretrained", "--epochs", str(args.epochs),
        "--lr", str(args.lr), "--batch-size", str(args.batch_size), "--overwrite", "--no-progress")
    times["disc_eval_s"], held_out = mpcore("disc", "eval", "--disc", str(disc), "--real", str(work / "cache_real_test"),
                                            "--fake", str(work / "cache_fake_test"), "--json", capture=True)
    summary = {"times": times, "held_out": json.loads(held_out), "args": {k: str(v) for k, v in vars(args).items()}}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({"times": times, "held_out": summary["held_out"]}, indent=1))
    if args.install:
        shutil.copyfile(disc, TOY_FOLDER / "discriminator.safetensors")
        shutil.copyfile(disc.with_suffix(".json"), TOY_FOLDER / "discriminator.json")
        print(f"installed into {TOY_FOLDER}")


if __name__ == "__main__":
    main()
