"""The items of ``mpcore generate`` and its output folder: (prompt, seed) items and their file names, which
are complete, and whether a folder's recorded settings are the run's (a folder resumes only with its own)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpcore.io.prompts import Prompt

FORMATS = {"mp4": ".mp4", "gif": ".gif", "frames": ""}
"""``--format`` -> suffix of each item's video path (``frames``: a folder of lossless PNG frames)."""


class GenerateError(ValueError):
    """The output folder or the seeds cannot be used as given."""


@dataclass(frozen=True)
class Item:
    """One video to generate: a prompt of the list and a seed."""

    prompt: Prompt
    seed: int

    @property
    def name(self) -> str:
        """File stem of the item's outputs, from the prompt index and the seed: ``p0003_s0001``."""
        return f"p{self.prompt.index:04d}_s{self.seed:04d}"


def generation_items(prompts: list[Prompt], seeds: list[int]) -> list[Item]:
    """Every (prompt, seed) pair in a deterministic order: prompt-major, then seed."""
    return [Item(prompt, seed) for prompt in prompts for seed in seeds]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; ``"0-3"`` -> [0, 1, 2, 3] (inclusive); parts may be mixed: ``"0-2,10"``.
    Seeds are integers >= 0 (a minus sign only separates a range); each may appear once."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                first, last = (int(bound) for bound in part.split("-"))
                if last < first:
                    raise ValueError
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise GenerateError(f"--seeds {text!r}: {part!r} is not a seed (N) or an inclusive range (A-B, A <= B); "
                                "use e.g. 0,1,2 or 0-3") from None
    duplicates = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if duplicates:
        raise GenerateError(f"--seeds {text!r}: seed(s) {', '.join(map(str, duplicates))} given more than once")
    return seeds


def item_video_path(out_dir: Path, item: Item, fmt: str) -> Path:
    return out_dir / f"{item.name}{FORMATS[fmt]}"


def is_complete(item: Item, video_path: Path) -> bool:
    """True if the item's video (non-empty, readable) and manifest both exist (the manifest is written last).

    A manifest of another prompt or seed (the prompt list changed under the same ``--out``)
    raises :class:`GenerateError` rather than being silently kept.
    """
    manifest_path = video_path.with_name(f"{item.name}.json")
    if not (_video_is_usable(video_path) and manifest_path.is_file()):
        return False
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # unreadable: generate it again
    if manifest.get("prompt") != item.prompt.text or manifest.get("seed") != item.seed:
        raise GenerateError(
            f"{manifest_path} was generated for prompt {manifest.get('prompt')!r}, seed {manifest.get('seed')}, but item "
            f"{item.name} is prompt {item.prompt.text!r}, seed {item.seed}: the prompt list changed; use a new --out"
        )
    return True


def _video_is_usable(path: Path) -> bool:
    """A video file that is non-empty and can be opened, or a frame folder with a PNG in it (a cheap
    check: a zero-byte or unreadable video of a finished item is generated again, not kept)."""
    if path.is_dir():
        return any(path.glob("*.png"))
    try:
        with open(path, "rb") as handle:
            return bool(handle.read(1))
    except OSError:
        return False


def check_out_dir(out_dir: Path) -> Path:
    """Create the output folder if needed and check it is a writable folder; return it resolved."""
    from mpcore.io import video

    out_dir = out_dir.expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise GenerateError(f"--out {str(out_dir)!r} exists and is not a folder")
    video.check_output_writable(out_dir / "probe.mp4")  # creates the folder, proves it is writable
    return out_dir


def check_same_settings(summary_path: Path, settings: dict[str, Any]) -> None:
    """Refuse to add to an output folder whose ``generate.json`` records other settings: every video
    of a folder is generated with the same settings (more prompts or seeds are fine)."""
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        previous, names = summary["settings"], [row["name"] for row in summary.get("items", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return  # a new folder (or no readable generate.json)
    if not any((summary_path.parent / f"{name}.json").is_file() for name in names):
        return  # no video was finished with those settings (e.g. every item failed): nothing to keep consistent
    changes = _differences(with_added_fields(previous), settings)
    if changes:
        raise GenerateError(f"{summary_path.parent} holds videos generated with other settings ({'; '.join(changes)}): "
                            "use a new --out, or the same settings to resume")


def with_added_fields(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as recorded by an older mpcore, completed with the config fields added since at their
    defaults (what that version did: e.g. ``guidance_decoder`` = full) and read through the guidance's
    config class (which maps renamed values to their new name, e.g. placement 'front' to 'start'), so a
    folder of an older version resumes with the same command."""
    from mpcore import plugins
    from mpcore.config import SamplerConfig, to_dict
    from mpcore.io.manifest import json_safe

    settings = dict(settings)
    if isinstance(settings.get("sampler"), dict):
        defaults = {k: v for k, v in to_dict(SamplerConfig()).items() if k != "seed"}
        settings["sampler"] = {**json_safe(defaults), **settings["sampler"]}
    spec = getattr(plugins.registry("guidance").get(str(settings.get("guidance"))), "spec", None)
    key = (spec.section or "guidance_settings") if spec is not None else None
    if key is not None and spec.config_class is not None and isinstance(settings.get(key), dict):
        renamed = getattr(spec.config_class, "RENAMED", {})
        recorded = {renamed.get(k, k): v for k, v in settings[key].items()}
        known = {f.name for f in dataclasses.fields(spec.config_class)}
        config = spec.config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items() if k in known})
        settings[key] = {**json_safe(to_dict(config)), **{k: v for k, v in recorded.items() if k not in known}}
    return settings


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    """``key.sub: old -> new`` for every leaf where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(set(old) | set(new))
                for change in _differences(old.get(key), new.get(key), f"{where}.{key}" if where else key)]
    return [] if old == new else [f"{where}: {json.dumps(old)} -> {json.dumps(new)}"]
