#!/usr/bin/env python
"""What can the learned token do at all, and does the discriminator's verdict mean better motion? (issue 32, item 2)

Two measurements on the development split of ``benchmarks/effect_protocol.toml`` (never the confirmation split):

``agreement``: the bundled toy discriminator D scores every adjacent frame pair of finished videos (TV-L1 flow of
the decoded uint8 frames, the estimator and size D was trained with). Per video: the mean logit (higher = "real").
On the real clips of the development scenes vs the model's own videos (an AUC), and over the generated videos:
the Spearman correlation of the logit with each discriminator-independent measure of ``bench_effect`` (does a
higher logit go with lower jerk, warp error, drift?), across videos and across the pairs' differences
(guided - baseline), read from a ``bench_effect`` result JSON and its videos.

``reach``: how far the finished video moves under token changes of the size MotionPrompt's updates take. The toy
model samples each (prompt, seed) with the plain prompt, with the guided prompt whose token stays at its init
word, and with the token at init + r u over the optimization range (u a random unit direction, r = the median
token drift of a guided bench_effect run times 1, 4, 16, 64, 256). Per video: the mean absolute pixel change
(0-255) of the final video from the init-token video, against the same prompt's seed-to-seed change and the change
the optimized token made (the guided run's videos; a codec floor is measured too), and the change of D's logit.

    python benchmarks/bench_token_leverage.py agreement --result benchmarks/results/bench_effect_three_arms.json
    python benchmarks/bench_token_leverage.py reach --result benchmarks/results/bench_effect_three_arms.json

Writes ``results/token_leverage_<command>[_<tag>].{json,md}`` atomically.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from mpcore.analysis.compare import bootstrap_ci  # noqa: E402
from mpcore.analysis.diagnose import roc_auc  # noqa: E402
from mpcore.io.files import write_text_atomic  # noqa: E402
from mpcore.motionprompt import MotionPrompt  # noqa: E402
from mpcore.sampling import StepCondition  # noqa: E402
from mpcore.toy.metrics import to_unit_frames  # noqa: E402

TOY_DISCRIMINATOR = ROOT / "plugins" / "mp-plugin-animatediff" / "mp_plugin_animatediff" / "toy" / "discriminator.safetensors"
MEASURES = {"flow_warp_error": "lower", "temporal_flickering": "higher", "presence": "higher", "size_drift": "lower",
            "color_drift": "lower", "centroid_jerk": "lower", "flow_spread": "lower", "direction_agreement": "higher"}


def git_sha() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def load_scorers(discriminator: Path = TOY_DISCRIMINATOR):
    """The toy discriminator and the flow estimator it was trained with (``trained_on``: tvl1_fast, 32 px)."""
    from mpcore import plugins

    disc = plugins.get("discriminator", "vit").spec.load(str(discriminator), "cpu")
    flow = plugins.get("flow", "tvl1_fast").spec.load(None, "cpu", seed=0)
    return disc, flow


@torch.no_grad()
def video_logits(frames: np.ndarray, disc, flow) -> np.ndarray:
    """D's logit of every adjacent frame pair (f, f + 1) of a uint8 (F, H, W, 3) video."""
    images = to_unit_frames(frames) * 2.0 - 1.0
    flows = flow(images[:-1], images[1:]).float()
    return disc(flows).float().numpy()


def spearman(a, b) -> dict[str, Any]:
    """Spearman's rho with a 95% bootstrap CI (pairs resampled), over the finite pairs."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 5 or np.ptp(a) == 0 or np.ptp(b) == 0:  # too few, or a constant side: no rank correlation
        return {"n": int(len(a)), "rho": None, "ci": None}
    rho = float(stats.spearmanr(a, b).statistic)
    rng = np.random.default_rng(0)
    boot = []
    for _ in range(2000):
        index = rng.integers(0, len(a), len(a))
        value = stats.spearmanr(a[index], b[index]).statistic
        if np.isfinite(value):
            boot.append(value)
    return {"n": int(len(a)), "rho": rho, "ci": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}


def by_item(videos: dict[str, dict]) -> dict[str, tuple[str, dict]]:
    """per_video rows keyed by item name (p0000_s0000), with their path."""
    return {Path(path).stem: (path, row) for path, row in videos.items()}


def arms_of(result: dict) -> tuple[dict, dict]:
    """(baseline, guided) per_video rows of a bench_effect result, old ('guided') or new (first arm) layout."""
    per_video = result["per_video"]
    guided_name = "guided" if "guided" in per_video else result["arms"][0]["name"]
    return by_item(per_video["baseline"]), by_item(per_video[guided_name])


@click.group()
def main():
    """Token leverage and discriminator agreement on the toy model (development split only)."""


@main.command("agreement")
@click.option("--result", "result_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="A bench_effect result JSON on the development split (its videos must still exist).")
@click.option("--real", "n_real", default=64, show_default=True, help="Real clips of the development scenes.")
@click.option("--tag", default="", help="Names the result files.")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks" / "results", show_default=True)
def agreement(result_path, n_real, tag, out):
    """D's verdict vs the discriminator-independent measures, on real and generated videos."""
    from bench_effect import heldout_scenes, load_protocol

    from mpcore.io.video import read_video
    from mpcore.toy import world as toyworld

    result = json.loads(result_path.read_text())
    if result.get("split", "development") != "development":
        raise click.UsageError(f"{result_path} is a {result['split']} run: choices are made on development runs only")
    disc, flow = load_scorers()
    protocol = load_protocol()
    real = [video_logits(toyworld.render(s).uint8(), disc, flow).mean()
            for s in heldout_scenes(n_real, protocol["development"]["prompt_seed"])]
    baseline, guided = arms_of(result)
    items = sorted(set(baseline) & set(guided))
    logit = {arm: {i: float(video_logits(read_video(rows[i][0]), disc, flow).mean()) for i in items}
             for arm, rows in (("baseline", baseline), ("guided", guided))}
    summary: dict[str, Any] = {
        "result": str(result_path.relative_to(ROOT) if result_path.is_relative_to(ROOT) else result_path),
        "git": git_sha(), "n_real": n_real, "n_pairs": len(items),
        "logit_mean": {"real": float(np.mean(real)), "baseline": float(np.mean(list(logit["baseline"].values()))),
                       "guided": float(np.mean(list(logit["guided"].values())))},
        "auc_real_vs_baseline": float(roc_auc(real, list(logit["baseline"].values()))),
    }
    diffs = np.array([logit["guided"][i] - logit["baseline"][i] for i in items])
    summary["guided_minus_baseline_logit"] = {"mean": float(diffs.mean()), "ci": list(bootstrap_ci(diffs)),
                                              "higher_in": int((diffs > 0).sum())}
    across, paired = {}, {}
    for name, better in MEASURES.items():
        values = {arm: [rows[i][1].get(name) for i in items] for arm, rows in (("baseline", baseline), ("guided", guided))}
        values = {arm: [np.nan if v is None else float(v) for v in vs] for arm, vs in values.items()}
        # across videos: every generated video (both arms) is one point
        across[name] = {"better": better, **spearman(list(logit["baseline"].values()) + list(logit["guided"].values()),
                                                     values["baseline"] + values["guided"])}
        paired[name] = {"better": better, **spearman(diffs, np.array(values["guided"]) - np.array(values["baseline"]))}
    summary["across_videos"], summary["paired_differences"] = across, paired
    write(summary, out, "agreement", tag, agreement_markdown(summary))


def agreement_markdown(s: dict) -> str:
    lines = ["# Does the toy discriminator's verdict mean better motion? (development split)", "",
             f"From `{s['result']}` ({s['n_pairs']} pairs) and {s['n_real']} real clips; git {s['git']}. "
             "Mean logit of D over a video's 7 adjacent frame pairs (TV-L1 flow of the decoded frames).", "",
             f"- mean logit: real clips {s['logit_mean']['real']:+.2f}, baseline {s['logit_mean']['baseline']:+.2f}, "
             f"guided {s['logit_mean']['guided']:+.2f}; AUC real vs baseline {s['auc_real_vs_baseline']:.3f}",
             f"- guided - baseline logit per pair: {s['guided_minus_baseline_logit']['mean']:+.3f} "
             f"[{s['guided_minus_baseline_logit']['ci'][0]:+.3f}, {s['guided_minus_baseline_logit']['ci'][1]:+.3f}], "
             f"higher in {s['guided_minus_baseline_logit']['higher_in']}/{s['n_pairs']}", "",
             "Spearman rho of the logit with each measure. If D's verdict meant better motion, rho would be negative "
             "for lower-is-better measures and positive for higher-is-better ones.", "",
             "| measure | better | across generated videos: rho [95% CI] (n) | across pairs, guided - baseline: rho [95% CI] (n) |",
             "|---|---|---|---|"]

    def cell(row):
        if row["rho"] is None:
            return f"- ({row['n']})"
        return f"{row['rho']:+.3f} [{row['ci'][0]:+.3f}, {row['ci'][1]:+.3f}] ({row['n']})"

    for name, row in s["across_videos"].items():
        lines.append(f"| {name} | {row['better']} | {cell(row)} | {cell(s['paired_differences'][name])} |")
    return "\n".join(lines) + "\n"


class FixedTokenOffset(MotionPrompt):
    """The guided prompt with its token held at init + ``offset`` over the optimization range, no optimization:
    what the finished video would be for a token moved by ``offset``."""

    def __init__(self, config, offset: torch.Tensor | None):
        super().__init__(config, None, None)
        self.offset = offset

    def condition(self, step, t, latents, cond, uncond) -> StepCondition | None:
        if not self.in_range(step):
            return None
        with torch.no_grad():
            self.tokens.copy_(self.init_embeddings + (0 if self.offset is None else self.offset))
        return StepCondition(cond=self.commit_tokens())


def toy_models(steps: int | None, overrides: tuple[str, ...] = ()):
    """The toy model, its flow estimator and discriminator, loaded as ``mpcore run`` loads them."""
    from bench_tiny_decoder import run_options

    from mpcore.jobs.setup import load, prepare

    args = dict(backbone=None, model="toy", steps=steps, flow=None, flow_weights=None, discriminator=None,
                device="cpu", backbone_option=())
    setup = prepare(run_options(args, list(overrides)))
    return setup, load(setup)


def uint8_video(backbone, latents) -> np.ndarray:
    from mpcore.io.video import to_uint8_frames
    from mpcore.sampling import decode_video

    return to_uint8_frames(decode_video(backbone, latents))


@main.command("reach")
@click.option("--result", "result_path", type=click.Path(exists=True, path_type=Path), required=True,
              help="A bench_effect development result: its guided videos, manifests (token drift) and baseline mp4s.")
@click.option("--prompts", "n_prompts", default=8, show_default=True)
@click.option("--seeds", default="0,1", show_default=True)
@click.option("--multiples", default="1,4,16,64,256", show_default=True, help="r as multiples of the median drift.")
@click.option("--directions", default=2, show_default=True, help="Random directions per multiple.")
@click.option("-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="MotionPrompt setting of the token and the optimized run (e.g. placement=start, num_tokens=3).")
@click.option("--tag", default="", help="Names the result files.")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks" / "results", show_default=True)
def reach(result_path, n_prompts, seeds, multiples, directions, overrides, tag, out):
    """How far the finished video moves when the token moves (see the module docstring)."""
    from bench_effect import heldout_scenes, load_protocol
    from bench_tiny_decoder import motion_of

    result = json.loads(result_path.read_text())
    if result.get("split", "development") != "development":
        raise click.UsageError(f"{result_path} is a {result['split']} run: choices are made on development runs only")
    baseline_rows, guided_rows = arms_of(result)
    # the token drift of each guided video of the result (its manifest), and their median: the unit of r
    drift_by_item = {item: json.loads(Path(path).with_suffix(".json").read_text())["result"]["token_drift_l2"][0]
                     for item, (path, _) in guided_rows.items()}
    drift = float(np.median(list(drift_by_item.values())))
    seed_list = [int(s) for s in seeds.split(",")]
    factors = [float(m) for m in multiples.split(",")]
    setup, models = toy_models(result.get("steps"), overrides)
    scorers = load_scorers()
    captions = [s.caption for s in heldout_scenes(n_prompts, load_protocol()["development"]["prompt_seed"])]
    table = models.backbone.text.embedding_table().detach().float()
    rows, previous_plain = [], {}
    for p, caption in enumerate(captions):
        plain_by_seed = {}
        for seed in seed_list:
            item = f"p{p:04d}_s{seed:04d}"
            row, plain_by_seed[seed] = reach_row(setup, models, scorers, caption, seed, p, drift, factors, directions,
                                                 table.shape[1])
            row = {"item": item, **row}
            if seed in previous_plain:  # the whole text's leverage: the previous prompt, same seed (same x_T)
                row["other_prompt_change"] = mae(plain_by_seed[seed], previous_plain[seed])
            row.update(codec_rows(item, plain_by_seed[seed], baseline_rows, guided_rows, drift_by_item))
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        previous_plain = plain_by_seed
        if len(seed_list) > 1:
            seed_change = mae(plain_by_seed[seed_list[0]], plain_by_seed[seed_list[1]])
            for row in rows[-len(seed_list):]:
                row["seed_to_seed_change"] = seed_change
    summary = {"result": str(result_path.relative_to(ROOT) if result_path.is_relative_to(ROOT) else result_path),
               "git": git_sha(), "overrides": list(overrides), "median_drift": drift,
               "word_embedding_norm_median": float(table.norm(dim=-1).median()),
               "opt_range": list(motion_of(setup).resolved_opt_range(setup.sampler.steps)), "multiples": factors,
               "directions": directions, "rows": rows,
               "means": {k: float(np.mean([r[k] for r in rows if k in r])) for k in rows[-1] if k.endswith(
                   ("change", "floor", "drift", "_raw", "_mp4")) or k.startswith(("change_", "abs_logit"))}}
    write(summary, out, "reach", tag, reach_markdown(summary))


def reach_row(setup, models, scorers, caption: str, seed: int, prompt_index: int, drift: float, factors: list[float],
              directions: int, width: int) -> tuple[dict[str, Any], np.ndarray]:
    """One (prompt, seed): the plain video, the token at its init, MotionPrompt with the given settings, and the
    token moved r = factor x drift in random directions; the changes in grey levels and of D's mean logit.
    Returns (the row, the plain video)."""
    from bench_tiny_decoder import motion_of

    from mpcore.sampling import sample

    disc, flow = scorers
    motion = motion_of(setup)
    sampler = dataclasses.replace(setup.sampler, seed=seed)

    def video_of(guidance) -> tuple[np.ndarray, dict | None]:
        result = sample(models.backbone, caption, sampler, guidance, progress=False)
        return uint8_video(models.backbone, result.latents), result.guidance

    def mean_logit(video: np.ndarray) -> float:
        return float(video_logits(video, disc, flow).mean())

    plain, _ = video_of(None)
    init, _ = video_of(FixedTokenOffset(motion, None))
    optimized, finished = video_of(MotionPrompt(motion, models.guidance.flow_estimator, models.guidance.discriminator))
    row: dict[str, Any] = {"prompt": caption, "seed": seed, "suffix_change": mae(init, plain),
                           "optimized_change_raw": mae(optimized, plain),
                           "optimized_drift_raw": finished["token_drift_l2"][0],
                           "optimized_logit_change": mean_logit(optimized) - mean_logit(plain)}
    init_logit = mean_logit(init)
    generator = torch.Generator().manual_seed(1000 * prompt_index + seed)
    for factor in factors:
        changes, logit_changes = [], []
        for _ in range(directions):
            # one random direction in the space of all tokens' rows, of norm r per token
            direction = torch.randn(motion.num_tokens, width, generator=generator)
            moved, _ = video_of(FixedTokenOffset(motion, (factor * drift) * direction / direction.norm(dim=-1, keepdim=True)))
            changes.append(mae(moved, init))
            logit_changes.append(mean_logit(moved) - init_logit)
        row[f"change_x{factor:g}"] = float(np.mean(changes))
        row[f"abs_logit_change_x{factor:g}"] = float(np.mean(np.abs(logit_changes)))
    return row, plain


def codec_rows(item: str, plain: np.ndarray, baseline_rows: dict, guided_rows: dict, drift_by_item: dict) -> dict:
    """What the result file's own (mp4) videos of ``item`` say: the codec floor (its baseline mp4 vs the plain
    video decoded here) and the change its guided run made (both mp4)."""
    from mpcore.io.video import read_video

    row = {}
    if item in baseline_rows:
        baseline = read_video(baseline_rows[item][0])
        row["codec_floor"] = mae(baseline, plain)
        if item in guided_rows:
            row["optimized_change_mp4"] = mae(read_video(guided_rows[item][0]), baseline)
            row["optimized_drift"] = drift_by_item[item]
    return row


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 videos, grey levels 0-255."""
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def reach_markdown(s: dict) -> str:
    m = s["means"]
    lines = ["# How far can the token move the finished video? (development split)", "",
             f"{len(s['rows'])} videos (from `{s['result']}`), optimization range {s['opt_range']}, settings: "
             f"{' '.join(s['overrides']) or 'defaults'}; git {s['git']}. "
             f"Median token drift of the guided run: {s['median_drift']:.4g} (L2; a word embedding's norm: "
             f"{s['word_embedding_norm_median']:.3g}). Mean absolute change of the final video, grey levels 0-255.", "",
             "| what changed | mean change |", "|---|---|",
             f"| mp4 codec alone (floor) | {m.get('codec_floor', float('nan')):.3f} |",
             f"| the result file's guided run vs its baseline (its own settings, both mp4) | "
             f"{m.get('optimized_change_mp4', float('nan')):.3f} |",
             f"| the optimized token (MotionPrompt with the settings above vs plain, no codec; median drift "
             f"{np.median([r['optimized_drift_raw'] for r in s['rows']]):.3g}) | {m['optimized_change_raw']:.3f} "
             f"(logit change {m['optimized_logit_change']:+.3f}) |",
             f"| appending the token at its init word (guided prompt vs plain) | {m['suffix_change']:.3f} |",
             f"| another seed, same prompt | {m.get('seed_to_seed_change', float('nan')):.3f} |",
             f"| another prompt, same seed (the whole text's leverage) | {m.get('other_prompt_change', float('nan')):.3f} |"]
    for factor in s["multiples"]:
        lines.append(f"| token moved {factor:g} x median drift, random direction | {m[f'change_x{factor:g}']:.3f} "
                     f"(abs logit change {m[f'abs_logit_change_x{factor:g}']:.3f}) |")
    return "\n".join(lines) + "\n"


def write(summary: dict, out: Path, command: str, tag: str, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = f"token_leverage_{command}" + (f"_{tag}" if tag else "")
    write_text_atomic(json.dumps(summary, indent=1), out / f"{name}.json")
    write_text_atomic(text, out / f"{name}.md")
    print(text)


if __name__ == "__main__":
    main()
