"""The package layout (issue 17): old import paths the README documented keep working for one release."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("old,new,name", [
    ("mpcore.flow_extract", "mpcore.flows.extract", "find_sources"),
    ("mpcore.weights", "mpcore.io.weights", "CheckpointMismatchError"),
])
def test_documented_old_paths_still_work_with_a_deprecation_warning(old, new, name):
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        found = getattr(importlib.import_module(old), name)
    assert found is getattr(importlib.import_module(new), name)
