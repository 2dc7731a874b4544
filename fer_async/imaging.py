"""Decoding untrusted images with limits, cropping faces for the model, drawing results.

Everything here is plain OpenCV on numpy arrays. OpenCV releases the GIL while it decodes,
converts and resizes, which is what lets the analyzer run several frames on threads.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from fer_async.alignment import aligned_face
from fer_async.image_limits import MAX_PIXELS, MAX_REDUCED_FACTOR
from fer_async.labels import EMOTION_COLOURS, EMOTIONS, FACE_SIZE, Box, Face, label_ink
from fer_async.tracker import TrackedFace

logger = logging.getLogger(__name__)

# FER2013 faces fill their 48x48 frame the way a Haar box does: on 521 validation faces
# upscaled and padded, the Haar cascade's box side was 0.99x the frame (median, IQR 0.91-1.04)
# and centred. So we crop exactly the detector's box, with no margin; detector.py hands out
# boxes in that framing whatever the detector.
FACE_MARGIN = 0.0

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, with no length field after them.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9

_CORRUPT = "corrupt or truncated image"

# Decoding cost is pixels x scans, and libjpeg only warns about a progressive JPEG that repeats
# the same scan: 70 KB of repeated 22-byte scans over 2000x2000 pixels took 0.9 s to decode
# here, and a 1 MB frame would hold a busy minute. Encoders write 1 (baseline) to about 10
# (progressive) scans; 64 leaves room for unusual scripts.
MAX_JPEG_SCANS = 64
# The header is read on the event loop, a segment at a time: a body of empty comment segments
# (FF FE 00 02 repeated over 32 MB) held the loop for 4 s. Cameras write about 10 segments before
# the image data (an ICC profile may take up to 255 of its own); fill bytes are rarer still.
MAX_JPEG_SEGMENTS = 1024
MAX_JPEG_FILL = 1024
_JPEG_FILL = re.compile(rb"\xff{1,%d}" % MAX_JPEG_FILL)
SCAN_BLOCK = 1 << 20


# A JPEG over the pixel budget (or wider than a caller needs) is decoded at 1/2, 1/4 or 1/8
# scale: libjpeg scales inside its inverse DCT, so the full-size image is never allocated.
JPEG_REDUCTIONS: dict[int, int] = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


class ImageError(ValueError):
    """The bytes are not an image we accept; the message is safe to show to the client."""


class ImageTooLarge(ImageError):
    """The image has more pixels than we decode at all (HTTP 413)."""


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the first SOF segment; checks the file also reaches its EOI."""
    width, height, _scans = _jpeg_header(data)
    return width, height


def _count_scans(data: bytes, start: int, end: int) -> int:
    """How many FF DA (start-of-scan) pairs `data[start:end]` holds.

    Every frame's header is read twice (on the event loop, then on a detection thread): numpy
    compares whole blocks, where bytes.count took 2-3x as long. Blocks of SCAN_BLOCK bytes keep
    its memory bounded (a body of FF bytes cost 18x its size in one piece).
    """
    scans = 0
    for offset in range(start, end - 1, SCAN_BLOCK):
        block = np.frombuffer(data, np.uint8, offset=offset, count=min(SCAN_BLOCK + 1, end - offset))
        scans += int(np.count_nonzero((block[:-1] == 0xFF) & (block[1:] == 0xDA)))
    return scans


def _jpeg_header(data: bytes) -> tuple[int, int, int]:
    """(width, height, scans) from the markers; refuses more than MAX_JPEG_SCANS scans."""
    pos, n = 2, len(data)
    size: tuple[int, int] | None = None
    for _ in range(MAX_JPEG_SEGMENTS):
        # Markers may be preceded by 0xFF fill bytes (encoders write none or a few).
        fill = _JPEG_FILL.match(data, pos)
        if fill is None or fill.end() >= n:
            raise ImageError(_CORRUPT)
        pos = fill.end()
        marker = data[pos]
        if marker == 0xFF:
            raise ImageError(f"JPEG has more than {MAX_JPEG_FILL} fill bytes before a marker: corrupt")
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker == _JPEG_EOI:
            raise ImageError(_CORRUPT)  # an end of image before any scan
        if pos + 2 > n:
            raise ImageError(_CORRUPT)
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise ImageError(_CORRUPT)
        if marker in _JPEG_SOF:
            if pos + 7 > n:
                raise ImageError(_CORRUPT)
            height, width = struct.unpack_from(">HH", data, pos + 3)
            size = (width, height)
        if marker == _JPEG_SOS:
            if size is None:
                raise ImageError(_CORRUPT)
            # libjpeg decodes a file cut short mid-scan into a grey-padded image and only warns,
            # so a missing EOI is how we catch truncation. Inside entropy-coded data 0xFF is
            # always stuffed (FF 00) or a restart marker, so the first FF D9 after the scan header
            # is the real EOI; bytes some cameras append after it are tolerated.
            end = data.find(b"\xff\xd9", pos)
            if end < 0:
                raise ImageError(_CORRUPT)
            # The same stuffing rule makes FF DA a real start-of-scan wherever it appears up to
            # the EOI; what follows it (a phone's "motion photo" appends its MP4) is not this image.
            scans = _count_scans(data, pos - 2, end)
            if scans > MAX_JPEG_SCANS:
                raise ImageError(f"JPEG has {scans} scans; the limit is {MAX_JPEG_SCANS}")
            return (*size, scans)
        pos += length
    raise ImageError(f"JPEG has more than {MAX_JPEG_SEGMENTS} segments before its image data: corrupt")


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which the PNG spec requires to come first."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError(_CORRUPT)
    width, height = struct.unpack_from(">II", data, 16)
    return width, height  # libpng itself fails on a truncated stream, so imdecode returns None


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from a JPEG or PNG header without decoding any pixels."""
    if not data:
        raise ImageError("empty image")
    if data.startswith(_JPEG_MAGIC):
        width, height = _jpeg_size(data)
    elif data.startswith(_PNG_MAGIC):
        width, height = _png_size(data)
    else:
        raise ImageError("not a JPEG or PNG image")
    if width == 0 or height == 0:
        raise ImageError(_CORRUPT)  # JPEG height 0 (DNL) is legal but nobody sends it
    return width, height


def check_image_header(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of a JPEG/PNG we accept, from its header alone (microseconds).

    A PNG may have at most `max_pixels` pixels; a JPEG up to MAX_REDUCED_FACTOR times that,
    as it is decoded at a reduced scale. Raises ImageTooLarge beyond, ImageError for the rest.
    """
    width, height = image_size(data)
    pixels = width * height
    if data.startswith(_JPEG_MAGIC):
        cap = max_pixels * MAX_REDUCED_FACTOR
        if pixels > cap:
            raise ImageTooLarge(
                f"image is {width}x{height} = {pixels} pixels; the limit is {cap} for a JPEG "
                f"({MAX_REDUCED_FACTOR} x --max-pixels {max_pixels}, decoded at reduced scale)"
            )
        # Every scan is entropy-decoded at full size even when the output is reduced: over the
        # budget, a JPEG may cost no more than MAX_JPEG_SCANS scans of a budget-sized one. Phone
        # photos are baseline (one scan); a 67 Mpx flat JPEG with 64 scans took 12 s (loaded machine).
        if pixels > max_pixels:
            scans = _jpeg_header(data)[2]
            if pixels * scans > max_pixels * MAX_JPEG_SCANS:
                raise ImageTooLarge(
                    f"JPEG of {width}x{height} pixels has {scans} scans; over --max-pixels {max_pixels} "
                    f"at most {max_pixels * MAX_JPEG_SCANS // pixels} are accepted"
                )
    elif pixels > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {pixels} pixels; the limit is {max_pixels} (--max-pixels)")
    return width, height


def _reduced(side: int, reduction: int) -> int:
    return -(-side // reduction)  # libjpeg rounds the scaled size up


def jpeg_reduction(width: int, height: int, max_pixels: int, min_width: int = 0) -> int:
    """The JPEG scale-down (1, 2, 4 or 8) to decode at: within `max_pixels`, and otherwise the
    most that still leaves the image at least `min_width` wide (0: no reduction beyond the budget)."""
    fitting = [r for r in JPEG_REDUCTIONS if _reduced(width, r) * _reduced(height, r) <= max_pixels]
    if not fitting:
        raise ImageTooLarge(f"image is {width}x{height}: too large even at 1/8 scale for --max-pixels {max_pixels}")
    wide_enough = [r for r in fitting if min_width and _reduced(width, r) >= min_width]
    return max(wide_enough) if wide_enough else min(fitting)


@dataclass(frozen=True)
class Decoded:
    """A decoded image and the size of the image it came from (in the decoded orientation)."""

    image: np.ndarray  # BGR uint8, possibly reduced
    width: int  # the source image's own size
    height: int

    @property
    def scale(self) -> tuple[float, float]:
        """Source pixels per decoded pixel, along x and y (1.0 when decoded at full size)."""
        return self.width / self.image.shape[1], self.height / self.image.shape[0]


def decode_scaled(data: bytes, max_pixels: int = MAX_PIXELS, min_width: int | Callable[[int], int] = 0) -> Decoded:
    """Decode JPEG or PNG bytes into BGR, refusing bombs from the header before allocating.

    A JPEG over `max_pixels` is decoded at the reduction that fits; with `min_width` (a width, or
    a function of the image's own width), a JPEG is also reduced as far as it stays at least that
    wide (a detector working at 320 px gains nothing from a 1080 p decode). PNGs are always
    decoded at full size.
    """
    width, height = check_image_header(data, max_pixels)
    if data.startswith(_JPEG_MAGIC):
        wanted = min_width(width) if callable(min_width) else min_width
        reduction = jpeg_reduction(width, height, max_pixels, wanted)
    else:
        reduction = 1
    image = cv2.imdecode(np.frombuffer(data, np.uint8), JPEG_REDUCTIONS[reduction])
    if image is None:
        raise ImageError(_CORRUPT)
    # OpenCV applies the EXIF orientation, so a phone photo taken upright comes back rotated
    # by 90 degrees (width and height swapped); any other size means the header lied.
    expected = (_reduced(height, reduction), _reduced(width, reduction))
    if image.shape[:2] == expected:
        return Decoded(image, width, height)
    if image.shape[:2] == expected[::-1]:
        return Decoded(image, height, width)
    raise ImageError(_CORRUPT)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode JPEG or PNG bytes into a BGR uint8 array (a JPEG over `max_pixels` comes back reduced)."""
    return decode_scaled(data, max_pixels).image


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    """JPEG bytes of a BGR (or grey) uint8 image."""
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 0..100, got {quality}")
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode the image as JPEG")
    return buffer.tobytes()


def crop_faces(
    gray: np.ndarray, boxes: Sequence[Box], landmarks: Sequence[np.ndarray | None] | None = None
) -> np.ndarray:
    """uint8 faces [N, 48, 48] cut from `gray` at `boxes` (clamped to the image): the one crop of
    every path (live, videos, file analysis, `training.evaluate --via-detector`).

    With `landmarks` (one [5, 2] array or None per box), a face that has them is aligned
    instead (`fer_async.alignment`: upright, eyes and mouth where FER2013 has them); a face
    without (the Haar detector) keeps the box crop. `gray` may also be a BGR image: then only the
    crops are converted, which is cheaper than converting the whole frame. INTER_AREA because
    faces are nearly always shrunk, and it averages instead of aliasing.
    """
    if gray.ndim not in (2, 3):
        raise ValueError(f"expected a grey [H, W] or BGR [H, W, 3] image, got shape {list(gray.shape)}")
    if landmarks is not None and len(landmarks) != len(boxes):
        raise ValueError(f"{len(landmarks)} landmark sets for {len(boxes)} boxes")
    faces = np.empty((len(boxes), FACE_SIZE, FACE_SIZE), np.uint8)
    height, width = gray.shape[:2]
    for i, (x, y, w, h) in enumerate(boxes):
        points = landmarks[i] if landmarks is not None else None
        if points is not None:
            faces[i] = aligned_face(gray, (x, y, w, h), points)
            continue
        mx, my = round(w * FACE_MARGIN), round(h * FACE_MARGIN)
        x0, y0 = max(0, x - mx), max(0, y - my)
        x1, y1 = min(width, x + w + mx), min(height, y + h + my)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"face box {(x, y, w, h)} lies outside the {width}x{height} image")
        crop = gray[y0:y1, x0:x1]
        if crop.ndim == 3:
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        faces[i] = cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return faces


# OpenCV draws in BGR; the colours themselves are labels.EMOTION_COLOURS (RGB), shared with the pages.
_BGR: dict[str, tuple[int, int, int]] = {name: (b, g, r) for name, (r, g, b) in EMOTION_COLOURS.items()}
# A colour for a label outside EMOTIONS (none today): green, which no emotion uses.
_UNKNOWN_BGR = (0, 255, 0)


def annotation_label(face: Face | TrackedFace) -> str:
    """The text drawn over a face: "happy 87%", or "#3 happy 87%" for a tracked one (ids read "#3" on every page)."""
    shown = face.scores[EMOTIONS.index(face.emotion)]  # the smoothed score of a tracked face's steady label
    label = f"{face.emotion} {shown:.0%}"
    return f"#{face.id} {label}" if isinstance(face, TrackedFace) else label


def draw_annotations(image: np.ndarray, faces: Sequence[Face | TrackedFace]) -> None:
    """Draw each face's box and its `annotation_label` on `image` (BGR, in place)."""
    height, width = image.shape[:2]
    # Scale strokes and text with the frame so labels stay legible on 320 px and 1080 p alike.
    unit = max(1.0, min(width, height) / 480)
    thickness = max(1, round(2 * unit))
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, 0.6 * unit
    for face in faces:
        x, y, w, h = face.box
        colour = _BGR.get(face.emotion, _UNKNOWN_BGR)
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
        label = annotation_label(face)
        (tw, th), baseline = cv2.getTextSize(label, font, font_scale, thickness)
        pad = thickness + 1
        # Above the box when there is room, otherwise inside its top edge.
        top = y - th - baseline - 2 * pad
        if top < 0:
            top = y
        bottom = top + th + baseline + 2 * pad
        cv2.rectangle(image, (x, top), (x + tw + 2 * pad, bottom), colour, cv2.FILLED)
        text_colour = label_ink((colour[2], colour[1], colour[0]))  # the pages' overlay draws the same
        origin = (x + pad, bottom - baseline - pad)
        cv2.putText(image, label, origin, font, font_scale, text_colour, thickness, cv2.LINE_AA)
