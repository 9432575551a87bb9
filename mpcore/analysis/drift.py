"""Token drift over sampling: the cosine similarity of the learned token to its init embedding per
sampling step, averaged over runs and optionally split by a metric's top/bottom videos
(MotionPrompt, Nam et al., CVPR 2025, Fig. 4).

Input are run manifests (``mpcore run`` / ``mpcore generate``): ``manifest["result"]["trace"]`` has
one entry per sampling step ``{"step": i, "optimized": bool, "cosine": [one float per token], ...}``,
the cosine being measured AFTER step i's optimizer iterations (1.0 before the optimization range,
constant after it). With several learned tokens a run's curve is the mean over its tokens.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mpcore.io.files import atomic_path
from mpcore.analysis.trace_plot import finite_float

SUMMARY_FILES = {"generate.json"}


class DriftError(ValueError):
    """The manifests or the metric values cannot give a drift plot."""


def is_guided(manifest: Any) -> bool:
    """True for a run manifest with a guided result that has a per-step trace."""
    result = manifest.get("result") if isinstance(manifest, dict) else None
    return isinstance(result, dict) and bool(result.get("trace"))


def run_curve(manifest: dict) -> dict[int, float]:
    """step -> cosine of the run (mean over its tokens; NaN where missing)."""
    curve = {}
    for entry in manifest["result"]["trace"]:
        if not isinstance(entry, dict) or entry.get("step") is None:
            continue
        cosine = entry.get("cosine")
        values = [finite_float(v) for v in (cosine if isinstance(cosine, (list, tuple)) else [cosine])]
        finite = [v for v in values if not math.isnan(v)]
        curve[int(entry["step"])] = sum(finite) / len(finite) if finite else math.nan
    return curve


def drift_curves(manifests: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, std, per_run)`` of the token cosine over guided run manifests.

    ``per_run`` is (runs, steps); ``mean`` / ``std`` (population std, ddof=0) are over the runs,
    ignoring missing (NaN) values. All runs must have the same sampling steps: step i of a 25-step
    and of a 50-step run are different noise levels.
    """
    if not manifests:
        raise DriftError("no guided run manifests")
    curves = []
    for k, manifest in enumerate(manifests):
        if not is_guided(manifest):
            raise DriftError(f"manifest {k} ({_label(manifest)}) has no guided result with a trace")
        curves.append(run_curve(manifest))
    steps = sorted(curves[0])
    for k, curve in enumerate(curves[1:], start=1):
        if sorted(curve) != steps:
            raise DriftError(f"runs have different sampling steps: {len(steps)} steps in {_label(manifests[0])}, "
                             f"{len(curve)} in {_label(manifests[k])}; plot them separately")
    per_run = np.array([[curve[s] for s in steps] for curve in curves], dtype=np.float64).reshape(len(curves), len(steps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column stays NaN (a gap)
        mean = np.nanmean(per_run, axis=0)
        std = np.nanstd(per_run, axis=0)
    return np.array(steps, dtype=int), mean, std, per_run


def _label(manifest: Any) -> str:
    outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
    if isinstance(outputs, dict):
        return str(outputs.get("manifest") or outputs.get("video") or "?")
    return "?"


def load_manifests(inputs: list[str | Path]) -> tuple[list[tuple[Path, dict]], list[tuple[Path, str]]]:
    """Guided run manifests from files and folders (a folder: its ``*.json`` files, not recursive).

    Returns ``(guided, skipped)``: ``[(path, manifest)]`` and ``[(path, reason)]`` for the JSON files
    that are not guided run manifests (``generate.json`` summaries, baseline-only runs, other JSON).
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.glob("*.json") if not p.name.startswith(".")))
        else:
            files.append(item)
    guided, skipped, seen = [], [], set()
    for path in files:
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        if path.name in SUMMARY_FILES:
            skipped.append((path, "a generate summary, not a run manifest"))
            continue
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            skipped.append((path, f"not readable JSON ({error})"))
            continue
        if not isinstance(manifest, dict) or "mpcore_manifest_version" not in manifest:
            skipped.append((path, "not an mpcore run manifest"))
        elif not is_guided(manifest):
            skipped.append((path, "no guided result (baseline-only run)"))
        else:
            guided.append((path, manifest))
    return guided, skipped


def match_values(manifests: list[tuple[Path, dict]], split_by: dict[str, float | None]) -> list[float | None]:
    """The metric value of each run: by the video path in the manifest's ``outputs.video`` (as written
    or resolved), else by file stem (video or manifest stem) when exactly one key has that stem.
    ``None`` where no value matches (or the value is None / non-finite)."""
    by_path: dict[str, Any] = {}
    by_stem: dict[str, list[Any]] = {}
    for key, value in split_by.items():
        by_path[str(key)] = value
        by_path[str(Path(key).resolve())] = value
        by_stem.setdefault(Path(key).stem, []).append(value)
    values: list[float | None] = []
    for path, manifest in manifests:
        video = (manifest.get("outputs") or {}).get("video")
        value: Any = None
        candidates = [str(video), str(Path(video).resolve())] if video else []
        for candidate in candidates:
            if candidate in by_path:
                value = by_path[candidate]
                break
        else:
            for stem in ([Path(video).stem] if video else []) + [Path(path).stem]:
                if len(by_stem.get(stem, [])) == 1:
                    value = by_stem[stem][0]
                    break
        number = finite_float(value)
        values.append(None if math.isnan(number) else number)
    return values


def split_top_bottom(values: list[float | None], top_fraction: float = 0.5) -> tuple[list[int], list[int]]:
    """Indices of the top and bottom ``top_fraction`` of runs by value (None values left out).

    Each group has ``max(1, floor(top_fraction * n))`` runs, n = runs with a value; ties are broken
    by input order (stable sort).
    """
    if not 0 < top_fraction <= 0.5:
        raise DriftError(f"top fraction must be in (0, 0.5], got {top_fraction}")
    scored = [i for i, v in enumerate(values) if v is not None]
    if len(scored) < 2:
        raise DriftError(f"need at least 2 runs with a metric value to split top/bottom, got {len(scored)}")
    order = sorted(scored, key=lambda i: -values[i])  # type: ignore[operator]
    k = max(1, int(math.floor(top_fraction * len(scored) + 1e-9)))
    return order[:k], order[-k:]


def plot_drift(manifest_paths: list[str | Path], out_png: str | Path, split_by: dict[str, float] | None = None,
               top_fraction: float = 0.5, metric: str | None = None, title: str | None = None) -> dict[str, Any]:
    """Plot mean +- std of the token cosine vs sampling step over the guided runs of ``manifest_paths``
    (files or folders) to ``out_png`` (atomic). With ``split_by`` (video path or stem -> metric value),
    two curves: the top and the bottom ``top_fraction`` of the runs by that value.

    Returns a summary: runs used, skipped files, and per curve its runs and final mean cosine.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    loaded, skipped = load_manifests(list(manifest_paths))
    if not loaded:
        raise DriftError("no guided run manifests among the inputs"
                         + (f" ({len(skipped)} JSON file(s) skipped: not guided run manifests)" if skipped else ""))
    drift_curves([m for _, m in loaded])  # all runs must share their sampling steps
    metric_name = metric or "metric"
    groups: list[tuple[str, list[int]]]
    unmatched = 0
    if split_by is not None:
        values = match_values(loaded, split_by)
        unmatched = sum(v is None for v in values)
        if unmatched == len(values):
            raise DriftError(f"none of the {len(values)} guided runs matches a video with a {metric_name} value "
                             "(matched by outputs.video path or file stem)")
        top, bottom = split_top_bottom(values, top_fraction)
        pct = f"{top_fraction:.0%}"
        groups = [(f"top {pct} by {metric_name}", top), (f"bottom {pct} by {metric_name}", bottom)]
    else:
        groups = [("all runs", list(range(len(loaded))))]

    fig = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ranges = {tuple(m["result"].get("opt_range") or ()) for _, m in loaded}
    if len(ranges) == 1:
        opt_range = next(iter(ranges))
        if len(opt_range) == 2:
            ax.axvspan(opt_range[0], opt_range[1], color="tab:purple", alpha=0.1,
                       label=f"optimization range [{opt_range[0]}, {opt_range[1]})")
    summary: dict[str, Any] = {"runs": len(loaded), "skipped": [[str(p), r] for p, r in skipped],
                               "unmatched": unmatched, "curves": {}}
    colors = ["tab:blue", "tab:red"]
    for (label, indices), color in zip(groups, colors):
        steps, mean, std, _ = drift_curves([loaded[i][1] for i in indices])
        ax.plot(steps, mean, color=color, marker=".", label=f"{label} (n={len(indices)})")
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
        summary["curves"][label] = {"runs": [str(loaded[i][0]) for i in indices],
                                    "final_mean_cosine": float(mean[-1]) if len(mean) else None}
    ax.set_xlabel("sampling step i (cosine after step i's token update)")
    ax.set_ylabel("cosine(learned token, init embedding)")
    ax.set_title(title or f"MotionPrompt token drift over {len(loaded)} run(s): mean ± std")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp)
    summary["out"] = str(out_png)
    return summary
