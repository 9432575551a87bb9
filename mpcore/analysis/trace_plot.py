"""Plot the MotionPrompt guidance trace: loss terms and token drift per sampling step.

Input is the dict returned by the guidance object's ``finish()``::

    {"opt_range": [start, stop],            # half-open range of optimized sampling steps
     "skipped_updates": int,
     "trace": [{"step": int, "timestep": int, "optimized": bool,
                "cosine": [float per token],
                "iterations": [{"total", "disc", "tv", "reg": float, "skipped": bool, "pairs": ...}]},
               ...]}

The figure has two panels: loss terms of every optimizer iteration (iteration k of K at step i is
drawn at x = i + k/K, so each step's iterations fan out to the right of the step), and the cosine
similarity of each learned token to its initial embedding after every sampling step. Missing or
non-finite values (None, NaN, inf) leave gaps instead of failing. Matplotlib is used through its
object API with the Agg canvas, so no display and no global backend switch are needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mpcore.io.files import atomic_path

LOSS_TERMS = ("total", "disc", "tv", "reg")
_TERM_COLORS = {"total": "black", "disc": "tab:blue", "tv": "tab:orange", "reg": "tab:green"}


def finite_float(value: Any) -> float:
    """A finite float, or NaN for None / non-numbers / non-finite values (matplotlib draws NaN as a gap)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _loss_series(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-iteration x positions and loss values (NaN-separated per step), skipped and non-finite x's."""
    xs: list[float] = []
    values: dict[str, list[float]] = {term: [] for term in LOSS_TERMS}
    skipped: list[float] = []
    nonfinite: list[float] = []
    for entry in trace:
        iterations = entry.get("iterations") or []
        if not iterations:  # steps outside the optimization range have no losses
            continue
        step = finite_float(entry.get("step"))
        if math.isnan(step):
            continue
        count = len(iterations)
        for k, record in enumerate(iterations):
            record = record if isinstance(record, dict) else {}
            x = step + k / count
            xs.append(x)
            for term in LOSS_TERMS:
                values[term].append(finite_float(record.get(term)))
            if record.get("skipped"):
                skipped.append(x)
            elif math.isnan(finite_float(record.get("total"))):
                nonfinite.append(x)
        if count:  # break the line between sampling steps
            xs.append(math.nan)
            for term in LOSS_TERMS:
                values[term].append(math.nan)
    return {"x": xs, "values": values, "skipped": skipped, "nonfinite": nonfinite}


def _cosine_series(trace: list[dict[str, Any]]) -> tuple[list[float], list[list[float]]]:
    """Steps and, per token, the cosine after each step (NaN where missing)."""
    steps = [finite_float(entry.get("step")) for entry in trace]
    cosines = [entry.get("cosine") or [] for entry in trace]
    num_tokens = max((len(c) for c in cosines if isinstance(c, (list, tuple))), default=0)
    per_token = []
    for j in range(num_tokens):
        per_token.append(
            [finite_float(c[j]) if isinstance(c, (list, tuple)) and j < len(c) else math.nan for c in cosines]
        )
    return steps, per_token


def _shade_range(ax, opt_range: Any) -> None:
    """Shade the half-open optimization range [start, stop) of sampling steps, if given."""
    if not isinstance(opt_range, (list, tuple)) or len(opt_range) != 2:
        return
    start, stop = finite_float(opt_range[0]), finite_float(opt_range[1])
    if math.isnan(start) or math.isnan(stop) or stop <= start:
        return
    ax.axvspan(start, stop, color="tab:purple", alpha=0.12, label=f"optimization range [{start:g}, {stop:g})")


def plot_trace(guidance_result: dict[str, Any], out: str | Path, title: str = "") -> Path:
    """Plot the guidance trace of ``guidance_result`` to the PNG ``out`` (written atomically); return ``out``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    trace = [entry for entry in (guidance_result.get("trace") or []) if isinstance(entry, dict)]
    opt_range = guidance_result.get("opt_range")
    skipped_total = guidance_result.get("skipped_updates")

    fig = Figure(figsize=(10, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_cos = fig.subplots(2, 1, sharex=True)

    # ---- top: loss terms per optimizer iteration
    loss = _loss_series(trace)
    _shade_range(ax_loss, opt_range)
    finite_values = [v for term in LOSS_TERMS for v in loss["values"][term] if not math.isnan(v)]
    for term in LOSS_TERMS:
        series = loss["values"][term]
        if any(not math.isnan(v) for v in series):
            ax_loss.plot(
                loss["x"], series, marker=".", markersize=4, linewidth=1.2,
                color=_TERM_COLORS[term], label=term,
            )
    marker_y = ax_loss.get_xaxis_transform()  # x in data, y in axes fraction: valid on any y scale
    if loss["skipped"]:
        ax_loss.scatter(
            loss["skipped"], [0.04] * len(loss["skipped"]), transform=marker_y, marker="x",
            color="red", s=40, zorder=5, clip_on=False, label="skipped update",
        )
    if loss["nonfinite"]:
        ax_loss.scatter(
            loss["nonfinite"], [0.04] * len(loss["nonfinite"]), transform=marker_y, marker="v",
            color="darkorange", s=30, zorder=5, clip_on=False, label="non-finite loss",
        )
    if finite_values and min(finite_values) > 0:
        ax_loss.set_yscale("log")
    if not finite_values:
        ax_loss.text(0.5, 0.5, "no finite loss values", transform=ax_loss.transAxes, ha="center", va="center")
    ax_loss.set_ylabel("loss (iteration k of K at x = i + k/K)")
    ax_loss.set_xlabel("sampling step i")
    ax_loss.tick_params(labelbottom=True)  # sharex hides the top panel's tick labels otherwise
    ax_loss.set_title("loss terms per optimizer iteration")
    ax_loss.grid(True, alpha=0.3)
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(loc="best", fontsize="small")

    # ---- bottom: cosine similarity of each token to its initial embedding
    steps, per_token = _cosine_series(trace)
    _shade_range(ax_cos, opt_range)
    for j, series in enumerate(per_token):
        ax_cos.plot(steps, series, marker=".", markersize=4, linewidth=1.2, label=f"token {j}")
    if not per_token:
        ax_cos.text(0.5, 0.5, "no cosine values", transform=ax_cos.transAxes, ha="center", va="center")
    ax_cos.set_ylabel("cosine(token, init embedding)")
    ax_cos.set_xlabel("sampling step i")
    ax_cos.set_title("learned token vs. its initial embedding")
    ax_cos.grid(True, alpha=0.3)
    if ax_cos.get_legend_handles_labels()[0]:
        ax_cos.legend(loc="best", fontsize="small", ncol=max(1, math.ceil(len(per_token) / 8)))

    heading = title or "MotionPrompt guidance trace"
    if skipped_total is not None:
        heading += f"  (skipped updates: {skipped_total})"
    fig.suptitle(heading)

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out)
