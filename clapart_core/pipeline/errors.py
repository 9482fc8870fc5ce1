"""User errors: the mistakes a user causes and can fix, reported as one line instead of a traceback.

Every error type the project raises for such a mistake derives from :class:`UserError` (bad
params, a bad corpus or manifest, bad audio, a refused checkpoint, a model that is not here, a
missing input, a scorer that cannot start). A disk the user must fix is one too: an ``OSError``
for a full disk, a read-only file system, a permission or a missing path (:data:`DISK_ERRNOS`).

:func:`user_errors` is the one place that turns them into ``error: <what> (<where>)`` on stderr
and exit code :data:`EXIT_USER_ERROR`; anything else is a bug and keeps its traceback. Every DVC
stage runs its body inside it (:func:`clapart_core.pipeline.params.run_stage`); a traceback for a
user error is shown only with ``--debug`` or ``CLAPART_DEBUG=1``.

Plumbing: imports nothing of the project, so every module may derive its errors from here.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DEBUG_ENV", "DISK_ERRNOS", "EXIT_USER_ERROR", "MissingInputError", "ParamsError", "UserError", "debug_requested", "describe", "user_errors"]

#: exit code of a user error (argparse and click use 2 for a bad command line too)
EXIT_USER_ERROR = 2
#: set to 1 to get the traceback of a user error (a stage has no other way to take ``--debug`` under DVC)
DEBUG_ENV = "CLAPART_DEBUG"

#: ``OSError`` numbers the user fixes at the disk: space, quota, a read-only mount, permissions, a
#: path that is not there (or not a folder / not a file where one is needed)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR})
# what the user can do, for the errors whose system message does not say it
_DISK_ADVICE = {
    errno.ENOSPC: "free some space or move data/ to a larger disk",
    errno.EDQUOT: "free some space or ask for a larger quota",
    errno.EROFS: "the file system is mounted read-only: run from a writable copy of the project",
}


class UserError(Exception):
    """Base of every error a user causes and can fix; its message is one line naming the file or
    params key and the problem (no traceback is shown for it, see :func:`user_errors`)."""


class ParamsError(UserError, ValueError):
    """``params.yaml`` (or a command-line option) holds a value the project cannot run with."""


class MissingInputError(UserError, FileNotFoundError):
    """A file a stage reads is not there; the message says which stage makes it."""


def debug_requested(argv: list[str] | None = None) -> bool:
    """True with ``--debug`` on the command line or ``CLAPART_DEBUG`` set to anything but 0/empty."""
    return "--debug" in (sys.argv if argv is None else argv) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


# the subclasses Python picks by number, for libraries that raise them without one (pyarrow)
_SUBCLASS_ERRNO = ((FileNotFoundError, errno.ENOENT), (PermissionError, errno.EACCES), (IsADirectoryError, errno.EISDIR), (NotADirectoryError, errno.ENOTDIR))


def _errno(err: OSError) -> int | None:
    """The error number of an ``OSError``; libraries that lose it (h5py, pyarrow) keep it in the
    text or in the subclass they raise."""
    if err.errno is not None:
        return err.errno
    text = str(err)
    found = re.search(r"errno\s*=\s*(\d+)|\[Errno (\d+)\]", text)
    if found:
        return int(found.group(1) or found.group(2))
    for cls, code in _SUBCLASS_ERRNO:
        if isinstance(err, cls):
            return code
    return next((code for code in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES) if os.strerror(code) in text), None)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def describe(err: BaseException) -> str | None:
    """The one-line ``<what>`` of a user error; None for anything else (a bug, shown with its traceback)."""
    if isinstance(err, UserError):
        return _one_line(str(err))
    if not isinstance(err, OSError):
        return None
    code = _errno(err)
    if code not in DISK_ERRNOS:
        return None
    standard = os.strerror(code)
    text = err.strerror if err.errno is not None and err.strerror else str(err)
    if text == standard:  # the system's words: name the file first
        names = [str(n) for n in (err.filename, err.filename2) if n is not None]
        text = f"{' -> '.join(names)}: {_lower_first(text)}" if names else _lower_first(text)
    elif standard.lower() not in text.lower():  # a library's words that do not say what happened
        text = f"{text}: {_lower_first(standard)}"
    advice = _DISK_ADVICE.get(code)
    return _one_line(f"{text}; {advice}" if advice else text)


@contextmanager
def user_errors(where: str, *, debug: bool | None = None) -> Iterator[None]:
    """Run the body; a user error (see :func:`describe`) ends the process with one line on stderr,
    ``error: <what> (<where>)``, and exit code 2. Other exceptions pass unchanged.

    Args:
        where: the place the line names, e.g. ``"stage decode"`` or ``"stage train@clotho"``.
        debug: re-raise user errors too (their traceback); default :func:`debug_requested`.
    """
    try:
        yield
    except Exception as err:
        what = describe(err)
        if what is None or (debug_requested() if debug is None else debug):
            raise
        sys.stdout.flush()
        print(f"error: {what} ({where})", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
