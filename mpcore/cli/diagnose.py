"""``mpcore diagnose steps``: where does a backbone's clean-video estimate carry motion, and where does
the discriminator respond? Run it before guiding a backbone (:mod:`mpcore.analysis.diagnose`).

    mpcore diagnose steps --backbone animatediff --model M --motion-adapter A \\
        --videos real_clips/ --prompts captions.txt --discriminator disc.safetensors --out diag/

Takes ``run``'s model, sampling, flow and discriminator options (``-o`` MotionPrompt settings
included: the frame pairs, flow size and token are guidance's own). Writes ``diag/diagnose.json``
and ``diag/diagnose.png`` and prints the recommended ``-o`` settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from mpcore.cli.common import as_click_error, run_options, with_backbone_options
from mpcore.io.console import echo

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv")
NOT_DIAGNOSE_OPTIONS = ("prompt", "guidance", "compare", "out", "fps", "overwrite", "scheduler",
                        # FreeInit re-runs whole sampling passes; the diagnostic measures single steps
                        "free_init", "free_init_method", "free_init_order", "free_init_spatial_stop",
                        "free_init_temporal_stop")


def params() -> list[click.Parameter]:
    """``run``'s options without --prompt, --guidance, --compare, --out and --fps, plus the diagnostic's own."""
    from mpcore.cli.run import run_params

    O = click.Option
    own = [
        O(["--videos"], required=True, type=click.Path(file_okay=False, path_type=Path),
          help="Folder of real videos (" + ", ".join(VIDEO_SUFFIXES) + "), read in sorted order."),
        O(["--prompts"], default=None,
          help="Captions: a .txt/.json prompt file in the videos' sorted order. Default: NAME.txt beside each video."),
        O(["--clips"], type=int, default=None, help="Use at most this many videos (the first in sorted order)."),
        O(["--check-steps"], default="all", show_default=True,
          help="Sampling steps to check: all, START-STOP (inclusive) or a list 0,2,4."),
        O(["--estimates"], default="tweedie,rollout2,rollout3", show_default=True,
          help="Estimates to compare: tweedie (one-step) and rolloutN (N model calls)."),
        O(["--pairs"], type=int, default=None, help="Frame pairs per clip (default: decoded_frames / 2)."),
        O(["--min-cosine"], type=float, default=None, help="Recommendation: least motion cosine (default 0.3)."),
        O(["--min-auc"], type=float, default=None, help="Recommendation: least discriminator AUC (default 0.6)."),
        O(["--out"], required=True, type=click.Path(path_type=Path), help="Output folder: diagnose.json, diagnose.png."),
    ]
    shared = [p for p in run_params() if p.name not in NOT_DIAGNOSE_OPTIONS]
    return shared[:2] + own + shared[2:]


def parse_steps(text: str, num_steps: int) -> list[int]:
    if text == "all":
        return list(range(num_steps))
    try:
        if "-" in text:
            start, stop = (int(v) for v in text.split("-", 1))
            steps = list(range(start, stop + 1))
        else:
            steps = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise click.BadParameter(f"{text!r}: use all, START-STOP or a list 0,2,4", param_hint="--check-steps") from None
    if not steps or any(not 0 <= s < num_steps for s in steps):
        raise click.BadParameter(f"{text!r}: steps must lie in [0, {num_steps - 1}]", param_hint="--check-steps")
    return steps


def find_clips(videos: Path, prompts: str | None, limit: int | None) -> list[tuple[Path, str]]:
    """(video, caption) pairs, checked before any model loads."""
    from mpcore.io.prompts import read_prompts

    if not videos.is_dir():
        raise click.BadParameter(f"{videos} is not a folder", param_hint="--videos")
    files = sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not files:
        raise click.BadParameter(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {videos}", param_hint="--videos")
    if prompts is not None:
        captions = [p.text for p in read_prompts(prompts)]
        if len(captions) != len(files):
            raise click.BadParameter(f"{prompts} holds {len(captions)} captions for {len(files)} videos in {videos}; "
                                     "give one caption per video, in the videos' sorted order", param_hint="--prompts")
    else:
        missing = [f.name for f in files if not f.with_suffix(".txt").is_file()]
        if missing:
            raise click.BadParameter(f"no caption for {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: "
                                     "pass --prompts FILE or put NAME.txt beside each video", param_hint="--prompts")
        captions = [f.with_suffix(".txt").read_text().strip() for f in files]
    pairs = list(zip(files, captions))
    if limit is not None:
        if limit < 1:
            raise click.BadParameter("must be >= 1", param_hint="--clips")
        pairs = pairs[:limit]
    return pairs


@click.group("diagnose")
def diagnose():
    """Measure where guidance can work before guiding a backbone."""


def steps_command(**kwargs):
    """Per sampling step: motion kept by the clean-video estimate (real clips) and the discriminator's verdicts
    (real clips' estimates vs the model's own), a plot, and a recommended estimate and opt_range."""
    from mpcore.jobs import run as runner

    try:
        _steps(**kwargs)
    except (*runner.user_errors(), ValueError) as error:
        raise as_click_error(error) from None


def _steps(**kwargs):
    from mpcore.analysis import diagnose as diag
    from mpcore.io.manifest import write_json_atomic
    from mpcore.jobs.setup import load, prepare
    from mpcore.io.video import check_location_writable, read_video

    videos, prompts, limit = kwargs.pop("videos"), kwargs.pop("prompts"), kwargs.pop("clips")
    check_steps, estimates_text, pairs = kwargs.pop("check_steps"), kwargs.pop("estimates"), kwargs.pop("pairs")
    min_cosine = kwargs.pop("min_cosine")
    min_auc = kwargs.pop("min_auc")
    out = kwargs.pop("out")
    # ---- cheap checks first
    try:
        estimates = diag.parse_estimates(estimates_text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--estimates") from None
    clip_files = find_clips(videos, prompts, limit)
    setup = prepare(run_options(kwargs))  # the default guidance: the one that needs a flow estimator and a discriminator
    if setup.guidance is None or not {"flow", "discriminator"} <= set(setup.guidance.spec.needs):
        raise click.UsageError("diagnose steps measures a guidance's flow estimator and discriminator: the default "
                               "guidance has none")
    motion = setup.guidance.resolve_for(setup.sampler, setup.backbone)
    steps = parse_steps(check_steps, setup.sampler.steps)
    if pairs is not None and not 1 <= pairs <= setup.sampler.frames // 2:
        raise click.BadParameter(f"must be in [1, {setup.sampler.frames // 2}]", param_hint="--pairs")
    check_location_writable(out, folder=True)  # before any video is read or any model loads
    out.mkdir(parents=True, exist_ok=True)
    clips = []
    for path, caption in clip_files:
        try:
            frames = read_video(path)
        except Exception as error:  # noqa: BLE001 - any reader failure is the file's problem
            raise click.ClickException(f"cannot read video {path}: {error}") from None
        clips.append(diag.clip_from_uint8(frames, caption, setup.sampler, source=str(path)))

    models = load(setup)
    result = diag.diagnose_steps(models.backbone, clips, models.guidance.flow_estimator, models.guidance.discriminator,
                                 setup.sampler, motion, steps, estimates, seed=setup.sampler.seed, pairs_per_clip=pairs,
                                 progress=setup.progress)
    thresholds = {k: v for k, v in (("min_cosine", min_cosine), ("min_auc", min_auc)) if v is not None}
    opt_range = motion.resolved_opt_range(setup.sampler.steps)
    recommendation = diag.recommend(result, max_length=opt_range[1] - opt_range[0], **thresholds)
    result.update(recommendation=recommendation, settings=setup.settings(), videos=[str(p) for p, _ in clip_files],
                  flow=models.guidance.flow_info, discriminator=models.guidance.discriminator_info)
    write_json_atomic(result, out / "diagnose.json")
    diag.plot(result, recommendation, out / "diagnose.png")
    click.echo(table(result))
    if recommendation["opt_range"] is None:
        echo(f"no recommendation: {recommendation['reason']}")
    else:
        flags = " ".join(f"-o {k}={v}" for k, v in recommendation["settings"].items())
        echo(f"recommended: {flags}  ({recommendation['reason']})")
    echo(f"wrote {out / 'diagnose.json'} and {out / 'diagnose.png'}")


def table(result: dict) -> str:
    """A plain-text table: one row per checked step, per estimate."""
    def num(value, fmt="{:.3f}"):
        return "-" if value is None else fmt.format(value)

    ref = result["reference"]
    lines = [f"reference: D on clean real clips {num(ref['logit_real_clean'], '{:+.2f}')}, on finished samples "
             f"{num(ref['logit_own_finished'], '{:+.2f}')} (AUC {num(ref['auc_finished'])}); VAE round-trip motion "
             f"cosine {num(ref['vae_motion_cosine'])}",
             f"{'estimate':<10} {'step':>4} {'cosine':>7} {'EPE':>7} {'|f| ratio':>9} {'D real':>7} {'D own':>7} {'AUC':>6}"]
    for name, rows in result["per_step"].items():
        for r in rows:
            lines.append(f"{name:<10} {r['step']:>4} {num(r['motion_cosine']):>7} {num(r['epe']):>7} "
                         f"{num(r['magnitude_ratio']):>9} {num(r['logit_real'], '{:+.2f}'):>7} "
                         f"{num(r['logit_own'], '{:+.2f}'):>7} {num(r['auc']):>6}")
    return "\n".join(lines)


def build_command(backbone_options: dict) -> click.Group:
    """``mpcore diagnose``, its ``steps`` taking the installed backbones' options (as ``run`` has them)."""
    steps = click.Command("steps", callback=steps_command, help=steps_command.__doc__, params=params())
    diagnose.add_command(with_backbone_options(steps, backbone_options))
    return diagnose


@click.command("gate")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the result here.")
def gate_command(runs: tuple[Path, ...], json_out: Path | None):
    """Does guidance lower its gate term (MotionPrompt's: the discriminator term)? Reads guided runs' manifests (RUNS: .json files or folders of
    them, e.g. an `mpcore generate` output) and reports the drop over the K iterations and over the range, with 95%
    CIs. Exit code 1 when the gate does not pass."""
    from mpcore.analysis import diagnose as diag
    from mpcore.io.manifest import write_json_atomic
    from mpcore.io.video import OutputError, check_location_writable

    if json_out is not None:
        try:
            check_location_writable(json_out)  # before any manifest is read
        except OutputError as error:
            raise click.ClickException(str(error)) from None
    files = []
    for run in runs:
        files += sorted(p for p in run.glob("*.json") if p.name != "generate.json") if run.is_dir() else [run]
    results, terms = [], set()
    for path in files:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise click.ClickException(f"cannot read manifest {path}: {error}") from None
        if not (isinstance(manifest, dict) and isinstance(manifest.get("result"), dict) and manifest["result"].get("trace")):
            continue
        terms.add(_gate_term(manifest.get("guidance"), path))
        results.append(manifest["result"])
    if not results:
        raise click.ClickException(f"no guided run manifests (with a 'result' trace) in {', '.join(map(str, runs))}")
    if len(terms) > 1:
        raise click.ClickException(f"the manifests mix guidances whose gate quantities differ ({', '.join(sorted(terms))}): "
                                   "gate one guidance's runs at a time")
    term = terms.pop()
    result = diag.gate(results, term)
    for name, label in (("over_iterations", "over the K iterations"), ("over_range", "over the range")):
        row = result[name]
        text = "n/a" if row["mean_drop"] is None else f"{row['mean_drop']:+.4f} [{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}]"
        source = f", measured on the {row['source']}" if row.get("source") else ""
        click.echo(f"{term} term drop {label}: {text} ({row['n']} videos{source})")
    click.echo(f"gate: {'passed' if result['passed'] else 'NOT passed'}")
    if json_out is not None:
        write_json_atomic(result, json_out)
    if not result["passed"]:
        raise SystemExit(1)


def _gate_term(guidance: str | None, path: Path) -> str:
    """The trace term ``diagnose gate`` checks for the manifest's guidance (its spec's ``gate``), or a refusal."""
    from mpcore import plugins

    try:
        spec = plugins.get("guidance", str(guidance)).spec
    except plugins.UnknownPluginError as error:
        raise click.ClickException(f"{path}: guidance {guidance!r}: {error}") from None
    if spec.gate is None:
        raise click.ClickException(f"{path} is a {spec.name} run: the {spec.name} guidance has no gate quantity (a loss "
                                   "term its trace records for diagnose gate to check), so there is nothing to gate")
    return spec.gate


diagnose.add_command(gate_command)
