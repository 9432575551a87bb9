"""`mpcore weights expected/check` on an in-process fake backbone that describes its checkpoint keys."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from mpcore import hookimpl, plugins
from mpcore.cli.main import build_cli
from mpcore.interfaces import BackboneSpec

KEYS = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 4)}


def _expected_keys(variant=None, config=None):
    if variant not in (None, "small", "big"):
        raise ValueError(f"unknown variant {variant!r}; known: small, big")
    return dict(KEYS, **({"c.weight": (8,)} if variant == "big" else {}))


def _read_wrapped(path):
    return torch.load(path, weights_only=True)["wrapped"]


class _FakeBackbones:
    @hookimpl
    def register_backbones(self, register):
        def refuse(**_):
            raise AssertionError("weights commands must not load a model")

        register(BackboneSpec(name="fake-keys", load=refuse, expected_keys=_expected_keys))
        register(BackboneSpec(name="fake-wrapped", load=refuse, expected_keys=_expected_keys, read_weights=_read_wrapped))
        register(BackboneSpec(name="fake-nokeys", load=refuse))


@pytest.fixture
def cli():
    state = plugins.load_plugins(reload=True)
    assert plugins.register_plugin(state, _FakeBackbones(), "test-weights")
    yield build_cli()
    plugins.load_plugins(reload=True)


def test_expected_prints_the_map(cli):
    result = CliRunner().invoke(cli, ["weights", "expected", "--backbone", "fake-keys", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {k: list(v) for k, v in KEYS.items()}
    result = CliRunner().invoke(cli, ["weights", "expected", "--backbone", "fake-keys", "--variant", "big"])
    assert result.exit_code == 0 and "c.weight [8]" in result.stdout and "4 keys, 32 elements" in result.output


def test_check_ok_and_readable_mismatch(cli, tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {k: torch.zeros(s) for k, s in KEYS.items()}}, good)
    result = CliRunner().invoke(cli, ["weights", "check", "--backbone", "fake-keys", str(good)])
    assert result.exit_code == 0 and "OK, all 3 keys" in result.output, result.output

    bad = tmp_path / "bad.pt"
    torch.save({"a.weight": torch.zeros(4, 5), "b.weight": torch.zeros(2, 4), "z": torch.zeros(1)}, bad)
    result = CliRunner().invoke(cli, ["weights", "check", "--backbone", "fake-keys", str(bad)])
    assert result.exit_code == 1
    assert "1 missing key(s):\n  a.bias (4,)" in result.output
    assert "1 unexpected key(s):\n  z (1,)" in result.output
    assert "a.weight: checkpoint (4, 5), model (4, 3)" in result.output


def test_check_reads_files_as_the_backbone_does(cli, tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({"wrapped": {k: torch.zeros(s) for k, s in KEYS.items()}}, path)
    result = CliRunner().invoke(cli, ["weights", "check", "--backbone", "fake-wrapped", str(path)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["weights", "check", "--backbone", "fake-keys", str(path)])
    assert result.exit_code == 1 and "3 missing key(s)" in result.output


def test_clear_errors(cli, tmp_path):
    result = CliRunner().invoke(cli, ["weights", "expected", "--backbone", "fake-nokeys"])
    assert result.exit_code == 1
    assert "does not describe its checkpoint keys" in result.output and "fake-keys, fake-wrapped" in result.output
    result = CliRunner().invoke(cli, ["weights", "expected", "--backbone", "fake-keys", "--variant", "huge"])
    assert result.exit_code == 1 and "unknown variant 'huge'" in result.output
    result = CliRunner().invoke(cli, ["weights", "expected", "--backbone", "nope"])
    assert result.exit_code == 1 and "unknown backbone 'nope'" in result.output
    result = CliRunner().invoke(cli, ["weights", "check", "--backbone", "fake-keys", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2 and "does not exist" in result.output
