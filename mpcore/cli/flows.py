"""``mpcore flows``: evaluate and visualize optical-flow estimator plugins.

* ``mpcore flows eval --estimator NAME`` -- EPE on the Middlebury motorcycle stereo pair, warp error
  on real clips, cost at 256 x 256, beside OpenCV DIS and Farneback (:mod:`mpcore.flows.evaluate`);
* ``mpcore flows show A.png B.png --estimator NAME --out flow.png`` -- the flow between two images
  as a Middlebury color-coded PNG (:mod:`mpcore.flows.viz`);
* ``mpcore flows extract --videos DIR --out CACHE --estimator NAME`` -- flows of random frame pairs
  of every video under DIR, into a flow cache for training the discriminator (:mod:`mpcore.flows.extract`).

As in ``mpcore run``, every cheap check (unknown estimator, bad options, unwritable output, missing
files or optional packages) runs before any data or model is loaded. Progress goes to stderr, results
to stdout.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any, Callable

import click

from mpcore import plugins
from mpcore.cli.common import device_from_option
from mpcore.io.console import echo
from mpcore.jobs.options import parse_scalar
from mpcore.config import parse_override


# ---------------------------------------------------------------------------------------------------
# shared checks


def _estimator_spec(name: str):
    """The flow plugin's spec; an unknown name is a bad option (exit 2) listing the installed ones."""
    try:
        return plugins.get("flow", name).spec
    except plugins.UnknownPluginError as error:
        raise click.BadParameter(str(error), param_hint="-e/--estimator") from None


def _parse_options(options: tuple[str, ...], spec=None, flag: str = "--option") -> dict[str, Any]:
    """``("size=large", "num_flow_updates=12")`` -> ``{"size": "large", "num_flow_updates": 12}``; with the
    estimator's ``spec``, a key it does not declare is refused (a plugin that declares none is checked when it
    loads). Errors name ``flag``, the option that gave them."""
    for option in options:
        if "=" not in option:
            raise click.BadParameter(f"invalid option {option!r}: expected KEY=VALUE, e.g. {flag} size=large",
                                     param_hint=flag)
    parsed = {key: parse_scalar(value) for key, value in map(parse_override, options)}
    declared = None if spec is None else spec.options
    unknown = sorted(set(parsed) - set(declared)) if declared is not None else []
    if unknown:
        raise click.BadParameter(f"unknown option(s) of the {spec.name} flow estimator: {', '.join(unknown)}; "
                                 f"it takes: {', '.join(declared) or 'none'}", param_hint=flag)
    return parsed


def _check_out_file(path: str, suffix: str | None = None) -> Path:
    """Validate an output file path before any work: not a directory, the right suffix, its folder
    creatable and writable (proved by creating and removing a temporary file in it)."""
    out = Path(path).expanduser()
    if suffix is not None and out.suffix.lower() != suffix:
        raise click.BadParameter(f"{out} must end in {suffix}", param_hint="--out")
    if out.is_dir():
        raise click.BadParameter(f"{out} is a directory; give a file path", param_hint="--out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".mpcore-write-test-", dir=out.parent)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise click.ClickException(f"cannot write {out}: {error.strerror or error}") from None
    return out


def _load_estimator(spec, weights: str | None, device, options: dict[str, Any], seed: int = 0):
    try:
        return spec.load(weights, device, seed=seed, **options)
    except (TypeError, ValueError, RuntimeError, OSError, ImportError) as error:
        raise click.ClickException(f"could not load flow estimator {spec.name!r} (weights {weights!r}): {error}") from None


def estimator_options(command: Callable) -> Callable:
    """The options every ``flows`` command takes to pick and load an estimator."""
    for option in reversed([
        click.option("--estimator", "-e", required=True, help="Flow estimator plugin name (see `mpcore plugins`)."),
        click.option("--weights", default=None, help="Estimator weights: path, plugin-specific name, or 'random' (default: the plugin's)."),
        click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Estimator option, e.g. --option size=large (repeatable)."),
        click.option("--device", default=None, help="torch device (default: cuda if available, else cpu)."),
    ]):
        command = option(command)
    return command


@click.group("flows")
def flows():
    """Evaluate and visualize optical-flow estimators (Middlebury EPE, warp error, color-coded flow),
    and extract flow datasets for training the discriminator."""


# ---------------------------------------------------------------------------------------------------
# flows eval


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    """The human summary of :func:`mpcore.flows.evaluate.evaluate`'s result: estimator vs DIS vs
    Farneback vs zero flow."""
    name = result["estimator"]
    refs = result.get("references") or {}
    columns = [name, *refs, "zero flow"]
    rows: list[tuple[str, list[str]]] = []
    for resolution, item in result["motorcycle"].items():
        label = f"motorcycle {resolution} EPE px ({item['size'][0]}x{item['size'][1]}, {item['valid_fraction']:.0%} valid)"
        rows.append((label, [_fmt(item["epe"]), *(_fmt(r[resolution]["epe"]) for r in refs.values()), _fmt(item["zero_flow_epe"])]))
    for clip, item in result["clips"].items():
        label = f"{clip} warp error 0-255 ({item['pairs']} pairs, {item['size'][0]}x{item['size'][1]})"
        rows.append((label, [_fmt(item["warp_error"]), *(_fmt(r["clips"][clip]["warp_error"]) for r in refs.values()),
                             _fmt(item["zero_flow_warp_error"])]))
    for resolution, item in result["motorcycle"].items():
        rows.append((f"time motorcycle {resolution} s", [_fmt(item["seconds"]), *(_fmt(r[resolution]["seconds"]) for r in refs.values()), ""]))
    for clip, item in result["clips"].items():
        rows.append((f"time {clip} s/pair", [_fmt(item["seconds_per_pair"]), *(_fmt(r["clips"][clip]["seconds_per_pair"]) for r in refs.values()), ""]))
    cost = result.get("cost_256")
    if cost:
        blank = [""] * (len(refs) + 1)
        rows.append((f"cost 256x256 forward s ({cost['device']})", [_fmt(cost["forward_s"]), *blank]))
        backward = _fmt(cost["forward_backward_s"]) if cost["differentiable"] else "not differentiable"
        rows.append(("cost 256x256 forward+backward s", [backward, *blank]))
    for resolution, ratio in (result.get("epe_ratio_vs_dis") or {}).items():
        rows.append((f"motorcycle {resolution} EPE / DIS EPE", [_fmt(ratio, 2)] + [""] * (len(refs) + 1)))
    header = ("", *columns)
    table = [header] + [(label, *cells) for label, cells in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    return "\n".join(lines)


@flows.command("eval")
@estimator_options
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result to stdout.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write the JSON result to this file (atomically).")
@click.option("--resolutions", default="full,half", show_default=True,
              help="Motorcycle resolutions, comma-separated: full (500x741), half, quarter.")
@click.option("--clip-pairs", type=click.IntRange(min=0), default=8, show_default=True,
              help="Consecutive frame pairs from the start of each clip (0 skips the clips).")
@click.option("--clip-size", type=int, default=256, show_default=True, help="Long side of the resized clip frames (even).")
@click.option("--cost-repeats", type=click.IntRange(min=0), default=3, show_default=True,
              help="Timed repeats (after a warm-up) of the 256x256 cost measurement; 0 skips it.")
@click.option("--references/--no-references", default=True, help="Also evaluate OpenCV DIS and Farneback on the same inputs.")
@click.option("--progress/--no-progress", default=True, help="Progress bar (stderr) over the clip pairs.")
def eval_command(estimator, weights, options, device, as_json, out, resolutions, clip_pairs, clip_size, cost_repeats,
                 references, progress):
    """Score a flow estimator: EPE on the Middlebury 2014 motorcycle stereo pair (ground truth
    flow = (-disparity, 0)), photometric warp error on real clips, and its cost at 256x256, beside
    OpenCV DIS and Farneback computed in the same run."""
    from mpcore.flows import evaluate as flow_eval

    # ---- cheap checks first
    spec = _estimator_spec(estimator)
    parsed = _parse_options(options, spec)
    try:
        resolution_list = flow_eval.parse_names(resolutions, flow_eval.RESOLUTIONS, "resolution")
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--resolutions") from None
    if clip_pairs:
        try:
            flow_eval.fit_long_side(2, 2, clip_size)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--clip-size") from None
    out_path = _check_out_file(out) if out else None
    try:
        flow_eval.check_dependencies(references=references, clips=clip_pairs > 0)
    except flow_eval.MissingDependencyError as error:
        raise click.ClickException(str(error)) from None
    resolved = device_from_option(device)

    # ---- load and evaluate
    echo(f"loading flow estimator {estimator!r} on {resolved}")
    flow = _load_estimator(spec, weights, resolved, parsed)
    try:
        result = flow_eval.evaluate(
            flow, estimator, resolved,
            resolutions=resolution_list, clip_pairs=clip_pairs, clip_size=clip_size, references=references,
            cost_repeats=cost_repeats, progress=progress, log=echo,
        )
    except (flow_eval.MissingDependencyError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    result["weights"] = weights
    result["options"] = parsed

    if out_path is not None:
        from mpcore.io.manifest import write_json_atomic

        write_json_atomic(result, out_path)
        echo(f"wrote {out_path}")
    if as_json:
        click.echo(json.dumps(result, indent=2, allow_nan=False))
    else:
        click.echo(format_table(result))


# ---------------------------------------------------------------------------------------------------
# flows show


def _read_image(path: Path):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise click.ClickException(f"cannot read image {path}: {error}") from None


@flows.command("show")
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@estimator_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output PNG.")
@click.option("--size", type=int, default=None, help="Resize both images so the long side is SIZE (even) before the flow.")
@click.option("--flow-only", is_flag=True, help="Write only the color-coded flow (same size as the frames), no frames or legend.")
def show_command(image_a, image_b, estimator, weights, options, device, out, size, flow_only):
    """Compute the flow from IMAGE_A to IMAGE_B and write it as a Middlebury color-coded PNG
    (hue = direction, saturation = magnitude relative to the largest; white = still), beside
    the two frames with a color-wheel legend unless --flow-only."""
    spec = _estimator_spec(estimator)
    parsed = _parse_options(options, spec)
    out_path = _check_out_file(out, ".png")
    if size is not None and (size < 8 or size % 2):
        raise click.BadParameter(f"must be an even number >= 8; got {size}", param_hint="--size")
    frame_a, frame_b = _read_image(image_a), _read_image(image_b)
    if frame_a.shape != frame_b.shape:
        raise click.ClickException(
            f"the two images differ in size: {image_a} is {frame_a.shape[1]}x{frame_a.shape[0]}, "
            f"{image_b} is {frame_b.shape[1]}x{frame_b.shape[0]} (width x height); flow needs two frames of one size"
        )
    resolved = device_from_option(device)

    import numpy as np
    import torch

    from mpcore.flows import viz as flow_viz
    from mpcore.flows.evaluate import fit_long_side, resize_frames, to_model_frames

    frames = np.stack([frame_a, frame_b])
    if size is not None:
        frames = resize_frames(frames, fit_long_side(*frames.shape[1:3], size))
    flow_estimator = _load_estimator(spec, weights, resolved, parsed)
    tensors = to_model_frames(frames).to(resolved)
    with torch.no_grad():
        flow = flow_estimator(tensors[:1], tensors[1:])
    expected = (1, 2, *frames.shape[1:3])
    if tuple(flow.shape) != expected:
        raise click.ClickException(f"flow estimator {estimator!r} returned shape {tuple(flow.shape)}; expected {expected}")
    flow = flow.detach().to("cpu", torch.float32)[0]
    if flow_only:
        flow_viz.write_flow_png(out_path, flow, legend=False)
    else:
        flow_viz.write_flow_png(out_path, flow, frames[0], frames[1], legend=True)
    stats = flow_viz.magnitude_stats(flow)
    click.echo(f"flow {frames.shape[2]}x{frames.shape[1]}: max |flow| = {stats['max']:.3f} px, mean |flow| = {stats['mean']:.3f} px")
    echo(f"wrote {out_path}")


# ---------------------------------------------------------------------------------------------------
# flows extract


def _int_pair(text: str, separator: str) -> list[int]:
    """``"N"`` -> [N, N]; ``"A<sep>B"`` -> [A, B]; anything else -> [] (the caller reports it)."""
    try:
        values = [int(part) for part in str(text).lower().strip().split(separator)]
    except ValueError:
        return []
    return values * 2 if len(values) == 1 else values


def parse_gap(text: str) -> tuple[int, int]:
    """``"2"`` -> (2, 2); ``"1-3"`` -> (1, 3). Raises ``click.BadParameter`` unless 1 <= min <= max."""
    values = _int_pair(text, "-")
    if len(values) != 2 or not 1 <= values[0] <= values[1]:
        raise click.BadParameter(f"expected N or MIN-MAX with 1 <= MIN <= MAX (e.g. --gap 1 or --gap 1-3); got {text!r}",
                                 param_hint="--gap")
    return values[0], values[1]


def parse_size(text: str) -> tuple[int, int]:
    """``"224"`` -> (224, 224); ``"256x448"`` -> (256, 448) as (H, W). Both sides >= 8."""
    values = _int_pair(text, "x")
    if len(values) != 2 or min(values) < 8:
        raise click.BadParameter(f"expected S (square) or HxW with sides >= 8 (e.g. --size 224 or --size 256x448); got {text!r}",
                                 param_hint="--size")
    return values[0], values[1]


def format_extract_summary(summary: dict[str, Any]) -> str:
    """The human summary of :func:`mpcore.flows.extract.extract_flows`."""
    height, width = summary["size"]
    gap = summary["gap"]
    gap_text = str(gap[0]) if gap[0] == gap[1] else f"{gap[0]}-{gap[1]}"
    lines = [
        f"flow cache {summary['out']}: {summary['pairs']} pairs from {summary['videos_used']} of {summary['videos']} videos "
        f"({summary['videos_skipped']} skipped)",
        f"estimator {summary.get('estimator', {}).get('name')}, frames {height}x{width} (HxW), gap {gap_text}, "
        f"{summary['pairs_per_video']} pairs/video, seed {summary['seed']}, label {summary['label']}",
        f"mean |flow| {summary['mean_flow_magnitude']:.3f} px; {summary['seconds']:.1f} s "
        f"({summary['seconds_per_pair']:.3f} s/pair, flow only {summary['seconds_flow_per_pair']:.3f} s/pair)",
    ]
    for row in summary.get("ranks") or []:  # a multi-process run
        rate = "-" if row["pairs_per_s"] is None else f"{row['pairs_per_s']:.2f} pairs/s"
        lines.append(f"  rank {row['rank']} ({row['host']}, {row['device']}): {row['videos']} videos, {row['pairs']} pairs "
                     f"in {row['seconds']:.1f} s, {rate}")
    if summary["videos_with_fewer_pairs"]:
        lines.append(f"{summary['videos_with_fewer_pairs']} video(s) had fewer distinct pairs than --pairs-per-video")
    if summary["skipped"]:
        lines.append("skipped:")
        lines.extend(f"  {item['source']}: {item['reason']}" for item in summary["skipped"])
    return "\n".join(lines)


def command_line(ctx: click.Context) -> str:
    """The command as a shell line, rebuilt from the parsed options (every value that is not the
    default), so the index records how to redo the run however the command was invoked."""
    words = ["mpcore", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if not isinstance(param, click.Option) or value is None or value == () or value == param.default:
            continue
        long_name = max(param.opts, key=len)
        if param.is_flag:
            if value:
                words.append(long_name)
            elif param.secondary_opts:
                words.append(max(param.secondary_opts, key=len))
        elif param.multiple:
            for item in value:
                words.extend([long_name, str(item)])
        else:
            words.extend([long_name, str(value)])
    return shlex.join(words)


@flows.command("extract")
@click.option("--videos", "videos_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of videos (.mp4 .avi .gif .webm .mov .mkv) and/or frame folders (DAVIS JPEGImages/480p/<seq>/), searched recursively.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The flow cache folder to write.")
@estimator_options
@click.option("--pairs-per-video", type=click.IntRange(min=1), default=4, show_default=True,
              help="Distinct frame pairs sampled per video (fewer if a video has fewer).")
@click.option("--gap", default="1", show_default=True, help="Frame gap b - a of a pair: N, or a range MIN-MAX drawn per pair.")
@click.option("--size", default="224", show_default=True,
              help="Frames are resized to SxS (or HxW, e.g. 256x448) BEFORE the flow: the discriminator's input size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Pair sampling seed (per video: a hash of seed and video id).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Frame pairs per estimator call.")
@click.option("--label", default=None, help="What these videos are, stored in the index: real, fake or any NAME.")
@click.option("--max-videos", type=click.IntRange(min=1), default=None, help="Use only the first N videos in sorted order.")
@click.option("--overwrite", is_flag=True, help="Replace an existing flow cache at --out.")
@click.option("--progress/--no-progress", default=True, help="Progress bar (stderr) over the videos.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary to stdout.")
def extract_command(videos_dir, out, estimator, weights, options, device, pairs_per_video, gap, size, seed, batch_size,
                    label, max_videos, overwrite, progress, as_json):
    """Compute the optical flows of random frame pairs of every video under --videos and store them
    in a flow cache (--out) for training the discriminator: real videos (DAVIS, WebVid) and videos
    the backbone generated each go into their own cache, extracted with the same estimator, --size
    and --gap. Unreadable, corrupt or too-short videos are skipped and listed.

    Under `accelerate launch` / `torchrun` each process extracts a contiguous block of the videos;
    the main process merges them into one cache that reads back as a single process's."""
    from mpcore.jobs import distributed
    from mpcore.flows import extract as flow_extract

    dist = distributed.init(device)
    device = dist.device(device)
    say = echo if dist.is_main else (lambda message: None)

    # ---- cheap checks first (nothing is loaded before these pass)
    spec = _estimator_spec(estimator)
    parsed = _parse_options(options, spec)
    gap_range = parse_gap(gap)
    frame_size = parse_size(size)
    if label is not None and not label.strip():
        raise click.BadParameter("must not be empty (e.g. --label real)", param_hint="--label")
    try:
        out_path = flow_extract.check_cache_path(out, overwrite)
        sources = flow_extract.find_sources(videos_dir)
    except flow_extract.ExtractOptionError as error:  # a --videos folder that does not exist: a bad option
        raise click.BadParameter(str(error), param_hint=error.option) from None
    except flow_extract.ExtractError as error:
        raise click.ClickException(str(error)) from None
    if not sources:
        raise click.ClickException(
            f"no videos or frame folders under {videos_dir} (looked for {' '.join(flow_extract.VIDEO_SUFFIXES + flow_extract.GIF_SUFFIXES)} "
            "files and folders of .jpg/.jpeg/.png frames)"
        )
    found = len(sources)
    if max_videos is not None:
        sources = sources[:max_videos]
    resolved = device_from_option(device)

    # ---- load and extract
    say(f"{found} source(s) under {videos_dir}" + (f"; using the first {len(sources)}" if len(sources) < found else "")
        + (f"; on {dist.world_size} processes" if dist.enabled else ""))
    say(f"loading flow estimator {estimator!r} on {resolved}")
    flow = _load_estimator(spec, weights, resolved, parsed, seed=seed)
    meta = {
        "estimator": {"name": estimator, "weights": weights, "options": parsed},
        "videos_dir": str(Path(videos_dir).resolve()),
        "command": command_line(click.get_current_context()),
        "max_videos": max_videos,
    }
    try:
        summary = flow_extract.extract_flows(
            sources, flow, out_path, size=frame_size, pairs_per_video=pairs_per_video, gap=gap_range, seed=seed,
            batch_size=batch_size, device=resolved, label=label, meta=meta, overwrite=overwrite, progress=progress,
            dist=dist,
        )
    except (flow_extract.ExtractError, flow_extract.EstimatorContractError) as error:
        raise click.ClickException(str(error)) from None
    if not dist.is_main:
        return
    if as_json:
        from mpcore.io.manifest import json_safe

        click.echo(json.dumps(json_safe(summary), indent=2, allow_nan=False))
    else:
        click.echo(format_extract_summary(summary))
