"""Private scratch directories in the system's temporary directory, each locked by its process.

A server removes its own directories when it stops, but a process killed with SIGKILL (a
worker the supervisor restarts, the OOM killer) cannot: its uploads (up to --max-video-bytes
each) stayed in /tmp for good. So its process keeps each directory locked (flock on the
directory itself) while it lives; the kernel releases the lock when the process dies, however
it dies. Making a directory first removes this user's directories of the same kind whose lock
is free. A process id alone would not do: in a container sharing /tmp, another pid namespace's
live process looked dead, and its directory was removed under it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

_held: dict[Path, int] = {}  # this process's directories and their locked descriptors


def scratch_dir(prefix: str) -> Path:
    """A new directory `<tmp>/<prefix><pid>-<random>`, locked, after removing orphans of its kind."""
    for orphan in orphans(prefix):
        shutil.rmtree(orphan, ignore_errors=True)
        logger.info("removed %s, left by a process that is gone", orphan)
    # Locked under another name, then renamed: no sweep ever sees it unlocked.
    making = Path(tempfile.mkdtemp(prefix=f".making-{prefix}"))
    descriptor = os.open(making, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    path = Path(tempfile.gettempdir()) / f"{prefix}{os.getpid()}-{making.name.rsplit('-', 1)[-1]}"
    making.rename(path)
    _held[path] = descriptor
    return path


def remove_scratch(path: Path) -> None:
    """Remove a directory `scratch_dir` made, and let go of its lock."""
    shutil.rmtree(path, ignore_errors=True)
    descriptor = _held.pop(path, None)
    if descriptor is not None:
        os.close(descriptor)


def orphans(prefix: str) -> list[Path]:
    """This user's `<prefix><pid>-*` directories (as `scratch_dir` names them) whose lock is free."""
    found = []
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
        if not path.name[len(prefix) :].split("-", 1)[0].isdigit():
            continue  # not named by scratch_dir: another program's, or an older version's
        if path in _held or path.is_symlink() or not path.is_dir():
            continue
        try:
            if path.stat().st_uid != os.getuid():
                continue
            descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process lives
            os.close(descriptor)
            continue
        os.close(descriptor)
        found.append(path)
    return found
