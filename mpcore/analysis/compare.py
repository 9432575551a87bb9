"""Paired comparison of two evaluation results (baseline vs guided) over videos of the same prompt/seed.

Input results are shaped as ``mpcore eval`` writes them::

    {"videos": {PATH: {METRIC: value or None}}, "mean": {...},
     "unavailable": {METRIC: reason}, "metrics": {METRIC: {"vbench": bool, "description": str}}}

For every metric, over the pairs (baseline video, guided video) where both values are present
(``None`` and non-finite values leave the pair out for that metric):

* ``n``, the baseline and guided means over those pairs, and the mean difference ``guided - baseline``;
* a 95% paired bootstrap confidence interval of the mean difference (percentile method): the PAIRS
  are resampled with replacement ``resamples`` times and the 2.5th / 97.5th percentiles of the
  resampled mean differences are taken. Each metric uses a fresh ``numpy.random.default_rng(seed)``,
  so a metric's interval does not depend on which other metrics are compared; same inputs and seed
  give the identical result;
* the win rate: the fraction of pairs where guided > baseline, a tie counting one half.

Whether a higher value is better depends on the metric (e.g. ``dynamic_degree`` measures how much
motion there is, not its quality); the comparison only reports the direction.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mpcore.io.files import atomic_path, write_text_atomic
from mpcore.io.manifest import write_json_atomic

CONFIDENCE = 0.95
_CHUNK_ELEMENTS = 4_000_000  # bound on resamples x n indices drawn at once (memory)


def _value(row: dict[str, Any] | None, metric: str) -> float | None:
    if not isinstance(row, dict):
        return None
    value = row.get(metric)
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _metric_names(*results: dict[str, Any]) -> list[str]:
    """Every metric named in either result, in first-seen order (declared, unavailable, then per-video)."""
    names: dict[str, None] = {}
    for result in results:
        for key in ("metrics", "unavailable", "mean"):
            names.update(dict.fromkeys(result.get(key) or {}))
    for result in results:
        for row in (result.get("videos") or {}).values():
            names.update(dict.fromkeys(row or {}))
    return list(names)


def bootstrap_ci(differences: np.ndarray, seed: int = 0, resamples: int = 10000,
                 confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (pairs resampled with replacement)."""
    d = np.asarray(differences, dtype=np.float64)
    n = d.size
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        index = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[index].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_comparison(baseline: dict, guided: dict, pairs: list[tuple[str, str]], seed: int = 0,
                      resamples: int = 10000) -> dict:
    """Per-metric paired comparison of ``guided`` against ``baseline`` (see the module docstring).

    ``pairs`` are (baseline video path, guided video path) keys of the two results' ``"videos"``.
    Returns ``{"seed", "resamples", "confidence", "pairs", "metrics": {METRIC: {...}},
    "unavailable": {METRIC: reason}, "notes": [...]}``; a metric without a single complete pair is
    listed under ``"unavailable"`` with the reason. Raises ValueError for a pair path missing from
    its result.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    base_videos, guided_videos = baseline.get("videos") or {}, guided.get("videos") or {}
    missing = [f"baseline {b}" for b, _ in pairs if b not in base_videos]
    missing += [f"guided {g}" for _, g in pairs if g not in guided_videos]
    if missing:
        raise ValueError(f"{len(missing)} paired video(s) not in the evaluation results: {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
    declared = {**(baseline.get("metrics") or {}), **(guided.get("metrics") or {})}
    # a metric is a VBench definition only if every result that declares it says so
    vbench_flags: dict[str, bool] = {}
    for result in (baseline, guided):
        for name, info in (result.get("metrics") or {}).items():
            flag = bool((info or {}).get("vbench", False))
            vbench_flags[name] = vbench_flags.get(name, True) and flag
    metrics: dict[str, dict[str, Any]] = {}
    unavailable: dict[str, str] = {}
    for name in _metric_names(baseline, guided):
        values = [(_value(base_videos[b], name), _value(guided_videos[g], name)) for b, g in pairs]
        complete = [(b, g) for b, g in values if b is not None and g is not None]
        if not complete:
            reasons = [f"{side}: {result['unavailable'][name]}" for side, result in
                       (("baseline", baseline), ("guided", guided)) if name in (result.get("unavailable") or {})]
            if len(reasons) == 2 and reasons[0].split(": ", 1)[1] == reasons[1].split(": ", 1)[1]:
                reasons = [reasons[0].split(": ", 1)[1]]  # the same reason on both sides
            unavailable[name] = "; ".join(reasons) or (
                "no pairs to compare" if not pairs else "no pair with a value for both baseline and guided")
            continue
        b = np.array([v for v, _ in complete])
        g = np.array([v for _, v in complete])
        diff = g - b
        low, high = bootstrap_ci(diff, seed=seed, resamples=resamples)
        wins, ties = int((diff > 0).sum()), int((diff == 0).sum())
        info = declared.get(name) or {}
        metrics[name] = {
            "n": len(complete),
            "skipped_pairs": len(pairs) - len(complete),
            "baseline": float(b.mean()),
            "guided": float(g.mean()),
            "diff": float(diff.mean()),
            "ci": [low, high],
            "win_rate": (wins + 0.5 * ties) / len(complete),
            "wins": wins,
            "ties": ties,
            "losses": len(complete) - wins - ties,
            "vbench": vbench_flags.get(name, False),
            "description": str(info.get("description", "")),
        }
    return {
        "seed": seed,
        "resamples": resamples,
        "confidence": CONFIDENCE,
        "pairs": [[b, g] for b, g in pairs],
        "metrics": metrics,
        "unavailable": unavailable,
        "notes": [
            "diff = guided - baseline, mean over the pairs with a value for both",
            f"ci: {CONFIDENCE:.0%} paired bootstrap, percentile method, {resamples} resamples of the pairs, "
            f"numpy default_rng({seed})",
            "win_rate: fraction of pairs where guided > baseline; ties count one half",
        ],
    }


def _fmt(value: float, sign: bool = False) -> str:
    return f"{value:+.4g}" if sign else f"{value:.4g}"


def comparison_markdown(result: dict) -> str:
    """The comparison as a markdown table with footnotes (non-VBench metrics, unavailable metrics)."""
    confidence = result.get("confidence", CONFIDENCE)
    lines = [
        "# Paired comparison: guided vs baseline",
        "",
        f"{len(result.get('pairs', []))} pairs (same prompt and seed). diff = guided - baseline; "
        f"{confidence:.0%} CI: paired bootstrap (percentile method, {result.get('resamples')} resamples of the pairs, "
        f"seed {result.get('seed')}); win rate: fraction of pairs where guided > baseline, ties count one half.",
        "",
        f"| metric | n | baseline | guided | diff | {confidence:.0%} CI | win rate |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    non_vbench = []
    for name, row in result.get("metrics", {}).items():
        mark = ""
        if not row.get("vbench"):
            mark = " †"
            non_vbench.append((name, row.get("description", "")))
        low, high = row["ci"]
        lines.append(
            f"| {name}{mark} | {row['n']} | {_fmt(row['baseline'])} | {_fmt(row['guided'])} | "
            f"{_fmt(row['diff'], sign=True)} | [{_fmt(low, sign=True)}, {_fmt(high, sign=True)}] | "
            f"{row['win_rate']:.2f} |"
        )
    if not result.get("metrics"):
        lines.append("| (no metric could be compared) | | | | | | |")
    lines.append("")
    skipped = {name: row["skipped_pairs"] for name, row in result.get("metrics", {}).items() if row.get("skipped_pairs")}
    if skipped:
        lines.append("Pairs left out because a value was missing: "
                     + ", ".join(f"{name} {count}" for name, count in skipped.items()) + ".")
        lines.append("")
    if non_vbench:
        lines.append("† not a VBench definition" + (":" if any(d for _, d in non_vbench) else "."))
        for name, description in non_vbench:
            if description:
                lines.append(f"- {name}: {description}")
        lines.append("")
    if result.get("unavailable"):
        lines.append("Not compared (unavailable):")
        for name, reason in result["unavailable"].items():
            lines.append(f"- {name}: {reason}")
        lines.append("")
    lines.append("Whether higher is better depends on the metric (dynamic_degree measures the amount of motion).")
    return "\n".join(lines) + "\n"


def plot_comparison(result: dict, out_png: str | Path) -> Path:
    """One small panel per metric (metrics have different scales): the mean difference as a bar with
    its CI as an error bar, and a zero line. Written atomically with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = result.get("metrics", {})
    count = max(1, len(rows))
    cols = min(4, count)
    lines = math.ceil(count / cols)
    fig = Figure(figsize=(3.0 * cols + 0.5, 3.2 * lines + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(lines, cols, squeeze=False)).ravel()
    confidence = result.get("confidence", CONFIDENCE)
    for ax, (name, row) in zip(axes, rows.items()):
        low, high = row["ci"]
        diff = row["diff"]
        color = "tab:green" if low > 0 else "tab:red" if high < 0 else "tab:gray"
        ax.bar([0], [diff], width=0.5, color=color, alpha=0.8)
        ax.errorbar([0], [diff], yerr=[[max(0.0, diff - low)], [max(0.0, high - diff)]], color="black", capsize=8)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlim(-1, 1)
        ax.set_xticks([])
        span = max(abs(low), abs(high), abs(diff), 1e-12)
        ax.set_ylim(-1.25 * span, 1.25 * span)
        ax.set_title(name + ("" if row.get("vbench") else " †"), fontsize="medium")
        ax.set_xlabel(f"n={row['n']}  win rate {row['win_rate']:.2f}", fontsize="small")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(True, axis="y", alpha=0.3)
    if not rows:
        axes[0].text(0.5, 0.5, "no metric could be compared", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    for ax in axes[count:]:
        ax.set_axis_off()
    fig.suptitle(f"guided - baseline: mean difference per metric, {confidence:.0%} bootstrap CI"
                 + ("  († not VBench)" if any(not r.get("vbench") for r in rows.values()) else ""))
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp)
    return Path(out_png)


def write_comparison(result: dict, out_dir: Path) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.png`` and ``comparison.json`` into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": write_text_atomic(comparison_markdown(result), out_dir / "comparison.md"),
        "png": plot_comparison(result, out_dir / "comparison.png"),
        "json": write_json_atomic(result, out_dir / "comparison.json"),
    }
    return paths
