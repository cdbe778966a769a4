"""The system user the embedded PostgreSQL runs as when DataLoader itself runs as root.

PostgreSQL refuses to run as root, so the embedded-PostgreSQL wheel, started by root, runs it as a
system user named ``pgserver`` and creates that user with ``useradd`` when it is missing. The wheel
does that before it takes its own cross-process lock. Several processes starting at once on a
machine where the user does not exist yet (``make test``'s pytest workers on a fresh CI machine,
or ``dagster dev``'s webserver, daemon and code server) each saw the user missing and each ran
``useradd``: one of them won, the others failed or, worse, went on with a pgdata directory owned
by another uid than the one ``initdb`` then ran as (``initdb: error: could not change permissions
of directory ".../pgdata": Operation not permitted``).

:func:`ensure_system_user` creates the user first, under one machine-wide ``fcntl`` lock, so that
exactly one process ever runs ``useradd`` and every other one waits for it and then finds the
user; the wheel then finds it too and creates nothing. A process that is not root, or a system
without ``useradd`` (macOS, Windows), does nothing here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

# The name the wheel runs PostgreSQL as when started by root (it is not configurable there).
SYSTEM_USER = "pgserver"
# The same command the wheel would run, so that a machine ends up with the same user either way.
USERADD = ("useradd", "-s", "/bin/bash")
# One lock for the whole machine: every process creating the user must see the same file.
LOCK_PATH = Path(tempfile.gettempdir()) / "dataloader-system-user.lock"


class SystemUserError(RuntimeError):
    """The system user the embedded PostgreSQL needs could not be created."""


def ensure_system_user(
    name: str = SYSTEM_USER,
    *,
    useradd: Sequence[str] = USERADD,
    lock_path: Path = LOCK_PATH,
) -> int | None:
    """Make sure system user ``name`` exists, creating it under a machine-wide lock; its uid.

    Returns None (and does nothing) when this process is not root or ``useradd`` is not there.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    existing = _uid(name)
    if existing is not None:
        return existing
    if shutil.which(useradd[0]) is None:
        return None  # no useradd here: the wheel does what it does on such a system
    import fcntl  # POSIX only; root without geteuid cannot happen on Windows

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        existing = _uid(name)  # created by the process that held the lock before us
        if existing is not None:
            return existing
        done = subprocess.run(
            [*useradd, name], capture_output=True, text=True, check=False, timeout=60
        )
        created = _uid(name)
        if created is None:
            raise SystemUserError(
                f"could not create system user {name!r}, which the embedded PostgreSQL runs as"
                f" when started by root: {' '.join([*useradd, name])} exited {done.returncode}:"
                f" {done.stderr.strip()[-500:]}"
            )
        return created


def _uid(name: str) -> int | None:
    import pwd  # POSIX only, like being root

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None
