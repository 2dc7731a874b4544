"""Small helpers shared by the test packages (server, hostile, e2e, imaging).

`tests/` is on sys.path (pytest inserts the directory of the top-level conftest.py), so test
modules import this as `testsupport`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import cv2
import numpy as np
import pytest


async def eventually(check: Callable[[], bool], within_s: float = 30.0, what: str = "condition") -> None:
    """Poll `check` every 50 ms until it holds; fail after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {within_s:.0f} s")
        await asyncio.sleep(0.05)


def jpeg_scan_bomb(repeats: int) -> bytes:
    """A flat 1600x1200 progressive JPEG whose last scan is repeated `repeats` more times.

    libjpeg decodes it (with only a warning) at a cost of pixels x scans, and a flat image makes
    each scan a few bytes: a CPU bomb in a small file.
    """
    ok, encoded = cv2.imencode(".jpg", np.full((1200, 1600, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    jpeg = encoded.tobytes()
    last_scan = jpeg[jpeg.rindex(b"\xff\xda") : -2]
    return jpeg[:-2] + last_scan * repeats + b"\xff\xd9"
