#!/usr/bin/env python
"""Two arms of two ``bench_effect`` runs against each other, paired by (prompt, seed).

``bench_effect`` compares each guided arm with its baseline; to choose between two settings of the same
guidance (e.g. ``-o rollout_prompt=guided`` vs ``as_sampled``) on the same prompts, seeds and initial
noise, this pairs the videos of arm ``--arm-a`` of run A with those of ``--arm-b`` of run B by file name
(``pXXXX_sYYYY``) and gives B - A per measure with a 95% paired bootstrap CI
(:func:`mpcore.analysis.compare.paired_comparison`).

    python benchmarks/compare_effect_runs.py results/bench_effect_rollout_guided.json \\
        results/bench_effect_rollout_as_sampled.json --label-a guided --label-b as_sampled --tag rollout_prompt
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_effect import LOWER_IS_BETTER, NEUTRAL  # noqa: E402

from mpcore.analysis.compare import paired_comparison  # noqa: E402
from mpcore.io.files import write_text_atomic  # noqa: E402


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
    text = "\n".join([f"# {label_b} vs {label_a} ({len(comparison['pairs'])} paired videos)", "",
                      f"A: {run_a.name} arm {arm_a}; B: {run_b.name} arm {arm_b}", ""] + table(comparison, label_a, label_b))
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(summary, indent=1), out / f"compare_{tag}.json")
    write_text_atomic(text + "\n", out / f"compare_{tag}.md")
    print(text)


if __name__ == "__main__":
    main()
