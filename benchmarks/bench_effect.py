#!/usr/bin/env python
"""Does MotionPrompt (or FlowMo) make the bundled toy model's motion more coherent? Baseline vs guided, paired.

Over held-out prompts (captions of toy-world scenes whose (colour, shape, motion) combination was
never used in training, one in three also worded with the held-out template: ``split="heldout"``)
and several seeds, the toy model
samples each (prompt, seed) twice with the same initial noise: plain (``--guidance none``) and with
MotionPrompt (its bundled discriminator), and a third time with FlowMo (``--guidance flowmo``, the
mp-plugin-flowmo guidance; ``--no-flowmo`` leaves it out). All go through ``mpcore generate``. Then, per pair:

* temporal metrics of ``mpcore eval`` that do not use the discriminator: ``flow_warp_error`` (TV-L1
  warping error, lower is better), ``temporal_flickering`` (VBench; higher = less flicker) and
  ``motion_smoothness_flowinterp``;
* object measures made exact by the procedural world (:mod:`mpcore.toy.metrics`): presence, size and
  colour drift, centroid jerk, flow spread inside the object mask, object speed, and whether the
  object moves the way the caption says (``direction_agreement``);
* fidelity: a small 3D CNN trained on REAL procedural clips reads shape, motion and background; its
  agreement with the caption (``fidelity``).

Every measure gets the guided - baseline (and FlowMo - baseline) mean difference with a 95% paired bootstrap CI
(:func:`mpcore.analysis.compare.paired_comparison`). The same measures on the REAL clips of the same
held-out scenes are the reference (what a perfect model would score), and the baseline's own
direction agreement and fidelity say whether the samples are good enough to judge motion at all.

    python benchmarks/bench_effect.py                       # 16 prompts x 2 seeds (~15 min on 2 cores)
    python benchmarks/bench_effect.py -o lr=0.01 --tag lr0.01   # another guidance setting
    python benchmarks/bench_effect.py --smoke               # tiny configuration (tests)
    python benchmarks/bench_effect.py --prompts 8 --tag three_arms   # baseline / MotionPrompt / FlowMo

Writes ``<out>/bench_effect_<tag>.json`` and ``<out>/bench_effect_<tag>.md`` (atomically).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mpcore.toy import world as toyworld  # noqa: E402
from mpcore.toy import metrics as toy_metrics
from mpcore.analysis.compare import paired_comparison  # noqa: E402
from mpcore.io.files import write_text_atomic  # noqa: E402

PROMPT_SEED = 7_000_000  # scenes of the held-out prompts (training used 1_000_000+, the discriminator 3_000_000+)
CLASSIFIER_SEED = 8_000_000
EVAL_METRICS = ("flow_warp_error", "temporal_flickering", "motion_smoothness_flowinterp")
OBJECT_MEASURES = ("presence", "size_drift", "color_drift", "centroid_jerk", "flow_spread", "object_speed",
                   "direction_agreement", "fidelity", "fidelity_shape", "fidelity_motion", "fidelity_background")
LOWER_IS_BETTER = {"flow_warp_error", *toy_metrics.LOWER_IS_BETTER}
NEUTRAL = {"object_speed", "motion_smoothness_flowinterp"}


def heldout_scenes(count: int) -> list[toyworld.Scene]:
    return [toyworld.sample_scene(PROMPT_SEED + i, split="heldout") for i in range(count)]


def run(*args: str) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run(list(args), check=True)


def generate(prompts: Path, seeds: str, out: Path, guidance: str, extra: list[str]) -> None:
    run(sys.executable, "-m", "mpcore", "generate", "--model", "toy", "--prompts", str(prompts), "--seeds", seeds,
        "--out", str(out), "--guidance", guidance, "--no-progress", *extra)


def seconds_per_video(folder: Path) -> dict:
    """Each video's sampling time as its manifest records it (``timings``, model loading left out): the
    median and range over the arm's videos, whenever they were generated (a resumed arm keeps its own)."""
    values = []
    for manifest in sorted(folder.glob("p*_s*.json")):
        timings = json.loads(manifest.read_text()).get("timings") or {}
        values += [v for k, v in timings.items() if k.endswith("_s") and not k.startswith("load")]
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(values), "median": round(float(np.median(values)), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def load_classifier(work: Path, clips: int, epochs: int) -> tuple[toy_metrics.CaptionClassifier, float]:
    """The fidelity classifier (cached in WORK) and its accuracy on held-out REAL clips."""
    path = work / f"classifier_{clips}x{epochs}.pt"
    model = toy_metrics.CaptionClassifier()
    if path.exists():
        model.load_state_dict(torch.load(path))
        model.eval()
    else:
        model = toy_metrics.train_classifier(CLASSIFIER_SEED, clips, epochs)
        torch.save(model.state_dict(), path)
    real = [toyworld.render(s) for s in heldout_scenes(64)]
    accuracy = float(np.mean([toy_metrics.fidelity(model, c.uint8(), c.caption)["fidelity"] for c in real]))
    return model, accuracy


def measure(paths: list[Path], captions: list[str], classifier, flow) -> dict:
    """A result dict in ``mpcore eval``'s shape (``videos``: path -> {measure: value}) for the object
    measures and fidelity, so :func:`paired_comparison` treats them like any metric."""
    from mpcore.io.video import read_video

    videos = {}
    for path, caption in zip(paths, captions):
        frames = read_video(path)
        row = toy_metrics.object_measures(frames, caption, flow)
        row.update(toy_metrics.fidelity(classifier, frames, caption))
        videos[str(path)] = row
    return {"videos": videos, "metrics": {n: {"description": n} for n in OBJECT_MEASURES}, "unavailable": {}}


def real_reference(scenes: list[toyworld.Scene], classifier, flow, work: Path) -> dict:
    """The measures on the real clips of the held-out scenes (written through the same video codec)."""
    from mpcore.io.video import write_video

    folder = work / "real"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, scene in enumerate(scenes):
        path = folder / f"p{i:04d}.mp4"
        write_video(toyworld.render(scene).uint8(), path, fps=8)
        paths.append(path)
    result = measure(paths, [s.caption for s in scenes], classifier, flow)
    return toy_metrics.summarize(list(result["videos"].values()), list(OBJECT_MEASURES))


def comparison_table(summary: dict, comparison: dict, label: str) -> list[str]:
    """One markdown table: every measure, ``label`` (the guided arm) minus the baseline, paired CIs."""
    lines = [f"| measure | better | real clips | baseline | {label} | {label} - baseline [95% CI] | {label} better in |",
             "|---|---|---|---|---|---|---|"]
    for name, row in comparison["metrics"].items():
        better = "lower" if name in LOWER_IS_BETTER else ("-" if name in NEUTRAL else "higher")
        real = summary["real_reference"].get(name)
        wins = row["wins"] if better == "higher" else row["losses"]
        wins_text = "" if better == "-" else f"{wins}/{row['n']}"
        lines.append(f"| {name} | {better} | {'' if real is None else f'{real:.4g}'} | {row['baseline']:.4g} | "
                     f"{row['guided']:.4g} | {row['diff']:+.4g} [{row['ci'][0]:+.4g}, {row['ci'][1]:+.4g}] | "
                     f"{wins_text} |")
    return lines


def markdown(summary: dict) -> str:
    lines = [f"# bench_effect ({summary['tag']}): MotionPrompt on the bundled toy model", "",
             f"{summary['n_pairs']} pairs ({summary['prompts']} held-out prompts x seeds {summary['seeds']}), "
             f"guidance settings: {' '.join(summary['overrides']) or 'defaults'}; git {summary['git']}", ""]
    lines += comparison_table(summary, summary["comparison"], "guided")
    if summary.get("comparison_flowmo"):
        lines += ["", f"## FlowMo on the same pairs (settings: {' '.join(summary['flowmo_overrides']) or 'defaults'})",
                  ""] + comparison_table(summary, summary["comparison_flowmo"], "flowmo")
    gate = summary.get("gate")
    if gate:
        lines += ["", f"Gate (discriminator term drop, guided runs' traces; {'passed' if gate['passed'] else 'NOT passed'}):"]
        for name, label in (("over_iterations", "over the K iterations"), ("over_range", "over the range")):
            row = gate[name]
            if row["mean_drop"] is not None:
                source = f", measured on {row['source']}" if row.get("source") else ""
                lines.append(f"- {label}: {row['mean_drop']:+.4g} [{row['ci'][0]:+.4g}, {row['ci'][1]:+.4g}] "
                             f"({row['n']} videos{source})")
    lines += ["", f"Fidelity classifier accuracy on real held-out clips: {summary['classifier_real_accuracy']:.3f}.",
              f"Times: {json.dumps(summary['times'])}",
              f"Seconds per video (manifests; median [min, max]): "
              + ", ".join(f"{arm} {t['median']} [{t['min']}, {t['max']}]" for arm, t in
                          (summary.get("seconds_per_video") or {}).items()), ""]
    return "\n".join(lines)


def joined(evaluated_arm: dict, objects: dict, videos: list[str]) -> dict:
    """One arm of the comparison over every measure: ``mpcore eval``'s rows of ``videos`` joined with
    their object measures (:func:`measure`)."""
    return {"videos": {v: {**evaluated_arm["videos"][v], **objects["videos"][v]} for v in videos},
            "metrics": {**evaluated_arm["metrics"], **objects["metrics"]}, "unavailable": {}}


@click.command()
@click.option("--prompts", "n_prompts", default=16, show_default=True, help="Held-out prompts.")
@click.option("--seeds", default="0-1", show_default=True)
@click.option("-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="MotionPrompt setting (repeatable).")
@click.option("--steps", type=int, default=None, help="DDIM steps (default: the toy model's).")
@click.option("--tag", default="default", show_default=True, help="Names the result files.")
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/mp_bench_effect"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks" / "results", show_default=True)
@click.option("--classifier-clips", default=2000, show_default=True)
@click.option("--classifier-epochs", default=6, show_default=True)
@click.option("--resamples", default=10000, show_default=True)
@click.option("--probe-pairs", default=3, show_default=True,
              help="The gate's probe (-o probe_pairs): held-out frame pairs scored before and after each step's "
                   "updates (the videos do not change; 0 = the gate from the iterations only).")
@click.option("--flowmo/--no-flowmo", default=True, show_default=True,
              help="Also sample each pair with FlowMo (--guidance flowmo) and compare it with the baseline.")
@click.option("--flowmo-set", "flowmo_overrides", multiple=True, metavar="KEY=VALUE", help="FlowMo setting (repeatable).")
@click.option("--smoke", is_flag=True, help="2 prompts, 1 seed, 4 steps, a barely trained classifier (tests).")
def main(n_prompts, seeds, overrides, steps, tag, work, out, classifier_clips, classifier_epochs, resamples, probe_pairs,
         flowmo, flowmo_overrides, smoke):
    """Paired baseline vs MotionPrompt (and FlowMo) comparison on the bundled toy model."""
    from mp_plugin_tvl1 import load as load_tvl1

    if smoke:
        n_prompts, seeds, steps, classifier_clips, classifier_epochs, resamples = 2, "0", 4, 32, 1, 200
        tag = tag if tag != "default" else "smoke"
    run_dir = work / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    times = {}
    scenes = heldout_scenes(n_prompts)
    prompts = run_dir / "prompts.txt"
    prompts.write_text("\n".join(s.caption for s in scenes) + "\n")
    extra = [f"--steps={steps}"] if steps else []
    guided_extra = extra + [f"-o{o}" for o in overrides] + ([f"-oprobe_pairs={probe_pairs}"] if probe_pairs else [])
    arms = [("baseline", "none", extra), ("guided", "motionprompt", guided_extra)]
    if flowmo:
        arms.append(("flowmo", "flowmo", extra + [f"-o{o}" for o in flowmo_overrides]))
    for name, guidance, args in arms:
        start = time.perf_counter()
        generate(prompts, seeds, run_dir / name, guidance, args)
        times[f"generate_{name}_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    eval_json = run_dir / "eval.json"
    run(sys.executable, "-m", "mpcore", "eval", "--compare", str(run_dir / "baseline"), str(run_dir / "guided"),
        "--metrics", ",".join(EVAL_METRICS), "--json", str(eval_json), "--out", str(run_dir / "comparison"),
        "--resamples", str(resamples), "--no-progress")
    evaluated = json.loads(eval_json.read_text())
    if flowmo:
        run(sys.executable, "-m", "mpcore", "eval", "--compare", str(run_dir / "baseline"), str(run_dir / "flowmo"),
            "--metrics", ",".join(EVAL_METRICS), "--json", str(run_dir / "eval_flowmo.json"), "--out",
            str(run_dir / "comparison_flowmo"), "--resamples", str(resamples), "--no-progress")
        evaluated_flowmo = json.loads((run_dir / "eval_flowmo.json").read_text())
    times["eval_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    classifier, classifier_accuracy = load_classifier(work, classifier_clips, classifier_epochs)
    times["classifier_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    flow = load_tvl1(None, "cpu")
    pairs = [tuple(p) for p in evaluated["pairs"]]
    captions = [json.loads(Path(b).with_suffix(".json").read_text())["prompt"] for b, _ in pairs]
    base_objects = measure([Path(b) for b, _ in pairs], captions, classifier, flow)
    guided_objects = measure([Path(g) for _, g in pairs], captions, classifier, flow)
    comparison_flowmo, flowmo_videos = None, None
    if flowmo:
        flowmo_pairs = [tuple(p) for p in evaluated_flowmo["pairs"]]
        flowmo_captions = [json.loads(Path(b).with_suffix(".json").read_text())["prompt"] for b, _ in flowmo_pairs]
        flowmo_objects = measure([Path(f) for _, f in flowmo_pairs], flowmo_captions, classifier, flow)
        flowmo_arm = joined(evaluated_flowmo["guided"], flowmo_objects, [f for _, f in flowmo_pairs])
        flowmo_videos = flowmo_arm["videos"]
        comparison_flowmo = paired_comparison(joined(evaluated_flowmo["baseline"], base_objects, [b for b, _ in flowmo_pairs]),
                                              flowmo_arm, flowmo_pairs, seed=0, resamples=resamples)
    reference = real_reference(scenes, classifier, flow, run_dir)
    times["object_measures_s"] = round(time.perf_counter() - start, 1)

    baseline = joined(evaluated["baseline"], base_objects, [b for b, _ in pairs])
    guided = joined(evaluated["guided"], guided_objects, [g for _, g in pairs])
    comparison = paired_comparison(baseline, guided, pairs, seed=0, resamples=resamples)
    # the gate: does the discriminator term fall over the K iterations and over the range?
    from mpcore.analysis.diagnose import gate

    manifests = [json.loads(Path(g).with_suffix(".json").read_text()) for _, g in pairs]
    guidance_gate = gate([m["result"] for m in manifests if m.get("result")], seed=0, resamples=resamples)
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {
        "tag": tag, "prompts": n_prompts, "seeds": seeds, "n_pairs": len(pairs), "overrides": list(overrides),
        "steps": steps, "git": git, "classifier_real_accuracy": classifier_accuracy, "real_reference": reference,
        "comparison": comparison, "gate": guidance_gate, "times": times,
        "seconds_per_video": {name: seconds_per_video(run_dir / name) for name, _, _ in arms},
        "flowmo_overrides": list(flowmo_overrides), "comparison_flowmo": comparison_flowmo,
        "per_video": {"baseline": baseline["videos"], "guided": guided["videos"], "flowmo": flowmo_videos,
                      "captions": captions},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(summary, indent=1), out / f"bench_effect_{tag}.json")
    write_text_atomic(markdown(summary), out / f"bench_effect_{tag}.md")
    print(markdown(summary))


if __name__ == "__main__":
    main()
