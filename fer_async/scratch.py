"""Private scratch directories in the system's temporary directory, named after their process.

A server removes its own directories when it stops, but a process killed with SIGKILL (a
worker the supervisor restarts, the OOM killer) cannot: its uploads (up to --max-video-bytes
each) stayed in /tmp for good. So each directory carries its process id, and making one first
removes this user's directories of the same kind whose process is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def scratch_dir(prefix: str) -> Path:
    """A new directory `<tmp>/<prefix><pid>-<random>`, after removing those of dead processes."""
    for orphan in orphans(prefix):
        shutil.rmtree(orphan, ignore_errors=True)
        logger.info("removed %s, left by a process that is gone", orphan)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def orphans(prefix: str) -> list[Path]:
    """This user's `<prefix><pid>-*` directories whose process no longer runs."""
    found = []
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
        pid_text = path.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or path.is_symlink() or not path.is_dir():
            continue
        try:
            if path.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if not _running(int(pid_text)):
            found.append(path)
    return found


def _running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
