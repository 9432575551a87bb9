"""Atomic file output: nothing mpcore writes is ever left half-done under its final name."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers pick the same format); when
    the block succeeds it is moved onto ``path`` with :func:`os.replace`, when it fails it is removed.

    A file gets the ordinary mode of a new file (0666 minus the umask) before the move, whatever mode
    its writer chose (safetensors writes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if tmp.is_file():
            follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def follow_umask(path: str | Path) -> None:
    """Give the file ``path`` the mode a new file gets from ``open`` (0666 minus the process umask)."""
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def remove_stale_temporaries(folder: str | Path, stems: list[str]) -> int:
    """Delete the temporaries :func:`atomic_path` left in ``folder`` for files named ``stems`` by a
    process that was killed (SIGKILL skips its cleanup). Call it only while no writer is running.
    Returns how many were removed."""
    removed = 0
    for stem in stems:
        for tmp in Path(folder).glob(f".{stem}.tmp-*"):
            if tmp.is_file():
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed += 1
    return removed


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`. Returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
