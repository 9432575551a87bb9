"""docs/plugins.md shows the template plugin's two files exactly, so the page a plugin author copies from is
the code a test registers (tests/test_plugins.py::test_in_process_plugin_appears_and_disappears)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "plugins" / "mp-plugin-template"


@pytest.mark.parametrize("relative", ["pyproject.toml", "mp_plugin_template/__init__.py"])
def test_plugins_page_shows_the_template_plugin_exactly(relative):
    page = (ROOT / "docs" / "plugins.md").read_text()
    assert f"`{relative}`" in page, f"docs/plugins.md does not name {relative}"
    assert (TEMPLATE / relative).read_text().rstrip() in page, (
        f"docs/plugins.md no longer shows plugins/mp-plugin-template/{relative} verbatim: copy the file's text into "
        "the page's code block")
