"""``mpcore disc recipe``: a backbone's flow discriminator from a prompt list and a folder of real videos,
as one resumable call.

MotionPrompt (Nam et al., CVPR 2025) trains one discriminator per backbone on the optical flow of
random frame pairs of real videos versus videos that backbone generated. By hand that is four commands
whose settings must agree (``mpcore generate`` -> ``mpcore flows extract`` twice -> ``mpcore disc
train`` -> ``mpcore disc eval``). :func:`train_discriminator_recipe` runs them, through the same job
functions, into one folder::

    OUT/recipe.json                 the settings (written once; another run must give the same ones)
    OUT/videos/                     generate: one unguided video per (prompt, seed)   (mpcore.jobs.generate)
    OUT/flows/real, flows/generated              training flow caches            (mpcore.flows.extract)
    OUT/flows/real_test, flows/generated_test    held-out flow caches (``test_fraction``)
    OUT/disc/discriminator.safetensors (+ .json, _log.json, _curves.png, .ckpt.pt)   (mpcore.disc.train)
    OUT/eval.json                   the discriminator on the held-out caches    (mpcore.disc.evaluate)

Held out for the evaluation: ``test_fraction`` of the prompts (every seed of a held-out prompt) and of
the real videos, chosen by a seeded hash, so no prompt or real video is on both sides.

Resuming: every stage whose output is complete and made from the current inputs is skipped, each by
its own logic: generate skips finished items, a flow cache exists only once complete (it records the
digest of the videos it was made from: a cache of other videos is extracted again), training resumes
from its per-epoch checkpoint, and a stage whose inputs changed runs again. Before any work every
cheap check runs (settings, plugins, prompt file, a readable real video, the held-out split), the
outputs already in the folder are checked against the settings: another recipe's settings, or a stage
made with other settings (e.g. a flow cache of another estimator or frame size), are refused, naming
what differs, and the discriminator is built once to check its architecture options. A bad setting
is a :class:`RecipeOptionError` (also an :class:`mpcore.jobs.options.OptionError`) naming its flag.
One process (no ``accelerate``/``torchrun`` split).

Modules: :mod:`~mpcore.jobs.recipe.settings` (:class:`RecipeSettings`, the folder's :class:`Layout`),
:mod:`~mpcore.jobs.recipe.plan` (the checks before any work), :mod:`~mpcore.jobs.recipe.stages` (each
stage's status and job), :mod:`~mpcore.jobs.recipe.run_api` (the one contact with the run job's API).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from mpcore.io.console import echo as console_echo
from mpcore.jobs.recipe.settings import (FORMAT, RECIPE_FILE, RUNTIME_FIELDS, VERSION, Layout, RecipeError,
                                         RecipeOptionError, RecipeSettings, differences)

__all__ = ["RecipeError", "RecipeOptionError", "RecipeSettings", "Layout", "train_discriminator_recipe",
           "check_recipe_file", "recipe_errors", "RECIPE_FILE", "RUNTIME_FIELDS"]


def recipe_errors() -> tuple[type[Exception], ...]:
    """The errors the recipe raises that are the user's to fix (a command shows their message, no traceback)."""
    from mpcore.disc.data import DiscTrainError
    from mpcore.flows.cache import FlowCacheError
    from mpcore.flows.extract import EstimatorContractError, ExtractError
    from mpcore.jobs.generate import GenerateError
    from mpcore.jobs.run import user_errors

    return (*user_errors(), RecipeError, GenerateError, ExtractError, EstimatorContractError, DiscTrainError,
            FlowCacheError)


def check_recipe_file(layout: Layout, recorded: dict[str, Any]) -> bool:
    """Whether recipe.json is to be written (a new folder, or one in which nothing was made yet). A folder
    that is not a recipe's, or a recipe of other settings with results in it, is refused naming what differs."""
    root = layout.root
    if root.exists() and not root.is_dir():
        raise RecipeError(f"out {root} exists and is not a folder")
    if not layout.recipe.is_file():
        if root.is_dir() and any(root.iterdir()):
            raise RecipeError(f"out {root} is not empty and holds no {RECIPE_FILE} (not a recipe folder): choose a new "
                              "or empty folder")
        return True
    try:
        previous = json.loads(layout.recipe.read_text(encoding="utf-8"))["settings"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RecipeError(f"{layout.recipe} cannot be read ({type(error).__name__}: {error}); "
                          "choose a new out folder") from None
    changes = differences(previous, recorded)
    if not changes:
        return False
    if layout.has_results():
        raise RecipeError(f"{root} holds a recipe run with other settings ({'; '.join(changes)}): use a new out "
                          "folder, or the same settings to resume it")
    return True  # nothing was made with the old settings: the new ones replace them


def train_discriminator_recipe(settings: RecipeSettings, progress: bool = True,
                               echo: Callable[[str], None] = console_echo) -> dict[str, Any]:
    """Run the recipe (see the module docstring) into ``settings.out``; return what it did: ``stages``
    (name -> ``{"status": "skipped" | "ran", "reason": ...}``), ``discriminator`` (the weights),
    ``eval`` (eval.json) and ``metrics`` (the evaluation: ``auc``, accuracies, mean logits, counts).

    ``echo`` gets one line per stage (skipped or running, and why); ``progress`` shows each stage's
    progress bars. Raises :class:`RecipeError` (or the stage's own error: ``GenerateError``,
    ``ExtractError``, ``DiscTrainError``, ...) with what to do; the refusals come before any work. A bad
    setting raises a :class:`RecipeOptionError`, also an :class:`mpcore.jobs.options.OptionError` naming
    the flag.
    """
    from mpcore.io.manifest import build_manifest, write_json_atomic
    from mpcore.jobs.recipe import plan as planning, stages

    settings = settings.validate()
    layout = Layout(Path(settings.out).expanduser().resolve())
    recorded = settings.recorded()
    write_recipe = check_recipe_file(layout, recorded)
    plan = planning.plan(settings, layout, progress, echo)  # every other cheap check; nothing written yet
    if write_recipe:
        write_json_atomic(build_manifest(format=FORMAT, version=VERSION, settings=recorded), layout.recipe)
    report: dict[str, dict[str, str]] = {}
    names = stages.stage_names(settings)
    for number, name in enumerate(names, 1):
        done, reason = stages.status(plan, name)
        echo(f"[{number}/{len(names)}] {name}: {'skipped' if done else 'running'} ({reason})")
        if not done:
            stages.run(plan, name)
        report[name] = {"status": "skipped" if done else "ran", "reason": reason}
    metrics = json.loads(layout.eval.read_text(encoding="utf-8"))
    return {"out": str(layout.root), "recipe": str(layout.recipe), "stages": report,
            "discriminator": str(layout.weights), "eval": str(layout.eval), "metrics": metrics}
