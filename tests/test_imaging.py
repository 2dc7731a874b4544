"""imaging.py on real photos: decode limits (bombs, truncation, garbage), encode, crop, draw."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from testsupport import jpeg_scan_bomb

from fer_async.image_limits import MAX_PIXELS, MAX_REDUCED_FACTOR
from fer_async.imaging import (
    MAX_JPEG_FILL,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    ImageError,
    ImageTooLarge,
    annotation_label,
    check_image_header,
    crop_faces,
    decode_image,
    decode_scaled,
    draw_annotations,
    encode_jpeg,
    image_size,
)
from fer_async.labels import EMOTIONS, FACE_SIZE, Face


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG header declaring width x height, with a tiny IDAT: costs nothing to build."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _png_chunk(b"IEND", b"")
    )


def test_decode_real_jpeg(face_jpeg: bytes) -> None:
    image = decode_image(face_jpeg)
    assert image.shape == (480, 640, 3) and image.dtype == np.uint8
    assert image_size(face_jpeg) == (640, 480)


def test_decode_png_and_grey_png_give_bgr(astronaut_bgr: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", astronaut_bgr)
    assert ok
    np.testing.assert_array_equal(decode_image(png.tobytes()), astronaut_bgr)  # lossless round trip
    ok, grey = cv2.imencode(".png", cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY))
    assert decode_image(grey.tobytes()).shape == (512, 512, 3)


def test_png_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(ImageError, match=r"20000x20000 = 400000000 pixels; the limit is 4194304"):
        decode_image(bomb_png(20000, 20000))


def test_jpeg_over_the_budget_is_decoded_reduced_and_past_the_cap_refused(face_jpeg: bytes) -> None:
    assert image_size(face_jpeg) == (640, 480)
    decoded = decode_scaled(face_jpeg, max_pixels=320 * 240)
    assert decoded.image.shape == (240, 320, 3) and (decoded.width, decoded.height) == (640, 480)
    assert decoded.scale == (2.0, 2.0)
    assert decode_image(face_jpeg, max_pixels=160 * 120).shape == (120, 160, 3)  # 1/4: at the cap
    too_small = 640 * 480 // MAX_REDUCED_FACTOR - 1
    with pytest.raises(ImageTooLarge, match=rf"the limit is {too_small * MAX_REDUCED_FACTOR} for a JPEG.*--max-pixels"):
        decode_image(face_jpeg, max_pixels=too_small)
    assert MAX_PIXELS == 4096 * 1024


def test_a_12_megapixel_photo_decodes_at_the_detectors_size(face_jpeg: bytes) -> None:
    big = encode_jpeg(cv2.resize(decode_image(face_jpeg), (4000, 3000), interpolation=cv2.INTER_CUBIC), 90)
    assert check_image_header(big) == (4000, 3000)  # 12 Mpx: over the 4 Mpx budget, under the cap
    within_budget = decode_scaled(big)
    assert within_budget.image.shape == (1500, 2000, 3) and (within_budget.width, within_budget.height) == (4000, 3000)
    for min_width, side in ((320, 500), (640, 1000), (2000, 2000), (5000, 2000)):
        assert decode_scaled(big, min_width=min_width).image.shape[1] == side
    # As a function of the image's own width (the Analyzer's: its detection width).
    assert decode_scaled(big, min_width=lambda width: width // 4).image.shape[1] == 1000


def test_a_big_jpeg_may_not_have_many_scans() -> None:
    """Scans are entropy-decoded at full size even for a reduced decode: over the budget, pixels
    x scans must stay within what a budget-sized JPEG of MAX_JPEG_SCANS scans would cost."""
    ok, encoded = cv2.imencode(".jpg", np.full((3000, 4000, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    jpeg = encoded.tobytes()
    last_scan = jpeg[jpeg.rindex(b"\xff\xda") : -2]
    scans = jpeg.count(b"\xff\xda")
    allowed = MAX_PIXELS * MAX_JPEG_SCANS // (4000 * 3000)  # 22
    for total, accepted in ((allowed, True), (allowed + 1, False)):
        data = jpeg[:-2] + last_scan * (total - scans) + b"\xff\xd9"
        if accepted:
            assert check_image_header(data) == (4000, 3000)
        else:
            with pytest.raises(ImageTooLarge, match=rf"has {total} scans; over --max-pixels .* at most {allowed}"):
                check_image_header(data)
    assert check_image_header(jpeg[:-2] + last_scan * 40 + b"\xff\xd9", max_pixels=4000 * 3000)  # within budget


def test_png_over_the_budget_is_refused_naming_the_option(astronaut_bgr: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", astronaut_bgr)
    assert ok
    with pytest.raises(ImageTooLarge, match=r"512x512 = 262144 pixels; the limit is 1000 \(--max-pixels\)"):
        decode_scaled(png.tobytes(), max_pixels=1000, min_width=10)
    assert decode_scaled(png.tobytes(), min_width=10).image.shape == (512, 512, 3)  # PNGs are never reduced


def test_jpeg_header_is_read_past_exif_and_fill_bytes(face_jpeg: bytes) -> None:
    # An APP1 segment before the frame header and 0xFF fill bytes before a marker are legal.
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 10) + b"Exif\x00\x00ABCD"
    doctored = face_jpeg[:2] + app1 + b"\xff\xff" + face_jpeg[2:]
    assert image_size(doctored) == (640, 480)
    assert decode_image(doctored).shape == (480, 640, 3)


def test_a_jpeg_of_endless_empty_segments_is_refused_after_a_bounded_read(face_jpeg: bytes) -> None:
    # The header is read on the event loop: 8 million empty comments held it for seconds.
    with pytest.raises(ImageError, match=f"more than {MAX_JPEG_SEGMENTS} segments"):
        image_size(b"\xff\xd8" + b"\xff\xfe\x00\x02" * 2_000_000)
    with pytest.raises(ImageError, match=f"more than {MAX_JPEG_FILL} fill bytes"):
        image_size(face_jpeg[:2] + b"\xff" * 5_000_000 + face_jpeg[2:])
    # Within the bounds, a photo with many segments (an ICC profile in pieces) still reads.
    many = face_jpeg[:2] + b"\xff\xfe\x00\x02" * 300 + b"\xff" * 100 + face_jpeg[2:]
    assert decode_image(many).shape == (480, 640, 3)


def test_counting_scans_over_a_body_of_ff_bytes_takes_bounded_memory() -> None:
    ok, small = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))
    assert ok
    body = small.tobytes()[:-2] + b"\xff" * 32_000_000 + b"\xff\xd9"  # valid to the scan, then fill, then EOI
    tracemalloc.start()
    try:
        assert image_size(body) == (64, 64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000  # was about 18 x the body (600 MB), on the event loop


def test_a_motion_photo_is_one_jpeg_whatever_its_appended_video_holds(astronaut_bgr: np.ndarray) -> None:
    # Google's and Samsung's motion photos append an MP4 after the EOI; its bytes hold FF DA pairs
    # (about one per 64 KB), which were counted as scans: 12 MP photos were refused as scan bombs.
    photo = cv2.imencode(".jpg", cv2.resize(astronaut_bgr, (4032, 3024)))[1].tobytes()
    video = bytes(np.random.default_rng(0).integers(0, 256, 2_000_000, dtype=np.uint8)) + b"\xff\xda" * 100
    assert check_image_header(photo + video) == (4032, 3024)
    assert decode_scaled(photo + video, min_width=320).image.shape[1] >= 320


def test_jpeg_with_trailing_bytes_after_eoi_still_decodes(face_jpeg: bytes) -> None:
    assert decode_image(face_jpeg + b"\x00" * 64 + b"trailer").shape == (480, 640, 3)


def test_exif_rotated_jpeg_comes_back_upright(face_jpeg: bytes) -> None:
    # Orientation 6 (as phones write for portrait shots): OpenCV rotates, swapping width and height.
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    rotated = face_jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + face_jpeg[2:]
    assert image_size(rotated) == (640, 480)
    assert decode_image(rotated).shape == (640, 480, 3)
    reduced = decode_scaled(rotated, min_width=320)
    assert reduced.image.shape == (320, 240, 3) and (reduced.width, reduced.height) == (480, 640)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.99])
def test_truncated_jpeg(face_jpeg: bytes, keep: float) -> None:
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(face_jpeg[: int(len(face_jpeg) * keep)])


@pytest.mark.parametrize("keep", [0.02, 0.5, 0.99])
def test_truncated_png(astronaut_bgr: np.ndarray, keep: float) -> None:
    png = cv2.imencode(".png", astronaut_bgr)[1].tobytes()
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(png[: int(len(png) * keep)])


def test_corrupt_jpeg_body(face_jpeg: bytes) -> None:
    # A valid header, then the scan data replaced by noise and no end-of-image marker.
    sos = face_jpeg.index(b"\xff\xda")
    noise = np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes().replace(b"\xff", b"")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(face_jpeg[: sos + 20] + noise)


def _progressive_jpeg(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 30])
    assert ok
    return buffer.tobytes()


def test_progressive_jpeg_decodes(astronaut_bgr: np.ndarray) -> None:
    data = _progressive_jpeg(astronaut_bgr)
    assert 1 < data.count(b"\xff\xda") <= MAX_JPEG_SCANS
    assert decode_image(data).shape == astronaut_bgr.shape


def test_jpeg_repeating_its_last_scan_is_refused_from_its_header() -> None:
    bomb = jpeg_scan_bomb(MAX_JPEG_SCANS)
    assert len(bomb) < 64 * 1024
    with pytest.raises(ImageError, match=f"scans; the limit is {MAX_JPEG_SCANS}"):
        image_size(bomb)
    with pytest.raises(ImageError, match="scans"):
        decode_image(bomb)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a" + bytes(100), "not a JPEG or PNG"),
        (b"BM" + bytes(100), "not a JPEG or PNG"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a JPEG or PNG"),
        (np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not a JPEG or PNG"),
        (b"\xff\xd8\xff", "corrupt or truncated"),
        (b"\x89PNG\r\n\x1a\n", "corrupt or truncated"),
    ],
)
def test_garbage_is_refused_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_zero_sized_png_header() -> None:
    with pytest.raises(ImageError, match="corrupt"):
        decode_image(bomb_png(0, 100))


def test_png_whose_header_passes_but_pixels_are_garbage() -> None:
    with pytest.raises(ImageError, match="corrupt"):
        decode_image(bomb_png(64, 64))  # 1 KB of zeros cannot fill 64x64 RGB rows


def test_image_error_is_a_value_error() -> None:
    assert issubclass(ImageError, ValueError)


def test_encode_jpeg_round_trip(astronaut_bgr: np.ndarray) -> None:
    small = encode_jpeg(astronaut_bgr, quality=30)
    large = encode_jpeg(astronaut_bgr, quality=95)
    assert small[:3] == b"\xff\xd8\xff" and len(small) < len(large)
    back = decode_image(large)
    assert back.shape == astronaut_bgr.shape
    assert np.abs(back.astype(int) - astronaut_bgr.astype(int)).mean() < 3
    with pytest.raises(ValueError):
        encode_jpeg(astronaut_bgr, quality=101)


def test_crop_faces_shape_and_content(astronaut_bgr: np.ndarray) -> None:
    gray = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    box = (177, 66, 95, 95)  # the Haar box of the face at 512x512
    faces = crop_faces(gray, [box, (0, 0, 48, 48)])
    assert faces.shape == (2, FACE_SIZE, FACE_SIZE) and faces.dtype == np.uint8
    expected = cv2.resize(gray[66:161, 177:272], (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(faces[0], expected)
    np.testing.assert_array_equal(faces[1], gray[:48, :48])  # same size: copied as is
    # A BGR source gives the same crops, converted per face.
    np.testing.assert_allclose(crop_faces(astronaut_bgr, [box])[0], faces[0], atol=1)


def test_crop_faces_clamps_to_the_image(astronaut_bgr: np.ndarray) -> None:
    gray = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    faces = crop_faces(gray, [(480, 480, 100, 100), (-20, -20, 60, 60)])
    np.testing.assert_array_equal(faces[0], cv2.resize(gray[480:, 480:], (48, 48), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(faces[1], cv2.resize(gray[:40, :40], (48, 48), interpolation=cv2.INTER_AREA))
    with pytest.raises(ValueError, match="outside"):
        crop_faces(gray, [(600, 600, 10, 10)])


def test_crop_no_faces(astronaut_bgr: np.ndarray) -> None:
    assert crop_faces(astronaut_bgr, []).shape == (0, 48, 48)


def test_draw_annotations_draws_box_and_filled_label(face_jpeg: bytes) -> None:
    image = decode_image(face_jpeg)
    before = image.copy()
    scores = (0.01, 0.01, 0.01, 0.87, 0.05, 0.03, 0.02)
    face = Face(box=(220, 120, 120, 120), scores=scores)
    draw_annotations(image, [face])
    changed = np.any(image != before, axis=2)
    assert changed[120, 220:340].any() and changed[120:240, 220].any()  # the box edges
    assert not changed[150:230, 250:310].any()  # the inside of the box is left alone
    # A solid label background above the box, in the happy colour.
    label = image[95:118, 222:300].reshape(-1, 3)
    happy = np.array([0, 200, 255])
    assert (np.abs(label.astype(int) - happy).sum(axis=1) == 0).mean() > 0.3
    assert (label.sum(axis=1) < 60).mean() > 0.1  # dark text on the light fill
    assert EMOTIONS[3] == face.emotion == "happy"


def test_draw_annotations_at_the_top_edge_stays_inside(face_jpeg: bytes) -> None:
    image = decode_image(face_jpeg)
    draw_annotations(image, [Face(box=(0, 0, 100, 100), scores=(1, 0, 0, 0, 0, 0, 0))])
    draw_annotations(image, [])  # nothing to draw is fine
    assert image.shape == (480, 640, 3)


def test_a_tracked_face_is_labelled_with_its_id_and_steady_label(face_jpeg: bytes) -> None:
    from fer_async.tracker import TrackedFace

    box = (220, 120, 120, 120)
    happy_leads = (0.01, 0.01, 0.01, 0.49, 0.05, 0.03, 0.40)
    plain, tracked = decode_image(face_jpeg), decode_image(face_jpeg)
    draw_annotations(plain, [Face(box, happy_leads)])  # "happy 49%"
    draw_annotations(tracked, [TrackedFace(7, box, happy_leads, happy_leads, "happy")])  # "#7 happy 49%"
    # Ids read "#7" as on the webcam and analysis pages.
    assert annotation_label(TrackedFace(7, box, happy_leads, happy_leads, "happy")) == "#7 happy 49%"
    assert annotation_label(Face(box, happy_leads)) == "happy 49%"

    def label_width(image: np.ndarray) -> int:
        fill = np.any(image[95:118] != decode_image(face_jpeg)[95:118], axis=2)
        return int(fill.any(axis=0).sum())

    assert label_width(tracked) > label_width(plain) + 10
    # Neutral leads this frame, but the track's shown label (hysteresis) is still happy: drawn in its colour.
    neutral_leads = (0.01, 0.01, 0.01, 0.40, 0.05, 0.03, 0.49)
    steady = decode_image(face_jpeg)
    draw_annotations(steady, [TrackedFace(7, box, neutral_leads, neutral_leads, "happy")])
    label = steady[95:118, 222:300].reshape(-1, 3)
    happy_colour = np.array([0, 200, 255])
    assert (np.abs(label.astype(int) - happy_colour).sum(axis=1) == 0).mean() > 0.3
