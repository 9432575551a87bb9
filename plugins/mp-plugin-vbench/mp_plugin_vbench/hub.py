"""Default weights of the metrics: found in the local caches first, downloaded only when a download can work.

The libraries that own the default weights (timm and open_clip through the Hugging Face hub, torchvision
through ``torch.hub``) would otherwise try the network even where there is none: the hub client retries
each file five times with back-off (minutes), open_clip logs the failure on the root logger (which makes
Python install a stderr handler for the rest of the process), and torchvision prints ``Downloading: URL``.
Here a cached file is loaded from its path (no request at all); a missing one is downloaded only when not
offline, offline meaning ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``), for every host, or the host
not accepting a connection (one probe per host and process; skipped behind a proxy).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

_TRUE = ("1", "true", "yes", "on")
_reachable: dict[str, bool] = {}


def hub_host() -> str:
    """The Hugging Face endpoint's host (``HF_ENDPOINT`` for a mirror)."""
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # noqa: BLE001 - an old or missing client: the public hub
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(endpoint).hostname or "huggingface.co"


def offline_reason(host: str) -> str | None:
    """Why nothing can be downloaded from ``host`` here (a few words), or None when a download may work."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name}=1"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a direct probe says nothing about a proxy: let the library try
    if host not in _reachable:
        try:
            socket.create_connection((host, 443), timeout=3).close()
            _reachable[host] = True
        except OSError:
            _reachable[host] = False
    return None if _reachable[host] else f"{host} unreachable"


def hf_cached(repo_id: str, filenames: tuple[str, ...]) -> str | None:
    """The path of the first of ``filenames`` of the hub repo ``repo_id`` in the local hub cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in filenames:
        try:
            found = try_to_load_from_cache(repo_id, filename)
        except Exception:  # noqa: BLE001 - an unusable cache is a cache without the file
            continue
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def timm_hub_file(arch: str) -> tuple[str, str | None]:
    """The hub repo of timm's pretrained ``arch`` and its cached weights file (None when not cached)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(arch)
    except Exception:  # noqa: BLE001 - not a timm name: timm.create_model says so
        cfg = None
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return "", None
    named = getattr(cfg, "hf_hub_filename", None)
    files = (named,) if named else ("model.safetensors", "pytorch_model.bin")  # timm's order
    return repo, hf_cached(repo, files)


def open_clip_hub_file(arch: str, tag: str) -> tuple[str, str | None]:
    """The hub repo of open_clip's ``arch``/``tag`` weights and its cached file (None when not cached);
    ("", None) when open_clip has no such weights."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    model_id, filename = os.path.split(str(cfg.get("hf_hub", "")))  # 'org/name/' or 'org/name/file' (open_clip's rule)
    if not model_id:
        return "", None
    filename = filename or "open_clip_pytorch_model.bin"
    if filename == "open_clip_pytorch_model.bin":
        safe = "open_clip_model.safetensors"
    else:
        safe = filename[:-4] + ".safetensors" if filename.endswith((".bin", ".pth")) else filename
    return model_id, hf_cached(model_id, (safe, filename))  # open_clip prefers the safetensors file


def torch_hub_file(url: str) -> Path:
    """Where ``torch.hub`` keeps the download of ``url`` (``TORCH_HOME``/hub/checkpoints/NAME)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


class _Collect(logging.Filter):
    """Drops (and keeps) the records the libraries log on the root logger itself while loading."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextlib.contextmanager
def quiet_library_logging() -> Iterator[list[logging.LogRecord]]:
    """While loading weights: what a library logs on the root logger (open_clip's ``logging.error`` of a failed
    download) is collected instead of printed, and Python's ``basicConfig`` is not triggered by it (a
    stderr handler would otherwise stay for the rest of the process); the libraries' own loggers are
    quiet unless the application configured logging. Everything is restored on exit."""
    root = logging.getLogger()
    collect = _Collect()
    placeholder = None
    if not root.handlers:  # logging.error() calls basicConfig() when the root logger has no handler
        placeholder = logging.NullHandler()
        root.addHandler(placeholder)
    root.addFilter(collect)
    try:
        yield collect.records
    finally:
        root.removeFilter(collect)
        if placeholder is not None:
            root.removeHandler(placeholder)
