"""Secret files (key shares, private and signing keys, the CA key, tokens): owner-only.

Every writer of a secret creates it with mode ``0600`` from the start (never widened by the
umask, never briefly readable), and every reader that starts a long-running process (agent,
coordinator, CA) refuses one that its group or others may read or write, naming the file,
its mode and the command that fixes it. On systems without POSIX permissions (Windows) the
check is skipped.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["SecretFileError", "check_private", "write_secret"]


class SecretFileError(ValueError):
    """A secret file that others may read or write (or that cannot be checked)."""


def write_secret(path: str | os.PathLike[str], data: bytes, *, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` readable and writable by its owner only.

    The file is created with mode ``0600`` (and set so again, whatever the umask or an
    earlier mode); with ``exclusive`` an existing file is refused (:class:`FileExistsError`).

    Returns
    -------
    Path
        The file written.
    """
    target = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(target, flags, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # before any byte is written: an old, wider mode goes first
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        if fd >= 0:
            os.close(fd)
    return target


def check_private(path: str | os.PathLike[str], what: str = "secret file") -> None:
    """Refuse ``path`` if its group or others have any access to it.

    Parameters
    ----------
    path : str or path-like
    what : str
        What the file holds, for the message (``"key share"``, ``"token file"``).

    Raises
    ------
    SecretFileError
        The file is readable or writable by others, naming the file, its mode and the fix;
        or it cannot be examined.
    """
    if os.name != "posix":
        return
    p = Path(path)
    try:
        mode = stat.S_IMODE(p.stat().st_mode)
    except OSError as exc:
        raise SecretFileError(f"cannot examine {what} {p}: {exc.strerror or exc}") from exc
    if mode & 0o077:
        raise SecretFileError(
            f"{what} {p} is readable or writable by others (mode {mode:04o}); a secret must be "
            f"accessible to its owner only: run `chmod 600 {p}`"
        )
