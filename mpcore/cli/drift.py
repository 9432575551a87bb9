"""``mpcore drift``: token drift of MotionPrompt runs (the paper's Fig. 4) from run manifests.

    mpcore drift outputs/guided/ --out drift.png
    mpcore drift outputs/guided/ --eval eval.json --metric subject_consistency --out drift_split.png

Folders expand to their ``*.json`` run manifests with a guided result; ``generate.json`` summaries,
baseline-only manifests and other JSON files are skipped (and counted). With ``--eval`` (a
``mpcore eval --json`` result) and ``--metric``, the runs are split into the top and the bottom
``--top-fraction`` by that metric, each run matched to its video's value by the video path in the
manifest (``outputs.video``) or, failing that, by a unique file stem.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def _echo(message: str) -> None:
    click.echo(message, err=True)


def metric_values(eval_json: Path, metric: str | None) -> dict[str, float | None]:
    """``{video path: value}`` of ``metric`` from an ``mpcore eval --json`` result; clear errors otherwise."""
    try:
        data = json.loads(eval_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise click.BadParameter(f"{eval_json}: not readable JSON ({error})", param_hint="--eval") from None
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, dict):
        raise click.BadParameter(f"{eval_json} has no \"videos\" object: not an `mpcore eval --json` result",
                                 param_hint="--eval")
    present: dict[str, None] = dict.fromkeys(data.get("metrics") or {})
    for row in videos.values():
        present.update(dict.fromkeys(row or {}))
    listing = ", ".join(present) or "(none)"
    if metric is None:
        raise click.UsageError(f"--eval needs --metric NAME; metrics in {eval_json}: {listing}")
    if metric not in present:
        unavailable = (data.get("unavailable") or {}).get(metric)
        detail = f" (unavailable: {unavailable})" if unavailable else ""
        raise click.BadParameter(f"metric {metric!r} is not in {eval_json}{detail}; metrics present: {listing}",
                                 param_hint="--metric")
    values = {path: (row or {}).get(metric) for path, row in videos.items()}
    if all(v is None for v in values.values()):
        reason = (data.get("unavailable") or {}).get(metric, "every value is null")
        raise click.BadParameter(f"metric {metric!r} has no values in {eval_json}: {reason}", param_hint="--metric")
    return values


@click.command("drift")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output image (.png).")
@click.option("--eval", "eval_json", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="An `mpcore eval --json` result: split the runs by --metric (top vs bottom videos).")
@click.option("--metric", default=None, help="Metric of --eval to split by, e.g. subject_consistency.")
@click.option("--top-fraction", type=click.FloatRange(0.0, 0.5, min_open=True), default=0.5, show_default=True,
              help="Fraction of runs in each of the top and bottom groups.")
def drift(inputs: tuple[Path, ...], out: Path, eval_json: Path | None, metric: str | None, top_fraction: float):
    """Plot the learned token's cosine similarity to its init embedding per sampling step, mean +- std
    over the guided runs in MANIFESTS_OR_DIRS (optionally split top/bottom by an eval metric)."""
    from mpcore.analysis.drift import DriftError, load_manifests, plot_drift

    if metric is not None and eval_json is None:
        raise click.UsageError("--metric needs --eval EVAL_JSON (an `mpcore eval --json` result)")
    split_by = metric_values(eval_json, metric) if eval_json is not None else None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.BadParameter(f"cannot create {out.parent}: {error}", param_hint="--out") from None
    guided, skipped = load_manifests(list(inputs))
    if skipped:
        _echo(f"skipped {len(skipped)} JSON file(s) that are not guided run manifests:")
        for path, reason in skipped[:10]:
            _echo(f"  {path}: {reason}")
        if len(skipped) > 10:
            _echo(f"  ... and {len(skipped) - 10} more")
    if not guided:
        raise click.ClickException("no guided run manifests (with a MotionPrompt result) among the inputs; "
                                   "give the folders or NAME.json files written by `mpcore run` / `mpcore generate`")
    try:
        summary = plot_drift([p for p, _ in guided], out, split_by=split_by, top_fraction=top_fraction, metric=metric)
    except DriftError as error:
        raise click.ClickException(str(error)) from None
    _echo(f"{summary['runs']} guided run(s)")
    if summary["unmatched"]:
        _echo(f"{summary['unmatched']} run(s) had no {metric} value in {eval_json} and were left out of the split")
    for label, curve in summary["curves"].items():
        final = curve["final_mean_cosine"]
        _echo(f"  {label}: {len(curve['runs'])} run(s), final mean cosine "
              + ("n/a" if final is None else f"{final:.4f}"))
    _echo(f"wrote {out}")
