"""The settings of the discriminator recipe (:mod:`mpcore.jobs.recipe`) and the layout of its folder."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpcore.config import ConfigError
from mpcore.jobs.options import OptionError

FORMAT = "mpcore-disc-recipe"
VERSION = 1
RECIPE_FILE = "recipe.json"
RUNTIME_FIELDS = ("out", "device", "dtype", "attention", "offload", "flow_batch_size", "eval_batch_size", "num_workers")
"""Settings that change how the work runs, not what it makes: not recorded in recipe.json, free to change
on a resume (generate records the device and dtype itself and refuses a change of them)."""
VIDEO_FORMATS = ("mp4", "gif", "frames")


FLAGS = {"video_format": "--format", "flow_size": "--size", "eval_batch_size": None}
"""Setting -> the ``mpcore disc recipe`` flag that sets it, where that is not ``--`` + the name with dashes
(None: no flag)."""


class RecipeError(ConfigError):
    """A recipe that cannot run as given: bad settings, a folder of other settings, unusable inputs."""


class RecipeOptionError(RecipeError, OptionError):
    """A setting that is invalid as given (``test_fraction`` 1, an unknown estimator): a :class:`RecipeError`
    and an :class:`mpcore.jobs.options.OptionError` naming the flag (the CLI exits 2)."""


def flag(name: str) -> str | None:
    """The ``mpcore disc recipe`` flag of setting ``name`` (``test_fraction`` -> ``--test-fraction``)."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


@dataclass(frozen=True)
class RecipeSettings:
    """Everything the recipe makes its discriminator from; defaults are the paper's where it has one."""

    real_videos: str | Path
    """Folder of real videos: video files (.mp4 .avi .webm .mov .mkv .gif) and/or frame folders, e.g. DAVIS
    (only ``JPEGImages/480p/<clip>/`` is read): :func:`mpcore.flows.extract.find_sources`."""
    prompts: str | Path
    """Prompt file (.txt or VBench .json) or ``example``: :func:`mpcore.io.prompts.read_prompts`."""
    out: str | Path
    # ---- generate (unguided videos of the backbone)
    backbone: str = "animatediff"
    model: str | None = None
    seeds: tuple[int, ...] = (0,)
    frames: int | None = None  # None: the backbone's default (as every sampler option below)
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    cfg: float | None = None
    negative_prompt: str | None = None
    video_format: str = "mp4"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    """Options a backbone plugin adds to ``mpcore generate`` (by their Python name)."""
    # ---- flows (both classes with the same estimator, frame size and gap)
    estimator: str = "raft"
    flow_weights: str | None = None
    flow_options: dict[str, Any] = field(default_factory=dict)
    flow_size: tuple[int, int] = (224, 224)
    gap: tuple[int, int] = (1, 1)
    pairs_per_video: int = 4
    test_fraction: float = 0.2
    """Prompts and real videos held out for the evaluation (0: evaluate on the training caches)."""
    # ---- discriminator (mpcore disc train)
    disc_type: str = "vit"
    arch: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    epochs: int = 20
    batch_size: int = 32
    lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    balance: bool = True
    seed: int = 0
    """Seeds the held-out split, the frame pairs, the validation split, the init and the data order."""
    # ---- how it runs (RUNTIME_FIELDS: not recorded)
    device: str | None = None
    dtype: str = "auto"
    attention: str = "auto"
    offload: bool = False
    flow_batch_size: int = 8
    eval_batch_size: int = 64
    num_workers: int = 0

    def train_config(self):
        """The :class:`mpcore.disc.train.TrainConfig` of the disc stage."""
        from mpcore.disc.train import TrainConfig

        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, val_fraction=self.val_fraction, seed=self.seed,
                           balance=self.balance, num_workers=self.num_workers)

    def validate(self) -> "RecipeSettings":
        """The settings, checked (:class:`RecipeError` naming the field; the training fields by TrainConfig)."""
        from mpcore.disc.data import DiscTrainError

        def fail(name: str, allowed: str) -> None:
            raise RecipeOptionError(f"recipe setting {name} = {getattr(self, name)!r}; allowed: {allowed}", flag(name))

        def ints(value: Any, count: int) -> bool:
            return (isinstance(value, (tuple, list)) and len(value) == count
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in value))

        for name in ("real_videos", "prompts", "out"):
            if not str(getattr(self, name)).strip():
                fail(name, "a path")
        seeds = self.seeds
        if not seeds or not ints(seeds, len(seeds)) or min(seeds) < 0 or len(set(seeds)) < len(seeds):
            fail("seeds", "distinct integers >= 0, at least one")
        if self.video_format not in VIDEO_FORMATS:
            fail("video_format", " | ".join(VIDEO_FORMATS))
        if not ints(self.flow_size, 2) or min(self.flow_size) < 8:
            fail("flow_size", "(H, W) with both >= 8")
        if not ints(self.gap, 2) or not 1 <= self.gap[0] <= self.gap[1]:
            fail("gap", "(min, max) with 1 <= min <= max")
        for name in ("pairs_per_video", "flow_batch_size", "eval_batch_size"):
            if not ints([getattr(self, name)], 1) or getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        if not isinstance(self.test_fraction, (int, float)) or not 0 <= self.test_fraction < 1:
            fail("test_fraction", "a number in [0, 1) (0: evaluate on the training caches)")
        try:
            self.train_config().validate()
        except DiscTrainError as error:  # a DiscOptionError, naming the flag (the same in `disc train`)
            raise RecipeOptionError(f"recipe {error}", getattr(error, "option", None)) from None
        return self

    def recorded(self) -> dict[str, Any]:
        """The settings recipe.json records (JSON types; paths resolved; :data:`RUNTIME_FIELDS` left out)."""
        from mpcore.io.manifest import json_safe
        from mpcore.io.prompts import EXAMPLE_PROMPTS

        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUNTIME_FIELDS}
        values["real_videos"] = str(Path(self.real_videos).expanduser().resolve())
        if str(self.prompts) != EXAMPLE_PROMPTS:
            values["prompts"] = str(Path(self.prompts).expanduser().resolve())
        return json_safe(values)


@dataclass(frozen=True)
class Layout:
    """The paths of one recipe folder."""

    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    def flows(self, name: str) -> Path:
        """``real``, ``generated``, ``real_test`` or ``generated_test``."""
        return self.root / "flows" / name

    @property
    def weights(self) -> Path:
        return self.root / "disc" / "discriminator.safetensors"

    @property
    def eval(self) -> Path:
        return self.root / "eval.json"

    def has_results(self) -> bool:
        """Whether any stage has left a result (a finished video, a flow cache, training files, the evaluation)."""
        disc = self.weights.parent
        return (any(self.videos.glob("p*_s*.json")) or any(self.root.glob("flows/*/index.json"))
                or (disc.is_dir() and any(disc.iterdir())) or self.eval.exists())


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """``key.sub: old -> new`` for every leaf where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(set(old) | set(new))
                for change in differences(old.get(key), new.get(key), f"{where}.{key}" if where else key)]
    return [] if old == new else [f"{where}: {json.dumps(old)} -> {json.dumps(new)}"]
