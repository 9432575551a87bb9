"""Plot a guidance trace: its loss terms per optimizer iteration and its per-step quantities.

Input is the dict returned by the guidance object's ``finish()``; nothing here knows a guidance, only the
trace's shape::

    {"opt_range": [start, stop],            # half-open range of optimized sampling steps
     "skipped_updates": int,
     "loss_terms": ["total", ...],          # optional: which iteration fields to plot (default: every number)
     "trace": [{"step": int, "timestep": int, "optimized": bool,
                "cosine": [float per token],                 # any per-step number or list of numbers
                "iterations": [{"total", "disc", ...: float, "skipped": bool, "pairs": ...}]},
               ...]}

The top panel has the loss terms of every optimizer iteration: the numeric fields of the ``iterations``
records (or the result's ``loss_terms``), e.g. MotionPrompt's total/disc/tv/reg, FlowMo's loss. Iteration
k of K at step i is drawn at x = i + k/K, so each step's iterations fan out to the right of the step (with
one iteration per step the points are joined across steps). Below it, one panel per per-step quantity of the
trace entries (numbers or lists of numbers besides ``step`` and ``timestep``), e.g. MotionPrompt's cosine of
each learned token to its initial embedding, FlowMo's ``latent_change_rms``. Missing or non-finite values
(None, NaN, inf) leave gaps instead of failing. Matplotlib is used through its object API with the Agg
canvas, so no display and no global backend switch are needed.
"""

from __future__ import annotations

import math
from numbers import Real
from pathlib import Path
from typing import Any

from mpcore.io.files import atomic_path

_TERM_COLORS = {"total": "black", "loss": "black", "disc": "tab:blue", "tv": "tab:orange", "reg": "tab:green"}
_STEP_KEYS = ("step", "timestep")
"""Per-step fields that place an entry, not quantities to plot."""
_MAX_STEP_PANELS = 3
_STEP_LABELS = {  # per-step field -> (y label, panel title, series label prefix for list items)
    "cosine": ("cosine(token, init embedding)", "learned token vs. its initial embedding", "token"),
}


def finite_float(value: Any) -> float:
    """A finite float, or NaN for None / non-numbers / non-finite values (matplotlib draws NaN as a gap)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_series(value: Any) -> bool:
    """A number (None counts: a JSON-converted NaN) or a list of them."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(v is None or _is_number(v) for v in value)
    return _is_number(value)


def _iterations(trace: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for entry in trace for r in (entry.get("iterations") or []) if isinstance(r, dict)]


def loss_terms(guidance_result: dict[str, Any], trace: list[dict[str, Any]]) -> list[str]:
    """The iteration fields plotted as loss terms: the result's ``loss_terms`` if it names them, else every
    field that is a number (None included) in some iteration record and never anything else, in first-seen
    order (``skipped``, a bool, and ``pairs``, a list, are not)."""
    declared = guidance_result.get("loss_terms")
    if isinstance(declared, (list, tuple)) and declared and all(isinstance(t, str) for t in declared):
        return list(declared)
    order: list[str] = []
    other: set[str] = set()
    for record in _iterations(trace):
        for key, value in record.items():
            if value is None:
                continue
            if _is_number(value):
                if key not in order:
                    order.append(key)
            else:
                other.add(key)
    return [key for key in order if key not in other]


def step_quantities(trace: list[dict[str, Any]]) -> list[str]:
    """The per-step fields plotted below the losses: numbers or lists of numbers in some entry and never
    anything else (besides ``step`` and ``timestep``), in first-seen order."""
    order: list[str] = []
    other: set[str] = set()
    for entry in trace:
        for key, value in entry.items():
            if key in _STEP_KEYS or key == "iterations" or value is None:
                continue
            if _is_series(value):
                if key not in order:
                    order.append(key)
            else:
                other.add(key)
    return [key for key in order if key not in other]


def _loss_series(trace: list[dict[str, Any]], terms: list[str]) -> dict[str, Any]:
    """Per-iteration x positions and loss values (NaN-separated per step when a step has several
    iterations), skipped and non-finite x's (non-finite: the first term, e.g. the total, is not finite)."""
    xs: list[float] = []
    values: dict[str, list[float]] = {term: [] for term in terms}
    skipped: list[float] = []
    nonfinite: list[float] = []
    counts = [len(entry.get("iterations") or []) for entry in trace]
    break_steps = any(count > 1 for count in counts)
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
            for term in terms:
                values[term].append(finite_float(record.get(term)))
            if record.get("skipped"):
                skipped.append(x)
            elif terms and math.isnan(finite_float(record.get(terms[0]))):
                nonfinite.append(x)
        if break_steps:  # break the line between sampling steps
            xs.append(math.nan)
            for term in terms:
                values[term].append(math.nan)
    return {"x": xs, "values": values, "skipped": skipped, "nonfinite": nonfinite}


def _step_series(trace: list[dict[str, Any]], key: str) -> tuple[list[float], list[list[float]]]:
    """Steps and the per-step series of ``key``: one for a number, one per item for a list (NaN where
    missing)."""
    steps = [finite_float(entry.get("step")) for entry in trace]
    raw = [entry.get(key) for entry in trace]
    if not any(isinstance(v, (list, tuple)) for v in raw):
        return steps, [[finite_float(v) for v in raw]]
    width = max((len(v) for v in raw if isinstance(v, (list, tuple))), default=0)
    return steps, [[finite_float(v[j]) if isinstance(v, (list, tuple)) and j < len(v) else math.nan for v in raw]
                   for j in range(width)]


def _shade_range(ax, opt_range: Any) -> None:
    """Shade the half-open optimization range [start, stop) of sampling steps, if given."""
    if not isinstance(opt_range, (list, tuple)) or len(opt_range) != 2:
        return
    start, stop = finite_float(opt_range[0]), finite_float(opt_range[1])
    if math.isnan(start) or math.isnan(stop) or stop <= start:
        return
    ax.axvspan(start, stop, color="tab:purple", alpha=0.12, label=f"optimization range [{start:g}, {stop:g})")


def _draw_losses(ax, trace: list[dict[str, Any]], terms: list[str], opt_range: Any) -> None:
    """The loss terms of every optimizer iteration, skipped updates and non-finite losses marked."""
    loss = _loss_series(trace, terms)
    _shade_range(ax, opt_range)
    finite_values = [v for term in terms for v in loss["values"][term] if not math.isnan(v)]
    for term in terms:
        series = loss["values"][term]
        if any(not math.isnan(v) for v in series):
            ax.plot(loss["x"], series, marker=".", markersize=4, linewidth=1.2, color=_TERM_COLORS.get(term),
                    label=term)
    marker_y = ax.get_xaxis_transform()  # x in data, y in axes fraction: valid on any y scale
    if loss["skipped"]:
        ax.scatter(loss["skipped"], [0.04] * len(loss["skipped"]), transform=marker_y, marker="x",
                   color="red", s=40, zorder=5, clip_on=False, label="skipped update")
    if loss["nonfinite"]:
        ax.scatter(loss["nonfinite"], [0.04] * len(loss["nonfinite"]), transform=marker_y, marker="v",
                   color="darkorange", s=30, zorder=5, clip_on=False, label="non-finite loss")
    if finite_values and min(finite_values) > 0:
        ax.set_yscale("log")
    if not finite_values:
        ax.text(0.5, 0.5, "no finite loss values", transform=ax.transAxes, ha="center", va="center")
    ax.set_ylabel("loss (iteration k of K at x = i + k/K)")
    ax.set_title("loss terms per optimizer iteration")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")


def _draw_step_quantity(ax, trace: list[dict[str, Any]], key: str, opt_range: Any) -> None:
    """The per-step quantity ``key``: one line, or one per item of a list (e.g. per learned token)."""
    ylabel, panel_title, prefix = _STEP_LABELS.get(key, (key, f"{key} per sampling step", key))
    steps, series_list = _step_series(trace, key)
    _shade_range(ax, opt_range)
    for j, series in enumerate(series_list):
        ax.plot(steps, series, marker=".", markersize=4, linewidth=1.2,
                label=f"{prefix} {j}" if len(series_list) > 1 or key in _STEP_LABELS else key)
    ax.set_ylabel(ylabel)
    ax.set_title(panel_title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small", ncol=max(1, math.ceil(len(series_list) / 8)))


def plot_trace(guidance_result: dict[str, Any], out: str | Path, title: str = "") -> Path:
    """Plot the guidance trace of ``guidance_result`` to the PNG ``out`` (written atomically); return ``out``:
    its loss terms on top, one panel per per-step quantity below (see the module docstring)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    trace = [entry for entry in (guidance_result.get("trace") or []) if isinstance(entry, dict)]
    opt_range = guidance_result.get("opt_range")
    quantities = step_quantities(trace)[:_MAX_STEP_PANELS]

    fig = Figure(figsize=(10, 3.75 * max(2, 1 + len(quantities))), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1 + len(quantities), 1, sharex=True, squeeze=False)[:, 0]
    _draw_losses(axes[0], trace, loss_terms(guidance_result, trace), opt_range)
    for ax, key in zip(axes[1:], quantities):
        _draw_step_quantity(ax, trace, key, opt_range)
    steps = [x for x in (finite_float(entry.get("step")) for entry in trace) if not math.isnan(x)]
    for ax in axes:
        if steps:  # every sampling step, also those after the last plotted value
            ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)
        ax.set_xlabel("sampling step i")
        ax.tick_params(labelbottom=True)  # sharex hides the upper panels' tick labels otherwise

    heading = title or "guidance trace"
    if guidance_result.get("skipped_updates") is not None:
        heading += f"  (skipped updates: {guidance_result['skipped_updates']})"
    fig.suptitle(heading)

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out)
