"""The face detectors there are, and where YuNet's ONNX file comes from: a given path, a cache, or one download.

The project does not ship the file (OpenCV model zoo, MIT). `resolve_yunet_model` finds it in
this order:

1. an explicit path (`--detector-model` / `FER_DETECTOR_MODEL`), used as is;
2. the per-user cache, ``$XDG_CACHE_HOME/fer_async/`` or ``~/.cache/fer_async/``, if the file
   there has the pinned sha256;
3. a download from the pinned URL, accepted only with the pinned sha256 and size. It is written
   to a temporary file in the cache directory and renamed into place only once complete and
   verified, so a partial or wrong download never lands in the cache. Time and size are bounded.

When none works (offline, blocked, wrong bytes) it logs ONE line saying how to get the file and
returns None; the caller then uses the Haar cascade. Standard library only: importing this
module costs nothing and needs no network, and the settings (`--detector`, `--align`) read
their choices and defaults here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

DETECTOR_KINDS = ("haar", "yunet")  # fer_async.detector builds them
# YuNet finds faces Haar misses (sunglasses, turned heads) and draws no boxes on walls; Haar is
# the fallback when YuNet's file cannot be had (below).
DEFAULT_DETECTOR = "yunet"
# YuNet's faces come with landmarks, by which fer_async.alignment turns each crop upright.
DEFAULT_ALIGN = True
# Full detections run on the frame shrunk to a detection width. YuNet finds faces down to about
# 13 px there: at 320 px, 1/24 of the frame's width, enough for a webcam's faces, not for a wide
# 1080p shot (faces under about 100 px missed; docs/benchmarks.md, "Detection width").
# AUTO_DETECT_WIDTH (the default) takes a third of the frame's width, from MIN_DETECT_WIDTH (every
# frame up to 960 px wide, webcams included: as fast as ever) to MAX_AUTO_DETECT_WIDTH (faces from
# about 40 to 64 px in 1080p, 80 px in 4K, at 2-5 x the 320 px detection's time).
AUTO_DETECT_WIDTH = 0
MIN_DETECT_WIDTH = 320
MAX_AUTO_DETECT_WIDTH = 960
DEFAULT_DETECT_WIDTH = AUTO_DETECT_WIDTH
AUTO_DETECT_SHARE = 3  # auto: the frame's width divided by this


def detection_width(frame_width: int, detect_width: int = AUTO_DETECT_WIDTH) -> int:
    """The width a frame `frame_width` wide is shrunk to for full face detection (never enlarged)."""
    if detect_width != AUTO_DETECT_WIDTH:
        return min(frame_width, detect_width)
    share = -(-frame_width // AUTO_DETECT_SHARE)
    return min(frame_width, MAX_AUTO_DETECT_WIDTH, max(MIN_DETECT_WIDTH, share))


YUNET_FILE_NAME = "face_detection_yunet_2026may.onnx"
YUNET_URL = (
    "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2026may.onnx"
)
YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"
YUNET_SIZE = 229_738
# Replaces YUNET_URL; the tests point it at a local server. The checksum stays pinned, so a
# mirror can only ever deliver the very same file.
URL_ENV = "FER_DETECTOR_MODEL_URL"
CACHE_SUBDIR = "fer_async"
# Bounds on the one download: each socket operation, the whole transfer, and its size (the
# file is 0.23 MB; anything much larger is not it, and is cut off rather than stored).
CONNECT_TIMEOUT_S = 10.0
DOWNLOAD_DEADLINE_S = 60.0
MAX_DOWNLOAD_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 64 * 1024


class ModelDownloadError(RuntimeError):
    """The model could not be downloaded, or what came is not the pinned file."""


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The per-user cache directory: $XDG_CACHE_HOME/fer_async, else ~/.cache/fer_async."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / CACHE_SUBDIR


def cached_model_path(env: Mapping[str, str] | None = None) -> Path:
    return cache_dir(env) / YUNET_FILE_NAME


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_pinned_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size == YUNET_SIZE and sha256_of(path) == YUNET_SHA256
    except OSError:
        return False


def download_model(url: str, target: Path, *, timeout_s: float = CONNECT_TIMEOUT_S) -> Path:
    """Download `url` to `target` if it is the pinned YuNet file; raise ModelDownloadError otherwise.

    The bytes go to a temporary file next to `target` and are renamed onto it (atomic on one
    file system) only after the size and sha256 match; on any failure the temporary file is
    removed and `target` is left as it was.
    """
    if not url.lower().startswith(("https://", "http://")):
        raise ModelDownloadError(f"refusing to download from {url!r}: only http(s) URLs")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise ModelDownloadError(f"cannot write to {target.parent}: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        deadline = time.monotonic() + DOWNLOAD_DEADLINE_S
        request = urllib.request.Request(url, headers={"User-Agent": "fer_async"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > MAX_DOWNLOAD_BYTES:
                raise ModelDownloadError(f"the server offers {declared} bytes; the model is {YUNET_SIZE}")
            while chunk := response.read(CHUNK_BYTES):
                received += len(chunk)
                if received > MAX_DOWNLOAD_BYTES:
                    raise ModelDownloadError(f"more than {MAX_DOWNLOAD_BYTES} bytes; the model is {YUNET_SIZE}")
                if time.monotonic() > deadline:
                    raise ModelDownloadError(f"the download took longer than {DOWNLOAD_DEADLINE_S:.0f} s")
                digest.update(chunk)
                out.write(chunk)
        if received != YUNET_SIZE:
            raise ModelDownloadError(f"got {received} bytes; the model is {YUNET_SIZE} (an interrupted transfer?)")
        if digest.hexdigest() != YUNET_SHA256:
            raise ModelDownloadError(f"sha256 {digest.hexdigest()} is not the pinned {YUNET_SHA256}")
        os.replace(tmp, target)
    except ModelDownloadError:
        raise
    except (OSError, urllib.error.URLError, ValueError) as exc:  # refused, DNS, timeout, HTTP 404, reset
        raise ModelDownloadError(f"{url}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def resolve_yunet_model(
    explicit: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    url: str | None = None,
    download: bool = True,
) -> Path | None:
    """The YuNet ONNX file to use, or None (after one log line) when it cannot be had.

    `explicit` (the user's `--detector-model`) is returned as is: a bad one should fail loudly
    where the detector loads it, not be replaced silently. `url` defaults to $FER_DETECTOR_MODEL_URL,
    else the pinned YUNET_URL.
    """
    if explicit is not None:
        return explicit
    env = os.environ if env is None else env
    cached = cached_model_path(env)
    if _is_pinned_file(cached):
        logger.debug("YuNet model from the cache: %s", cached)
        return cached
    source = url or env.get(URL_ENV, "").strip() or YUNET_URL
    problem = "not cached and downloads are off"
    if download:
        try:
            started = time.monotonic()
            download_model(source, cached)
            logger.info("downloaded the YuNet face detector to %s in %.1f s", cached, time.monotonic() - started)
            return cached
        except ModelDownloadError as exc:
            problem = str(exc)
    logger.warning(
        "YuNet face detector unavailable (%s); using the Haar cascade. To use YuNet, download %s "
        "(sha256 %s) and pass --detector-model PATH (or FER_DETECTOR_MODEL), or save it as %s",
        problem,
        YUNET_URL,
        YUNET_SHA256,
        cached,
    )
    return None
