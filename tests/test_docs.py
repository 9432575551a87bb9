"""The documentation site (mkdocs.yml, docs/): it builds strictly (no broken link or anchor, every page in the
nav), its generated settings page matches the code, its Getting-started commands run, and it refers to
nothing a user does not have."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_settings", DOCS / "gen_settings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def settings_page():
    """(the committed docs/settings.md, what docs/gen_settings.py generates now)."""
    return (DOCS / "settings.md").read_text(encoding="utf-8"), _generator().render()


def test_settings_page_is_generated_from_the_current_code(settings_page):
    committed, generated = settings_page
    assert committed == generated, ("docs/settings.md differs from the guidances' config classes: "
                                    "run `python docs/gen_settings.py` and commit docs/settings.md")


def test_settings_page_lists_every_field_of_every_guidance(settings_page):
    from mpcore import plugins

    committed, _ = settings_page
    registered = plugins.registry("guidance", plugins.load_plugins())
    assert registered
    for name, found in registered.items():
        assert f"\n## {name}\n" in committed, f"guidance {name} missing from docs/settings.md"
        section = committed.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        config_class = found.spec.config_class
        for field in dataclasses.fields(config_class) if config_class is not None else ():
            if field.init:
                assert f"**`{field.name}`**" in section, f"-o {field.name} of {name} missing from docs/settings.md"


def test_docs_refer_to_nothing_a_user_does_not_have():
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    found = []
    for page in pages:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for phrase in ("shared/", "this machine", "the issue"):
                if phrase in line.lower():
                    found.append(f"{page.relative_to(ROOT)}:{number}: {phrase!r}")
    assert not found, "\n".join(found)


def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install -r requirements-dev.txt)")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def runnable_commands(page: Path) -> list[str]:
    """The lines of the ```bash blocks that follow a ``<!-- test: run -->`` comment (continuations joined)."""
    blocks = re.findall(r"<!-- test: run -->\s*```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_getting_started_commands_run(tmp_path, monkeypatch):
    """The Getting-started commands on the toy and tiny models, as a user types them, in an empty folder (in
    this process, through the ``mpcore`` command group, to share the imports). To keep the suite fast each
    ``mpcore run`` line gets ``--steps 4`` unless it gives ``--steps`` (the guided range scales with the steps,
    so the guidance still runs), ``-o iterations=1`` (one token update per guided step) and ``--no-progress``."""
    from click.testing import CliRunner

    from mpcore import plugins
    from mpcore.cli.main import build_cli

    commands = runnable_commands(DOCS / "getting-started.md")
    assert any("--compare" in command for command in commands), commands
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command)
        assert argv[:2] == ["mpcore", "run"], f"only `mpcore run` lines are marked runnable: {command}"
        args = argv[1:] + ([] if "--steps" in argv else ["--steps", "4"]) + ["-o", "iterations=1", "--no-progress"]
        plugins.load_plugins(reload=True)
        result = CliRunner().invoke(build_cli(), args)
        assert result.exit_code == 0, f"{command}\n{result.output}"
        video = tmp_path / argv[argv.index("--out") + 1]
        written = [video, video.with_suffix(".json"), video.with_name(video.stem + "_trace.png")]
        if "--compare" in argv:
            written.append(video.with_name(video.stem + "_compare.mp4"))
        for path in written:
            assert path.is_file() and path.stat().st_size > 0, f"{command}: {path.name} not written"
        manifest = json.loads(video.with_suffix(".json").read_text(encoding="utf-8"))
        assert manifest["guidance_updates"]["updates"] >= 1, f"{command}: no guidance update"
