"""Run manifests: package versions, platform info and run settings, written as strict JSON.

JSON has no NaN/Infinity and no tensors; :func:`json_safe` converts everything mpcore records
(tensors, numpy values, tuples, paths, dataclasses) to plain JSON types and non-finite floats to
``None``. :func:`write_json_atomic` writes through a temporary file so a manifest is never half-written.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any, Iterable

import numpy as np

from mpcore.io.files import write_text_atomic

MANIFEST_VERSION = 1

CORE_PACKAGES = ("torch", "diffusers", "transformers", "timm", "torchvision", "mpcore", "mpcore-kernels")
"""Distributions whose versions every manifest records (besides python and the mpcore plugins)."""

_MODULE_FALLBACK = {"mpcore": "mpcore", "mpcore-kernels": "mpcore_kernels"}
"""Run from a source checkout (PYTHONPATH) these are not installed distributions; if the module is
already imported, its ``__version__`` is used instead."""


def _distribution_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None if it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        module = sys.modules.get(_MODULE_FALLBACK.get(name, ""))
        version = getattr(module, "__version__", None) if module is not None else None
        return str(version) if version is not None else None


def plugin_distributions() -> list[str]:
    """Names of the installed distributions that declare an entry point in the ``mpcore`` group."""
    from mpcore.plugins import ENTRY_POINT_GROUP

    return sorted({ep.dist.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.dist is not None})


def package_versions(extra: Iterable[str] = ()) -> dict[str, str | None]:
    """Versions of python, the core packages, every mpcore plugin distribution and ``extra``.

    Versions come from :mod:`importlib.metadata`; a package that is not installed maps to None.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in [*CORE_PACKAGES, *plugin_distributions(), *extra]:
        if name not in versions:
            versions[name] = _distribution_version(name)
    return versions


def json_safe(obj: Any) -> Any:
    """Recursively convert ``obj`` to JSON types (dict with str keys, list, str, int, float, bool, None).

    Tensors and numpy arrays become (nested) lists, numpy/tensor scalars Python numbers, tuples and
    sets lists, paths strings, dataclass instances dicts of their fields, enums their value, torch
    dtypes/devices strings; non-finite floats (NaN, +-inf) become None. Anything else becomes ``str(obj)``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)  # int subclasses (IntEnum, ...) become plain ints
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_json_key(key): json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    if isinstance(obj, (set, frozenset)):
        items = [json_safe(value) for value in obj]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return json_safe(obj.value)
    if isinstance(obj, (np.generic, np.ndarray)):
        return json_safe(obj.tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: json_safe(getattr(obj, field.name)) for field in dataclasses.fields(obj)}
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(obj, torch.Tensor):
            value = obj.detach().cpu()
            if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
                value = value.float()  # half / bfloat16 -> python floats
            return json_safe(value.tolist())
        if isinstance(obj, (torch.dtype, torch.device)):
            return str(obj)
    return str(obj)


def _json_key(key: Any) -> str:
    """JSON object keys must be strings."""
    if isinstance(key, str):
        return key
    if isinstance(key, enum.Enum):
        key = key.value
    safe = json_safe(key)
    return safe if isinstance(safe, str) else json.dumps(safe)


def write_json_atomic(data: Any, path: str | Path) -> Path:
    """Write ``json_safe(data)`` as indented strict JSON (no NaN) to ``path`` atomically.

    The text is serialized before any file is created, then written by
    :func:`mpcore.io.files.write_text_atomic`.
    """
    return write_text_atomic(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n", path)


def git_revision(folder: str | Path) -> tuple[str | None, bool | None]:
    """(short SHA, dirty?) of the git checkout holding ``folder``; (None, None) outside one."""
    try:
        run = lambda *args: subprocess.run(  # noqa: E731
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        return run("rev-parse", "--short", "HEAD") or None, run("status", "--porcelain", "--untracked-files=no") != ""
    except (OSError, subprocess.SubprocessError):
        return None, None


def cpu_stall_us() -> int | None:
    """Cumulative microseconds in which some runnable task waited for a CPU (Linux PSI
    ``/proc/pressure/cpu``), or None where the kernel does not report it. Benchmarks read it
    before and after a timed region to flag runs that competed with other processes."""
    try:
        with open("/proc/pressure/cpu") as handle:
            for line in handle:
                if line.startswith("some"):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def platform_info() -> dict[str, Any]:
    """Python, OS and machine description plus the torch devices (CUDA availability and names)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": platform.system(),
        "os_release": platform.release(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    torch_info: dict[str, Any] = {"cuda_available": False, "device_count": 0, "devices": []}
    try:
        import torch

        torch_info["version"] = torch.__version__
        torch_info["cuda_version"] = torch.version.cuda
        torch_info["cuda_available"] = bool(torch.cuda.is_available())
        if torch_info["cuda_available"]:
            torch_info["device_count"] = torch.cuda.device_count()
            torch_info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch_info["device_count"])]
        mps = getattr(torch.backends, "mps", None)
        torch_info["mps_available"] = bool(mps is not None and mps.is_available())
    except Exception as exc:  # torch missing or a broken driver: record, do not fail the run
        torch_info["error"] = f"{type(exc).__name__}: {exc}"
    info["torch"] = torch_info
    return info


def build_manifest(**sections: Any) -> dict[str, Any]:
    """A JSON-safe manifest: version, UTC creation time, package versions, platform, then ``sections``.

    Sections are merged at the top level and may override ``versions``/``platform`` (e.g. with
    ``versions=package_versions(extra=[...])``) or ``created``; ``mpcore_manifest_version`` is reserved.
    """
    if "mpcore_manifest_version" in sections:
        raise ValueError("'mpcore_manifest_version' is reserved and cannot be given as a section")
    manifest: dict[str, Any] = {
        "mpcore_manifest_version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "platform": platform_info(),
    }
    manifest.update(sections)
    return json_safe(manifest)
