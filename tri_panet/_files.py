"""Atomic, no-surprise file writes shared by images, weights, checkpoints and reports."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, overwrite: bool = False) -> Path:
    """Create ``path`` by ``write(f)`` into a temporary binary file in the same folder, then move it in place.

    A reader never sees a partial file and a crash leaves no temporary behind. Without
    ``overwrite`` an existing file is never replaced, even one that appears while writing
    (``os.link`` refuses existing names): FileExistsError. Returns the path.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; give the file ordinary permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it") from None
            except OSError:  # filesystems without hard links
                if path.exists():
                    raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), overwrite=overwrite)
