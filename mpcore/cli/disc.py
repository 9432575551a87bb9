"""``mpcore disc``: train and evaluate MotionPrompt flow discriminators on flow caches.

* ``mpcore disc train --real CACHE --fake CACHE --out disc.safetensors`` -- the recipe of MotionPrompt
  (Nam et al., CVPR 2025): BCE real vs generated flow, SGD lr 5e-4 momentum 0.9, batch 32, 20 epochs,
  the best-validation-loss epoch kept (:mod:`mpcore.disc.train`);
* ``mpcore disc eval --disc disc.safetensors --real CACHE --fake CACHE`` -- accuracy, per-class
  accuracy, ROC-AUC and mean logits on (held-out) caches;
* ``mpcore disc recipe --real-videos DIR --prompts FILE --out DIR`` -- the whole recipe (generate, flows
  of both classes, train, evaluate on held-out videos) as one resumable command
  (:func:`mpcore.jobs.recipe.train_discriminator_recipe`).

Every cheap check (unknown plugin, invalid settings, unreadable caches, unwritable or existing
outputs, incompatible checkpoint) runs before any model is built. Progress goes to stderr, results
to stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mpcore import plugins
from mpcore.cli.common import as_click_error, device_from_option
from mpcore.io.console import echo
from mpcore.config import ConfigError, parse_override


def _spec(name: str):
    """The discriminator plugin's spec; an unknown ``--type`` is a bad option (exit 2) listing the installed ones."""
    try:
        return plugins.get("discriminator", name).spec
    except plugins.UnknownPluginError as error:
        raise click.BadParameter(str(error), param_hint="--type") from None


def _arch_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``("preset=tiny", "img_size=64")`` -> ``{"preset": "tiny", "img_size": "64"}`` (the plugin parses values)."""
    options: dict[str, Any] = {}
    for item in items:
        try:
            key, value = parse_override(item)
        except ConfigError:
            raise click.BadParameter(f"invalid option {item!r}: expected KEY=VALUE, e.g. --arch preset=tiny",
                                     param_hint="--arch") from None
        options[key] = value
    return options


@click.group("disc")
def disc():
    """Train and evaluate flow discriminators (real vs generated video flow) on flow caches."""


@disc.command("train")
@click.option("--real", required=True, type=click.Path(), help="Flow cache of real videos (`mpcore flows extract`).")
@click.option("--fake", required=True, type=click.Path(), help="Flow cache of videos the backbone generated.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Weights NAME.safetensors; NAME.json, NAME_log.json, NAME_curves.png, NAME.ckpt.pt go beside it.")
@click.option("--type", "disc_type", default="vit", show_default=True, help="Discriminator plugin (see `mpcore plugins`).")
@click.option("--arch", "arch", multiple=True, metavar="KEY=VALUE",
              help="Architecture option of the plugin (repeatable); vit: preset=paper|small|cpu|tiny, timm_model, "
                   "img_size, timm_kwargs (JSON), head_hidden, flow_scale, pretrained_file=PATH.")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Start the encoder from its pretrained image weights (the paper fine-tunes a pretrained ViT).")
@click.option("--epochs", type=int, default=20, show_default=True, help="Epochs (paper: ~20).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Batch size (paper: 32).")
@click.option("--lr", type=float, default=5e-4, show_default=True, help="SGD learning rate (paper: 5e-4).")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum (paper: 0.9).")
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="SGD weight decay.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Fraction of each cache's videos held out for validation (split by video; 0: none, keep the last epoch).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split, the init and the data order.")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Weight the loss so real and generated pairs count equally.")
@click.option("--num-workers", type=int, default=0, show_default=True, help="DataLoader workers reading the caches.")
@click.option("--resume", is_flag=True, help="Continue from NAME.ckpt.pt (same caches, settings and --arch).")
@click.option("--overwrite", is_flag=True, help="Start over, deleting the outputs of an earlier run at --out.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def train_command(real, fake, out, disc_type, arch, pretrained, epochs, batch_size, lr, momentum, weight_decay,
                  val_fraction, seed, balance, num_workers, resume, overwrite, device, progress):
    """Train a discriminator on flows of real vs generated videos (MotionPrompt's recipe).

    Under `accelerate launch` / `torchrun`: DDP with the global batch kept at --batch-size; only the
    main process writes the outputs."""
    from mpcore.jobs import distributed
    from mpcore.disc.checkpoint import Outputs
    from mpcore.disc.data import DiscOptionError, DiscTrainError
    from mpcore.disc.train import TrainConfig, train_discriminator

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other; pass one")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         val_fraction=val_fraction, seed=seed, balance=balance, num_workers=num_workers)
    try:
        Outputs.for_weights(out)  # only --out's own checks: a .safetensors file path
    except DiscTrainError as error:
        raise click.BadParameter(str(error), param_hint="--out") from None
    try:
        config.validate()  # a DiscOptionError naming the flag
        options = _arch_options(arch)
        spec = _spec(disc_type)
        dist = distributed.init(device)
        resolved = device_from_option(dist.device(device))
        log = train_discriminator(spec, real, fake, out, config, options, pretrained=pretrained, device=resolved,
                                  resume=resume, overwrite=overwrite, progress=progress, echo=echo,
                                  command=["mpcore", *sys.argv[1:]], dist=dist)
    except DiscOptionError as error:  # a bad option (--epochs 0, --arch preset=nope): exit 2 naming it
        raise click.BadParameter(str(error), param_hint=error.option) from None
    except DiscTrainError as error:
        raise click.ClickException(str(error)) from None
    if not dist.is_main:
        return
    best = log.get("best") or {}
    seconds = log.get("timings", {}).get("epoch_s") or []

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    click.echo(f"best epoch {best.get('epoch')}/{len(log.get('epochs', []))}: val loss {num(best.get('val_loss'))}, "
               f"val accuracy {num(best.get('val_accuracy'))}, val ROC-AUC {num(best.get('val_auc'))}")
    if seconds:
        click.echo(f"trained {len(seconds)} epochs in {sum(seconds):.1f} s ({sum(seconds) / len(seconds):.2f} s/epoch)")
    outputs = log.get("outputs", {})
    if not log.get("best"):  # no epoch had a finite validation loss: no weights were written
        raise click.ClickException(
            f"no epoch improved on validation (the validation loss was never finite), so no weights were written; "
            f"see {outputs.get('log')} and {outputs.get('curves')}. Check the caches with `mpcore disc eval` or "
            "lower --lr, and start over with --overwrite."
        )
    click.echo(f"wrote {outputs.get('weights')} (+ {Path(str(outputs.get('config'))).name}), {outputs.get('log')}, "
               f"{outputs.get('curves')}, {outputs.get('checkpoint')}")


def format_eval(result: dict[str, Any]) -> str:
    """The human summary of ``disc eval``: per class and overall."""
    def num(value: Any, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [
        ("", "real", "fake", "all"),
        ("pairs", str(result["count_real"]), str(result["count_fake"]), str(result["count"])),
        ("videos", str(result["real_cache"]["videos"]), str(result["fake_cache"]["videos"]),
         str(result["real_cache"]["videos"] + result["fake_cache"]["videos"])),
        ("accuracy (logit > 0 = real)", num(result["accuracy_real"]), num(result["accuracy_fake"]), num(result["accuracy"])),
        ("mean logit", num(result["mean_logit_real"]), num(result["mean_logit_fake"]), ""),
        ("balanced accuracy", "", "", num(result["balanced_accuracy"])),
        ("ROC-AUC", "", "", num(result["auc"])),
        ("BCE loss (class-balanced)", "", "", num(result["loss"])),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"discriminator {result['discriminator']['type']}: {result['discriminator']['path']}"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


@disc.command("eval")
@click.option("--disc", "disc_path", required=True, type=click.Path(dir_okay=False),
              help="Discriminator NAME.safetensors (NAME.json beside it).")
@click.option("--real", required=True, type=click.Path(), help="Flow cache of real videos (held out from training).")
@click.option("--fake", required=True, type=click.Path(), help="Flow cache of generated videos (held out from training).")
@click.option("--type", "disc_type", default=None, help="Discriminator plugin (default: 'type' in NAME.json, else vit).")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Pairs per forward pass.")
@click.option("--device", default=None, help="torch device (default: cuda if available, else cpu).")
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def eval_command(disc_path, real, fake, disc_type, as_json, batch_size, device, progress):
    """Accuracy, per-class accuracy, ROC-AUC and mean logits of a discriminator on two flow caches."""
    from mpcore.disc.data import DiscTrainError, open_caches
    from mpcore.disc.evaluate import evaluate_caches

    path = Path(disc_path).expanduser()
    if not path.is_file():
        raise click.BadParameter(f"{path}: no such file (train one with `mpcore disc train`)", param_hint="--disc")
    config_path = path.with_suffix(".json")
    if disc_type is not None:
        spec = _spec(disc_type)
    else:  # the type NAME.json names (else vit): a type not installed is the file's problem, not an option's
        named = None
        if config_path.is_file():
            try:
                named = json.loads(config_path.read_text()).get("type")
            except (json.JSONDecodeError, AttributeError):
                named = None  # the plugin's load reports the broken config
        try:
            spec = plugins.get("discriminator", named or "vit").spec
        except plugins.UnknownPluginError as error:
            where = f"{config_path} names its type" if named else "the default type"
            raise click.ClickException(f"{error} ({where}; --type NAME picks another)") from None
    resolved = device_from_option(device)
    try:
        caches = open_caches(real, fake, same_size=False)
    except DiscTrainError as error:
        raise click.ClickException(str(error)) from None
    try:
        model = spec.load(path, resolved)
    except (ValueError, RuntimeError, OSError) as error:
        raise click.ClickException(f"could not load the {spec.name!r} discriminator {path}: {error}") from None
    result = {"discriminator": {"type": spec.name, "path": str(path)},
              **evaluate_caches(model, caches, batch_size=batch_size, device=resolved, progress=progress)}
    if as_json:
        from mpcore.io.manifest import json_safe

        click.echo(json.dumps(json_safe(result), indent=2))
    else:
        click.echo(format_eval(result))


def _backbone_option_values(backbone: str, items: tuple[str, ...]) -> dict[str, Any]:
    """``--backbone-option KEY=VALUE`` -> {key: value}, each value converted by the backbone's own option type
    (an option the backbone does not have is left for the recipe to refuse, naming the known ones)."""
    values = {}
    for item in items:
        try:
            key, value = parse_override(item)
        except ConfigError:
            raise click.BadParameter(f"invalid option {item!r}: expected KEY=VALUE",
                                     param_hint="--backbone-option") from None
        values[key.replace("-", "_")] = value
    try:
        declared = {option.name: option for option in plugins.get("backbone", backbone).spec.options}
    except plugins.UnknownPluginError:
        return values  # the recipe reports the unknown backbone
    try:
        return {key: declared[key].type(value) if key in declared else value for key, value in values.items()}
    except click.BadParameter as error:  # the backbone option's own type refused the value
        raise click.BadParameter(error.message, param_hint="--backbone-option") from None


def recipe_options(command):
    """The options of ``disc recipe``: what to generate, the flows of both classes, the training, how it runs."""
    O = click.option
    for option in reversed([
        O("--real-videos", required=True, type=click.Path(path_type=Path),
          help="Folder of real videos: video files and/or frame folders (DAVIS: JPEGImages/480p/<clip>/), recursive."),
        O("--prompts", required=True,
          help="Prompt file of the generated videos: .txt (one per line) or VBench .json; 'example' = mpcore's list."),
        O("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
          help="Recipe folder: recipe.json, videos/, flows/, disc/discriminator.safetensors, eval.json."),
        # ---- generate
        O("--backbone", default="animatediff", show_default=True, help="Backbone plugin whose videos are the fakes."),
        O("--model", default=None, help="Its weights: hub id, folder or file ('tiny': the random test model)."),
        O("--seeds", default="0", show_default=True, help="Seeds of each prompt: 0,1,2 or 0-3."),
        O("--frames", type=int, default=None, help="Frames per generated video (default: the backbone's)."),
        O("--height", type=int, default=None, help="Frame height of the generated videos."),
        O("--width", type=int, default=None, help="Frame width of the generated videos."),
        O("--steps", type=int, default=None, help="Sampling steps of the generated videos."),
        O("--cfg", type=float, default=None, help="Classifier-free guidance scale."),
        O("--negative-prompt", default=None, help="Negative prompt."),
        O("--format", "video_format", type=click.Choice(["mp4", "gif", "frames"]), default="mp4", show_default=True,
          help="Format of the generated videos (frames: lossless PNG)."),
        O("--backbone-option", "backbone_options", multiple=True, metavar="KEY=VALUE",
          help="An option the backbone plugin adds to `mpcore generate` (repeatable)."),
        # ---- flows of both classes
        O("--estimator", "-e", default="raft", show_default=True, help="Flow estimator plugin of both classes."),
        O("--flow-weights", default=None, help="Its weights: path, plugin-specific name, or 'random'."),
        O("--flow-option", "flow_options", multiple=True, metavar="KEY=VALUE", help="Flow estimator option (repeatable)."),
        O("--size", default="224", show_default=True, help="Frames resized to SxS (or HxW) before the flow."),
        O("--gap", default="1", show_default=True, help="Frame gap of a pair: N, or MIN-MAX drawn per pair."),
        O("--pairs-per-video", type=click.IntRange(min=1), default=4, show_default=True, help="Frame pairs per video."),
        O("--test-fraction", type=float, default=0.2, show_default=True,
          help="Prompts and real videos held out for the evaluation (0: evaluate on the training flows)."),
        # ---- training
        O("--type", "disc_type", default="vit", show_default=True, help="Discriminator plugin."),
        O("--arch", "arch", multiple=True, metavar="KEY=VALUE", help="Architecture option (repeatable), as `disc train`."),
        O("--pretrained/--no-pretrained", default=True, show_default=True, help="Start from pretrained image weights."),
        O("--epochs", type=int, default=20, show_default=True, help="Epochs (paper: ~20)."),
        O("--batch-size", type=int, default=32, show_default=True, help="Batch size (paper: 32)."),
        O("--lr", type=float, default=5e-4, show_default=True, help="SGD learning rate (paper: 5e-4)."),
        O("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum (paper: 0.9)."),
        O("--weight-decay", type=float, default=0.0, show_default=True, help="SGD weight decay."),
        O("--val-fraction", type=float, default=0.2, show_default=True, help="Training videos held out for validation."),
        O("--balance/--no-balance", default=True, show_default=True, help="Weight the classes equally in the loss."),
        O("--seed", type=int, default=0, show_default=True, help="Seed of the held-out split, pairs, init and data order."),
        # ---- how it runs (free to change on a resume)
        O("--device", default=None, help="torch device (default: cuda if available, else cpu)."),
        O("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto", show_default=True,
          help="Weight dtype of the backbone."),
        O("--offload", is_flag=True, help="Model CPU offload of the backbone."),
        O("--flow-batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Frame pairs per flow call."),
        O("--num-workers", type=click.IntRange(min=0), default=0, show_default=True, help="DataLoader workers in training."),
        O("--progress/--no-progress", default=True, help="Show progress bars."),
        O("--json", "as_json", is_flag=True, help="Print only the result as JSON."),
    ]):
        command = option(command)
    return command


@disc.command("recipe")
@recipe_options
def recipe_command(real_videos, prompts, out, backbone, model, seeds, frames, height, width, steps, cfg, negative_prompt,
                   video_format, backbone_options, estimator, flow_weights, flow_options, size, gap, pairs_per_video,
                   test_fraction, disc_type, arch, pretrained, epochs, batch_size, lr, momentum, weight_decay, val_fraction,
                   balance, seed, device, dtype, offload, flow_batch_size, num_workers, progress, as_json):
    """Train a backbone's discriminator from a prompt list and real videos, in one resumable command.

    Runs what `mpcore generate` (--guidance none), `mpcore flows extract` (real and generated videos, with
    one estimator, --size and --gap), `mpcore disc train` and `mpcore disc eval` (on held-out prompts and
    real videos) do, into --out. Run the same command again to resume: finished stages are skipped. Other
    settings on an existing --out are refused, naming what differs."""
    from mpcore.cli.flows import _parse_options, parse_gap, parse_size
    from mpcore.disc.data import DiscOptionError
    from mpcore.flows.extract import ExtractOptionError
    from mpcore.jobs.generate import GenerateError, parse_seeds
    from mpcore.jobs.recipe import RecipeSettings, recipe_errors, train_discriminator_recipe

    try:
        seed_list = tuple(parse_seeds(seeds))
    except GenerateError as error:
        raise click.BadParameter(str(error), param_hint="--seeds") from None
    try:
        settings = RecipeSettings(
            real_videos=real_videos, prompts=prompts, out=out, backbone=backbone, model=model,
            seeds=seed_list, frames=frames, height=height, width=width, steps=steps, cfg=cfg,
            negative_prompt=negative_prompt, video_format=video_format,
            backbone_options=_backbone_option_values(backbone, backbone_options), estimator=estimator,
            flow_weights=flow_weights, flow_options=_parse_options(flow_options, flag="--flow-option"),
            flow_size=parse_size(size),
            gap=parse_gap(gap), pairs_per_video=pairs_per_video, test_fraction=test_fraction, disc_type=disc_type,
            arch=_arch_options(arch), pretrained=pretrained, epochs=epochs, batch_size=batch_size, lr=lr,
            momentum=momentum, weight_decay=weight_decay, val_fraction=val_fraction, balance=balance, seed=seed,
            device=device, dtype=dtype, offload=offload, flow_batch_size=flow_batch_size, num_workers=num_workers)
        result = train_discriminator_recipe(settings, progress=progress, echo=echo)
    except (DiscOptionError, ExtractOptionError) as error:  # from a stage's job (the checks raise RecipeOptionError)
        raise click.BadParameter(str(error), param_hint=error.option) from None
    except recipe_errors() as error:  # a RecipeOptionError naming its flag exits 2, the rest 1
        raise as_click_error(error) from None
    if as_json:
        from mpcore.io.manifest import json_safe

        click.echo(json.dumps(json_safe(result), indent=2))
        return
    metrics = result["metrics"]
    click.echo(format_eval(metrics))
    auc = "-" if metrics.get("auc") is None else f"{metrics['auc']:.4f}"
    where = "held-out" if metrics.get("held_out") else "training (test_fraction 0)"
    click.echo(f"discriminator {result['discriminator']}; eval ROC-AUC {auc} on {where} flows ({result['eval']})")
