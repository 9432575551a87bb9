"""The plugin system: entry points, in-process registration, broken plugins, allow-list, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import torch

from mpcore import plugins

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_plugin_state(monkeypatch):
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    plugins.load_plugins(reload=True)
    yield
    monkeypatch.undo()
    plugins.load_plugins(reload=True)


def test_first_party_plugins_come_through_entry_points():
    expected = {"backbone": ("animatediff", "mp-plugin-animatediff"), "flow": ("raft", "mp-plugin-raft"),
                "discriminator": ("vit", "mp-plugin-vit"), "metric": ("temporal_flickering", "mp-plugin-vbench")}
    for kind, (name, distribution) in expected.items():
        registered = plugins.registry(kind)[name]
        assert registered.distribution == distribution
        assert registered.version == metadata.version(distribution)
    assert not plugins.load_plugins().failed


def test_in_process_plugin_appears_and_disappears():
    sys.path.insert(0, str(ROOT / "plugins" / "mp-plugin-template"))
    try:
        import mp_plugin_template
    finally:
        sys.path.pop(0)
    state = plugins.load_plugins()
    assert "normal-flow" not in plugins.registry("flow")
    assert plugins.register_plugin(state, mp_plugin_template, "template")
    estimator = plugins.get("flow", "normal-flow").spec.load(None, "cpu")
    # a bright square shifted right by one pixel: normal flow points right (+x) on its vertical edges
    frame_a = -torch.ones(1, 3, 16, 16)
    frame_a[..., 4:10, 4:10] = 1
    frame_b = torch.roll(frame_a, 1, dims=-1)
    flow = estimator(frame_a, frame_b)
    assert flow.shape == (1, 2, 16, 16)
    assert flow[0, 0, 5:9, 4].mean() > 0.3 and flow[0, 0, 5:9, 10].mean() > 0.3
    state.manager.unregister(name="template")
    assert "normal-flow" not in plugins.registry("flow")


def test_template_declares_its_entry_point():
    pyproject = tomllib.loads((ROOT / "plugins" / "mp-plugin-template" / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["mpcore"] == {"normal-flow": "mp_plugin_template"}


def _fake_entry_points(monkeypatch, tmp_path, modules: dict[str, str]):
    """Real installed entry points plus modules written to tmp_path, as if installed too."""
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    real = list(metadata.entry_points(group=plugins.ENTRY_POINT_GROUP))
    fake = [metadata.EntryPoint(name=name, value=name, group=plugins.ENTRY_POINT_GROUP) for name in modules]
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: real + fake)


def test_broken_plugins_are_reported_and_the_rest_load(monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, {
        "mp_broken_import": "raise RuntimeError('boom at import')\n",
        "mp_unknown_hook": """
            from mpcore import hookimpl

            @hookimpl
            def register_colours(register):
                pass
        """,
    })
    state = plugins.load_plugins(reload=True)
    assert "boom at import" in state.failed["mp_broken_import"]
    assert "unknown hook 'register_colours'" in state.failed["mp_unknown_hook"]
    assert not state.manager.has_plugin("mp_unknown_hook")
    assert "animatediff" in plugins.registry("backbone") and "raft" in plugins.registry("flow")
    from click.testing import CliRunner

    from mpcore.cli.main import build_cli

    output = CliRunner().invoke(build_cli(), ["plugins"]).output
    assert "FAILED mp_broken_import: RuntimeError: boom at import" in output


def test_allow_list_restricts_what_loads(monkeypatch):
    monkeypatch.setenv(plugins.ALLOW_ENV, "raft")
    plugins.load_plugins(reload=True)
    assert list(plugins.registry("flow")) == ["raft"]
    assert plugins.registry("backbone") == {}
    with pytest.raises(plugins.UnknownPluginError, match="unknown backbone 'animatediff'; installed: none"):
        plugins.get("backbone", "animatediff")


def test_python_m_mpcore_plugins_json():
    result = subprocess.run([sys.executable, "-m", "mpcore", "plugins", "--json"], capture_output=True, text=True, check=True)
    listed = {(row["name"], row["kind"]): row for row in json.loads(result.stdout)["plugins"]}
    assert listed[("animatediff", "backbone")]["distribution"] == "mp-plugin-animatediff"
    assert {("raft", "flow"), ("vit", "discriminator"), ("temporal_flickering", "metric")} <= set(listed)
    assert all(row["version"] for row in listed.values())


def test_plugins_can_add_cli_commands(monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, {
        "mp_hello_command": """
            import click
            from mpcore import hookimpl

            @hookimpl
            def register_commands(cli):
                @cli.command()
                @click.argument("name")
                def hello(name):
                    click.echo(f"hello {name}")
        """,
    })
    from click.testing import CliRunner

    from mpcore.cli.main import build_cli

    plugins.load_plugins(reload=True)
    result = CliRunner().invoke(build_cli(), ["hello", "fox"])
    assert result.exit_code == 0 and result.output == "hello fox\n"
    listed = json.loads(CliRunner().invoke(build_cli(), ["plugins", "--json"]).stdout)["plugins"]
    assert {"name": "hello", "kind": "command", "plugin": "mp_hello_command"}.items() <= \
        next(row for row in listed if row["name"] == "hello").items()


def test_a_raising_hook_is_reported_like_a_failing_import(monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, {
        "mp_raising_hook": """
            from mpcore import hookimpl

            @hookimpl
            def register_flow_estimators(register):
                raise RuntimeError('boom in the hook')
        """,
        "mp_raising_command": """
            from mpcore import hookimpl

            @hookimpl
            def register_commands(cli):
                raise RuntimeError('boom adding a command')
        """,
    })
    state = plugins.load_plugins(reload=True)
    assert state.failed["mp_raising_hook"] == "register_flow_estimators raised RuntimeError: boom in the hook"
    assert not state.manager.has_plugin("mp_raising_hook")
    assert "raft" in plugins.registry("flow") and "animatediff" in plugins.registry("backbone")
    from click.testing import CliRunner

    from mpcore.cli.main import build_cli

    result = CliRunner().invoke(build_cli(), ["plugins"])
    assert result.exit_code == 0, result.output
    assert "FAILED mp_raising_hook: register_flow_estimators raised RuntimeError: boom in the hook" in result.output
    assert "FAILED mp_raising_command: register_commands raised RuntimeError: boom adding a command" in result.output
    assert "animatediff" in result.output


def test_duplicate_names_warn_naming_both_distributions(monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, {
        "mp_second_tvl1": """
            from mpcore import hookimpl
            from mpcore.interfaces import FlowEstimatorSpec

            @hookimpl
            def register_flow_estimators(register):
                register(FlowEstimatorSpec(name="tvl1", load=lambda *a, **k: None))
        """,
    })
    state = plugins.load_plugins(reload=True)
    assert state.warnings == ["flow 'tvl1' is registered by plugin tvl1 from mp-plugin-tvl1 and plugin mp_second_tvl1 "
                              "(in-process); using plugin tvl1 from mp-plugin-tvl1"]
    assert plugins.registry("flow")["tvl1"].distribution == "mp-plugin-tvl1"
    from click.testing import CliRunner

    from mpcore.cli.main import build_cli

    result = CliRunner().invoke(build_cli(), ["plugins", "--json"])
    assert "warning: flow 'tvl1' is registered by plugin tvl1 from mp-plugin-tvl1" in result.stderr
    assert json.loads(result.stdout)["warnings"] == state.warnings


def test_allow_list_naming_a_missing_plugin_says_so(monkeypatch):
    monkeypatch.setenv(plugins.ALLOW_ENV, "nosuch,raft")
    state = plugins.load_plugins(reload=True)
    assert list(plugins.registry("flow")) == ["raft"]
    assert state.failed["nosuch"].startswith(f"named in {plugins.ALLOW_ENV} but not installed (installed plugins: ")
    with pytest.raises(plugins.UnknownPluginError, match="nosuch \\(named in MPCORE_PLUGINS but not installed"):
        plugins.get("backbone", "animatediff")
