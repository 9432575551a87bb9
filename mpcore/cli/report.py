"""``mpcore report DIR``: the command; the page is built by :mod:`mpcore.analysis.report`."""

from __future__ import annotations

from pathlib import Path

import click

from mpcore.analysis.report import ReportError, write_report


@click.command("report")
@click.argument("folder", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write. [default: DIR/report.html]")
@click.option("--eval", "eval_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="An `mpcore eval --json` output: per-video metric values are shown on each card.")
@click.option("--comparison", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder with comparison.json/.md/.png of `mpcore eval --compare`. [default: DIR/comparison, "
                   "or DIR/../comparison if it compares DIR's videos]")
@click.option("--title", default=None, help="Page title. [default: 'MotionPrompt report: DIR name']")
def report(folder: Path, out: Path | None, eval_path: Path | None, comparison: Path | None, title: str | None):
    """Write a self-contained HTML report of an output folder of `mpcore run` / `mpcore generate`.

    One card per item: prompt, seed, guidance settings, the baseline | MotionPrompt video, the trace
    plot and (with --eval) its metric values. Media are linked relatively: keep the report in DIR
    (the default) to move or zip the folder with it. Opens offline in any browser.
    """
    from mpcore.io.video import OutputError, check_location_writable

    try:
        check_location_writable(out if out is not None else folder / "report.html")  # before reading anything
        path = write_report(folder, out, eval_path, comparison, title)
    except (ReportError, OutputError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(str(path))
    click.echo(path.resolve().as_uri())
