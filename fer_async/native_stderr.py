"""What C++ libraries write straight to file descriptor 2, captured while they load.

TensorFlow (importing, probing for CUDA) and onnxruntime (loading its CUDA provider) write to
fd 2 directly, past Python's logging. `captured_stderr` collects those lines so the caller can
say in one log line what they mean; `without_stderr_lines` passes on all but known noise.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Redirect fd 2 to a file for the block; its lines land in the yielded list when the block ends.

    Process-wide: another thread's writes to stderr meanwhile are captured too, so callers
    give back (`release`) every line that is not the library's.
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines.extend(captured.read().decode(errors="replace").splitlines(keepends=True))


def release(lines: list[str]) -> None:
    """Write captured lines back to stderr."""
    if lines:
        os.write(2, "".join(lines).encode())


@contextlib.contextmanager
def without_stderr_lines(pattern: re.Pattern[str]) -> Iterator[None]:
    """Capture fd 2 for the block and re-emit all but the lines matching `pattern`."""
    lines: list[str] = []
    try:
        with captured_stderr() as lines:
            yield
    finally:  # also when the block raised: what it wrote may say why
        release([line for line in lines if not pattern.search(line)])
