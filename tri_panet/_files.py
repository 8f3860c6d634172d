"""Atomic, no-surprise file writes shared by images, weights, checkpoints and reports.

Every file and folder written here gets the permissions the user's umask gives a new one
(``0o666`` / ``0o777`` less the umask), as ``open`` and ``mkdir`` would; the temporary
files of a write are named ``.<name>.<pid>.<random>.tmp``, so that a later write of the same
file can remove those that a killed process left behind.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_TMP_SUFFIX = ".tmp"


def umask() -> int:
    """The process's umask (read by setting it and putting it back: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permissions a newly created file gets: ``0o666`` less the umask."""
    return 0o666 & ~umask()


def new_folder_mode() -> int:
    """The permissions a newly created folder gets: ``0o777`` less the umask."""
    return 0o777 & ~umask()


def make_temp_folder(parent: Path, prefix: str) -> Path:
    """A new hidden folder in ``parent`` (``mkdtemp``), with ordinary permissions (not 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, new_folder_mode())
    return folder


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Delete the temporary files of earlier writes of ``path`` whose process is gone (a
    write killed before it could clean up); those of running processes are left alone."""
    parent = path.parent if str(path.parent) else Path(".")
    for tmp in glob.glob(os.path.join(glob.escape(str(parent)), f".{glob.escape(path.name)}.*{_TMP_SUFFIX}")):
        pid = Path(tmp).name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _temp_file(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path`` (our naming); PermissionError naming ``path``
    (not the temporary name) when the folder cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        return tempfile.mkstemp(dir=parent, prefix=f".{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX)
    except OSError as e:
        raise PermissionError(f"cannot write {str(path)!r}: {os.strerror(e.errno) if e.errno else e}") from None


def check_writable(path: str | os.PathLike) -> None:
    """Raise PermissionError naming ``path`` unless a file can be created at it, by creating
    and removing a temporary file beside it: checked before long work, so that an output
    that cannot be written fails at once rather than after the computation. The folder
    must exist."""
    fd, tmp = _temp_file(Path(path))
    os.close(fd)
    os.unlink(tmp)


def check_can_create(path: str | os.PathLike) -> None:
    """Raise unless ``path`` (a file or folder to be made, or an existing folder to write
    into) can be created: probed in its nearest existing folder. NotADirectoryError when
    that is a file, PermissionError (naming ``path``) when it cannot be written."""
    path = Path(os.path.abspath(path))
    base = path
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise NotADirectoryError(f"cannot create {str(path)!r}: {str(base)!r} is a file, not a folder")
    try:
        check_writable(base / "probe")
    except PermissionError:
        raise PermissionError(f"cannot create {str(path)!r}: folder {str(base)!r} is not writable") from None


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, overwrite: bool = False) -> Path:
    """Create ``path`` by ``write(f)`` into a temporary binary file in the same folder, then move it in place.

    A reader never sees a partial file and a crash leaves no temporary behind (a kill
    does; the next write of ``path`` removes it). Without ``overwrite`` an existing file is
    never replaced, even one that appears while writing (``os.link`` refuses existing
    names): FileExistsError. A folder that cannot be written raises PermissionError naming
    ``path`` (not the temporary file). Returns the path.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise _exists_error(path)
    remove_stale_temps(path)
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())  # mkstemp creates 0600; give the file the umask's permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise _exists_error(path) from None
            except OSError:  # filesystems without hard links
                if path.exists():
                    raise _exists_error(path) from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), overwrite=overwrite)
