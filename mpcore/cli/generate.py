"""``mpcore generate``: one video per (prompt, seed) of a prompt list (the job: :mod:`mpcore.jobs.generate`)."""

from __future__ import annotations

import click

from mpcore.cli.common import as_click_error, run_options, with_backbone_options
from mpcore.cli.run import run_params
from mpcore.jobs import run as runner
from mpcore.jobs.generate import FORMATS, GenerateError, generate


def params() -> list[click.Parameter]:
    """``run``'s options without --prompt, --seed and --out, plus the prompt list, seeds and output folder."""
    O = click.Option
    own = [
        O(["--prompts"], required=True,
          help="Prompt file: .txt (one per line; '#' comments) or VBench-style .json; 'example' = the list shipped with mpcore."),
        O(["--seeds"], default=None, help="Seeds of each prompt: 0,1,2 or 0-3 (inclusive). Default: the backbone's default seed."),
        O(["--out"], required=True, help="Output folder: <item>.mp4 + <item>.json per item, and generate.json."),
        O(["--format", "fmt"], type=click.Choice(list(FORMATS)), default="mp4", show_default=True,
          help="Video format of each item (frames: a folder of lossless PNG frames)."),
        O(["--fail-fast"], is_flag=True, help="Stop at the first item that fails (default: report it, go on)."),
    ]
    shared = [p for p in run_params() if p.name not in ("prompt", "seed", "out", "overwrite")]
    return shared[:2] + own + shared[2:]  # after --backbone and --model


def build_command(options: dict) -> click.Command:
    """``mpcore generate`` with the installed backbones' options (``options``: see :func:`mpcore.cli.common.backbone_options`)."""
    return with_backbone_options(click.Command("generate", callback=command, help=command.__doc__, params=params()),
                                 options)


def command(**kwargs):
    """Generate one video per (prompt, seed) of a prompt list into a folder; resumable (complete items are skipped)."""
    try:
        prompts, out, seeds, fmt, fail_fast = (kwargs.pop(k) for k in ("prompts", "out", "seeds", "fmt", "fail_fast"))
        generate(run_options(kwargs), prompts, out, seeds=seeds, fmt=fmt, fail_fast=fail_fast)
    except (*runner.user_errors(), GenerateError) as error:
        raise as_click_error(error) from None
