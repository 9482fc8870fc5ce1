"""Write-to-temporary-then-rename: the one way clapart puts a file or folder in place.

Every artifact (HDF5, Parquet, ``rvq.npz``, the model folder, checkpoints, metrics, configs) is
written under a temporary name beside its final one and renamed onto it only when complete, so a
killed stage leaves either the previous artifact or none, never one that looks complete. The
temporary name is ``<name>.partial``: one convention, so a stale leftover is recognisable (and
``.gitignore``/``.dvcignore`` can name it). Files are created with ``open()``, so they get the
user's umask (``tempfile.mkstemp`` would make them 0600).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_path(path: str | Path) -> Path:
    """The temporary name a writer uses until ``path`` is complete: ``<name>.partial``."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _fsync(path: Path) -> None:
    # the rename must not reach the disk before the data (power loss, not only SIGKILL)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True, shared: bool = False) -> Iterator[Path]:
    """Yield the temporary path to write ``path`` through; rename it into place on success.

    The body writes the temporary file by any means (h5py, pyarrow, ``torch.save`` …). On an
    exception the temporary file is removed and ``path`` is left as it was. ``shared``: other
    processes may write ``path`` at the same moment (a cache shared by parallel runs), so the
    temporary name carries the process id (``<name>.<pid>.partial``) and no writer removes
    another's; the last rename wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}") if shared else partial_path(path)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str, *, fsync: bool = True) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8, newlines written as given)."""
    write_bytes(path, text.encode("utf-8"), fsync=fsync)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces the folder ``path`` whole.

    A crash leaves the previous ``path`` (or the temporary folder, removed by the next run),
    never a half-written ``path``. The swap is two renames: the old folder moves aside first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = partial_path(path), path.with_name(path.name + ".old" + PARTIAL_SUFFIX)
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def write_files(files: dict[Path, bytes], *, fsync: bool = True) -> list[Path]:
    """Replace a set of files together: each is written under its temporary name first, and only
    when all are written are they renamed into place. A failure while writing (a full disk, a
    read-only folder) leaves every file as it was, never a mix of old and new files.

    Files whose bytes are unchanged are not rewritten (their time stamps stay). Returns the paths
    that were replaced.
    """
    changed = {Path(p): data for p, data in files.items() if not (Path(p).is_file() and Path(p).read_bytes() == data)}
    written: list[Path] = []
    try:
        for path, data in changed.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = partial_path(path)
            written.append(tmp)
            tmp.write_bytes(data)
            if fsync:
                _fsync(tmp)
    except BaseException:
        for tmp in written:
            tmp.unlink(missing_ok=True)
        raise
    for path in changed:  # a rename within a folder needs no space: a full disk fails the writes above, not this
        os.replace(partial_path(path), path)
    return list(changed)
