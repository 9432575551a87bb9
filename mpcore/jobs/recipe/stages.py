"""The stages of :mod:`mpcore.jobs.recipe`, each with :func:`status` (is its output complete and made from
the current inputs?) and :func:`run` (the job function that makes it: :func:`mpcore.jobs.generate.generate`,
:func:`mpcore.flows.extract.extract_flows`, :func:`mpcore.disc.train.train_discriminator`,
:func:`mpcore.disc.evaluate.evaluate_caches`). A stage skipped here is skipped by that stage's own logic:
finished videos, finished flow caches (written under a temporary name, renamed when complete), the
training log and checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mpcore.flows.cache import INDEX
from mpcore.jobs.recipe import run_api
from mpcore.jobs.recipe.plan import CACHE_LABELS, Plan, cache_settings, read_json
from mpcore.jobs.recipe.settings import RecipeError, RecipeSettings

STAGES = ("videos", "flows/real", "flows/generated", "flows/real_test", "flows/generated_test", "disc", "eval")


def stage_names(settings: RecipeSettings) -> list[str]:
    """The stages in order (no held-out caches with ``test_fraction`` 0)."""
    return [name for name in STAGES if settings.test_fraction > 0 or not name.endswith("_test")]


def status(plan: Plan, name: str) -> tuple[bool, str]:
    """(complete, why) of stage ``name``; checked just before it would run, after the stages before it."""
    if name == "videos":
        from mpcore.jobs.generate import is_complete, item_video_path

        done = sum(is_complete(item, item_video_path(plan.layout.videos, item, plan.settings.video_format))
                   for item in plan.items)
        total = len(plan.items)
        return done == total, f"{done} of {total} videos complete"
    if name.startswith("flows/"):
        return _cache_status(plan, name.split("/", 1)[1])
    if name == "disc":
        action, reason = _disc_action(plan)
        return action == "skip", reason
    return _eval_status(plan)


def run(plan: Plan, name: str) -> None:
    """Make stage ``name``'s output with its job function."""
    if name == "videos":
        run_api.generate_videos(plan.settings, plan.layout.videos, plan.progress)
    elif name.startswith("flows/"):
        _extract(plan, name.split("/", 1)[1])
    elif name == "disc":
        _train(plan)
    else:
        _evaluate(plan)


# ---------------------------------------------------------------------------------------------------
# flow caches


def cache_sources(plan: Plan, name: str) -> list[Any]:
    """The videos of flow cache ``name``: the real ones of its side of the split, or the generated items'
    videos of the training or held-out prompts."""
    from mpcore.flows.extract import find_sources

    if name.startswith("real"):
        return plan.real_test if name.endswith("_test") else plan.real_train
    prompt_of = {item.name: str(item.prompt.index) for item in plan.items}
    test = name.endswith("_test")
    return [source for source in find_sources(plan.layout.videos)
            if source.id in prompt_of and (prompt_of[source.id] in plan.test_prompts) == test]


def sources_digest(sources: list[Any]) -> str:
    """SHA-256 of the videos' ids, kinds and file names and sizes (a cache of other videos is made again)."""
    digest = hashlib.sha256()
    for source in sources:
        files = [source.path / name for name in source.frames] if source.kind == "frames" else [source.path]
        sizes = [[path.name, path.stat().st_size if path.is_file() else None] for path in files]
        digest.update(json.dumps([source.id, source.kind, sizes]).encode())
    return digest.hexdigest()


def _cache_status(plan: Plan, name: str) -> tuple[bool, str]:
    index = read_json(plan.layout.flows(name) / INDEX)
    if not isinstance(index, dict):
        return False, "no flow cache yet"
    if (index.get("recipe") or {}).get("sources_sha256") != sources_digest(cache_sources(plan, name)):
        return False, "its videos changed since it was extracted: extracting again"
    return True, f"{index.get('pairs')} pairs of {len(index.get('videos') or [])} videos"


def _extract(plan: Plan, name: str) -> None:
    from mpcore.flows.extract import extract_flows

    settings, path, sources = plan.settings, plan.layout.flows(name), cache_sources(plan, name)
    folder = plan.layout.videos if name.startswith("generated") else Path(settings.real_videos).expanduser().resolve()
    meta = {"estimator": cache_settings(settings, name)["estimator"], "videos_dir": str(folder),
            "recipe": {"stage": f"flows/{name}", "sources": len(sources), "sources_sha256": sources_digest(sources)}}
    summary = extract_flows(sources, plan.estimator(), path, size=settings.flow_size,
                            pairs_per_video=settings.pairs_per_video, gap=settings.gap, seed=settings.seed,
                            batch_size=settings.flow_batch_size, device=plan.device, label=CACHE_LABELS[name], meta=meta,
                            overwrite=path.exists(), progress=plan.progress)
    plan.echo(f"  {path}: {summary['pairs']} pairs of {summary['videos_used']} videos "
              f"({summary['videos_skipped']} skipped)")


# ---------------------------------------------------------------------------------------------------
# the discriminator and its evaluation


def _caches(plan: Plan, test: bool) -> dict[int, Any]:
    """The training caches, or the evaluation's (the held-out ones; the training ones with test_fraction 0)."""
    from mpcore.disc.data import open_caches

    suffix = "_test" if test and plan.settings.test_fraction > 0 else ""
    return open_caches(plan.layout.flows("real" + suffix), plan.layout.flows("generated" + suffix), same_size=not test)


def _cache_digests(caches: dict[int, Any]) -> dict[str, str]:
    from mpcore.disc.data import cache_identities

    return {name: row["index_sha256"] for name, row in cache_identities(caches).items()}


def _disc_action(plan: Plan) -> tuple[str, str]:
    """``skip`` (trained on the current caches), ``resume`` (from its checkpoint) or ``fresh``, and why."""
    from mpcore.disc.checkpoint import Outputs

    outputs = Outputs.for_weights(plan.layout.weights)
    log = read_json(outputs.log)
    if not isinstance(log, dict):
        return "fresh", "not trained yet"
    made = {name: row.get("index_sha256") for name, row in ((log.get("data") or {}).get("caches") or {}).items()}
    if made != _cache_digests(_caches(plan, test=False)):
        return "fresh", "its flow caches changed since it was trained: training again"
    epochs, best = len(log.get("epochs") or []), log.get("best")
    if log.get("finished") and best and outputs.weights.is_file() and outputs.config.is_file():
        return "skip", f"trained {epochs} epochs, kept epoch {best['epoch']} (val ROC-AUC {_number(best.get('val_auc'))})"
    if not log.get("finished") and outputs.checkpoint.is_file():
        return "resume", f"resuming after epoch {epochs} of {plan.settings.epochs}"
    return "fresh", "its earlier run left no weights: training again"


def _train(plan: Plan) -> None:
    from mpcore.disc.train import train_discriminator

    settings, layout = plan.settings, plan.layout
    action, _ = _disc_action(plan)
    log = train_discriminator(plan.disc_spec, layout.flows("real"), layout.flows("generated"), layout.weights,
                              settings.train_config(), dict(settings.arch), pretrained=settings.pretrained,
                              device=plan.device, resume=action == "resume", overwrite=action == "fresh",
                              progress=plan.progress, echo=plan.echo)
    if not log.get("best"):
        raise RecipeError(f"no epoch had a finite validation loss, so no weights were written (see "
                          f"{layout.weights.parent}); lower lr and run the recipe into a new out folder")


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _eval_status(plan: Plan) -> tuple[bool, str]:
    result = read_json(plan.layout.eval)
    if not isinstance(result, dict):
        return False, "not evaluated yet"
    made = {"discriminator": (result.get("discriminator") or {}).get("sha256"),
            **{name: (result.get(f"{name}_cache") or {}).get("index_sha256") for name in ("real", "fake")}}
    if made != {"discriminator": _file_sha256(plan.layout.weights), **_cache_digests(_caches(plan, test=True))}:
        return False, "the discriminator or its evaluation caches changed since: evaluating again"
    return True, f"ROC-AUC {_number(result.get('auc'))}"


def _evaluate(plan: Plan) -> None:
    from mpcore.disc.evaluate import evaluate_caches
    from mpcore.io.manifest import build_manifest, write_json_atomic

    settings, weights = plan.settings, plan.layout.weights
    caches = _caches(plan, test=True)
    try:
        model = plan.disc_spec.load(weights, plan.device)
    except (ValueError, RuntimeError, OSError) as error:
        raise RecipeError(f"could not load the {plan.disc_spec.name!r} discriminator {weights}: {error}") from None
    metrics = evaluate_caches(model, caches, batch_size=settings.eval_batch_size, device=plan.device,
                              progress=plan.progress)
    held_out = settings.test_fraction > 0
    if not held_out:
        plan.echo("warning: test_fraction 0: the discriminator is evaluated on the flows it was trained on")
    discriminator = {"type": plan.disc_spec.name, "path": str(weights), "sha256": _file_sha256(weights)}
    write_json_atomic(build_manifest(kind="mpcore-disc-recipe-eval", discriminator=discriminator, held_out=held_out,
                                     **metrics), plan.layout.eval)
