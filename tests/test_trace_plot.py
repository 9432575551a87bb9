"""Tests of mpcore.analysis.trace_plot: a synthetic guidance trace renders to a readable PNG."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from mpcore.analysis.trace_plot import plot_trace


def synthetic_result(steps: int = 12, opt_range=(3, 8), iterations: int = 3, tokens: int = 2) -> dict:
    trace = []
    for step in range(steps):
        optimized = opt_range[0] <= step < opt_range[1]
        entry = {"step": step, "timestep": 999 - step * 80, "optimized": optimized}
        if optimized:
            records = []
            for k in range(iterations):
                disc = 0.7 - 0.01 * step - 0.005 * k
                records.append(
                    {"total": disc + 0.3, "disc": disc, "tv": 0.05, "reg": 1e-4 * (step + k + 1),
                     "skipped": False, "pairs": [[0, 1]]}
                )
            entry["iterations"] = records
        drift = max(0, step - opt_range[0] + 1) if step < opt_range[1] else opt_range[1] - opt_range[0]
        entry["cosine"] = [1.0 - 0.01 * drift * (j + 1) for j in range(tokens)]
        trace.append(entry)
    # a NaN loss that was skipped, a None (already JSON-converted) value and a NaN cosine
    trace[4]["iterations"][1] = {"total": float("nan"), "disc": float("nan"), "tv": 0.05, "reg": None,
                                 "skipped": True, "pairs": [[2, 3]]}
    trace[5]["iterations"][0]["tv"] = None
    trace[6]["cosine"][1] = float("nan")
    return {"opt_range": list(opt_range), "trace": trace, "skipped_updates": 1, "final_cosine": [0.95, 0.9]}


def read_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_plot_trace_writes_png(tmp_path):
    out = tmp_path / "plots" / "fox_trace.png"
    written = plot_trace(synthetic_result(), out, title="a fox")
    assert written == out and out.stat().st_size > 0
    pixels = read_png(out)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # not a blank image
    assert [p.name for p in out.parent.iterdir()] == ["fox_trace.png"]  # no temporary left


def test_plot_trace_degenerate_inputs(tmp_path):
    # no optimized steps, all-NaN losses, empty trace: still a valid figure
    result = synthetic_result()
    for entry in result["trace"]:
        for record in entry.get("iterations", []):
            record.update(total=math.nan, disc=None, tv=math.inf, reg=math.nan, skipped=True)
    for data in (result, {"trace": [], "opt_range": None}, {"opt_range": [0, 0], "trace": [{"step": 0}]}):
        out = tmp_path / "t.png"
        plot_trace(data, out)
        assert read_png(out).size > 0


def test_plot_trace_failure_leaves_no_temp(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_trace(synthetic_result(), tmp_path / "t.png")
    assert list(tmp_path.iterdir()) == []


def flowmo_like_result(steps: int = 6, guided: int = 3) -> dict:
    """A FlowMo-shaped result: one iteration per guided step (loss, grad_rms), x_t's change per step."""
    trace = []
    for step in range(steps):
        entry = {"step": step, "timestep": 999 - step * 150, "optimized": step < guided}
        if step < guided:
            entry["iterations"] = [{"loss": 0.5 - 0.1 * step, "skipped": False, "grad_rms": 0.01}]
            entry["latent_change_rms"] = 1e-3
        trace.append(entry)
    return {"opt_range": [0, guided], "skipped_updates": 0, "loss_terms": ["loss"], "trace": trace}


def test_the_plot_shows_whatever_loss_terms_and_step_quantities_a_trace_records(tmp_path):
    from mpcore.analysis.trace_plot import loss_terms, step_quantities

    motionprompt = synthetic_result()
    assert loss_terms(motionprompt, motionprompt["trace"]) == ["total", "disc", "tv", "reg"]
    assert step_quantities(motionprompt["trace"]) == ["cosine"]  # not optimized (bool), not iterations
    flowmo = flowmo_like_result()
    assert loss_terms(flowmo, flowmo["trace"]) == ["loss"]  # declared by the result
    assert loss_terms({}, flowmo["trace"]) == ["loss", "grad_rms"]  # undeclared: every number of the records
    assert step_quantities(flowmo["trace"]) == ["latent_change_rms"]
    out = plot_trace(flowmo, tmp_path / "flowmo_trace.png", title="flowmo: a fox")
    assert read_png(out).std() > 0
