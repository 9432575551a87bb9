#!/usr/bin/env python
"""Two arms of two ``bench_effect`` runs against each other, paired by (prompt, seed).

``bench_effect`` compares each guided arm with its baseline; to choose between two settings of the same
guidance (e.g. ``-o rollout_prompt=guided`` vs ``as_sampled``) on the same prompts, seeds and initial
noise, this pairs the videos of arm ``--arm-a`` of run A with those of ``--arm-b`` of run B by file name
(``pXXXX_sYYYY``) and gives B - A per measure with a 95% paired bootstrap CI
(:func:`mpcore.analysis.compare.paired_comparison`).

    python benchmarks/compare_effect_runs.py results/bench_effect_rollout_guided.json \\
        results/bench_effect_rollout_as_sampled.json --label-a guided --label-b as_sampled --tag rollout_prompt

When both arms are MotionPrompt runs whose manifests are still on disk (the paths in the runs' ``per_video``),
it also pairs their discriminator-term drop over the optimization range (:func:`mpcore.analysis.diagnose.term_drops`,
what the method optimizes) and applies issue 31's rule for a cheaper variant B of an exact method A: B's mean
drop within 10% of A's, and no measure (none uses the discriminator) with a CI of B - A excluding 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_effect import LOWER_IS_BETTER, NEUTRAL  # noqa: E402

from mpcore.analysis.compare import bootstrap_ci, paired_comparison  # noqa: E402
from mpcore.analysis.diagnose import term_drops  # noqa: E402
from mpcore.io.files import write_text_atomic  # noqa: E402

DROP_TOLERANCE = 0.10
"""A variant's mean discriminator-term drop over the range must be within this fraction of the exact method's."""


def by_name(videos: dict) -> dict:
    return {Path(path).stem: row for path, row in videos.items()}


def compare(run_a: dict, run_b: dict, arm_a: str, arm_b: str, resamples: int) -> dict:
    a, b = by_name(run_a["per_video"][arm_a]), by_name(run_b["per_video"][arm_b])
    names = sorted(set(a) & set(b))
    if not names:
        raise click.UsageError("the two runs share no (prompt, seed) videos")
    pairs = [(f"a/{n}", f"b/{n}") for n in names]
    return paired_comparison({"videos": {f"a/{n}": a[n] for n in names}},
                             {"videos": {f"b/{n}": b[n] for n in names}}, pairs, seed=0, resamples=resamples)


def range_drops(run: dict, arm: str) -> dict[str, float] | None:
    """Each video's discriminator-term drop over the range, by ``pXXXX_sYYYY``, from its manifest (None if
    the manifests are gone or the arm's videos have no MotionPrompt trace)."""
    drops = {}
    for path in run["per_video"][arm]:
        manifest = Path(path).with_suffix(".json")
        if not manifest.exists():
            return None
        drop = term_drops(json.loads(manifest.read_text()).get("result") or {}, "disc")["over_range"]
        if drop is not None:
            drops[Path(path).stem] = drop
    return drops or None


def judge_variant(comparison: dict, drops_a: dict[str, float], drops_b: dict[str, float], resamples: int) -> dict:
    """Issue 31's rule for variant B of exact method A (paired by video): B's mean drop of the discriminator term
    over the range within DROP_TOLERANCE of A's, and no measure's 95% CI of B - A excluding 0."""
    names = sorted(set(drops_a) & set(drops_b))
    a = np.array([drops_a[n] for n in names])
    b = np.array([drops_b[n] for n in names])
    ratio = float(b.mean() / a.mean())
    rng = np.random.default_rng(0)  # paired bootstrap of the ratio of means
    picks = rng.integers(0, len(names), size=(resamples, len(names)))
    ratios = b[picks].mean(1) / a[picks].mean(1)
    differing = [name for name, row in comparison["metrics"].items() if row["ci"][0] > 0 or row["ci"][1] < 0]
    drop_kept = abs(ratio - 1.0) <= DROP_TOLERANCE
    return {"n": len(names), "drop_a": float(a.mean()), "drop_b": float(b.mean()), "ratio": ratio,
            "ratio_ci": [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))],
            "difference_ci": list(bootstrap_ci(b - a, 0, resamples)), "drop_within_tolerance": drop_kept,
            "measures_differing": differing, "kept": drop_kept and not differing}


def judgement_lines(judgement: dict, label_a: str, label_b: str) -> list[str]:
    verdict = "KEPT" if judgement["kept"] else "NOT kept"
    return [f"Variant rule (issue 31): **{verdict}**.",
            f"- discriminator term's drop over the range: {label_a} {judgement['drop_a']:+.4g}, {label_b} "
            f"{judgement['drop_b']:+.4g}; ratio {judgement['ratio']:.3f} [{judgement['ratio_ci'][0]:.3f}, "
            f"{judgement['ratio_ci'][1]:.3f}] (within {DROP_TOLERANCE:.0%}: {judgement['drop_within_tolerance']}); "
            f"{label_b} - {label_a} {judgement['difference_ci'][0]:+.4g} .. {judgement['difference_ci'][1]:+.4g} "
            f"(95% CI, {judgement['n']} videos)",
            f"- measures whose CI of {label_b} - {label_a} excludes 0: {', '.join(judgement['measures_differing']) or 'none'}"]


def table(comparison: dict, label_a: str, label_b: str) -> list[str]:
    lines = [f"| measure | better | {label_a} | {label_b} | {label_b} - {label_a} [95% CI] | {label_b} better in |",
             "|---|---|---|---|---|---|"]
    for name, row in comparison["metrics"].items():
        better = "lower" if name in LOWER_IS_BETTER else ("-" if name in NEUTRAL else "higher")
        wins = row["wins"] if better == "higher" else row["losses"]
        wins_text = "" if better == "-" else f"{wins}/{row['n']}"
        lines.append(f"| {name} | {better} | {row['baseline']:.4g} | {row['guided']:.4g} | {row['diff']:+.4g} "
                     f"[{row['ci'][0]:+.4g}, {row['ci'][1]:+.4g}] | {wins_text} |")
    return lines


@click.command()
@click.argument("run_a", type=click.Path(exists=True, path_type=Path))
@click.argument("run_b", type=click.Path(exists=True, path_type=Path))
@click.option("--arm-a", default="guided", show_default=True)
@click.option("--arm-b", default="guided", show_default=True)
@click.option("--label-a", default="A")
@click.option("--label-b", default="B")
@click.option("--tag", required=True, help="Names the result files (compare_<tag>.json/.md).")
@click.option("--resamples", default=10000, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks" / "results", show_default=True)
def main(run_a, run_b, arm_a, arm_b, label_a, label_b, tag, resamples, out):
    first, second = json.loads(run_a.read_text()), json.loads(run_b.read_text())
    comparison = compare(first, second, arm_a, arm_b, resamples)
    summary = {"a": {"run": run_a.name, "arm": arm_a, "label": label_a, "overrides": first.get("overrides")},
               "b": {"run": run_b.name, "arm": arm_b, "label": label_b, "overrides": second.get("overrides")},
               "comparison": comparison}
    lines = [f"# {label_b} vs {label_a} ({len(comparison['pairs'])} paired videos)", "",
             f"A: {run_a.name} arm {arm_a}; B: {run_b.name} arm {arm_b}", ""] + table(comparison, label_a, label_b)
    drops_a, drops_b = range_drops(first, arm_a), range_drops(second, arm_b)
    if drops_a and drops_b:
        summary["variant_rule"] = judge_variant(comparison, drops_a, drops_b, resamples)
        lines += [""] + judgement_lines(summary["variant_rule"], label_a, label_b)
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(summary, indent=1), out / f"compare_{tag}.json")
    write_text_atomic(text + "\n", out / f"compare_{tag}.md")
    print(text)


if __name__ == "__main__":
    main()
