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

Every measure gets the arm - baseline mean difference with a 95% paired bootstrap CI
(:func:`mpcore.analysis.compare.paired_comparison`). The same measures on the REAL clips of the same
held-out scenes are the reference (what a perfect model would score), and the baseline's own
direction agreement and fidelity say whether the samples are good enough to judge motion at all.

Choosing and claiming are kept apart by ``benchmarks/effect_protocol.toml`` (issue 32). The
development split (the default) takes any settings on the development prompts and seeds: its results
are labelled as development results. ``--split confirmation`` runs the registered arms on fresh
prompts and seeds with everything read from the protocol, checks every manifest against the arm's
registered settings, and applies the protocol's decision rule.

    python benchmarks/bench_effect.py                       # development: 16 prompts x seeds 0-1
    python benchmarks/bench_effect.py -o lr=0.01 --tag lr0.01   # another guidance setting (development)
    python benchmarks/bench_effect.py --split confirmation      # the registered arms, 128 pairs (~2 h on 2 cores)
    python benchmarks/bench_effect.py --smoke               # tiny configuration (tests)

Writes ``<out>/bench_effect_<tag>.json`` and ``<out>/bench_effect_<tag>.md`` (atomically). Every
``mpcore generate`` call resumes, so a killed run is continued by the same command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
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
PROTOCOL = ROOT / "benchmarks" / "effect_protocol.toml"


def heldout_scenes(count: int, prompt_seed: int = PROMPT_SEED) -> list[toyworld.Scene]:
    """The first ``count`` held-out scenes drawn from ``prompt_seed`` (the development split's prompts)."""
    return [toyworld.sample_scene(prompt_seed + i, split="heldout") for i in range(count)]


def run(*args: str) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run(list(args), check=True)


def generate(prompts: Path, seeds: str, out: Path, guidance: str, extra: list[str], video_format: str = "mp4") -> None:
    run(sys.executable, "-m", "mpcore", "generate", "--model", "toy", "--prompts", str(prompts), "--seeds", seeds,
        "--out", str(out), "--guidance", guidance, "--format", video_format, "--no-progress", *extra)


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


def real_reference(scenes: list[toyworld.Scene], classifier, flow, work: Path, video_format: str = "mp4") -> dict:
    """The measures on the real clips of the held-out scenes (written in the generated videos' format)."""
    from mpcore.io.video import write_video

    folder = work / "real"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, scene in enumerate(scenes):
        path = folder / f"p{i:04d}{'.mp4' if video_format == 'mp4' else ''}"
        write_video(toyworld.render(scene).uint8(), path, fps=8)
        paths.append(path)
    result = measure(paths, [s.caption for s in scenes], classifier, flow)
    return toy_metrics.summarize(list(result["videos"].values()), list(OBJECT_MEASURES))


def load_protocol(path: Path = PROTOCOL) -> dict:
    """The committed effect protocol (``benchmarks/effect_protocol.toml``)."""
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def scene_combo(scene: toyworld.Scene) -> tuple[str, str, str]:
    """The (colour, shape, motion) combination a scene's caption names."""
    return scene.objects[0].color, scene.objects[0].shape, scene.motion


def confirmation_scenes(protocol: dict, walk: int = 20000) -> list[toyworld.Scene]:
    """The confirmation split's prompts as the protocol defines them: fresh held-out scenes (captions not
    among the first ``exclude_development_prompts`` development scenes, no caption twice), first one scene
    of every held-out combination, then a second scene of the combinations drawn next, in draw order."""
    confirm, development = protocol["confirmation"], protocol["development"]
    excluded = {s.caption for s in heldout_scenes(confirm["exclude_development_prompts"], development["prompt_seed"])}
    combos = {(c, s, m) for c in toyworld.COLORS for s in toyworld.SHAPES for m in toyworld.MOTIONS
              if toyworld.is_heldout_combo(c, s, m) and not (s == "circle" and m == "spinning")}
    if confirm["prompts"] < len(combos):
        raise ValueError(f"confirmation.prompts must be >= {len(combos)} (every held-out combination once), "
                         f"got {confirm['prompts']}")
    candidates, seen = [], set(excluded)
    for offset in range(walk):
        scene = toyworld.sample_scene(confirm["prompt_seed"] + offset, split="heldout")
        if scene.caption not in seen:
            seen.add(scene.caption)
            candidates.append(scene)
    first: dict[tuple, toyworld.Scene] = {}
    for scene in candidates:
        first.setdefault(scene_combo(scene), scene)
    if set(first) != combos:
        raise ValueError(f"{len(combos) - len(first)} held-out combination(s) not drawn in {walk} scenes")
    chosen = {s.seed for s in first.values()}
    second: dict[tuple, toyworld.Scene] = {}
    for scene in candidates:
        if len(first) + len(second) == confirm["prompts"]:
            break
        if scene.seed not in chosen and scene_combo(scene) not in second:
            second[scene_combo(scene)] = scene
    picked = list(first.values()) + list(second.values())
    return sorted(picked, key=lambda s: s.seed)


def registered_arm(protocol: dict, name: str) -> dict:
    arms = {arm["name"]: arm for arm in protocol.get("arm", [])}
    if name not in arms:
        raise click.BadParameter(f"{name!r} is not a registered arm of {PROTOCOL.name}; registered: {', '.join(arms)}",
                                 param_hint="--arm")
    return arms[name]


def confirmation_round(protocol: dict, number: int | None) -> dict:
    """The protocol's confirmation round ``number`` (default: the latest registered)."""
    rounds = {r["number"]: r for r in protocol.get("round", [])}
    if not rounds:
        raise click.ClickException(f"{PROTOCOL.name} registers no confirmation round")
    number = max(rounds) if number is None else number
    if number not in rounds:
        raise click.BadParameter(f"round {number} is not registered; registered rounds: "
                                 f"{', '.join(map(str, sorted(rounds)))}", param_hint="--round")
    return rounds[number]


def round_seeds(protocol: dict, chosen_round: dict) -> str:
    """The seeds of a confirmation round: the split's, or (a round registered after earlier rounds' results were
    read) its own, which must be fresh: no development seed, none of the split's or of an earlier round's."""
    from mpcore.jobs.generate import parse_seeds

    own = chosen_round.get("seeds")
    if own is None:
        return protocol["confirmation"]["seeds"]
    used = set(parse_seeds(protocol["development"]["seeds"])) | set(parse_seeds(protocol["confirmation"]["seeds"]))
    for earlier in protocol["round"]:
        if earlier["number"] < chosen_round["number"] and "seeds" in earlier:
            used |= set(parse_seeds(earlier["seeds"]))
    reused = sorted(set(parse_seeds(own)) & used)
    if reused:
        raise click.ClickException(f"round {chosen_round['number']}'s seeds {reused[:5]} were used before (development, "
                                   f"the split or an earlier round): a later round needs fresh seeds")
    return own


def check_registered_settings(folder: Path, arm: dict) -> int:
    """Stop unless every manifest in ``folder`` records the arm's registered settings (and discriminator).
    Returns the number of manifests checked."""
    import hashlib

    manifests = sorted(folder.glob("p*_s*.json"))
    hashes: dict[Path, str] = {}  # one discriminator file for a whole arm: hashed once
    for path in manifests:
        manifest = json.loads(path.read_text())
        recorded = manifest.get("motionprompt") if arm["guidance"] == "motionprompt" else manifest.get("guidance_settings")
        recorded = recorded or {}
        changed = [f"{key}: registered {value!r}, recorded {recorded.get(key)!r}"
                   for key, value in arm.get("settings", {}).items() if recorded.get(key) != value]
        expected_sha = arm.get("discriminator_sha256")
        if expected_sha:
            source = Path((manifest.get("discriminator") or {}).get("path") or "")
            if source not in hashes:
                hashes[source] = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else "missing"
            actual = hashes[source]
            if actual != expected_sha:
                changed.append(f"discriminator {source}: sha256 {actual[:12]}, registered {expected_sha[:12]}")
        if changed:
            raise click.ClickException(
                f"{path} was not generated with arm {arm['name']!r} as registered in {PROTOCOL.name} "
                f"({'; '.join(changed)}). Register a new arm (never edit a registered one) and run it.")
    return len(manifests)


def decide(comparison: dict, decision: dict) -> dict:
    """The protocol's decision rule on one arm's comparison with the baseline (see effect_protocol.toml)."""
    improved, worse = [], []
    for name, better in decision["measures"].items():
        row = comparison["metrics"].get(name)
        if row is None:
            raise ValueError(f"decision measure {name!r} has no comparison (unavailable: "
                             f"{comparison.get('unavailable', {}).get(name, 'not measured')})")
        low, high = row["ci"]
        if better not in ("lower", "higher"):
            raise ValueError(f"decision.measures.{name} must be 'lower' or 'higher', got {better!r}")
        better_side = high < 0 if better == "lower" else low > 0
        worse_side = low > 0 if better == "lower" else high < 0
        improved += [name] if better_side else []
        worse += [name] if worse_side else []
    fidelity_row = comparison["metrics"][decision["fidelity"]]
    fidelity_worse = fidelity_row["ci"][1] < 0
    confirmed = len(improved) >= decision["min_improved"] and not worse and not fidelity_worse
    return {"improved": improved, "worse": worse, "fidelity_worse": fidelity_worse, "confirmed": confirmed}


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


def gate_lines(gate: dict) -> list[str]:
    lines = [f"Gate (discriminator term drop, guided runs' traces; {'passed' if gate['passed'] else 'NOT passed'}):"]
    for name, label in (("over_iterations", "over the K iterations"), ("over_range", "over the range")):
        row = gate[name]
        if row["mean_drop"] is not None:
            source = f", measured on {row['source']}" if row.get("source") else ""
            lines.append(f"- {label}: {row['mean_drop']:+.4g} [{row['ci'][0]:+.4g}, {row['ci'][1]:+.4g}] "
                         f"({row['n']} videos{source})")
    return lines


def markdown(summary: dict) -> str:
    confirmation = summary["split"] == "confirmation"
    label = (f"CONFIRMATION split, round {summary.get('round')}: settings, arms, measures and rule fixed in advance in "
             "benchmarks/effect_protocol.toml"
             if confirmation else "DEVELOPMENT split: settings are chosen here; nothing here is a confirmed effect")
    lines = [f"# bench_effect ({summary['tag']}): guidance on the bundled toy model", "", f"**{label}.**", "",
             f"{summary['n_pairs']} pairs ({summary['prompts']} held-out prompts x seeds {summary['seeds']}), videos "
             f"measured as {summary.get('format', 'mp4')}; "
             f"git {summary['git']}", ""]
    for arm in summary["arms"]:
        name = arm["name"]
        lines += [f"## {name} ({arm['guidance']}; settings: {' '.join(arm['overrides']) or 'defaults'})", ""]
        lines += comparison_table(summary, summary["comparisons"][name], name)
        verdict = (summary.get("decisions") or {}).get(name)
        if verdict:
            lines += ["", f"Decision rule: **{'CONFIRMED' if verdict['confirmed'] else 'NOT confirmed'}**: "
                          f"better on {', '.join(verdict['improved']) or 'no measure'}; "
                          f"worse on {', '.join(verdict['worse']) or 'no measure'}; "
                          f"fidelity {'worse' if verdict['fidelity_worse'] else 'not worse'}."]
        if (summary.get("gates") or {}).get(name):
            lines += [""] + gate_lines(summary["gates"][name])
        lines.append("")
    lines += [f"Fidelity classifier accuracy on real held-out clips: {summary['classifier_real_accuracy']:.3f}.",
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


FIXED_BY_PROTOCOL = ("n_prompts", "seeds", "overrides", "steps", "flowmo_overrides", "probe_pairs", "resamples", "flowmo",
                     "video_format")


@click.command()
@click.option("--split", type=click.Choice(["development", "confirmation"]), default="development", show_default=True,
              help="development: any settings, on the development prompts and seeds (choosing). confirmation: the "
                   "registered arms on the confirmation split, everything from benchmarks/effect_protocol.toml "
                   "(claiming).")
@click.option("--round", "round_number", type=int, default=None,
              help="Confirmation: the registered round to run (default: the latest).")
@click.option("--arm", "arm_names", multiple=True,
              help="Confirmation: the round's arm(s) to run (default: all of the round's).")
@click.option("--prompts", "n_prompts", default=16, show_default=True, help="Held-out prompts (development).")
@click.option("--seeds", default="0-1", show_default=True, help="Development seeds (the protocol allows 0-99).")
@click.option("-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="MotionPrompt setting (repeatable).")
@click.option("--steps", type=int, default=None, help="DDIM steps (default: the toy model's).")
@click.option("--tag", default=None, help="Names the result files (default: 'default', or 'confirmation').")
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/mp_bench_effect"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks" / "results", show_default=True)
@click.option("--classifier-clips", default=2000, show_default=True)
@click.option("--classifier-epochs", default=6, show_default=True)
@click.option("--resamples", default=10000, show_default=True)
@click.option("--probe-pairs", default=3, show_default=True,
              help="The gate's probe (-o probe_pairs): held-out frame pairs scored before and after each step's "
                   "updates (the videos do not change; 0 = the gate from the iterations only).")
@click.option("--flowmo/--no-flowmo", default=True, show_default=True,
              help="Development: also sample each pair with FlowMo (--guidance flowmo) and compare it with the baseline.")
@click.option("--flowmo-set", "flowmo_overrides", multiple=True, metavar="KEY=VALUE", help="FlowMo setting (repeatable).")
@click.option("--format", "video_format", type=click.Choice(["frames", "mp4"]), default="frames", show_default=True,
              help="Development: how videos are written and measured. 'frames' (lossless PNG) measures what the model "
                   "made; the mp4 codec alone changes a toy video by ~2.5 grey levels, more than the guidance does "
                   "(results/token_leverage_reach_three_arms.md). Confirmation: the protocol's.")
@click.option("--smoke", is_flag=True, help="2 prompts, 1 seed, 4 steps, a barely trained classifier (tests).")
@click.pass_context
def main(ctx, split, round_number, arm_names, n_prompts, seeds, overrides, steps, tag, work, out, classifier_clips,
         classifier_epochs, resamples, probe_pairs, flowmo, flowmo_overrides, video_format, smoke):
    """Paired baseline vs MotionPrompt (and FlowMo) comparison on the bundled toy model."""
    protocol = load_protocol()
    if split == "confirmation":
        given = [name for name in FIXED_BY_PROTOCOL
                 if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given or smoke:
            raise click.UsageError(f"--split confirmation takes its settings from {PROTOCOL.name}; remove "
                                   f"{', '.join(['--smoke'] * smoke + [f'--{n}' for n in given])}")
        plan = confirmation_plan(protocol, round_number, arm_names, tag)
    else:
        if arm_names or round_number is not None:
            raise click.UsageError("--arm and --round name registered arms of the confirmation split; development arms are "
                                   "set with -o and --flowmo-set")
        if smoke:
            n_prompts, seeds, steps, classifier_clips, classifier_epochs, resamples = 2, "0", 4, 32, 1, 200
            tag = tag or "smoke"
        check_development_seeds(seeds, protocol)
        arms = [{"name": "guided", "guidance": "motionprompt", "overrides": list(overrides), "registered": None}]
        if flowmo:
            arms.append({"name": "flowmo", "guidance": "flowmo", "overrides": list(flowmo_overrides), "registered": None})
        plan = Plan("development", None, heldout_scenes(n_prompts, protocol["development"]["prompt_seed"]), seeds, steps,
                    probe_pairs, resamples, video_format, arms, tag or "default")
    run_dir = work / plan.tag
    run_dir.mkdir(parents=True, exist_ok=True)
    times = generate_arms(plan, run_dir)
    start = time.perf_counter()
    evaluated = {arm["name"]: evaluate_arm(plan, run_dir, arm["name"]) for arm in plan.arms}
    times["eval_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    classifier, classifier_accuracy = load_classifier(work, classifier_clips, classifier_epochs)
    times["classifier_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    summary = compare_arms(plan, protocol, evaluated, classifier, run_dir)
    times["object_measures_s"] = round(time.perf_counter() - start, 1)
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {
        "tag": plan.tag, "split": plan.split, "round": plan.round, "format": plan.video_format,
        "prompts": len(plan.scenes), "seeds": plan.seeds, "steps": plan.steps, "git": git,
        "classifier_real_accuracy": classifier_accuracy, **summary, "times": times,
        "arms": [{k: v for k, v in arm.items() if k != "registered"} for arm in plan.arms],
        "protocol": protocol if plan.split == "confirmation" else {"development": protocol["development"]},
        "seconds_per_video": {name: seconds_per_video(run_dir / name) for name in ["baseline", *plan.arm_names()]},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(summary, indent=1), out / f"bench_effect_{plan.tag}.json")
    write_text_atomic(markdown(summary), out / f"bench_effect_{plan.tag}.md")
    print(markdown(summary))


@dataclass
class Plan:
    """What one bench_effect run samples and measures."""

    split: str
    round: int | None
    scenes: list[toyworld.Scene]
    seeds: str
    steps: int | None
    probe_pairs: int
    resamples: int
    video_format: str
    arms: list[dict]  # name, guidance, overrides, registered (the protocol's arm, or None)
    tag: str

    def arm_names(self) -> list[str]:
        return [arm["name"] for arm in self.arms]

    def step_args(self) -> list[str]:
        return [f"--steps={self.steps}"] if self.steps else []

    def arm_args(self, arm: dict) -> list[str]:
        probe = [f"-oprobe_pairs={self.probe_pairs}"] if self.probe_pairs and arm["guidance"] == "motionprompt" else []
        return self.step_args() + [f"-o{o}" for o in arm["overrides"]] + probe


def confirmation_plan(protocol: dict, round_number: int | None, arm_names: tuple[str, ...], tag: str | None) -> Plan:
    """The confirmation split as the protocol fixes it, for a registered round (and a subset of its arms)."""
    confirm = protocol["confirmation"]
    chosen_round = confirmation_round(protocol, round_number)
    outside = [name for name in arm_names if name not in chosen_round["arms"]]
    if outside:
        raise click.BadParameter(f"{', '.join(outside)} not in round {chosen_round['number']}'s arms: "
                                 f"{', '.join(chosen_round['arms'])}", param_hint="--arm")
    registered = [registered_arm(protocol, name) for name in (arm_names or chosen_round["arms"])]
    arms = [{"name": a["name"], "guidance": a["guidance"], "overrides": list(a["overrides"]), "registered": a}
            for a in registered]
    number = chosen_round["number"]
    seeds = round_seeds(protocol, chosen_round)
    return Plan("confirmation", number, confirmation_scenes(protocol), seeds, confirm["steps"],
                confirm["probe_pairs"], confirm["resamples"], chosen_round["format"], arms,
                tag or ("confirmation" if number == 1 else f"confirmation_round{number}"))


def generate_arms(plan: Plan, run_dir: Path) -> dict:
    """The baseline and every arm through ``mpcore generate`` (each resumes); a registered arm's first video is
    checked against the protocol before the rest is sampled. Returns the times."""
    times = {}
    prompts = run_dir / "prompts.txt"
    prompts.write_text("\n".join(s.caption for s in plan.scenes) + "\n")
    first_prompt = run_dir / "first_prompt.txt"
    first_prompt.write_text(plan.scenes[0].caption + "\n")
    start = time.perf_counter()
    generate(prompts, plan.seeds, run_dir / "baseline", "none", plan.step_args(), plan.video_format)
    times["generate_baseline_s"] = round(time.perf_counter() - start, 1)
    for arm in plan.arms:
        start = time.perf_counter()
        folder = run_dir / arm["name"]
        if arm["registered"]:  # one video first: a registered arm whose settings drifted stops before the long run
            first_seed = plan.seeds.split("-")[0].split(",")[0]
            generate(first_prompt, first_seed, folder, arm["guidance"], plan.arm_args(arm), plan.video_format)
            check_registered_settings(folder, arm["registered"])
        generate(prompts, plan.seeds, folder, arm["guidance"], plan.arm_args(arm), plan.video_format)
        if arm["registered"]:
            check_registered_settings(folder, arm["registered"])
        times[f"generate_{arm['name']}_s"] = round(time.perf_counter() - start, 1)
    return times


def evaluate_arm(plan: Plan, run_dir: Path, name: str) -> dict:
    """``mpcore eval --compare`` of the baseline and one arm (the temporal metrics, per video and paired)."""
    eval_json = run_dir / f"eval_{name}.json"
    run(sys.executable, "-m", "mpcore", "eval", "--compare", str(run_dir / "baseline"), str(run_dir / name),
        "--metrics", ",".join(EVAL_METRICS), "--json", str(eval_json), "--out", str(run_dir / f"comparison_{name}"),
        "--resamples", str(plan.resamples), "--no-progress")
    return json.loads(eval_json.read_text())


def compare_arms(plan: Plan, protocol: dict, evaluated: dict, classifier, run_dir: Path) -> dict:
    """Object measures and fidelity of every video, each arm's paired comparison with the baseline, the
    decision rule (confirmation), the gate (MotionPrompt arms) and the real clips' reference."""
    from mp_plugin_tvl1 import load as load_tvl1

    from mpcore.analysis.diagnose import gate

    flow = load_tvl1(None, "cpu")
    first = evaluated[plan.arms[0]["name"]]
    pairs = [tuple(p) for p in first["pairs"]]
    captions = [json.loads(Path(b).with_suffix(".json").read_text())["prompt"] for b, _ in pairs]
    base_objects = measure([Path(b) for b, _ in pairs], captions, classifier, flow)
    baseline = joined(first["baseline"], base_objects, [b for b, _ in pairs])
    comparisons, gates, decisions, per_video = {}, {}, {}, {"baseline": baseline["videos"], "captions": captions}
    for arm in plan.arms:
        arm_pairs = [tuple(p) for p in evaluated[arm["name"]]["pairs"]]
        if [b for b, _ in arm_pairs] != [b for b, _ in pairs]:
            raise click.ClickException(f"arm {arm['name']} is not paired with every baseline video")
        arm_objects = measure([Path(g) for _, g in arm_pairs], captions, classifier, flow)
        joined_arm = joined(evaluated[arm["name"]]["guided"], arm_objects, [g for _, g in arm_pairs])
        per_video[arm["name"]] = joined_arm["videos"]
        comparisons[arm["name"]] = paired_comparison(baseline, joined_arm, arm_pairs, seed=0, resamples=plan.resamples)
        if plan.split == "confirmation":
            decisions[arm["name"]] = decide(comparisons[arm["name"]], protocol["decision"])
        if arm["guidance"] == "motionprompt":  # the gate: does the discriminator term fall over the K iterations and the range?
            manifests = [json.loads(Path(g).with_suffix(".json").read_text()) for _, g in arm_pairs]
            gates[arm["name"]] = gate([m["result"] for m in manifests if m.get("result")], seed=0,
                                      resamples=plan.resamples)
    reference = real_reference(plan.scenes, classifier, flow, run_dir, plan.video_format)
    return {"n_pairs": len(pairs), "real_reference": reference, "comparisons": comparisons, "gates": gates,
            "decisions": decisions, "per_video": per_video}


def check_development_seeds(seeds: str, protocol: dict) -> None:
    """Development runs stay on the development seeds: a confirmation seed used while choosing would no
    longer be fresh."""
    from mpcore.jobs.generate import parse_seeds

    allowed = set(parse_seeds(protocol["development"]["seeds"]))
    outside = sorted(set(parse_seeds(seeds)) - allowed)
    if outside:
        raise click.BadParameter(f"seeds {outside[:5]} are outside the development seeds "
                                 f"{protocol['development']['seeds']} of {PROTOCOL.name}", param_hint="--seeds")


if __name__ == "__main__":
    main()
