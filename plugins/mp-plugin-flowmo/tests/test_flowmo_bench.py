"""bench_guidance's flowmo mode: chosen only when named, built through the plugin, its row's guidance fields."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

from mp_plugin_flowmo import FlowMo

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_guidance.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_guidance_flowmo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flowmo_mode_runs_only_when_named_and_is_built_through_the_plugin():
    bench = load_bench()
    default = bench.resolve_args(bench.build_parser().parse_args(["--config", "tiny", "--device", "cpu"]))
    assert "flowmo" not in default.mode_list
    named = bench.resolve_args(bench.build_parser().parse_args(["--config", "tiny", "--device", "cpu",
                                                                "--modes", "baseline,flowmo"]))
    assert named.mode_list == ["baseline", "flowmo"]
    assert bench._guidance_models("flowmo", "cpu", None) == (None, None, None)  # no flow, no discriminator
    guidance = bench.flowmo_guidance(opt_range=(3, 4))
    assert isinstance(guidance, FlowMo) and guidance.config.opt_range == (3, 4)
    result = types.SimpleNamespace(guidance={"skipped_updates": 0, "trace": []})
    fields = bench._guidance_fields("flowmo", 50, result)
    assert fields["opt_range"] == [0, 12] and fields["estimate_calls"] == 1 and fields["token_drift_l2"] is None
