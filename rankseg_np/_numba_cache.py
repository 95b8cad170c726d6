"""Give Numba a writable cache directory when the installed package is read-only.

Our kernels are compiled with ``cache=True``.  Numba stores the compiled code in
``__pycache__`` next to the source, or, when that is read-only (a system-wide or
container install), in the user's cache directory (``~/.cache/numba``).  When
neither is writable -- a read-only install run by a user without a writable home,
such as ``docker run --user 1000`` -- Numba refuses to compile at all ("cannot
cache function ...: no locator available").  Then, and only then, this module
points Numba at a private per-user directory in the temporary directory.

It must run before any kernel module is imported: Numba picks a cache location
when a function is decorated.  An explicit ``NUMBA_CACHE_DIR`` always wins.
"""

from __future__ import annotations

import os
import stat
import tempfile

PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _writable(directory: str) -> bool:
    """Numba's own test: the directory can be created and a file written in it."""
    try:
        os.makedirs(directory, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError:
        return False
    return True


def _user_cache_dir() -> str | None:
    """Where Numba caches when the source tree is read-only (its vendored appdirs)."""
    try:
        from numba.misc.appdirs import AppDirs
    except ImportError:  # pragma: no cover - numba moved it; then we cannot tell
        return None
    return AppDirs(appname="numba", appauthor=False).user_cache_dir


def _private_temp_dir() -> str | None:
    """``$TMPDIR/rankseg_np-numba-<uid>``, created 0700; None unless it is ours alone.

    Numba's cache files are pickles, so a directory another user could write to
    (or had created first) must never be used: loading its files runs their code.
    """
    path = os.path.join(tempfile.gettempdir(), f"rankseg_np-numba-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    info = os.lstat(path)
    ours = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077
    return path if ours and _writable(path) else None


def configure() -> str | None:
    """Set Numba's cache directory if it would otherwise have none; return the directory set."""
    if os.environ.get("NUMBA_CACHE_DIR") or not hasattr(os, "getuid"):
        return None  # the user chose; or Windows, where the user cache dir always exists
    in_tree = all(_writable(os.path.join(PACKAGE, sub, "__pycache__")) for sub in ("cpu", "dask"))  # where the kernels live
    user_dir = _user_cache_dir()
    if in_tree or user_dir is None or _writable(user_dir):
        return None
    # Last resort (the shared directory is someone else's): a fresh private directory,
    # so kernels compile once per process instead of not at all.
    private = _private_temp_dir() or tempfile.mkdtemp(prefix="rankseg_np-numba-")
    from numba.core import config

    config.CACHE_DIR = private
    return private
