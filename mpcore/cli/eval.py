"""``mpcore eval``: metric values per video and their mean; ``--compare`` for baseline vs guided."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import click

from mpcore.cli.common import device_from_option
from mpcore.io.console import echo


def _parse_weights(items: tuple[str, ...]) -> dict[str, str]:
    weights: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise click.BadParameter(f"expected METRIC=PATH; got {item!r}", param_hint="--weights")
        weights[name.strip()] = value.strip()
    return weights


def _parse_options(items: tuple[str, ...]) -> dict[str, dict[str, str]]:
    options: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        metric, dot, option = key.partition(".")
        if not sep or not dot or not metric.strip() or not option.strip():
            raise click.BadParameter(f"expected METRIC.KEY=VALUE; got {item!r}", param_hint="--metric-option")
        options.setdefault(metric.strip(), {})[option.strip()] = value.strip()
    return options


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_table(result: dict[str, Any], title: str | None = None, notes: bool = True) -> None:
    """Videos x metrics, then the mean row; unavailable metrics show ``n/a``."""
    names = list(result["metrics"])
    rows = [("VIDEO", *names)]
    unreadable = result.get("unreadable", {})
    rows += [(path, *("unreadable" if path in unreadable else _format(values[n]) for n in names))
             for path, values in result["videos"].items()]
    rows.append(("MEAN", *(_format(result["mean"][n]) for n in names)))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    if title:
        click.echo(title)
    for row in rows:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    for name, info in result["metrics"].items() if notes else ():
        if not info["vbench"]:
            click.echo(textwrap.fill(f"note: {name} is not a VBench metric: {info['description']}", width=100,
                                     subsequent_indent="  "))


def _subset(result: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """The part of an ``evaluate_videos`` result for ``paths``, with its own means."""
    from mpcore.analysis.evaluate import _mean

    videos = {p: result["videos"][p] for p in paths}
    return {
        "videos": videos,
        "mean": {n: _mean([row[n] for row in videos.values()]) for n in result["metrics"]},
        "unavailable": dict(result["unavailable"]),
        "errors": {p: e for p, e in result["errors"].items() if p in videos},
        "unreadable": {p: e for p, e in result["unreadable"].items() if p in videos},
        "metrics": dict(result["metrics"]),
    }


def match_pairs(baseline_dir: Path, guided_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(baseline, guided) paths with the same file name in both folders, and the unmatched names."""
    from mpcore.analysis.evaluate import EvalError, expand_videos

    for folder in (baseline_dir, guided_dir):
        if not folder.is_dir():
            raise EvalError(f"--compare takes two folders; {str(folder)!r} is not one")
    baseline = {p.name: p for p in expand_videos([baseline_dir])}
    guided = {p.name: p for p in expand_videos([guided_dir])}
    common = sorted(set(baseline) & set(guided))
    if not common:
        raise EvalError(f"no file names in common between {str(baseline_dir)!r} and {str(guided_dir)!r}")
    unmatched = sorted(set(baseline) ^ set(guided))
    return [(str(baseline[n]), str(guided[n])) for n in common], unmatched


def _checked_options(videos, compare, resamples: int, metrics_text: str, weights_items, option_items):
    """(metric names, weights, options); a bad or contradictory option is a usage error (exit 2), as for every
    command."""
    from mpcore.analysis.evaluate import EvalError, resolve_metrics

    if compare and videos:
        raise click.UsageError("give either VIDEOS or --compare BASELINE_DIR GUIDED_DIR, not both")
    if not compare and not videos:
        raise click.UsageError("no videos given (VIDEOS... or --compare BASELINE_DIR GUIDED_DIR)")
    if resamples < 1:
        raise click.BadParameter(f"{resamples}; give an integer >= 1", param_hint="--resamples")
    try:
        names = resolve_metrics(metrics_text)
    except EvalError as error:
        raise click.BadParameter(str(error), param_hint="--metrics") from None
    weights, options = _parse_weights(weights_items), _parse_options(option_items)
    for given in [*weights, *options]:
        if given not in names:
            raise click.BadParameter(f"weights/options given for {given!r}, which is not among the evaluated "
                                     f"metrics: {', '.join(names)}", param_hint="--weights/--metric-option")
    return names, weights, options


@click.command("eval")
@click.argument("videos", nargs=-1, type=click.Path())
@click.option("--metrics", "metrics_text", default="all", show_default=True,
              help="Comma-separated metric ids (see `mpcore plugins`), or 'all'.")
@click.option("--weights", "weights_items", multiple=True, metavar="METRIC=PATH",
              help="Local weights of a metric, e.g. subject_consistency=dino_vitbase16_pretrain.pth (repeatable).")
@click.option("--metric-option", "option_items", multiple=True, metavar="METRIC.KEY=VALUE",
              help="Option of a metric's loader, e.g. subject_consistency.arch=vit_small_patch16_224 (repeatable).")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the results as JSON here (checked writable first; written even when nothing was scored).")
@click.option("--compare", nargs=2, type=click.Path(file_okay=False), default=None, metavar="BASELINE_DIR GUIDED_DIR",
              help="Paired comparison of files with the same name in the two folders (instead of VIDEOS).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the paired bootstrap (--compare).")
@click.option("--resamples", type=int, default=10000, show_default=True, help="Bootstrap resamples (--compare).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of comparison.md/.png (--compare; default: GUIDED_DIR/../comparison).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def eval_command(videos, metrics_text, weights_items, option_items, device, json_out, compare, seed, resamples,
                 out_dir, progress):
    """Evaluate VIDEOS (files, or folders of .mp4/.gif/.webm/.avi and PNG-frame folders; `*_compare.*`
    files are skipped) with VBench's temporal metrics and other installed metrics.

    A metric whose weights are missing is reported as unavailable (values null), with a warning.
    """
    from mpcore.analysis.evaluate import EvalError, evaluate_videos, expand_videos, no_videos_message
    from mpcore.io.manifest import write_json_atomic
    from mpcore.io.video import check_location_writable

    try:
        names, weights, options = _checked_options(videos, compare, resamples, metrics_text, weights_items,
                                                   option_items)
        # every output is checked before any video is read or any metric loads
        target = None
        if compare:
            target = Path(out_dir) if out_dir else Path(compare[1]).resolve().parent / "comparison"
            check_location_writable(target, folder=True)
        if json_out:
            check_location_writable(json_out)
        pairs: list[tuple[str, str]] = []
        empty: list[Path] = []
        if compare:
            pairs, unmatched = match_pairs(Path(compare[0]), Path(compare[1]))
            if unmatched:
                echo(f"warning: {len(unmatched)} file(s) without a partner are ignored: {', '.join(unmatched[:10])}")
            paths = [p for pair in pairs for p in pair]
        else:
            paths = [str(p) for p in expand_videos(videos, empty=empty)]
            for folder in empty if paths else ():
                echo(f"warning: {no_videos_message(folder)}")
        resolved = device_from_option(device)
        result = evaluate_videos(paths, names, resolved, weights, progress, options=options, warn=echo)
    except (EvalError, ValueError, TypeError, OSError) as error:  # ValueError: e.g. weights for a weight-free metric
        raise click.ClickException(str(error)) from None

    for path, message in result["unreadable"].items():
        echo(f"warning: could not read {path}: {message}")
    for path, problems in result["errors"].items():
        for name, message in problems.items():
            echo(f"warning: {name} could not score {path}: {message}")

    if not compare:
        if result["videos"]:
            print_table(result)
        if json_out:  # also without videos: a script finds this evaluation's (empty) result, not a stale one
            echo(f"wrote {write_json_atomic(result, json_out)}")
        if not result["videos"]:
            raise click.ClickException(f"nothing was scored: {'; '.join(no_videos_message(f) for f in empty)}")
        _fail_if_nothing_scored(result)
        return

    from mpcore.analysis.compare import paired_comparison, write_comparison

    baseline = _subset(result, [b for b, _ in pairs])
    guided = _subset(result, [g for _, g in pairs])
    print_table(baseline, "baseline:", notes=False)
    print_table(guided, "guided:")
    comparison = paired_comparison(baseline, guided, pairs, seed=seed, resamples=resamples)
    target.mkdir(parents=True, exist_ok=True)
    for name, path in write_comparison(comparison, target).items():
        echo(f"wrote {name}: {path}")
    if json_out:
        data = {"baseline": baseline, "guided": guided, "pairs": pairs, "comparison": comparison}
        echo(f"wrote {write_json_atomic(data, json_out)}")
    _fail_if_nothing_scored(result)


def _fail_if_nothing_scored(result: dict[str, Any]) -> None:
    """Exit 1 (after the table and the JSON are written) when not a single value could be computed."""
    from mpcore.analysis.evaluate import scored_count

    if scored_count(result):
        return
    if result["videos"] and len(result["unreadable"]) == len(result["videos"]):
        reason = f"none of the {len(result['videos'])} video(s) could be read"
    elif result["metrics"] and len(result["unavailable"]) == len(result["metrics"]):
        reason = "every metric is unavailable (see the warnings above)"
    else:
        reason = "every metric failed on every video (see the warnings above)"
    raise click.ClickException(f"nothing was scored: {reason}")
