#!/usr/bin/env python
"""The token ablations of MotionPrompt (appendix B.1) on the bundled toy model, paired with one baseline.

The paper varies, one at a time from its default (1 token placed at the END of the prompt, initialised
from 'authentic'):

* the number of learnable tokens: 1 / 2 / 3 (inits 'authentic', 'real', 'clear');
* their placement: end (P + S) / start (S + P);
* the init: the quality word 'authentic' / a neutral word (``--neutral-word``, 'thing') / a random row
  (``-o init_words=random``: per-dimension normal with the vocabulary's mean and std).

Every variant samples the same held-out prompts and seeds as ONE plain baseline (same initial noise),
through ``mpcore generate`` like :mod:`bench_effect`, and is measured with bench_effect's measures that
do not use the discriminator (TV-L1 warping error, VBench flicker, flow-interpolation smoothness, the
toy world's exact object measures and the caption classifier's fidelity). Each measure gets the
variant - baseline mean difference with a 95% paired bootstrap CI
(:func:`mpcore.analysis.compare.paired_comparison`); the tokens' drift from their init (L2, cosine)
comes from the guided runs' manifests.

    python benchmarks/bench_ablation.py                  # 8 prompts x 2 seeds, 6 variants
    python benchmarks/bench_ablation.py --smoke          # 1 prompt, 1 seed, 3 steps, 2 variants (tests)

Writes ``<out>/bench_ablation_<tag>.json`` and ``.md`` (atomically).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_effect  # noqa: E402
from mpcore.analysis.compare import paired_comparison  # noqa: E402
from mpcore.io.files import write_text_atomic  # noqa: E402

DEFAULT = {"num_tokens": "1", "placement": "end", "init_words": "authentic"}
"""The paper's setting every variant departs from in one factor."""
TABLE_MEASURES = ("flow_warp_error", "temporal_flickering", "centroid_jerk", "flow_spread", "color_drift",
                  "size_drift", "direction_agreement", "fidelity")
"""Columns of the markdown table (the JSON holds every measure)."""


def variants(neutral_word: str) -> dict[str, dict[str, str]]:
    """Name -> MotionPrompt overrides: the default and one factor changed at a time (appendix B.1)."""
    return {
        "default (1 token, end, authentic)": dict(DEFAULT),
        "2 tokens (authentic, real)": {**DEFAULT, "num_tokens": "2", "init_words": "authentic,real,clear"},
        "3 tokens (authentic, real, clear)": {**DEFAULT, "num_tokens": "3", "init_words": "authentic,real,clear"},
        "placement start": {**DEFAULT, "placement": "start"},
        f"init '{neutral_word}' (neutral)": {**DEFAULT, "init_words": neutral_word},
        "init random": {**DEFAULT, "init_words": "random"},
    }


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def mpcore(*args: str) -> None:
    """Run an ``mpcore`` command in this process (no interpreter start and torch import per call, which
    costs more than a smoke run's sampling)."""
    from mpcore.cli.main import build_cli

    print("$ mpcore " + " ".join(args), flush=True)
    build_cli().main(args=list(args), prog_name="mpcore", standalone_mode=False)


def generate(prompts: Path, seeds: str, out: Path, guidance: str, extra: list[str]) -> None:
    """:func:`bench_effect.generate`'s command (the toy model), in process."""
    mpcore("generate", "--model", "toy", "--prompts", str(prompts), "--seeds", seeds, "--out", str(out),
           "--guidance", guidance, "--no-progress", *extra)


def evaluate(folder: Path, json_path: Path) -> dict:
    """``mpcore eval`` of one folder (each video set is evaluated once, the baseline shared by all)."""
    mpcore("eval", str(folder), "--metrics", ",".join(bench_effect.EVAL_METRICS), "--json", str(json_path),
           "--no-progress")
    result = json.loads(json_path.read_text())
    result["videos"] = {str(Path(k).resolve()): v for k, v in result["videos"].items()}
    return result


def measured(folder: Path, work: Path, classifier, flow) -> dict:
    """Eval metrics + object measures + fidelity of every video in ``folder``, in eval's result shape."""
    evaluated = evaluate(folder, work / f"eval_{folder.name}.json")
    paths = sorted(folder.resolve().glob("*.mp4"))
    captions = [json.loads(p.with_suffix(".json").read_text())["prompt"] for p in paths]
    objects = bench_effect.measure(paths, captions, classifier, flow)
    return bench_effect.joined(evaluated, objects, [str(p) for p in paths])


def token_motion(folder: Path) -> dict:
    """The learned tokens' L2 drift and cosine to their init at the end, over the folder's guided runs:
    mean per token, and the fraction of runs in which EVERY token moved (drift > 0)."""
    drifts, cosines = [], []
    for manifest in sorted(folder.glob("*.json")):
        result = json.loads(manifest.read_text()).get("result") or {}
        if "token_drift_l2" in result:
            drifts.append(result["token_drift_l2"])
            cosines.append(result["final_cosine"])
    if not drifts:
        return {}
    return {"runs": len(drifts), "drift_l2_mean": np.mean(drifts, axis=0).tolist(),
            "cosine_mean": np.mean(cosines, axis=0).tolist(),
            "all_tokens_moved": float(np.mean([min(d) > 0 for d in drifts]))}


def markdown(summary: dict) -> str:
    measures = [m for m in TABLE_MEASURES if m in summary["baseline"]]
    better = {m: "lower" if m in bench_effect.LOWER_IS_BETTER else "higher" for m in measures}
    lines = [f"# bench_ablation ({summary['tag']}): MotionPrompt token ablations (appendix B.1) on the toy model", "",
             f"{summary['n_pairs']} pairs per variant ({summary['prompts']} held-out prompts x seeds "
             f"{summary['seeds']}), {summary['steps'] or 'the toy default of'} steps, every variant paired with the "
             f"same plain baseline; guidance settings besides the ablated ones: "
             f"{' '.join(summary['overrides']) or 'defaults'}; git {summary['git']}.", "",
             "Cells: variant - baseline mean difference [95% paired bootstrap CI]; * = the CI excludes 0. "
             "Token drift: mean L2 distance of each learned token from its init at the end.", "",
             "| variant | " + " | ".join(f"{m} ({better[m]})" for m in measures) + " | token drift |",
             "|---" * (len(measures) + 2) + "|",
             "| baseline (value) | " + " | ".join(f"{summary['baseline'][m]:.4g}" for m in measures) + " | |"]
    for name, row in summary["variants"].items():
        cells = []
        for m in measures:
            c = row["comparison"]["metrics"].get(m)
            if c is None:
                cells.append("n/a")
                continue
            star = "*" if c["ci"][0] > 0 or c["ci"][1] < 0 else ""
            cells.append(f"{c['diff']:+.3g} [{c['ci'][0]:+.3g}, {c['ci'][1]:+.3g}]{star}")
        drift = row["tokens"].get("drift_l2_mean")
        drift_text = ", ".join(f"{d:.3g}" for d in drift) if drift else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {drift_text} |")
    lines += ["", f"Fidelity classifier accuracy on real held-out clips: {summary['classifier_real_accuracy']:.3f}. "
              f"Real clips of the same scenes: " + ", ".join(f"{m} {summary['real_reference'][m]:.4g}" for m in measures
                                                          if m in summary["real_reference"]) + ".",
              f"Times (s): {json.dumps(summary['times'])}", ""]
    return "\n".join(lines)


@click.command()
@click.option("--prompts", "n_prompts", default=8, show_default=True, help="Held-out prompts.")
@click.option("--seeds", default="0-1", show_default=True)
@click.option("-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="MotionPrompt setting shared by every variant (repeatable).")
@click.option("--neutral-word", default="thing", show_default=True, help="The neutral init word.")
@click.option("--only", multiple=True, help="Run only the variants whose name contains this (repeatable).")
@click.option("--steps", type=int, default=None, help="DDIM steps (default: the toy model's).")
@click.option("--tag", default="default", show_default=True, help="Names the result files.")
@click.option("--work", type=click.Path(path_type=Path), default=Path("/tmp/mp_bench_ablation"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks" / "results", show_default=True)
@click.option("--classifier-clips", default=2000, show_default=True)
@click.option("--classifier-epochs", default=6, show_default=True)
@click.option("--resamples", default=10000, show_default=True)
@click.option("--smoke", is_flag=True, help="1 prompt, 1 seed, 3 steps, 2 variants, a barely trained classifier.")
def main(n_prompts, seeds, overrides, neutral_word, only, steps, tag, work, out, classifier_clips, classifier_epochs,
         resamples, smoke):
    """Token ablations (number, placement, init) of MotionPrompt vs one paired baseline on the toy model."""
    from mp_plugin_tvl1 import load as load_tvl1

    grid = variants(neutral_word)
    if smoke:
        n_prompts, seeds, steps, classifier_clips, classifier_epochs, resamples = 1, "0", 3, 16, 1, 100
        overrides = (*overrides, "opt_range=1,2", "iterations=1")
        only = only or ("2 tokens", "random")
        tag = tag if tag != "default" else "smoke"
    if only:
        grid = {k: v for k, v in grid.items() if any(o in k for o in only)}
        if not grid:
            raise click.UsageError(f"--only {only} matches no variant of: {', '.join(variants(neutral_word))}")
    run_dir = work / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    scenes = bench_effect.heldout_scenes(n_prompts)
    prompts = run_dir / "prompts.txt"
    prompts.write_text("\n".join(s.caption for s in scenes) + "\n")
    extra = [f"--steps={steps}"] if steps else []

    # every video first (the bulk of the time), then the measures
    folders = {"baseline": run_dir / "baseline"}
    start = time.perf_counter()
    generate(prompts, seeds, folders["baseline"], "none", extra)
    times["generate_baseline_s"] = round(time.perf_counter() - start, 1)
    for name, setting in grid.items():
        start = time.perf_counter()
        folders[name] = run_dir / slug(name)
        args = extra + [f"-o{o}" for o in overrides] + [f"-o{k}={v}" for k, v in setting.items()]
        generate(prompts, seeds, folders[name], "motionprompt", args)
        times[f"generate_{slug(name)}_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    classifier, classifier_accuracy = bench_effect.load_classifier(work, classifier_clips, classifier_epochs)
    flow = load_tvl1(None, "cpu")
    times["classifier_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    baseline = measured(folders["baseline"], run_dir, classifier, flow)
    names = sorted(Path(p).name for p in baseline["videos"])
    rows = {}
    for name, setting in grid.items():
        guided = measured(folders[name], run_dir, classifier, flow)
        pairs = [(str((folders["baseline"] / n).resolve()), str((folders[name] / n).resolve())) for n in names]
        comparison = paired_comparison(baseline, guided, pairs, seed=0, resamples=resamples)
        rows[name] = {"settings": setting, "comparison": comparison, "tokens": token_motion(folders[name]),
                      "per_video": guided["videos"]}
    times["measures_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    reference = bench_effect.real_reference(scenes, classifier, flow, run_dir)
    times["real_reference_s"] = round(time.perf_counter() - start, 1)
    base_means = {}
    for m in sorted({k for v in baseline["videos"].values() for k in v}):
        values = [v[m] for v in baseline["videos"].values() if isinstance(v.get(m), (int, float))]
        if values:
            base_means[m] = float(np.mean(values))
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {"tag": tag, "prompts": n_prompts, "seeds": seeds, "n_pairs": len(names), "steps": steps,
               "overrides": list(overrides), "neutral_word": neutral_word, "git": git,
               "classifier": {"clips": classifier_clips, "epochs": classifier_epochs},
               "classifier_real_accuracy": classifier_accuracy, "real_reference": reference, "baseline": base_means,
               "variants": rows, "baseline_per_video": baseline["videos"], "times": times}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(summary, indent=1), out / f"bench_ablation_{tag}.json")
    write_text_atomic(markdown(summary), out / f"bench_ablation_{tag}.md")
    print(markdown(summary))


if __name__ == "__main__":
    main()
